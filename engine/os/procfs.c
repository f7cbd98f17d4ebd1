/* Parsers of /proc/PID files (see procfs.h). Every read is bounded and every field checked, since a
 * process can put almost anything in its comm, mapped paths and command line. No caching here:
 * callers decide what may be reused. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "os/procfs.h"

#define STAT_MAX 4096 /* a stat line is ~300 bytes; comm is at most 15 of them */
#define COMM_FILE_MAX 64
#define TGID_STATUS_MAX 8192 /* Tgid sits in the first lines of status */
#define MAPS_LINE_MAX (PATH_MAX + 256)

static int fmt_path(char *buf, size_t len, const char *root, pid_t pid, pid_t tid, const char *file)
{
    int n;

    if (pid <= 0 || tid < 0)
        return -EINVAL;
    if (tid)
        n = snprintf(buf, len, "%s/%d/task/%d%s%s", root, (int)pid, (int)tid, file ? "/" : "",
                     file ? file : "");
    else
        n = snprintf(buf, len, "%s/%d%s%s", root, (int)pid, file ? "/" : "", file ? file : "");
    if (n < 0 || (size_t)n >= len)
        return -ENAMETOOLONG;
    return 0;
}

/* A file missing from ROOT/PID (or its task) means the process (thread) has gone, unless the
 * directory itself is still there: a kernel thread has no exe, a closed fd no link. */
static int gone_or(const char *root, pid_t pid, pid_t tid, int err)
{
    char dir[PATH_MAX];
    struct stat st;

    if (err != -ENOENT && err != -ESRCH)
        return err;
    if (fmt_path(dir, sizeof(dir), root, pid, tid, NULL) < 0)
        return err;
    if (stat(dir, &st) < 0 && (errno == ENOENT || errno == ESRCH))
        return -ESRCH;
    return err;
}

/* Reads at most max bytes of a file into buf (NUL-terminated; buf has max + 1 bytes). A file
 * longer than max is -EFBIG. */
static int read_small(const char *path, char *buf, size_t max, size_t *ret_len)
{
    size_t len = 0;
    int fd, r = 0;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    for (;;) {
        ssize_t n = read(fd, buf + len, max + 1 - len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            r = -errno;
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > max) {
            r = -EFBIG;
            goto out;
        }
    }
    buf[len] = '\0';
    *ret_len = len;
out:
    close(fd);
    return r;
}

static int read_pid_file(const char *root, pid_t pid, pid_t tid, const char *file, char *buf,
                         size_t max, size_t *ret_len)
{
    char path[PATH_MAX];
    int r;

    r = fmt_path(path, sizeof(path), root, pid, tid, file);
    if (r < 0)
        return r;
    r = read_small(path, buf, max, ret_len);
    if (r < 0)
        return gone_or(root, pid, tid, r);
    return 0;
}

int procfs_read_head(const char *root, pid_t pid, pid_t tid, const char *file, char *buf,
                     size_t size, size_t *ret_len)
{
    char path[PATH_MAX];
    ssize_t n;
    int fd, r;

    r = fmt_path(path, sizeof(path), root, pid, tid, file);
    if (r < 0)
        return r;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return gone_or(root, pid, tid, -errno);
    do
        n = read(fd, buf, size - 1);
    while (n < 0 && errno == EINTR);
    r = n < 0 ? gone_or(root, pid, tid, -errno) : 0;
    close(fd);
    if (r == 0) {
        buf[n] = '\0';
        *ret_len = (size_t)n;
    }
    return r;
}

int procfs_parse_u64(const char **p, int base, unsigned maxdigits, uint64_t *ret)
{
    const char *s = *p;
    uint64_t v = 0;
    unsigned n = 0;

    for (;; s++, n++) {
        unsigned d;
        if (*s >= '0' && *s <= '9')
            d = (unsigned)(*s - '0');
        else if (base == 16 && *s >= 'a' && *s <= 'f')
            d = (unsigned)(*s - 'a' + 10);
        else if (base == 16 && *s >= 'A' && *s <= 'F')
            d = (unsigned)(*s - 'A' + 10);
        else
            break;
        if (d >= (unsigned)base || n >= maxdigits || v > (UINT64_MAX - d) / (unsigned)base)
            return -EBADMSG;
        v = v * (unsigned)base + d;
    }
    if (n == 0)
        return -EBADMSG;
    *p = s;
    *ret = v;
    return 0;
}

/* A directory entry naming an int >= 0: digits only, no leading zero. */
static int parse_dirent_id(const char *name, int *ret)
{
    const char *p = name;
    uint64_t v;

    if ((name[0] == '0' && name[1]) || procfs_parse_u64(&p, 10, 10, &v) < 0 || *p || v > INT_MAX)
        return -EINVAL;
    *ret = (int)v;
    return 0;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Numeric entries of a directory, at least min, ascending, at most max of them. */
static int list_ids(const char *path, int min, size_t max, int **ret_ids, size_t *ret_n)
{
    DIR *d;
    struct dirent *e;
    int *ids = NULL;
    size_t n = 0, cap = 0;
    int r = 0;

    d = opendir(path);
    if (!d)
        return -errno;
    for (;;) {
        int id;
        errno = 0;
        e = readdir(d);
        if (!e) {
            r = -errno;
            if (r < 0)
                goto out;
            break;
        }
        if (parse_dirent_id(e->d_name, &id) < 0 || id < min)
            continue;
        if (n == max) {
            r = -E2BIG;
            goto out;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            int *t;
            if (ncap > max)
                ncap = max;
            t = reallocarray(ids, ncap, sizeof(*ids));
            if (!t) {
                r = -ENOMEM;
                goto out;
            }
            ids = t;
            cap = ncap;
        }
        ids[n++] = id;
    }
    /* The task list of a process on its way out can be empty, and then there is no array:
     * qsort(NULL, 0) is undefined (UBSan stopped the agent on it). */
    if (n > 1)
        qsort(ids, n, sizeof(*ids), cmp_int);
    *ret_ids = ids;
    *ret_n = n;
    ids = NULL;
out:
    free(ids);
    closedir(d);
    return r;
}

int procfs_list_tasks(const char *root, pid_t pid, pid_t **ret_tids, size_t *ret_n)
{
    char path[PATH_MAX];
    int *ids;
    size_t n;
    int r;

    _Static_assert(sizeof(pid_t) == sizeof(int), "pid_t is int");
    r = fmt_path(path, sizeof(path), root, pid, 0, "task");
    if (r < 0)
        return r;
    r = list_ids(path, 1, PROCFS_IDS_MAX, &ids, &n);
    if (r < 0)
        return gone_or(root, pid, 0, r);
    *ret_tids = ids;
    *ret_n = n;
    return 0;
}

int procfs_list_fds(const char *root, pid_t pid, int **ret_fds, size_t *ret_n)
{
    char path[PATH_MAX];
    int r;

    r = fmt_path(path, sizeof(path), root, pid, 0, "fd");
    if (r < 0)
        return r;
    r = list_ids(path, 0, PROCFS_FDS_MAX, ret_fds, ret_n);
    if (r < 0)
        return gone_or(root, pid, 0, r);
    return 0;
}

int procfs_list_pids(const char *root, pid_t **ret_pids, size_t *ret_n)
{
    return list_ids(root, 1, PROCFS_IDS_MAX, ret_pids, ret_n);
}

int procfs_read_comm(const char *root, pid_t pid, pid_t tid, char ret[PROCFS_COMM_MAX])
{
    char buf[COMM_FILE_MAX + 1];
    size_t len;
    int r;

    r = read_pid_file(root, pid, tid, "comm", buf, COMM_FILE_MAX, &len);
    if (r < 0)
        return r == -EFBIG ? -EBADMSG : r;
    /* The kernel prints "%s\n"; a comm may itself hold a newline, so only the last one goes. */
    if (len == 0 || buf[len - 1] != '\n' || len - 1 >= PROCFS_COMM_MAX || strlen(buf) != len)
        return -EBADMSG;
    memcpy(ret, buf, len - 1);
    ret[len - 1] = '\0';
    return 0;
}

/* The fields of a stat line after the comm: fields[0] is field 3 (state). */
static int read_stat_fields(const char *root, pid_t pid, pid_t tid, char *state,
                            uint64_t *starttime)
{
    char buf[STAT_MAX + 1];
    const char *p;
    size_t len;
    int r;

    r = read_pid_file(root, pid, tid, "stat", buf, STAT_MAX, &len);
    if (r < 0)
        return r == -EFBIG ? -EBADMSG : r;
    if (strlen(buf) != len)
        return -EBADMSG;
    p = strrchr(buf, ')');
    if (!p || p[1] != ' ' || !p[2] || p[3] != ' ')
        return -EBADMSG;
    *state = p[2];
    p += 3;
    /* Field 22 is the 19th after the state. */
    for (int field = 4; field <= 22; field++) {
        uint64_t v;
        if (*p != ' ')
            return -EBADMSG;
        p++;
        if (*p == '-') /* some fields (priority, nice, ...) are signed */
            p++;
        r = procfs_parse_u64(&p, 10, 20, &v);
        if (r < 0)
            return r;
        if (field == 22)
            *starttime = v;
    }
    if (*p != ' ' && *p != '\n')
        return -EBADMSG;
    return 0;
}

int procfs_read_starttime(const char *root, pid_t pid, uint64_t *ret)
{
    uint64_t t;
    char s;
    int r;

    r = read_stat_fields(root, pid, 0, &s, &t);
    if (r < 0)
        return r;
    *ret = t;
    return 0;
}

int procfs_read_state(const char *root, pid_t pid, pid_t tid, char *ret)
{
    uint64_t t;
    char s;
    int r;

    r = read_stat_fields(root, pid, tid, &s, &t);
    if (r < 0)
        return r;
    *ret = s;
    return 0;
}

int procfs_read_tgid(const char *root, pid_t pid, pid_t *ret)
{
    char buf[TGID_STATUS_MAX + 1];
    const char *p;
    uint64_t v;
    size_t len;
    int r;

    /* Only the head is needed. */
    r = procfs_read_head(root, pid, 0, "status", buf, sizeof(buf), &len);
    if (r < 0)
        return r;
    if (strlen(buf) != len)
        return -EBADMSG;
    p = strncmp(buf, "Tgid:", 5) == 0 ? buf : strstr(buf, "\nTgid:");
    if (!p)
        return -EBADMSG;
    p += (*p == '\n') + 5;
    while (*p == '\t' || *p == ' ')
        p++;
    if (procfs_parse_u64(&p, 10, 10, &v) < 0 || *p != '\n' || v == 0 || v > INT_MAX)
        return -EBADMSG;
    *ret = (pid_t)v;
    return 0;
}

int procfs_read_argv0(const char *root, pid_t pid, char *buf, size_t len)
{
    char cmd[PATH_MAX + 1];
    size_t got = 0;
    int r;

    r = read_pid_file(root, pid, 0, "cmdline", cmd, PATH_MAX, &got);
    /* Only argv[0] matters, and it may be followed by any amount of arguments. */
    if (r == -EFBIG) {
        cmd[PATH_MAX] = '\0';
        got = PATH_MAX;
        r = 0;
    }
    if (r < 0)
        return r;
    /* argv[0] ends at the first NUL; a process that rewrote its command line may have none. */
    got = strnlen(cmd, got);
    if (got >= len || got == PATH_MAX)
        return -ENAMETOOLONG;
    memcpy(buf, cmd, got + 1);
    return 0;
}

static int parse_map_line(const char *line, struct procfs_map *m)
{
    const char *p = line;
    uint64_t v;

    memset(m, 0, sizeof(*m));
    if (procfs_parse_u64(&p, 16, 16, &m->start) < 0 || *p++ != '-' ||
        procfs_parse_u64(&p, 16, 16, &m->end) < 0 || *p++ != ' ' || m->end < m->start)
        return -EBADMSG;
    for (int i = 0; i < 4; i++) {
        if (!*p || !strchr("rwxps-", *p))
            return -EBADMSG;
        m->perms[i] = *p++;
    }
    m->perms[4] = '\0';
    if (*p++ != ' ' || procfs_parse_u64(&p, 16, 16, &m->offset) < 0 || *p++ != ' ')
        return -EBADMSG;
    if (procfs_parse_u64(&p, 16, 8, &v) < 0 || *p++ != ':')
        return -EBADMSG;
    m->dev_major = (unsigned)v;
    if (procfs_parse_u64(&p, 16, 8, &v) < 0 || *p++ != ' ')
        return -EBADMSG;
    m->dev_minor = (unsigned)v;
    if (procfs_parse_u64(&p, 10, 20, &m->inode) < 0 || (*p != ' ' && *p != '\0'))
        return -EBADMSG;
    /* The kernel pads to a column before the path; the path keeps its own inner spaces. */
    while (*p == ' ')
        p++;
    m->path = strdup(p);
    return m->path ? 0 : -ENOMEM;
}

/* Calls fn(line, arg) on each line of ROOT/PID/FILE, newline stripped, until fn returns other
 * than 0: a negative errno ends the read with it, 1 ends it with 0. */
static int each_line(const char *root, pid_t pid, const char *file,
                     int (*fn)(char *line, void *arg), void *arg)
{
    char path[PATH_MAX], *line;
    FILE *f;
    int r;

    r = fmt_path(path, sizeof(path), root, pid, 0, file);
    if (r < 0)
        return r;
    f = fopen(path, "re");
    if (!f)
        return gone_or(root, pid, 0, -errno);
    line = malloc(MAPS_LINE_MAX);
    r = line ? 0 : -ENOMEM;
    while (r == 0 && fgets(line, MAPS_LINE_MAX, f)) {
        size_t len = strlen(line);
        if (len == 0 || line[len - 1] != '\n') {
            /* Too long, a NUL inside, or cut short: not what the kernel writes. */
            r = -EBADMSG;
            break;
        }
        line[len - 1] = '\0';
        r = fn(line, arg);
    }
    if (r == 0 && ferror(f))
        r = gone_or(root, pid, 0, errno ? -errno : -EIO);
    free(line);
    fclose(f);
    return r < 0 ? r : 0;
}

struct heap_rss {
    bool in_heap; /* the lines of the [heap] entry */
    uint64_t kb;
};

/* One line of smaps: each entry is its maps line, then "Field:   value [kB]" lines. */
static int heap_rss_line(char *line, void *arg)
{
    struct heap_rss *h = arg;
    size_t hex = strspn(line, "0123456789abcdef");
    const char *p = line + 4;

    if (hex && line[hex] == '-') {
        struct procfs_map m;
        int r = parse_map_line(line, &m);
        if (r < 0)
            return r;
        h->in_heap = !strcmp(m.path, "[heap]");
        free(m.path);
        return 0;
    }
    if (!h->in_heap || strncmp(line, "Rss:", 4))
        return 0;
    while (*p == ' ')
        p++;
    if (procfs_parse_u64(&p, 10, 20, &h->kb) < 0 || strcmp(p, " kB") || h->kb > UINT64_MAX / 1024)
        return -EBADMSG;
    return 1;
}

int procfs_read_heap_rss(const char *root, pid_t pid, uint64_t *ret)
{
    struct heap_rss h = {false, 0};
    int r = each_line(root, pid, "smaps", heap_rss_line, &h);

    if (r == 0)
        *ret = h.kb * 1024;
    return r;
}

struct maps_read {
    struct procfs_map *maps;
    size_t n, cap;
};

static int maps_line(char *line, void *arg)
{
    struct maps_read *m = arg;
    int r;

    if (m->n == PROCFS_MAPS_MAX)
        return -E2BIG;
    if (m->n == m->cap) {
        size_t ncap = m->cap ? m->cap * 2 : 64;
        struct procfs_map *t;
        if (ncap > PROCFS_MAPS_MAX)
            ncap = PROCFS_MAPS_MAX;
        t = reallocarray(m->maps, ncap, sizeof(*m->maps));
        if (!t)
            return -ENOMEM;
        m->maps = t;
        m->cap = ncap;
    }
    r = parse_map_line(line, &m->maps[m->n]);
    if (r < 0)
        return r;
    m->n++;
    return 0;
}

int procfs_read_maps(const char *root, pid_t pid, struct procfs_map **ret, size_t *ret_n)
{
    struct maps_read m = {NULL, 0, 0};
    int r = each_line(root, pid, "maps", maps_line, &m);

    if (r < 0) {
        procfs_maps_free(m.maps, m.n);
        return r;
    }
    *ret = m.maps;
    *ret_n = m.n;
    return 0;
}

void procfs_maps_free(struct procfs_map *maps, size_t n)
{
    if (!maps)
        return;
    for (size_t i = 0; i < n; i++)
        free(maps[i].path);
    free(maps);
}

static int read_link(const char *root, pid_t pid, const char *file, char *buf, size_t len)
{
    char path[PATH_MAX], target[PATH_MAX];
    ssize_t n;
    int r;

    r = fmt_path(path, sizeof(path), root, pid, 0, file);
    if (r < 0)
        return r;
    n = readlink(path, target, sizeof(target));
    if (n < 0)
        return gone_or(root, pid, 0, -errno);
    if ((size_t)n >= sizeof(target) || (size_t)n >= len)
        return -ENAMETOOLONG;
    memcpy(buf, target, (size_t)n);
    buf[n] = '\0';
    return 0;
}

int procfs_read_exe(const char *root, pid_t pid, char *buf, size_t len)
{
    return read_link(root, pid, "exe", buf, len);
}

int procfs_read_fd_link(const char *root, pid_t pid, int fd, char *buf, size_t len)
{
    char file[32];

    if (fd < 0)
        return -EINVAL;
    snprintf(file, sizeof(file), "fd/%d", fd);
    return read_link(root, pid, file, buf, len);
}

bool procfs_process_gone(const char *root, pid_t pid)
{
    pid_t *tids = NULL;
    size_t n = 0;
    char st = 0;
    int r = procfs_list_tasks(root, pid, &tids, &n);

    if (r == -ESRCH)
        return true;
    bool gone =
        r == 0 &&
        (n == 0 || (n == 1 && tids[0] == pid &&
                    (procfs_read_state(root, pid, pid, &st) == -ESRCH || st == 'Z' || st == 'X')));
    free(tids);
    return gone;
}
