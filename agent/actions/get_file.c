/* The `get_file` action: a finished run's files, or one file of output_dir, published over MQTT
 * on P/N/file/NAME, each only when it is a regular file inside output_dir once every symlink is
 * followed, with no other hard link, owned by the agent's user and no larger than max_file_bytes.
 * Not the MQTT session: files leave through the host's out.file. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include "actions.h"
#include "run.h"
#include "store.h"

#define GET_FILE_MAX_FILES 16
#define FILE_NAME_MAX 255

/* A file get_file may publish: open, checked, and the name it goes out under. */
struct out_file {
    char name[FILE_NAME_MAX + 1];
    int fd;
    size_t size;
};

static bool topic_name_ok(const char *name)
{
    size_t n = strlen(name);

    if (n == 0 || n > FILE_NAME_MAX || !strcmp(name, ".") || !strcmp(name, ".."))
        return false;
    return strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

static bool inside(const char *dir, const char *path)
{
    size_t n = strlen(dir);

    return strncmp(path, dir, n) == 0 && path[n] == '/' && path[n + 1];
}

/* Opens path for publishing as name, only when it is a regular file inside dir (an absolute,
 * resolved path) once every symlink is followed. The check is made on the resolved path, then
 * again on what was actually opened, so a link swapped in between cannot lead outside. */
static int open_inside(struct run *run, const char *dir, const char *path, const char *name,
                       struct out_file *ret)
{
    char real[PATH_MAX], fdlink[64], opened[PATH_MAX];
    long max = run->host->config->max_file_bytes;
    struct stat st;
    ssize_t n;
    int fd = -1, r = 0;

    if (!realpath(path, real)) {
        if (errno == ENOENT)
            return run_fail(run, "%s: no such file in output_dir", name);
        return run_fail(run, "%s: cannot resolve it: %s", name, strerror(errno));
    }
    if (!inside(dir, real))
        return run_fail(run, "%s: refused: it resolves to a path outside output_dir", name);
    fd = open(real, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return run_fail(run, "%s: cannot open it: %s", name, strerror(errno));
    snprintf(fdlink, sizeof(fdlink), "/proc/self/fd/%d", fd);
    n = readlink(fdlink, opened, sizeof(opened) - 1);
    if (n < 0 || (size_t)n >= sizeof(opened) - 1) {
        r = run_fail(run, "%s: cannot tell which file was opened", name);
        goto out;
    }
    opened[n] = '\0';
    if (!inside(dir, opened)) {
        r = run_fail(run, "%s: refused: it resolves to a path outside output_dir", name);
        goto out;
    }
    if (fstat(fd, &st) < 0) {
        r = run_fail(run, "%s: cannot stat it: %s", name, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        r = run_fail(run, "%s: refused: not a regular file", name);
        goto out;
    }
    /* A hard link is the same file under two names: one in output_dir says nothing of where the
     * other is, and anyone who may write there could link a file of the agent's user in. */
    if (st.st_nlink > 1) {
        r = run_fail(run,
                     "%s: refused: it has %lu hard links, and another may be outside "
                     "output_dir",
                     name, (unsigned long)st.st_nlink);
        goto out;
    }
    if (st.st_uid != geteuid()) {
        r = run_fail(run, "%s: refused: it belongs to uid %u, not to the agent's user", name,
                     (unsigned)st.st_uid);
        goto out;
    }
    if (st.st_size > max) {
        r = run_fail(run, "%s is %lld bytes, larger than max_file_bytes (%ld)", name,
                     (long long)st.st_size, max);
        goto out;
    }
    snprintf(ret->name, sizeof(ret->name), "%s", name);
    ret->size = (size_t)st.st_size;
    ret->fd = fd;
    fd = -1;
out:
    if (fd >= 0)
        close(fd);
    return r;
}

/* The file paths of run id, checked to be a finished run with files. */
struct run_files {
    bool found;
    char action[64], status[16];
    struct json_object *files;
};

static int take_run_files(const struct store_row *row, void *userdata)
{
    struct run_files *rf = userdata;

    rf->found = true;
    snprintf(rf->action, sizeof(rf->action), "%s", row->action ? row->action : "?");
    snprintf(rf->status, sizeof(rf->status), "%s", row->status ? row->status : "?");
    rf->files = row->files ? json_tokener_parse(row->files) : NULL;
    return 0;
}

static int publish_file(struct run *run, struct out_file *f, struct json_object *list)
{
    struct run_host *h = run->host;
    struct json_object *o;
    char topic[CONFIG_STR_MAX * 2 + FILE_NAME_MAX + 16];
    char *data;
    size_t got = 0;
    int r;

    /* The names are bounded by their fields; the check only keeps the compiler sure of it. */
    if (snprintf(topic, sizeof(topic), "%s/%s/file/%s", h->config->topic_prefix, h->config->node_id,
                 f->name) >= (int)sizeof(topic))
        return run_fail(run, "%s: the topic name is too long", f->name);
    data = malloc(f->size ? f->size : 1);
    if (!data)
        return run_fail(run, "%s: out of memory for %zu bytes", f->name, f->size);
    while (got < f->size) {
        ssize_t n = pread(f->fd, data + got, f->size - got, (off_t)got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            free(data);
            if (n < 0)
                return run_fail(run, "%s: cannot read it: %s", f->name, strerror(errno));
            return run_fail(run, "%s: it shrank while being read", f->name);
        }
        got += (size_t)n;
    }
    r = h->out.file(run, f->name, data, f->size, h->out.userdata);
    free(data);
    if (r < 0)
        return run_fail(run, "%s: cannot publish it: %s", f->name, strerror(-r));
    o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(f->name));
    json_object_object_add(o, "topic", json_object_new_string(topic));
    json_object_object_add(o, "size", json_object_new_int64((int64_t)f->size));
    json_object_array_add(list, o);
    return 0;
}

/* The paths to publish: output_dir/NAME, or every file run_id wrote. */
static int collect_paths(struct run *run, const char *dir, struct json_object **ret)
{
    struct json_object *v, *paths;
    struct run_files rf = {0};
    struct store_query q = {.limit = 1};
    char path[PATH_MAX];
    const char *name;
    int r;

    if (json_object_object_get_ex(run->params, "name", &v)) {
        name = json_object_get_string(v);
        if (!topic_name_ok(name))
            return run_fail(run, "name: must be a file name in output_dir, not '%s'", name);
        if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
            return run_fail(run, "name: the path in output_dir is too long");
        paths = json_object_new_array();
        json_object_array_add(paths, json_object_new_string(path));
        *ret = paths;
        return 0;
    }
    if (!run->host->store)
        return run_fail(run, "run_id: there is no run database (`run` mode, or it could not "
                             "be opened at start: see the agent's log)");
    json_object_object_get_ex(run->params, "run_id", &v);
    q.id = json_object_get_int64(v);
    r = store_runs_list(run->host->store, &q, take_run_files, &rf);
    if (r < 0) {
        json_object_put(rf.files);
        return run_fail(run, "cannot read the run database %s: %s", run->host->config->database,
                        store_errmsg(run->host->store));
    }
    if (!rf.found)
        r = run_fail(run, "run_id: there is no run %lld", (long long)q.id);
    else if (!strcmp(rf.status, "running"))
        r = run_fail(run,
                     "run_id: run %lld (%s) is still running; ask again when it has "
                     "finished",
                     (long long)q.id, rf.action);
    else if (!json_object_is_type(rf.files, json_type_array) ||
             json_object_array_length(rf.files) == 0)
        r = run_fail(run, "run_id: run %lld (%s) has no files", (long long)q.id, rf.action);
    else if (json_object_array_length(rf.files) > GET_FILE_MAX_FILES)
        r = run_fail(run, "run_id: run %lld has more than %d files", (long long)q.id,
                     GET_FILE_MAX_FILES);
    if (r < 0) {
        json_object_put(rf.files);
        return r;
    }
    *ret = rf.files;
    return 0;
}

int action_get_file(struct run *run)
{
    struct out_file files[GET_FILE_MAX_FILES];
    struct json_object *paths = NULL, *list;
    bool by_name = json_object_object_get_ex(run->params, "name", NULL);
    bool by_run = json_object_object_get_ex(run->params, "run_id", NULL);
    char dir[PATH_MAX];
    size_t nfiles = 0;
    int r;

    if (!run->host->out.file)
        return run_fail(run, "get_file publishes over MQTT: it needs the daemon, not `run`");
    if (by_name == by_run)
        return run_fail(run, by_name ? "give run_id or name, not both"
                                     : "run_id or name: one of them is required");
    r = run_output_dir(run, dir);
    if (r < 0)
        return r;
    r = collect_paths(run, dir, &paths);
    if (r < 0)
        return r;
    for (size_t i = 0; i < json_object_array_length(paths); i++) {
        struct json_object *p = json_object_array_get_idx(paths, i);
        const char *path = json_object_get_string(p), *base;

        if (!json_object_is_type(p, json_type_string) || path[0] != '/') {
            r = run_fail(run, "run_id: the run's file list is damaged");
            goto out;
        }
        base = strrchr(path, '/') + 1;
        if (!topic_name_ok(base)) {
            r = run_fail(run, "%s: refused: its name cannot be one topic level", path);
            goto out;
        }
        r = open_inside(run, dir, path, base, &files[nfiles]);
        if (r < 0)
            goto out;
        nfiles++;
    }
    list = json_object_new_array();
    json_object_object_add(run->summary, "files", list);
    for (size_t i = 0; i < nfiles; i++) {
        r = publish_file(run, &files[i], list);
        if (r < 0)
            goto out;
    }
out:
    for (size_t i = 0; i < nfiles; i++)
        close(files[i].fd);
    json_object_put(paths);
    return r;
}
