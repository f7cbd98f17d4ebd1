/* The fleet and file actions: ping (what this agent is and which kernel facilities work here),
 * runs (the run store read back) and get_file (result files published over MQTT). Not the store
 * (store.c) nor the MQTT session (mqtt.c): files leave through the agent's out.file. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/perf_event.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include "action.h"
#include "clock.h"
#include "privs.h"
#include "store.h"

#define UPROBE_TYPE_FILE "/sys/bus/event_source/devices/uprobe/type"
#define PTRACE_SCOPE_FILE "/proc/sys/kernel/yama/ptrace_scope"
#define PARANOID_FILE "/proc/sys/kernel/perf_event_paranoid"
#define GET_FILE_MAX_FILES 16
#define FILE_NAME_MAX 255
#define REASON_MAX 256

/* A small integer sysctl or sysfs file. */
static int read_long_file(const char *path, long *ret)
{
    char buf[32], *end;
    FILE *f = fopen(path, "re");
    long v;
    int r = 0;

    if (!f)
        return -errno;
    if (!fgets(buf, sizeof(buf), f)) {
        r = -EIO;
        goto out;
    }
    errno = 0;
    v = strtol(buf, &end, 10);
    if (errno || end == buf || (*end != '\n' && *end != '\0')) {
        r = -EBADMSG;
        goto out;
    }
    *ret = v;
out:
    fclose(f);
    return r;
}

static void add_capability(struct json_object *caps, const char *name, bool available,
                           const char *reason)
{
    struct json_object *o = json_object_new_object();

    json_object_object_add(o, "available", json_object_new_boolean(available));
    if (reason && reason[0])
        json_object_object_add(o, available ? "note" : "reason", json_object_new_string(reason));
    json_object_object_add(caps, name, o);
}

/* What the CPU profiler opens, in its cheapest form: a software clock on the agent itself. */
static bool perf_event_works(uint64_t caps, char *why, size_t len)
{
    struct perf_event_attr attr = {
        .type = PERF_TYPE_SOFTWARE,
        .size = sizeof(attr),
        .config = PERF_COUNT_SW_CPU_CLOCK,
        .disabled = 1,
        .exclude_kernel = 1,
        .exclude_hv = 1,
    };
    long fd = syscall(SYS_perf_event_open, &attr, 0, -1, -1, PERF_FLAG_FD_CLOEXEC);
    long paranoid;
    int err;

    if (fd >= 0) {
        close((int)fd);
        return true;
    }
    err = errno;
    if (err == EACCES || err == EPERM) {
        bool capable = caps & ((1ull << PRIVS_CAP_PERFMON) | (1ull << PRIVS_CAP_SYS_ADMIN));

        if (read_long_file(PARANOID_FILE, &paranoid) == 0)
            snprintf(why, len,
                     "perf_event_open refused: kernel.perf_event_paranoid is %ld%s; "
                     "start samples with ptrace at up to 49 Hz instead",
                     paranoid, capable ? "" : " and the agent lacks CAP_PERFMON");
        else
            snprintf(why, len,
                     "perf_event_open refused (%s); start samples with ptrace at up "
                     "to 49 Hz instead",
                     strerror(err));
    } else {
        snprintf(why, len, "perf_event_open is not available on this kernel (%s)", strerror(err));
    }
    return false;
}

static bool uprobes_works(uint64_t caps, bool perf_ok, char *why, size_t len)
{
    long type;
    int r;

    if (!perf_ok) {
        snprintf(why, len, "uprobes are opened through perf_event_open, which is refused here");
        return false;
    }
    r = read_long_file(UPROBE_TYPE_FILE, &type);
    if (r < 0) {
        snprintf(why, len,
                 "cannot read %s (%s): the kernel has no uprobe PMU "
                 "(CONFIG_UPROBE_EVENTS)",
                 UPROBE_TYPE_FILE, strerror(-r));
        return false;
    }
    if (!(caps & ((1ull << PRIVS_CAP_PERFMON) | (1ull << PRIVS_CAP_SYS_ADMIN)))) {
        snprintf(why, len,
                 "uprobes through perf_event_open need CAP_PERFMON or CAP_SYS_ADMIN, "
                 "which the agent lacks");
        return false;
    }
    return true;
}

static bool ptrace_works(uint64_t caps, char *why, size_t len)
{
    bool capable = caps & (1ull << PRIVS_CAP_SYS_PTRACE);
    long scope = -1;

    if (read_long_file(PTRACE_SCOPE_FILE, &scope) < 0)
        scope = -1; /* no Yama: the classic rules */
    if (scope >= 3) {
        snprintf(why, len,
                 "kernel.yama.ptrace_scope is %ld: ptrace is disabled for everyone "
                 "until reboot",
                 scope);
        return false;
    }
    if (capable)
        return true;
    if (scope == 1 || scope == 2) {
        snprintf(why, len,
                 "kernel.yama.ptrace_scope is %ld and the agent lacks CAP_SYS_PTRACE: "
                 "it can trace %s",
                 scope, scope == 1 ? "only its own children" : "nothing");
        return false;
    }
    snprintf(why, len, "without CAP_SYS_PTRACE, only processes of the agent's own user");
    return true;
}

static const char *target_error(int r, char *buf, size_t len)
{
    switch (r) {
    case -ESRCH:
        return "no such process is running";
    case -EINVAL:
        return "not a valid target spec";
    case -ENOENT:
    case -EACCES:
        snprintf(buf, len, "cannot read the pid file: %s", strerror(-r));
        return buf;
    default:
        snprintf(buf, len, "cannot be resolved: %s", strerror(-r));
        return buf;
    }
}

static void add_missing(const char *name, void *userdata)
{
    json_object_array_add(userdata, json_object_new_string(name));
}

int action_ping(struct run *run)
{
    struct agent *a = run->agent;
    struct json_object *t = json_object_new_object(), *caps = json_object_new_object();
    char why[REASON_MAX], buf[REASON_MAX];
    struct json_object *missing = json_object_new_array();
    uint64_t cap_bits = privs_capabilities();
    bool ok;
    int r;

    json_object_object_add(run->summary, "version", json_object_new_string(PROFILER_AGENT_VERSION));
    json_object_object_add(run->summary, "node", json_object_new_string(a->config->node_id));
    json_object_object_add(t, "spec", json_object_new_string(run->target_spec));
    r = target_resolve(PROCFS_ROOT, run->target_spec, &run->target);
    if (r == 0) {
        run->has_target = true;
        json_object_object_add(t, "pid", json_object_new_int(run->target.pid));
        json_object_object_add(t, "name", json_object_new_string(run->target.name));
    } else {
        json_object_object_add(t, "error",
                               json_object_new_string(target_error(r, buf, sizeof(buf))));
    }
    json_object_object_add(run->summary, "target", t);
    json_object_object_add(run->summary, "pid", json_object_new_int(getpid()));
    json_object_object_add(
        run->summary, "uptime",
        json_decimal((double)(clock_monotonic_us() - a->started_mono_us) / 1e6, 3));
    why[0] = '\0';
    ok = perf_event_works(cap_bits, why, sizeof(why));
    add_capability(caps, "perf_event", ok, why);
    why[0] = '\0';
    add_capability(caps, "uprobes", uprobes_works(cap_bits, ok, why, sizeof(why)), why);
    why[0] = '\0';
    ok = ptrace_works(cap_bits, why, sizeof(why));
    add_capability(caps, "ptrace", ok, why);
    json_object_object_add(run->summary, "capabilities", caps);
    privs_missing(cap_bits, add_missing, missing);
    json_object_object_add(run->summary, "missing_capabilities", missing);
    json_object_object_add(run->summary, "uid", json_object_new_int((int)geteuid()));
    return 0;
}

static struct json_object *text_or_null(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

static int add_run_row(const struct store_row *row, void *userdata)
{
    struct json_object *list = userdata, *o = json_object_new_object(), *files;

    json_object_object_add(o, "run_id", json_object_new_int64(row->id));
    if (row->request_id)
        json_object_object_add(o, "request_id", json_object_new_string(row->request_id));
    json_object_object_add(o, "action", text_or_null(row->action));
    json_object_object_add(o, "status", text_or_null(row->status));
    json_object_object_add(o, "started", text_or_null(row->started));
    json_object_object_add(o, "finished", text_or_null(row->finished));
    if (row->target_spec) {
        struct json_object *t = json_object_new_object();

        json_object_object_add(t, "spec", json_object_new_string(row->target_spec));
        json_object_object_add(t, "pid",
                               row->target_pid > 0 ? json_object_new_int(row->target_pid) : NULL);
        json_object_object_add(o, "target", t);
    } else {
        json_object_object_add(o, "target", NULL);
    }
    files = row->files ? json_tokener_parse(row->files) : NULL;
    if (!json_object_is_type(files, json_type_array)) {
        json_object_put(files);
        files = json_object_new_array();
    }
    json_object_object_add(o, "files", files);
    json_object_object_add(o, "error", text_or_null(row->error));
    json_object_array_add(list, o);
    return 0;
}

static bool known_action(const char *name)
{
    for (unsigned i = 0; action_name(i); i++)
        if (strcmp(action_name(i), name) == 0)
            return true;
    return false;
}

int action_runs(struct run *run)
{
    struct store *st = run->agent->store;
    struct store_query q = {.exclude_id = run->id};
    struct json_object *v, *list;
    int r;

    if (!st)
        return run_fail(run, "runs: there is no run database (`run` mode, or it could not be "
                             "opened at start: see the agent's log)");
    if (json_object_object_get_ex(run->params, "limit", &v))
        q.limit = (unsigned)json_object_get_int(v);
    if (json_object_object_get_ex(run->params, "action", &v)) {
        q.action = json_object_get_string(v);
        if (!known_action(q.action))
            return run_fail(run, "action: unknown action '%s'", q.action);
    }
    if (json_object_object_get_ex(run->params, "status", &v))
        q.status = json_object_get_string(v);
    list = json_object_new_array();
    r = store_runs_list(st, &q, add_run_row, list);
    if (r < 0) {
        json_object_put(list);
        return run_fail(run, "cannot read the run database %s: %s", run->agent->config->database,
                        store_errmsg(st));
    }
    json_object_object_add(run->summary, "runs", list);
    return 0;
}

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
    long max = run->agent->config->max_file_bytes;
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
    struct agent *a = run->agent;
    struct json_object *o;
    char topic[CONFIG_STR_MAX * 2 + FILE_NAME_MAX + 16];
    char *data;
    size_t got = 0;
    int r;

    /* The names are bounded by their fields; the check only keeps the compiler sure of it. */
    if (snprintf(topic, sizeof(topic), "%s/%s/file/%s", a->config->topic_prefix, a->config->node_id,
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
    r = a->out.file(run, f->name, data, f->size, a->out.userdata);
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
    if (!run->agent->store)
        return run_fail(run, "run_id: there is no run database (`run` mode, or it could not "
                             "be opened at start: see the agent's log)");
    json_object_object_get_ex(run->params, "run_id", &v);
    q.id = json_object_get_int64(v);
    r = store_runs_list(run->agent->store, &q, take_run_files, &rf);
    if (r < 0) {
        json_object_put(rf.files);
        return run_fail(run, "cannot read the run database %s: %s", run->agent->config->database,
                        store_errmsg(run->agent->store));
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

    if (!run->agent->out.file)
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
