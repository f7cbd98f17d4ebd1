/* Object-creating system calls of a target, traced with perf_event (see objsrc.h).
 *
 * Why one raw_syscalls:sys_exit event and not one syscalls:sys_exit_X per call: a thread then
 * needs one event per CPU instead of ~30, and a filter on the syscall number and return value
 * (PERF_EVENT_IOC_SET_FILTER, evaluated in the kernel) keeps every other system call out of the
 * ring. At syscall exit the user registers still hold the arguments (rdi, rsi, rdx, r10), and the
 * return value is in the raw record: that is all a call's result needs, except the two fds of
 * pipe and socketpair, which the kernel wrote to user memory: they are read from the stack copy
 * when the array is on the stack (the usual case), else with process_vm_readv.
 *
 * Events are per thread and per CPU, inherited, each CPU's events writing into one ring, for the
 * reasons sampler_perf.c gives. A thread created by a covered thread carries copies (and is
 * announced by a PERF_RECORD_FORK); /proc/PID/task is re-read about once a second for threads
 * that are not. A thread covered twice gives two identical records in a row on the same ring:
 * the second is dropped. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <libunwind.h>
#include <linux/perf_event.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include "objects/objsrc.h"
#include "os/error.h"
#include "os/perfring.h"
#include "os/procfs.h"

#define EVENTS_MAX 65536 /* event fds: threads x online CPUs */
#define THREADS_MAX 65536
#define OPEN_SCANS_MAX 8 /* re-reads of /proc/PID/task while opening */
#define RESCAN_NS 1000000000ull
#define RING_PAGES_MAX 128       /* 512 KiB a CPU: ~60 events of 8.5 KiB */
#define RING_PAGES_MIN 8         /* smallest tried when the mlock allowance refuses */
#define WAKEUP_BYTES (64u << 10) /* the kernel clamps it to the ring */
#define FORMAT_MAX 16384
#define FILTER_MAX 2048
#define EPOLL_BATCH 64
#define TP_DIR "events/raw_syscalls/sys_exit"
#define TP_PATH_MAX 128

static const char *const tracefs_roots[] = {"/sys/kernel/tracing", "/sys/kernel/debug/tracing"};

_Static_assert(OBJSRC_NREGS == PERFRING_NREGS, "register numbering");

enum how {
    HOW_FD,       /* the return value is the new fd */
    HOW_DUPFD,    /* same, of any kind */
    HOW_FCNTL,    /* a new fd of any kind if cmd is F_DUPFD* */
    HOW_PAIR_RDI, /* int[2] at the first argument */
    HOW_PAIR_R10, /* int[2] at the fourth argument (socketpair) */
    HOW_CLONE,    /* a thread if CLONE_THREAD is in the flags argument */
    HOW_CLONE3,   /* same, flags first in struct clone_args */
    HOW_MMAP,
};

struct call {
    long nr;
    const char *name;
    enum objects_type type;
    enum how how;
};

static const struct call calls[] = {
    {SYS_open, "open", OBJECTS_FILE, HOW_FD},
    {SYS_creat, "creat", OBJECTS_FILE, HOW_FD},
    {SYS_openat, "openat", OBJECTS_FILE, HOW_FD},
    {SYS_openat2, "openat2", OBJECTS_FILE, HOW_FD},
    {SYS_memfd_create, "memfd_create", OBJECTS_FILE, HOW_FD},
    {SYS_pipe, "pipe", OBJECTS_PIPE, HOW_PAIR_RDI},
    {SYS_pipe2, "pipe2", OBJECTS_PIPE, HOW_PAIR_RDI},
    {SYS_socket, "socket", OBJECTS_SOCKET, HOW_FD},
    {SYS_socketpair, "socketpair", OBJECTS_SOCKET, HOW_PAIR_R10},
    {SYS_accept, "accept", OBJECTS_SOCKET, HOW_FD},
    {SYS_accept4, "accept4", OBJECTS_SOCKET, HOW_FD},
    {SYS_eventfd, "eventfd", OBJECTS_EVENTFD, HOW_FD},
    {SYS_eventfd2, "eventfd2", OBJECTS_EVENTFD, HOW_FD},
    {SYS_timerfd_create, "timerfd_create", OBJECTS_TIMERFD, HOW_FD},
    {SYS_epoll_create, "epoll_create", OBJECTS_EPOLL, HOW_FD},
    {SYS_epoll_create1, "epoll_create1", OBJECTS_EPOLL, HOW_FD},
    {SYS_signalfd, "signalfd", OBJECTS_SIGNALFD, HOW_FD},
    {SYS_signalfd4, "signalfd4", OBJECTS_SIGNALFD, HOW_FD},
    {SYS_inotify_init, "inotify_init", OBJECTS_INOTIFY, HOW_FD},
    {SYS_inotify_init1, "inotify_init1", OBJECTS_INOTIFY, HOW_FD},
    {SYS_dup, "dup", OBJECTS_OTHER_FD, HOW_DUPFD},
    {SYS_dup2, "dup2", OBJECTS_OTHER_FD, HOW_DUPFD},
    {SYS_dup3, "dup3", OBJECTS_OTHER_FD, HOW_DUPFD},
    {SYS_fcntl, "fcntl", OBJECTS_OTHER_FD, HOW_FCNTL},
    {SYS_clone, "clone", OBJECTS_THREAD, HOW_CLONE},
    {SYS_clone3, "clone3", OBJECTS_THREAD, HOW_CLONE3},
    {SYS_mmap, "mmap", OBJECTS_MAPPING, HOW_MMAP},
};
#define NCALLS (sizeof(calls) / sizeof(calls[0]))

/* Where a field of the tracepoint's raw record is, from its format file. */
struct field {
    size_t offset, size;
};

/* A ring's previous sample, to drop a duplicate. */
struct last {
    pid_t tid;
    uint64_t time;
};

struct objsrc {
    pid_t pid;
    uint64_t tp_id;
    struct field f_id, f_ret;
    char filter[FILTER_MAX];
    struct perfring_cpus rc; /* the rings, one per online CPU */
    struct last *last;       /* one per ring */
    int *fds;                /* every event fd */
    size_t nfds, fds_cap;
    size_t nlive; /* of them, still in the epoll set */
    pid_t *known; /* covered threads, ascending */
    size_t nknown;
    size_t own_threads;
    int epfd;
    bool inherit_thread;
    bool exited;
    size_t ring_pages;
    uint64_t next_scan_ns;
    struct objsrc_stats stats;
};

/* What objsrc_poll hands each record with. */
struct poll_ctx {
    struct objsrc *s;
    int (*cb)(const struct objsrc_event *, void *);
    void *userdata;
};

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* At most max-1 bytes of path, NUL-terminated. -errno of open/read. */
static int read_small(const char *path, char *buf, size_t max)
{
    size_t n = 0;
    int fd, r = 0;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    while (n + 1 < max) {
        ssize_t k = read(fd, buf + n, max - 1 - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            r = -errno;
            goto out;
        }
        if (k == 0)
            break;
        n += (size_t)k;
    }
    buf[n] = '\0';
out:
    close(fd);
    return r;
}

/* The tracepoint's directory: the first tracefs that has it, mounting tracefs when none is
 * mounted and we may. */
static int find_tracepoint(char *dir, size_t len)
{
    char id[64], path[TP_PATH_MAX + 16];
    int r = -ENOENT;

    for (int attempt = 0; attempt < 2; attempt++) {
        for (size_t i = 0; i < sizeof(tracefs_roots) / sizeof(tracefs_roots[0]); i++) {
            int k;

            snprintf(dir, len, "%s/%s", tracefs_roots[i], TP_DIR);
            snprintf(path, sizeof(path), "%s/id", dir);
            k = read_small(path, id, sizeof(id));
            if (k == 0)
                return 0;
            if (k == -EACCES || k == -EPERM)
                r = k;
        }
        if (r != -ENOENT || attempt == 1)
            break;
        if (mount("nodev", tracefs_roots[0], "tracefs", 0, NULL) < 0)
            break;
    }
    return r;
}

static int parse_u64_text(const char *s, unsigned maxdigits, uint64_t *ret)
{
    const char *p = s;

    return procfs_parse_u64(&p, 10, maxdigits, ret);
}

/* "\tfield:long NAME;\toffset:8;\tsize:8;\tsigned:1;" lines of a format file. */
static int find_field(const char *format, const char *name, struct field *ret)
{
    size_t nlen = strlen(name);

    for (const char *line = format, *end; *line; line = end ? end + 1 : line + strlen(line)) {
        const char *f = strstr(line, "field:");
        const char *semi;
        uint64_t off, size;

        end = strchr(line, '\n');

        if (!f || (end && f > end) || !(semi = strchr(f, ';')) || (end && semi > end))
            continue;
        if ((size_t)(semi - f) < nlen + 1 || memcmp(semi - nlen, name, nlen) != 0 ||
            (semi[-(long)nlen - 1] != ' ' && semi[-(long)nlen - 1] != '\t'))
            continue;
        const char *o = strstr(semi, "offset:"), *z = strstr(semi, "size:");
        if (!o || !z || (end && (o > end || z > end)) || parse_u64_text(o + 7, 5, &off) < 0 ||
            parse_u64_text(z + 5, 2, &size) < 0)
            return -EBADMSG;
        if (size != 4 && size != 8)
            return -EBADMSG;
        ret->offset = (size_t)off;
        ret->size = (size_t)size;
        return 0;
    }
    return -EBADMSG;
}

static int read_tracepoint(struct objsrc *s, struct error *err)
{
    char dir[TP_PATH_MAX], path[TP_PATH_MAX + 16], idtext[64];
    char *format = NULL;
    int r;

    r = find_tracepoint(dir, sizeof(dir));
    if (r == -ENOENT)
        return error_set(err, r, "no tracefs has the %s tracepoint (looked under %s and %s)",
                         TP_DIR, tracefs_roots[0], tracefs_roots[1]);
    if (r < 0)
        return error_set(err, r, "cannot read the %s tracepoint in tracefs: %s", TP_DIR,
                         strerror(-r));
    snprintf(path, sizeof(path), "%s/id", dir);
    r = read_small(path, idtext, sizeof(idtext));
    if (r == 0 && parse_u64_text(idtext, 10, &s->tp_id) < 0)
        return error_set(err, -EBADMSG, "%s does not hold a tracepoint id", path);
    if (r < 0)
        return error_set(err, r, "cannot read %s: %s", path, strerror(-r));
    format = malloc(FORMAT_MAX);
    if (!format)
        return error_set(err, -ENOMEM, NULL);
    snprintf(path, sizeof(path), "%s/format", dir);
    r = read_small(path, format, FORMAT_MAX);
    if (r < 0)
        error_set(err, r, "cannot read %s: %s", path, strerror(-r));
    else if (find_field(format, "id", &s->f_id) < 0 || find_field(format, "ret", &s->f_ret) < 0)
        r = error_set(err, -EBADMSG, "%s lacks a 4- or 8-byte id or ret field", path);
    free(format);
    return r;
}

/* Only successful calls of the listed numbers: an fd or address >= 0, a thread id > 0 (the
 * child's own return from clone is 0). */
static int build_filter(struct objsrc *s)
{
    size_t len = 0;
    int n;

    for (int pass = 0; pass < 2; pass++) {
        bool first = true;

        n = snprintf(s->filter + len, sizeof(s->filter) - len, "%s((", pass ? " || " : "");
        if (n < 0 || (size_t)n >= sizeof(s->filter) - len)
            return -E2BIG;
        len += (size_t)n;
        for (size_t i = 0; i < NCALLS; i++) {
            bool thread = calls[i].how == HOW_CLONE || calls[i].how == HOW_CLONE3;

            if (thread != (pass == 1))
                continue;
            n = snprintf(s->filter + len, sizeof(s->filter) - len, "%sid == %ld",
                         first ? "" : " || ", calls[i].nr);
            if (n < 0 || (size_t)n >= sizeof(s->filter) - len)
                return -E2BIG;
            len += (size_t)n;
            first = false;
        }
        n = snprintf(s->filter + len, sizeof(s->filter) - len, ") && ret %s 0)", pass ? ">" : ">=");
        if (n < 0 || (size_t)n >= sizeof(s->filter) - len)
            return -E2BIG;
        len += (size_t)n;
    }
    return 0;
}

static void fill_attr(struct perf_event_attr *a, const struct objsrc *s)
{
    memset(a, 0, sizeof(*a));
    a->size = sizeof(*a);
    a->type = PERF_TYPE_TRACEPOINT;
    a->config = s->tp_id;
    a->sample_period = 1;
    a->sample_type = PERF_SAMPLE_TID | PERF_SAMPLE_TIME | PERF_SAMPLE_RAW | PERF_SAMPLE_REGS_USER |
                     PERF_SAMPLE_STACK_USER;
    a->sample_regs_user = PERFRING_REGS_MASK;
    a->sample_stack_user = OBJSRC_STACK_BYTES;
    a->disabled = 1; /* enabled once its output goes to the ring */
    a->inherit = 1;  /* inherit_thread too: forked processes are not ours */
    a->task = 1;     /* FORK records: which new threads are covered */
    a->use_clockid = 1;
    a->clockid = CLOCK_MONOTONIC;
    a->watermark = 1;
    a->wakeup_watermark = WAKEUP_BYTES;
}

static int event_open(struct objsrc *s, pid_t tid, int cpu, int *ret_fd)
{
    struct perf_event_attr a;
    int fd, r;

    fill_attr(&a, s);
    r = perfring_event_open_inherit(&a, tid, cpu, &s->inherit_thread, &fd);
    if (r < 0)
        return r;
    if (ioctl(fd, PERF_EVENT_IOC_SET_FILTER, s->filter) < 0) {
        r = -errno;
        close(fd);
        return r;
    }
    *ret_fd = fd;
    return 0;
}

static int ring_map(struct objsrc *s, size_t ci, int fd)
{
    for (;;) {
        int r = perfring_map(&s->rc.rings[ci], fd, s->ring_pages);

        if (!perfring_shrink(r, &s->ring_pages, RING_PAGES_MIN))
            return r;
    }
}

static int fds_add(struct objsrc *s, int fd)
{
    if (s->nfds == s->fds_cap) {
        size_t cap = s->fds_cap ? s->fds_cap * 2 : 64;
        int *n = realloc(s->fds, cap * sizeof(*n));

        if (!n)
            return -ENOMEM;
        s->fds = n;
        s->fds_cap = cap;
    }
    s->fds[s->nfds++] = fd;
    return 0;
}

static bool known_find(const struct objsrc *s, pid_t tid, size_t *ret_pos)
{
    size_t lo = 0, hi = s->nknown;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (s->known[mid] < tid)
            lo = mid + 1;
        else
            hi = mid;
    }
    *ret_pos = lo;
    return lo < s->nknown && s->known[lo] == tid;
}

static void known_add(struct objsrc *s, pid_t tid)
{
    size_t pos;

    if (known_find(s, tid, &pos) || s->nknown == THREADS_MAX)
        return;
    memmove(&s->known[pos + 1], &s->known[pos], (s->nknown - pos) * sizeof(*s->known));
    s->known[pos] = tid;
    s->nknown++;
}

/* Opens tid's events on every CPU, points them at the rings and starts them. -ESRCH: the
 * thread has gone. */
static int open_thread(struct objsrc *s, pid_t tid, struct error *err)
{
    size_t base = s->nfds, k;
    int r = 0;

    if (s->nfds + s->rc.n > EVENTS_MAX)
        return error_set(err, -EMFILE,
                         "tracing it needs more than %d event descriptors (one per thread and "
                         "CPU, %zu CPUs)",
                         EVENTS_MAX, s->rc.n);
    for (size_t i = 0; i < s->rc.n; i++) {
        int fd = -1;

        r = event_open(s, tid, s->rc.cpus[i], &fd);
        if (r == 0 && (r = fds_add(s, fd)) < 0)
            close(fd);
        if (r < 0)
            goto out;
    }
    for (size_t i = 0; i < s->rc.n; i++) {
        int fd = s->fds[base + i];

        if (s->rc.rings[i].fd < 0)
            r = ring_map(s, i, fd);
        else if (ioctl(fd, PERF_EVENT_IOC_SET_OUTPUT, s->rc.rings[i].fd) < 0)
            r = -errno;
        if (r < 0)
            goto out;
    }
    for (size_t i = 0; i < s->rc.n; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = s->fds[base + i]};

        if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->fds[base + i], &ev) < 0) {
            r = -errno;
            goto out;
        }
        s->nlive++;
    }
    for (size_t i = 0; i < s->rc.n; i++)
        ioctl(s->fds[base + i], PERF_EVENT_IOC_ENABLE, 0);
    known_add(s, tid);
    s->own_threads++;
out:
    if (r < 0) {
        /* Never enabled. A ring's owner stays open: other threads' events write there. */
        k = base;
        for (size_t i = base; i < s->nfds; i++) {
            if (perfring_cpus_owns(&s->rc, s->fds[i]))
                s->fds[k++] = s->fds[i];
            else
                close(s->fds[i]);
        }
        s->nfds = k;
    }
    return r;
}

/* Opens events for every listed thread not covered, and forgets threads no longer listed. */
static int scan_threads(struct objsrc *s, size_t *ret_new, struct error *err)
{
    pid_t *tids = NULL;
    size_t n = 0, opened = 0, k = 0;
    int r = procfs_list_tasks(PROCFS_ROOT, s->pid, &tids, &n);

    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        size_t pos;

        if (known_find(s, tids[i], &pos))
            continue;
        r = open_thread(s, tids[i], err);
        if (r == -ESRCH) {
            r = 0;
            continue;
        }
        if (r == -EACCES || r == -EPERM)
            error_set(err, r, "perf_event_open of the %s tracepoint for thread %d was refused",
                      TP_DIR, (int)tids[i]);
        else if (r == -EMFILE || r == -ENFILE)
            error_fill(err, r);
        else if (r < 0 && r != -ENOMEM)
            error_set(err, r, "cannot trace thread %d: %s", (int)tids[i], strerror(-r));
        if (r < 0)
            goto out;
        opened++;
    }
    /* Both ascending: keep the known threads that are still listed. */
    for (size_t i = 0, j = 0; i < s->nknown; i++) {
        while (j < n && tids[j] < s->known[i])
            j++;
        if (j < n && tids[j] == s->known[i])
            s->known[k++] = s->known[i];
    }
    s->nknown = k;
    *ret_new = opened;
out:
    free(tids);
    return r;
}

/* scan_threads as perfring_scan_settle calls it. */
struct scan_ctx {
    struct objsrc *s;
    struct error *err;
};

static int scan_pass(void *userdata, size_t *ret_new)
{
    struct scan_ctx *c = userdata;

    return scan_threads(c->s, ret_new, c->err);
}

void objsrc_close(struct objsrc *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nfds; i++)
        if (!perfring_cpus_owns(&s->rc, s->fds[i]))
            close(s->fds[i]);
    perfring_cpus_destroy(&s->rc);
    if (s->epfd >= 0)
        close(s->epfd);
    free(s->last);
    free(s->fds);
    free(s->known);
    free(s);
}

int objsrc_open(pid_t pid, struct objsrc **ret, struct error *err)
{
    struct objsrc *s;
    int r;

    error_clear(err);
    if (pid <= 0)
        return error_set(err, -EINVAL, NULL);
    s = calloc(1, sizeof(*s));
    if (!s)
        return error_set(err, -ENOMEM, NULL);
    s->pid = pid;
    s->epfd = -1;
    s->inherit_thread = true;
    s->ring_pages = RING_PAGES_MAX;
    r = read_tracepoint(s, err);
    if (r == 0)
        r = build_filter(s);
    if (r == 0)
        r = perfring_cpus_init(&s->rc);
    if (r < 0)
        goto out;
    s->last = calloc(s->rc.n, sizeof(*s->last));
    s->known = calloc(THREADS_MAX, sizeof(*s->known));
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!s->last || !s->known || s->epfd < 0) {
        r = s->epfd < 0 && s->last && s->known ? -errno : -ENOMEM;
        goto out;
    }
    r = perfring_scan_settle(scan_pass, &(struct scan_ctx){s, err}, OPEN_SCANS_MAX);
    if (r < 0)
        goto out;
    s->next_scan_ns = now_ns() + RESCAN_NS;
out:
    if (r < 0) {
        objsrc_close(s);
        return error_fill(err, r);
    }
    *ret = s;
    return 0;
}

int objsrc_fd(const struct objsrc *s)
{
    return s->epfd;
}

void objsrc_stats(const struct objsrc *s, struct objsrc_stats *ret)
{
    *ret = s->stats;
    ret->threads = s->own_threads;
}

static bool raw_field(const unsigned char *raw, size_t len, const struct field *f, int64_t *ret)
{
    if (f->offset > len || f->size > len - f->offset)
        return false;
    if (f->size == 8) {
        memcpy(ret, raw + f->offset, 8);
    } else {
        int32_t v;

        memcpy(&v, raw + f->offset, 4);
        *ret = v;
    }
    return true;
}

/* len bytes of the target at addr: from the event's stack copy when it holds them (what the
 * memory was at the call), else from the live process. */
static bool read_user(const struct objsrc *s, const struct objsrc_event *ev, uint64_t addr,
                      void *buf, size_t len)
{
    struct iovec local = {buf, len}, remote = {(void *)(uintptr_t)addr, len};

    if (ev->stack && addr >= ev->stack_addr && ev->stack_len >= len &&
        addr - ev->stack_addr <= ev->stack_len - len) {
        memcpy(buf, ev->stack + (addr - ev->stack_addr), len);
        return true;
    }
    return process_vm_readv(s->pid, &local, 1, &remote, 1, 0) == (ssize_t)len;
}

static const struct call *call_of(int64_t nr)
{
    for (size_t i = 0; i < NCALLS; i++)
        if (calls[i].nr == nr)
            return &calls[i];
    return NULL;
}

/* Fills what the call made. False when it made nothing of ours (an fcntl that is not a dup, a
 * clone of a process). */
static bool describe(const struct objsrc *s, const struct call *c, int64_t ret,
                     struct objsrc_event *ev)
{
    int pair[2];
    uint64_t flags;

    ev->syscall = c->name;
    ev->type = c->type;
    ev->fds[0] = ev->fds[1] = -1;
    switch (c->how) {
    case HOW_FCNTL:
        /* cmd is an unsigned int: the register's upper half is not part of it */
        if ((uint32_t)ev->regs[UNW_X86_64_RSI] != F_DUPFD &&
            (uint32_t)ev->regs[UNW_X86_64_RSI] != F_DUPFD_CLOEXEC)
            return false;
        /* fallthrough */
    case HOW_DUPFD:
        ev->any_fd_type = true;
        /* fallthrough */
    case HOW_FD:
        if (ret > INT32_MAX)
            return false;
        ev->fds[0] = (int)ret;
        return true;
    case HOW_PAIR_RDI:
    case HOW_PAIR_R10:
        if (read_user(s, ev, ev->regs[c->how == HOW_PAIR_RDI ? UNW_X86_64_RDI : UNW_X86_64_R10],
                      pair, sizeof(pair)) &&
            pair[0] >= 0 && pair[1] >= 0) {
            ev->fds[0] = pair[0];
            ev->fds[1] = pair[1];
        }
        return true;
    case HOW_CLONE:
    case HOW_CLONE3:
        if (ret > INT32_MAX)
            return false;
        if (c->how == HOW_CLONE)
            flags = ev->regs[UNW_X86_64_RDI];
        else if (!read_user(s, ev, ev->regs[UNW_X86_64_RDI], &flags, sizeof(flags)))
            flags = CLONE_THREAD; /* unreadable: /proc will say whether it is a thread */
        if (!(flags & CLONE_THREAD))
            return false;
        ev->new_tid = (pid_t)ret;
        return true;
    case HOW_MMAP:
        ev->addr = (uint64_t)ret;
        ev->len = ev->regs[UNW_X86_64_RSI];
        return true;
    }
    return false;
}

static int on_sample(struct objsrc *s, struct last *last, const unsigned char *rec, size_t size,
                     int (*cb)(const struct objsrc_event *, void *), void *userdata)
{
    struct perfring_rd d;
    struct objsrc_event ev = {0};
    uint64_t time, abi;
    uint32_t pid, tid, raw_size;
    const unsigned char *raw;
    const struct call *c;
    int64_t nr, ret;

    perfring_rd_init(&d, rec, size);
    if (!perfring_rd_u32(&d, &pid) || !perfring_rd_u32(&d, &tid) || !perfring_rd_u64(&d, &time) ||
        !perfring_rd_u32(&d, &raw_size) || !perfring_rd_bytes(&d, raw_size, &raw))
        goto bad;
    /* The raw field is padded so that it and its size end on 8 bytes. */
    if ((4 + raw_size) % 8 != 0)
        goto bad;
    if (!perfring_rd_u64(&d, &abi))
        goto bad;
    if ((pid_t)pid != s->pid)
        return 0; /* a forked child's copy, where inherit_thread is unknown */
    if ((pid_t)tid == last->tid && time == last->time)
        return 0; /* the same call seen by a thread's two sets of events */
    last->tid = (pid_t)tid;
    last->time = time;
    if (abi != PERF_SAMPLE_REGS_ABI_64)
        goto bad; /* a 32-bit process: other numbers, other registers */
    if (!perfring_rd_regs(&d, ev.regs) || !perfring_rd_stack(&d, &ev.stack, &ev.stack_len))
        goto bad;
    if (!raw_field(raw, raw_size, &s->f_id, &nr) || !raw_field(raw, raw_size, &s->f_ret, &ret))
        goto bad;
    c = call_of(nr);
    if (!c || ret < 0)
        return 0;
    ev.tid = (pid_t)tid;
    ev.time_ns = time;
    ev.stack_addr = ev.regs[UNW_X86_64_RSP];
    if (!describe(s, c, ret, &ev))
        return 0;
    s->stats.events++;
    return cb(&ev, userdata);
bad:
    s->stats.lost++;
    return 0;
}

/* FORK: pid, ppid, tid, ptid, time. A thread made by a covered one carries copies. */
static void on_fork(struct objsrc *s, const unsigned char *rec, size_t size)
{
    struct perfring_rd d;
    uint32_t pid, ppid, tid;

    perfring_rd_init(&d, rec, size);
    if (!perfring_rd_u32(&d, &pid) || !perfring_rd_u32(&d, &ppid) || !perfring_rd_u32(&d, &tid)) {
        s->stats.lost++;
        return;
    }
    if ((pid_t)pid == s->pid)
        known_add(s, (pid_t)tid);
}

static int on_record(void *arg, size_t ci, const unsigned char *rec, size_t size)
{
    const struct poll_ctx *c = arg;
    struct objsrc *s = c->s;
    struct perf_event_header h;

    memcpy(&h, rec, sizeof(h));
    switch (h.type) {
    case PERF_RECORD_SAMPLE:
        return on_sample(s, &s->last[ci], rec, size, c->cb, c->userdata);
    case PERF_RECORD_LOST:
        s->stats.lost += perfring_lost(rec, size);
        break;
    case PERF_RECORD_FORK:
        on_fork(s, rec, size);
        break;
    default:
        break; /* EXIT, THROTTLE: nothing to do */
    }
    return 0;
}

int objsrc_poll(struct objsrc *s, int timeout_ms,
                int (*cb)(const struct objsrc_event *ev, void *userdata), void *userdata,
                struct error *err)
{
    struct epoll_event evs[EPOLL_BATCH];
    struct poll_ctx ctx = {s, cb, userdata};
    int r, n;

    error_clear(err);
    if (!s->exited) {
        n = epoll_wait(s->epfd, evs, EPOLL_BATCH, timeout_ms);
        if (n < 0 && errno != EINTR)
            return error_set(err, -errno, NULL);
        /* An event whose thread exited polls HUP for ever: stop watching it (its ring, if it
         * owns one, is still woken through the other events writing there). */
        for (int i = 0; i < n; i++)
            if (evs[i].events & (EPOLLHUP | EPOLLERR) &&
                epoll_ctl(s->epfd, EPOLL_CTL_DEL, evs[i].data.fd, NULL) == 0 && s->nlive > 0)
                s->nlive--;
        if (s->nlive == 0)
            s->exited = true;
    }
    r = perfring_cpus_drain(&s->rc, on_record, &ctx, &s->stats.lost);
    if (r < 0)
        return error_set(err, r, NULL);
    if (!s->exited && now_ns() >= s->next_scan_ns) {
        size_t opened;

        r = scan_threads(s, &opened, err);
        if (r == -ESRCH || (r == 0 && procfs_process_gone(PROCFS_ROOT, s->pid)))
            s->exited = true;
        else if (r < 0 && r != -EMFILE)
            return error_fill(err, r);
        /* Past the limit, the threads already traced go on. */
        error_clear(err);
        s->next_scan_ns = now_ns() + RESCAN_NS;
    }
    if (s->exited) {
        r = perfring_cpus_drain(&s->rc, on_record, &ctx, &s->stats.lost);
        return error_set(err, r < 0 ? r : -ESRCH, NULL);
    }
    return 0;
}
