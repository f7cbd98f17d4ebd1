/* The object census of objects.h, read from ROOT/PID/{fd,fdinfo,task,maps,timers}. A fd's kind
 * comes from its link text alone (cheap: one readlink); reprs and schedules read fdinfo. It does
 * not follow objects into other processes: a pipe's other end is looked for in pid only. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <unistd.h>
#include "objects/objects.h"
#include "os/error.h"
#include "os/procfs.h"
#include "objects/sockets.h"

#define FDINFO_MAX                                                                                 \
    (1 << 20)             /* bytes of one fdinfo or timers file read; ~15,000 epoll                \
                           * entries. Past it the last lines are left out. */
#define REPR_MAX 4096     /* one repr; a longer one is cut and ends in "...>" */
#define EPOLL_SHOW_MAX 64 /* watched fds named in one scheduled epoll repr */
#define PIPE_PEERS_MAX 8  /* other ends named in one pipe repr */

/* On 64-bit the kernel sets O_LARGEFILE on every open, and fdinfo shows it, while glibc defines
 * it as 0 there; these are the kernel's values (asm-generic, x86; arm has its own). */
#if defined(__aarch64__) || defined(__arm__)
#define KERNEL_O_LARGEFILE 0400000
#else
#define KERNEL_O_LARGEFILE 0100000
#endif

static const char *const type_names[OBJECTS_NTYPES] = {
    [OBJECTS_PIPE] = "pipe",       [OBJECTS_SOCKET] = "socket",   [OBJECTS_EVENTFD] = "eventfd",
    [OBJECTS_TIMERFD] = "timerfd", [OBJECTS_EPOLL] = "epoll",     [OBJECTS_SIGNALFD] = "signalfd",
    [OBJECTS_INOTIFY] = "inotify", [OBJECTS_FILE] = "file",       [OBJECTS_OTHER_FD] = "other",
    [OBJECTS_THREAD] = "thread",   [OBJECTS_MAPPING] = "mapping",
};

struct fdent {
    int fd;
    enum objects_type type;
    uint64_t ino; /* pipes and sockets */
};

/* A repr under construction: appends stop at the end of buf and mark it cut. */
struct repr {
    char buf[REPR_MAX];
    size_t len;
    bool cut;
};

/* NULL for a value outside the enum. */
const char *objects_type_name(enum objects_type t)
{
    if ((unsigned)t >= OBJECTS_NTYPES)
        return NULL;
    return type_names[t];
}

int objects_type_parse(const char *name, enum objects_type *ret)
{
    if (!name)
        return -EINVAL;
    for (int t = 0; t < OBJECTS_NTYPES; t++) {
        if (strcmp(name, type_names[t]) == 0) {
            *ret = (enum objects_type)t;
            return 0;
        }
    }
    return -EINVAL;
}

static void repr_add(struct repr *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void repr_add(struct repr *r, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (r->cut)
        return;
    va_start(ap, fmt);
    n = vsnprintf(r->buf + r->len, sizeof(r->buf) - r->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(r->buf) - r->len) {
        r->cut = true;
        r->len = sizeof(r->buf) - 1;
        memcpy(r->buf + sizeof(r->buf) - 5, "...>", 5);
        return;
    }
    r->len += (size_t)n;
}

static void repr_reset(struct repr *r)
{
    r->len = 0;
    r->cut = false;
    r->buf[0] = '\0';
}

/* Closes the repr with its ">" and hands it to emit. */
static int repr_emit(struct repr *r, int (*emit)(const char *, void *), void *userdata)
{
    repr_add(r, ">");
    return emit(r->buf, userdata);
}

/* -ESRCH when ROOT/PID has gone, else err: tells a closed fd (skipped) from a dead process. */
static int gone_or(const char *root, pid_t pid, int err)
{
    char dir[PATH_MAX];
    struct stat st;
    int n;

    if (err != -ENOENT && err != -ESRCH)
        return err;
    n = snprintf(dir, sizeof(dir), "%s/%d", root, (int)pid);
    if (n < 0 || (size_t)n >= sizeof(dir))
        return err;
    if (stat(dir, &st) < 0 && (errno == ENOENT || errno == ESRCH))
        return -ESRCH;
    return -ENOENT;
}

/* "PREFIX[DIGITS]" exactly: the inode. */
static bool bracketed_inode(const char *link, const char *prefix, uint64_t *ret)
{
    size_t n = strlen(prefix);
    const char *p;

    if (strncmp(link, prefix, n) != 0 || link[n] != '[')
        return false;
    p = link + n + 1;
    if (procfs_parse_u64(&p, 10, 20, ret) < 0 || strcmp(p, "]") != 0)
        return false;
    return true;
}

static enum objects_type classify(const char *link, uint64_t *ret_ino)
{
    *ret_ino = 0;
    if (bracketed_inode(link, "pipe:", ret_ino))
        return OBJECTS_PIPE;
    if (bracketed_inode(link, "socket:", ret_ino))
        return OBJECTS_SOCKET;
    if (strcmp(link, "anon_inode:[eventfd]") == 0)
        return OBJECTS_EVENTFD;
    if (strcmp(link, "anon_inode:[timerfd]") == 0)
        return OBJECTS_TIMERFD;
    if (strcmp(link, "anon_inode:[eventpoll]") == 0)
        return OBJECTS_EPOLL;
    if (strcmp(link, "anon_inode:[signalfd]") == 0)
        return OBJECTS_SIGNALFD;
    if (strcmp(link, "anon_inode:inotify") == 0)
        return OBJECTS_INOTIFY;
    if (link[0] == '/')
        return OBJECTS_FILE;
    return OBJECTS_OTHER_FD;
}

/* Fills err for a failed read of ROOT/PID/FILE: the file says more than the errno, unless the
 * process has gone or memory ran out. Returns r. */
static int read_failed(struct error *err, int r, const char *root, pid_t pid, const char *file)
{
    if (r == -ESRCH || r == -ENOMEM)
        return error_set(err, r, NULL);
    return error_set(err, r, "cannot read %s/%d/%s: %s", root, (int)pid, file, strerror(-r));
}

/* procfs_list_tasks and procfs_read_maps, a failure worded by read_failed. */
static int list_tasks(const char *root, pid_t pid, pid_t **ret, size_t *ret_n, struct error *err)
{
    int r = procfs_list_tasks(root, pid, ret, ret_n);

    return r < 0 ? read_failed(err, r, root, pid, "task") : 0;
}

static int read_maps(const char *root, pid_t pid, struct procfs_map **ret, size_t *ret_n,
                     struct error *err)
{
    int r = procfs_read_maps(root, pid, ret, ret_n);

    return r < 0 ? read_failed(err, r, root, pid, "maps") : 0;
}

/* Every open fd of pid with its kind, ascending; fds closed while listing are left out. */
static int scan_fds(const char *root, pid_t pid, struct fdent **ret, size_t *ret_n,
                    struct error *err)
{
    char file[32];
    struct fdent *ents = NULL;
    char link[PATH_MAX];
    int *fds = NULL;
    size_t n_fds, n = 0;
    int r;

    r = procfs_list_fds(root, pid, &fds, &n_fds);
    if (r < 0) {
        read_failed(err, r, root, pid, "fd");
        goto out;
    }
    ents = calloc(n_fds ? n_fds : 1, sizeof(*ents));
    if (!ents) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n_fds; i++) {
        r = procfs_read_fd_link(root, pid, fds[i], link, sizeof(link));
        if (r == -ENOENT)
            continue; /* closed since listing */
        if (r < 0 && r != -ENAMETOOLONG) {
            snprintf(file, sizeof(file), "fd/%d", fds[i]);
            read_failed(err, r, root, pid, file);
            goto out;
        }
        ents[n].fd = fds[i];
        /* Only a path can be longer than PATH_MAX. */
        ents[n].type = r == -ENAMETOOLONG ? OBJECTS_FILE : classify(link, &ents[n].ino);
        n++;
    }
    *ret = ents;
    *ret_n = n;
    ents = NULL;
    r = 0;
out:
    free(ents);
    free(fds);
    return r;
}

/* ROOT/PID/FILE into a malloc'd NUL-terminated buffer of at most FDINFO_MAX bytes, cut after
 * its last whole line when longer. -ENOENT for a closed fd, -ESRCH for a dead process. */
static int read_proc_text(const char *root, pid_t pid, const char *file, char **ret)
{
    char path[PATH_MAX];
    char *buf = NULL;
    size_t cap = 4096, len = 0;
    int fd = -1, r, n;

    n = snprintf(path, sizeof(path), "%s/%d/%s", root, (int)pid, file);
    if (n < 0 || (size_t)n >= sizeof(path))
        return -ENAMETOOLONG;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        r = gone_or(root, pid, -errno);
        goto out;
    }
    buf = malloc(cap + 1);
    if (!buf) {
        r = -ENOMEM;
        goto out;
    }
    for (;;) {
        ssize_t got;
        if (len == cap) {
            char *nb;
            if (cap >= FDINFO_MAX) {
                char *nl = memrchr(buf, '\n', len);
                len = nl ? (size_t)(nl - buf) + 1 : 0;
                break;
            }
            cap *= 2;
            nb = realloc(buf, cap + 1);
            if (!nb) {
                r = -ENOMEM;
                goto out;
            }
            buf = nb;
        }
        got = read(fd, buf + len, cap - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            r = gone_or(root, pid, -errno);
            goto out;
        }
        if (got == 0)
            break;
        len += (size_t)got;
    }
    buf[len] = '\0';
    *ret = buf;
    buf = NULL;
    r = 0;
out:
    free(buf);
    if (fd >= 0)
        close(fd);
    return r;
}

static int read_fdinfo(const char *root, pid_t pid, int fd, char **ret)
{
    char file[32];

    snprintf(file, sizeof(file), "fdinfo/%d", fd);
    return read_proc_text(root, pid, file, ret);
}

/* The text after "NAME" at the start of a line of buf, blanks skipped; NULL if none. */
static const char *field(const char *buf, const char *name)
{
    size_t n = strlen(name);

    for (const char *p = buf; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, n) == 0) {
            p += n;
            while (*p == ' ' || *p == '\t')
                p++;
            return p;
        }
    }
    return NULL;
}

static int field_u64(const char *buf, const char *name, int base, uint64_t *ret)
{
    const char *p = field(buf, name);

    if (!p)
        return -EBADMSG;
    return procfs_parse_u64(&p, base, base == 8 ? 22 : base == 16 ? 16 : 20, ret);
}

/* "(SEC, NSEC)" after name. */
static int field_timespec(const char *buf, const char *name, uint64_t *sec, uint64_t *nsec)
{
    const char *p = field(buf, name);

    if (!p || *p++ != '(' || procfs_parse_u64(&p, 10, 20, sec) < 0 || *p++ != ',')
        return -EBADMSG;
    while (*p == ' ')
        p++;
    if (procfs_parse_u64(&p, 10, 9, nsec) < 0 || *p != ')')
        return -EBADMSG;
    return 0;
}

struct flag_name {
    uint64_t bit;
    const char *name;
};

/* Names of the bits of v from table, '|'-joined; bits left over in base (8 or 16). */
static void add_flags(struct repr *r, uint64_t v, const struct flag_name *table, size_t n, int base)
{
    bool first = true;

    for (size_t i = 0; i < n; i++) {
        if (table[i].bit && (v & table[i].bit) == table[i].bit) {
            repr_add(r, "%s%s", first ? "" : "|", table[i].name);
            v &= ~table[i].bit;
            first = false;
        }
    }
    if (v)
        repr_add(r, base == 8 ? "%s0%" PRIo64 : "%s0x%" PRIx64, first ? "" : "|", v);
    else if (first)
        repr_add(r, "0");
}

static void add_open_flags(struct repr *r, uint64_t flags)
{
    static const struct flag_name table[] = {
        {O_SYNC, "O_SYNC"}, /* before O_DSYNC, whose bit it includes */
        {O_APPEND, "O_APPEND"},
        {O_NONBLOCK, "O_NONBLOCK"},
        {O_DSYNC, "O_DSYNC"},
        {O_DIRECT, "O_DIRECT"},
        {KERNEL_O_LARGEFILE, "O_LARGEFILE"},
        {O_DIRECTORY, "O_DIRECTORY"},
        {O_NOFOLLOW, "O_NOFOLLOW"},
        {O_NOATIME, "O_NOATIME"},
        {O_CLOEXEC, "O_CLOEXEC"},
        {O_PATH, "O_PATH"},
        {O_CREAT, "O_CREAT"},
        {O_EXCL, "O_EXCL"},
        {O_NOCTTY, "O_NOCTTY"},
        {O_TRUNC, "O_TRUNC"},
        {__O_TMPFILE, "O_TMPFILE"},
    };
    uint64_t acc = flags & O_ACCMODE;

    repr_add(r, "%s",
             acc == O_RDONLY   ? "O_RDONLY"
             : acc == O_WRONLY ? "O_WRONLY"
             : acc == O_RDWR   ? "O_RDWR"
                               : "O_ACCMODE");
    if (flags & ~(uint64_t)O_ACCMODE) {
        repr_add(r, "|");
        add_flags(r, flags & ~(uint64_t)O_ACCMODE, table, sizeof(table) / sizeof(table[0]), 8);
    }
}

/* The kernel adds EPOLLERR|EPOLLHUP to every registration: they are left out, telling nothing. */
static void add_epoll_events(struct repr *r, uint64_t ev)
{
    static const struct flag_name table[] = {
        {EPOLLIN, "EPOLLIN"},           {EPOLLPRI, "EPOLLPRI"},
        {EPOLLOUT, "EPOLLOUT"},         {EPOLLERR, "EPOLLERR"},
        {EPOLLHUP, "EPOLLHUP"},         {EPOLLRDNORM, "EPOLLRDNORM"},
        {EPOLLRDBAND, "EPOLLRDBAND"},   {EPOLLWRNORM, "EPOLLWRNORM"},
        {EPOLLWRBAND, "EPOLLWRBAND"},   {EPOLLMSG, "EPOLLMSG"},
        {EPOLLRDHUP, "EPOLLRDHUP"},     {EPOLLEXCLUSIVE, "EPOLLEXCLUSIVE"},
        {EPOLLWAKEUP, "EPOLLWAKEUP"},   {EPOLLONESHOT, "EPOLLONESHOT"},
        {(uint32_t)EPOLLET, "EPOLLET"},
    };

    if ((ev & (EPOLLERR | EPOLLHUP)) == (EPOLLERR | EPOLLHUP))
        ev &= ~(uint64_t)(EPOLLERR | EPOLLHUP);
    add_flags(r, ev, table, sizeof(table) / sizeof(table[0]), 16);
}

static const char *clock_name(int64_t id)
{
    switch (id) {
    case 0:
        return "realtime";
    case 1:
        return "monotonic";
    case 2:
        return "process_cputime";
    case 3:
        return "thread_cputime";
    case 4:
        return "monotonic_raw";
    case 5:
        return "realtime_coarse";
    case 6:
        return "monotonic_coarse";
    case 7:
        return "boottime";
    case 8:
        return "realtime_alarm";
    case 9:
        return "boottime_alarm";
    case 11:
        return "tai";
    default:
        return NULL;
    }
}

static void add_clock(struct repr *r, int64_t id)
{
    const char *name = clock_name(id);

    if (name)
        repr_add(r, "clock=%s", name);
    else
        repr_add(r, "clock=%" PRId64, id);
}

/* Seconds, with milliseconds unless whole: "7s", "6.438s". */
static void add_seconds(struct repr *r, uint64_t sec, uint64_t nsec)
{
    if (nsec == 0)
        repr_add(r, "%" PRIu64 "s", sec);
    else
        repr_add(r, "%" PRIu64 ".%03" PRIu64 "s", sec, nsec / 1000000);
}

static int timerfd_repr(struct repr *r, int fd, const char *info)
{
    uint64_t clk, vs, vn, is, in;

    if (field_u64(info, "clockid:", 10, &clk) < 0 || clk > INT32_MAX ||
        field_timespec(info, "it_value:", &vs, &vn) < 0 ||
        field_timespec(info, "it_interval:", &is, &in) < 0)
        return -EBADMSG;
    repr_add(r, "<timerfd fd=%d ", fd);
    add_clock(r, (int64_t)clk);
    if (vs == 0 && vn == 0) {
        repr_add(r, " next=disarmed");
    } else {
        /* Always with milliseconds: a next expiry is rarely whole. */
        repr_add(r, " next=%" PRIu64 ".%03" PRIu64 "s", vs, vn / 1000000);
    }
    repr_add(r, " interval=");
    if (is == 0 && in == 0)
        repr_add(r, "none");
    else
        add_seconds(r, is, in);
    repr_add(r, ">");
    return 0;
}

static void add_sigmask(struct repr *r, uint64_t mask)
{
    bool first = true;

    for (int sig = 1; sig <= 64; sig++) {
        const char *abbrev;
        if (!(mask & (UINT64_C(1) << (sig - 1))))
            continue;
        abbrev = sig < SIGRTMIN ? sigabbrev_np(sig) : NULL;
        if (abbrev)
            repr_add(r, "%sSIG%s", first ? "" : "|", abbrev);
        else
            repr_add(r, "%s%d", first ? "" : "|", sig);
        first = false;
    }
    if (first)
        repr_add(r, "none");
}

static size_t count_lines(const char *buf, const char *prefix)
{
    size_t n = 0, len = strlen(prefix);

    for (const char *p = buf; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, prefix, len) == 0)
            n++;
    return n;
}

/* The repr of a fd of type t other than pipe and socket. -ENOENT (skip it) when it closed or
 * its fdinfo does not fit its kind (closed and reused since). */
static int fd_repr(const char *root, pid_t pid, const struct fdent *e, struct repr *r)
{
    char link[PATH_MAX];
    char *info = NULL;
    uint64_t v, pos;
    int ret;

    repr_reset(r);
    ret = read_fdinfo(root, pid, e->fd, &info);
    if (ret < 0)
        goto out;
    ret = 0;
    switch (e->type) {
    case OBJECTS_FILE:
        ret = procfs_read_fd_link(root, pid, e->fd, link, sizeof(link));
        if (ret < 0)
            goto out;
        if (field_u64(info, "pos:", 10, &pos) < 0 || field_u64(info, "flags:", 8, &v) < 0) {
            ret = -EBADMSG;
            goto out;
        }
        repr_add(r, "<file fd=%d path=%s pos=%" PRIu64 " flags=", e->fd, link, pos);
        add_open_flags(r, v);
        repr_add(r, ">");
        break;
    case OBJECTS_EVENTFD:
        if (field_u64(info, "eventfd-count:", 16, &v) < 0) {
            ret = -EBADMSG;
            goto out;
        }
        repr_add(r, "<eventfd fd=%d count=%" PRIu64 ">", e->fd, v);
        break;
    case OBJECTS_TIMERFD:
        ret = timerfd_repr(r, e->fd, info);
        break;
    case OBJECTS_EPOLL:
        v = count_lines(info, "tfd:");
        repr_add(r, "<epoll fd=%d watching %" PRIu64 " fd%s>", e->fd, v, v == 1 ? "" : "s");
        break;
    case OBJECTS_SIGNALFD:
        if (field_u64(info, "sigmask:", 16, &v) < 0) {
            ret = -EBADMSG;
            goto out;
        }
        repr_add(r, "<signalfd fd=%d sigmask=", e->fd);
        add_sigmask(r, v);
        repr_add(r, ">");
        break;
    case OBJECTS_INOTIFY:
        repr_add(r, "<inotify fd=%d watches=%zu>", e->fd, count_lines(info, "inotify wd:"));
        break;
    default:
        ret = procfs_read_fd_link(root, pid, e->fd, link, sizeof(link));
        if (ret < 0)
            goto out;
        repr_add(r, "<other fd=%d link=%s>", e->fd, link);
        break;
    }
out:
    free(info);
    return ret == -EBADMSG ? -ENOENT : ret;
}

struct pipe_end {
    int fd;
    int acc; /* O_RDONLY, O_WRONLY or O_RDWR */
    uint64_t ino;
};

static int cmp_pipe_ino(const void *a, const void *b)
{
    const struct pipe_end *x = a, *y = b;

    if (x->ino != y->ino)
        return x->ino < y->ino ? -1 : 1;
    return x->fd < y->fd ? -1 : x->fd > y->fd;
}

static const char *end_name(int acc)
{
    return acc == O_RDONLY ? "read end" : acc == O_WRONLY ? "write end" : "read/write end";
}

static int dump_pipes(const char *root, pid_t pid, const struct fdent *ents, size_t n,
                      int (*emit)(const char *, void *), void *userdata)
{
    struct pipe_end *ends, *by_ino = NULL;
    struct repr *r = NULL;
    size_t m = 0;
    int ret = 0;

    ends = calloc(n ? n : 1, sizeof(*ends));
    by_ino = calloc(n ? n : 1, sizeof(*by_ino));
    r = malloc(sizeof(*r));
    if (!ends || !by_ino || !r) {
        ret = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        char *info = NULL;
        uint64_t flags;
        if (ents[i].type != OBJECTS_PIPE)
            continue;
        ret = read_fdinfo(root, pid, ents[i].fd, &info);
        if (ret == -ENOENT)
            continue;
        if (ret < 0)
            goto out;
        ret = field_u64(info, "flags:", 8, &flags);
        free(info);
        if (ret < 0) {
            ret = 0;
            continue;
        }
        ends[m].fd = ents[i].fd;
        ends[m].acc = (int)(flags & O_ACCMODE);
        ends[m].ino = ents[i].ino;
        m++;
    }
    memcpy(by_ino, ends, m * sizeof(*ends));
    if (m > 1)
        qsort(by_ino, m, sizeof(*by_ino), cmp_pipe_ino);
    for (size_t i = 0; i < m; i++) {
        struct pipe_end key = {.fd = -1, .ino = ends[i].ino};
        size_t lo = 0, hi = m, peers = 0;

        /* First of the group with this inode: fd -1 sorts before every fd. */
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (cmp_pipe_ino(&by_ino[mid], &key) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        repr_reset(r);
        repr_add(r, "<pipe fd=%d inode=%" PRIu64 " %s, other end: ", ends[i].fd, ends[i].ino,
                 end_name(ends[i].acc));
        for (size_t j = lo; j < m && by_ino[j].ino == ends[i].ino; j++) {
            /* A dup of the same end is not the other end; an O_RDWR end (a FIFO) is both. */
            if (by_ino[j].fd == ends[i].fd ||
                (by_ino[j].acc == ends[i].acc && ends[i].acc != O_RDWR))
                continue;
            if (peers == PIPE_PEERS_MAX) {
                repr_add(r, ", ...");
                break;
            }
            repr_add(r, peers ? ", fd %d" : "pid %d fd %d", peers ? by_ino[j].fd : (int)pid,
                     by_ino[j].fd);
            peers++;
        }
        if (!peers)
            repr_add(r, "not in this process");
        ret = repr_emit(r, emit, userdata);
        if (ret < 0)
            goto out;
    }
    ret = 0;
out:
    free(r);
    free(by_ino);
    free(ends);
    return ret;
}

static int dump_threads(const char *root, pid_t pid, int (*emit)(const char *, void *),
                        void *userdata, struct error *err)
{
    char comm[PROCFS_COMM_MAX], line[128], file[32];
    pid_t *tids = NULL;
    size_t n;
    int r;

    r = list_tasks(root, pid, &tids, &n, err);
    if (r < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        char state;
        r = procfs_read_comm(root, pid, tids[i], comm);
        if (r == 0)
            r = procfs_read_state(root, pid, tids[i], &state);
        if (r == -ESRCH || r == -ENOENT) {
            r = gone_or(root, pid, r);
            if (r == -ESRCH)
                goto out;
            continue; /* that thread exited */
        }
        if (r < 0) {
            snprintf(file, sizeof(file), "task/%d", (int)tids[i]);
            read_failed(err, r, root, pid, file);
            goto out;
        }
        snprintf(line, sizeof(line), "<thread tid=%d name=%s state=%c>", (int)tids[i], comm, state);
        r = emit(line, userdata);
        if (r < 0)
            goto out;
    }
    r = 0;
out:
    free(tids);
    return r;
}

static int dump_maps(const char *root, pid_t pid, int (*emit)(const char *, void *), void *userdata,
                     struct error *err)
{
    struct procfs_map *maps = NULL;
    struct repr *r;
    size_t n = 0;
    int ret;

    r = malloc(sizeof(*r));
    if (!r)
        return -ENOMEM;
    ret = read_maps(root, pid, &maps, &n, err);
    if (ret < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        repr_reset(r);
        repr_add(r, "<mapping %" PRIx64 "-%" PRIx64 " %s%s%s>", maps[i].start, maps[i].end,
                 maps[i].perms, maps[i].path[0] ? " " : "", maps[i].path);
        ret = emit(r->buf, userdata);
        if (ret < 0)
            goto out;
    }
    ret = 0;
out:
    procfs_maps_free(maps, n);
    free(r);
    return ret;
}

/* One pipe is two fds: pipes are counted by fd, as every fd kind is, so a leak of one pipe a
 * second grows the count by two. */
int objects_count(const char *root, pid_t pid, struct objects_count *ret, struct error *err)
{
    struct objects_count c = {{0}};
    struct procfs_map *maps = NULL;
    struct fdent *ents = NULL;
    pid_t *tids = NULL;
    size_t n = 0, n_maps = 0;
    int r;

    error_clear(err);
    r = scan_fds(root, pid, &ents, &n, err);
    if (r < 0)
        goto out;
    for (size_t i = 0; i < n; i++)
        c.n[ents[i].type]++;
    r = list_tasks(root, pid, &tids, &n, err);
    if (r < 0)
        goto out;
    c.n[OBJECTS_THREAD] = n;
    r = read_maps(root, pid, &maps, &n_maps, err);
    if (r < 0)
        goto out;
    c.n[OBJECTS_MAPPING] = n_maps;
    *ret = c;
out:
    if (r < 0)
        error_fill(err, r);
    procfs_maps_free(maps, n_maps);
    free(tids);
    free(ents);
    return r;
}

/* Emits the repr of every fd of type t among ents, using r as the buffer; an fd closed or
 * reused since the scan (-ENOENT) is skipped. */
static int emit_fds(const char *root, pid_t pid, const struct fdent *ents, size_t n,
                    enum objects_type t, struct repr *r,
                    int (*emit)(const char *repr, void *userdata), void *userdata)
{
    int ret;

    for (size_t i = 0; i < n; i++) {
        if (ents[i].type != t)
            continue;
        ret = fd_repr(root, pid, &ents[i], r);
        if (ret == -ENOENT)
            continue;
        if (ret < 0)
            return ret;
        ret = emit(r->buf, userdata);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* The fds of pid (*ret_ents, *ret_n) and the reprs of those of type t emitted, with the repr
 * buffer left in *ret_r for more: the first step of a dump and of the scheduled list. The
 * caller frees both, on failure too. */
static int fds_emitted(const char *root, pid_t pid, enum objects_type t, struct fdent **ret_ents,
                       size_t *ret_n, struct repr **ret_r,
                       int (*emit)(const char *repr, void *userdata), void *userdata,
                       struct error *err)
{
    int ret = scan_fds(root, pid, ret_ents, ret_n, err);

    if (ret < 0)
        return ret;
    *ret_r = malloc(sizeof(**ret_r));
    if (!*ret_r)
        return -ENOMEM;
    return emit_fds(root, pid, *ret_ents, *ret_n, t, *ret_r, emit, userdata);
}

int objects_dump(const char *root, pid_t pid, enum objects_type t,
                 int (*emit)(const char *repr, void *userdata), void *userdata, struct error *err)
{
    struct fdent *ents = NULL;
    struct repr *r = NULL;
    size_t n = 0;
    int ret;

    error_clear(err);
    if ((unsigned)t >= OBJECTS_NTYPES)
        return error_set(err, -EINVAL, NULL);
    if (t == OBJECTS_SOCKET)
        return sockets_dump(root, pid, emit, userdata, err);
    if (t == OBJECTS_THREAD) {
        ret = dump_threads(root, pid, emit, userdata, err);
        goto out;
    }
    if (t == OBJECTS_MAPPING) {
        ret = dump_maps(root, pid, emit, userdata, err);
        goto out;
    }
    if (t == OBJECTS_PIPE) {
        ret = scan_fds(root, pid, &ents, &n, err);
        if (ret == 0)
            ret = dump_pipes(root, pid, ents, n, emit, userdata);
        goto out;
    }
    ret = fds_emitted(root, pid, t, &ents, &n, &r, emit, userdata, err);
out:
    if (ret < 0)
        error_fill(err, ret);
    free(r);
    free(ents);
    return ret;
}

static const struct fdent *find_fd(const struct fdent *ents, size_t n, int fd)
{
    size_t lo = 0, hi = n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ents[mid].fd == fd)
            return &ents[mid];
        if (ents[mid].fd < fd)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

struct watch {
    int fd;
    uint32_t events;
    uint64_t ino; /* of the file watched, which fd may no longer be */
};

static int cmp_watch(const void *a, const void *b)
{
    const struct watch *x = a, *y = b;

    return x->fd < y->fd ? -1 : x->fd > y->fd;
}

/* The fds an epoll set watches, in fd order, from its fdinfo lines
 * "tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x" (the kernel lists them in the
 * order of its tree, by file address). -EBADMSG when info is not an epoll fdinfo (the fd was
 * closed and reused). */
static int epoll_watches(const char *info, struct watch **ret, size_t *ret_n)
{
    size_t total = count_lines(info, "tfd:"), m = 0;
    struct watch *w;

    w = calloc(total ? total : 1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    for (const char *p = info; p && *p && m < total; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        uint64_t tfd, ev;
        const char *q, *ino, *eol;
        if (strncmp(p, "tfd:", 4) != 0)
            continue;
        q = p + 4;
        while (*q == ' ')
            q++;
        if (procfs_parse_u64(&q, 10, 10, &tfd) < 0 || tfd > INT_MAX)
            break;
        while (*q == ' ')
            q++;
        if (strncmp(q, "events:", 7) != 0)
            break;
        q += 7;
        while (*q == ' ')
            q++;
        if (procfs_parse_u64(&q, 16, 8, &ev) < 0)
            break;
        ino = strstr(q, " ino:");
        eol = strchr(q, '\n');
        if (ino && (!eol || ino < eol)) {
            ino += 5;
            if (procfs_parse_u64(&ino, 16, 16, &w[m].ino) < 0)
                w[m].ino = 0;
        }
        w[m].fd = (int)tfd;
        w[m++].events = (uint32_t)ev;
    }
    if (m < total) {
        free(w);
        return -EBADMSG;
    }
    if (m > 1)
        qsort(w, m, sizeof(*w), cmp_watch);
    *ret = w;
    *ret_n = m;
    return 0;
}

/* The watches of the epoll set at fd of pid (epoll_watches). 0: none to read, the fd was closed
 * or reused meanwhile; 1: *ret and *ret_n, free(*ret); negative: an error, err filled. */
static int read_epoll(const char *root, pid_t pid, int fd, struct watch **ret, size_t *ret_n,
                      struct error *err)
{
    char *info = NULL, file[32];
    int r = read_fdinfo(root, pid, fd, &info);

    if (r == -ENOENT)
        return 0;
    if (r < 0) {
        snprintf(file, sizeof(file), "fdinfo/%d", fd);
        return read_failed(err, r, root, pid, file);
    }
    r = epoll_watches(info, ret, ret_n);
    free(info);
    if (r == -EBADMSG)
        return 0;
    return r < 0 ? r : 1;
}

/* Calls fn with the watches of each epoll set among ents (those closed meanwhile passed over);
 * stops at the first error, read_epoll's (err filled) or fn's. */
static int each_epoll(const char *root, pid_t pid, const struct fdent *ents, size_t n,
                      int (*fn)(const struct watch *w, size_t m, int fd, void *arg), void *arg,
                      struct error *err)
{
    for (size_t i = 0; i < n; i++) {
        struct watch *w = NULL;
        size_t m = 0;
        int r;
        if (ents[i].type != OBJECTS_EPOLL)
            continue;
        r = read_epoll(root, pid, ents[i].fd, &w, &m, err);
        if (r == 0)
            continue;
        if (r < 0)
            return r;
        r = fn(w, m, ents[i].fd, arg);
        free(w);
        if (r < 0)
            return r;
    }
    return 0;
}

/* "<epoll fd=4 watches fd=8 (timerfd) events=EPOLLIN, ...>", in fd order. A watched fd not open
 * in pid any more (closed after a dup, or registered by another process) is shown "(closed)". */
static void epoll_sched_repr(const struct watch *w, size_t m, int fd, const struct fdent *ents,
                             size_t n, struct repr *r)
{
    repr_reset(r);
    repr_add(r, "<epoll fd=%d watches", fd);
    for (size_t i = 0; i < m; i++) {
        const struct fdent *e;
        if (i == EPOLL_SHOW_MAX) {
            repr_add(r, ", ... %zu more", m - i);
            break;
        }
        e = find_fd(ents, n, w[i].fd);
        repr_add(r, "%s fd=%d (%s) events=", i ? "," : "", w[i].fd,
                 e ? type_names[e->type] : "closed");
        add_epoll_events(r, w[i].events);
    }
    if (!m)
        repr_add(r, " nothing");
    repr_add(r, ">");
}

/* ROOT/PID/timers: blocks of "ID: %d", "signal: %d/%px", "notify: %s/%s.%d", "ClockID: %d".
 * The kernel shows no expiry time there. */
static int posix_timers(const char *root, pid_t pid, struct repr *r,
                        int (*emit)(const char *, void *), void *userdata, struct error *err)
{
    char *text = NULL;
    int ret;

    ret = read_proc_text(root, pid, "timers", &text);
    if (ret == -ENOENT) {
        ret = 0; /* a kernel without CONFIG_CHECKPOINT_RESTORE */
        goto out;
    }
    if (ret < 0) {
        read_failed(err, ret, root, pid, "timers");
        goto out;
    }
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        const char *sig, *notify, *clk, *slash;
        long long id, clock_id, signo;
        int kind_len, target_len;
        char *e;
        if (strncmp(p, "ID: ", 4) != 0)
            continue;
        errno = 0;
        id = strtoll(p + 4, &e, 10);
        if (errno || e == p + 4 || *e != '\n')
            continue;
        sig = field(e + 1, "signal:");
        notify = field(e + 1, "notify:");
        clk = field(e + 1, "ClockID:");
        if (!sig || !notify || !clk)
            continue;
        errno = 0;
        signo = strtoll(sig, &e, 10);
        if (errno || e == sig || *e != '/')
            continue;
        clock_id = strtoll(clk, &e, 10);
        if (errno || e == clk || (*e != '\n' && *e != '\0'))
            continue;
        /* notify: "signal/pid.42", "none/tid.43", "thread/..." */
        kind_len = (int)strcspn(notify, "/\n");
        slash = notify + kind_len;
        target_len = *slash == '/' ? (int)strcspn(slash + 1, "\n") : 0;
        if (kind_len > 16 || target_len > 32)
            continue;
        repr_reset(r);
        repr_add(r, "<posix timer id=%lld ", id);
        add_clock(r, clock_id);
        repr_add(r, " notify=%.*s", kind_len, notify);
        if (strncmp(notify, "signal/", 7) == 0)
            repr_add(r, "/%lld", signo);
        if (target_len)
            repr_add(r, " target=%.*s", target_len, slash + 1);
        ret = repr_emit(r, emit, userdata);
        if (ret < 0)
            goto out;
    }
    ret = 0;
out:
    free(text);
    return ret;
}

/* objects_scheduled's each_epoll callback: one record an epoll set. */
struct sched_emit {
    const struct fdent *ents;
    size_t n;
    struct repr *r;
    int (*emit)(const char *, void *);
    void *userdata;
};

static int emit_epoll(const struct watch *w, size_t m, int fd, void *arg)
{
    struct sched_emit *to = arg;

    epoll_sched_repr(w, m, fd, to->ents, to->n, to->r);
    return to->emit(to->r->buf, to->userdata);
}

int objects_scheduled(const char *root, pid_t pid, int (*emit)(const char *repr, void *userdata),
                      void *userdata, struct error *err)
{
    struct fdent *ents = NULL;
    struct repr *r = NULL;
    size_t n = 0;
    int ret;

    error_clear(err);
    ret = fds_emitted(root, pid, OBJECTS_TIMERFD, &ents, &n, &r, emit, userdata, err);
    if (ret < 0)
        goto out;
    ret = posix_timers(root, pid, r, emit, userdata, err);
    if (ret < 0)
        goto out;
    struct sched_emit to = {ents, n, r, emit, userdata};
    ret = each_epoll(root, pid, ents, n, emit_epoll, &to, err);
out:
    if (ret < 0)
        error_fill(err, ret);
    free(r);
    free(ents);
    return ret;
}

#define SELFPIPE_ASK_MAX 64 /* epoll-watched sockets whose peer is asked of sock_diag */

static int cmp_u64(const void *a, const void *b)
{
    const uint64_t *x = a, *y = b;

    return *x < *y ? -1 : *x > *y;
}

/* Whether ino is in the sorted v. */
static bool has_u64(const uint64_t *v, size_t n, uint64_t ino)
{
    return bsearch(&ino, v, n, sizeof(*v), cmp_u64) != NULL;
}

/* watched_inodes' growing list. */
struct inodes {
    uint64_t *v;
    size_t len, cap;
};

static int add_watched(const struct watch *w, size_t m, int fd, void *arg)
{
    struct inodes *in = arg;

    (void)fd;
    if (in->len + m > in->cap) {
        size_t want = (in->len + m) * 2;
        uint64_t *grown = realloc(in->v, want * sizeof(*in->v));
        if (!grown)
            return -ENOMEM;
        in->v = grown;
        in->cap = want;
    }
    for (size_t j = 0; j < m; j++)
        in->v[in->len++] = w[j].ino;
    return 0;
}

/* The inodes of every file an epoll set of pid watches, sorted. */
static int watched_inodes(const char *root, pid_t pid, const struct fdent *ents, size_t n,
                          uint64_t **ret, size_t *ret_n, struct error *err)
{
    struct inodes in = {0};
    int r = each_epoll(root, pid, ents, n, add_watched, &in, err);

    if (r < 0)
        goto out;
    if (in.len)
        qsort(in.v, in.len, sizeof(*in.v), cmp_u64);
    *ret = in.v;
    *ret_n = in.len;
    in.v = NULL;
out:
    free(in.v);
    return r;
}

int objects_selfpipes(const char *root, pid_t pid, struct objects_selfpipe *ret, size_t max,
                      size_t *ret_n, struct error *err)
{
    struct fdent *ents = NULL;
    uint64_t *watched = NULL;
    size_t n = 0, n_watched = 0, found = 0, asked = 0;
    int r;

    error_clear(err);
    r = scan_fds(root, pid, &ents, &n, err);
    if (r == 0)
        r = watched_inodes(root, pid, ents, n, &watched, &n_watched, err);
    if (r < 0)
        goto out;
    for (size_t i = 0; i < n && found < max && asked < SELFPIPE_ASK_MAX; i++) {
        uint64_t peer;
        if (ents[i].type != OBJECTS_SOCKET || !has_u64(watched, n_watched, ents[i].ino))
            continue;
        asked++;
        /* The write end: connected to this read end, open in pid, watched by no epoll set. */
        if (sockets_unix_peer(ents[i].ino, &peer) < 0 || has_u64(watched, n_watched, peer))
            continue;
        for (size_t j = 0; j < n; j++) {
            if (ents[j].type != OBJECTS_SOCKET || ents[j].ino != peer)
                continue;
            bool seen = false;
            for (size_t k = 0; k < found; k++)
                seen |= ret[k].ino == peer;
            if (!seen)
                ret[found++] = (struct objects_selfpipe){ents[j].fd, peer};
            break;
        }
    }
    *ret_n = found;
out:
    if (r < 0)
        error_fill(err, r);
    free(watched);
    free(ents);
    return r;
}
