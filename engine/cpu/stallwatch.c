/* The stall watch (see stallwatch.h): per watched thread, when it was last seen waiting and
 * whether it is stalled now; the thread list read again once a second when the watch follows
 * every thread or a name; events queued until the caller takes them. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include "cpu/offcpu.h"
#include "cpu/stallwatch.h"

#define QUEUE_MAX (4 * STALLWATCH_THREADS_MAX)

enum mode { MODE_MAIN, MODE_ALL, MODE_NAMED };

struct watched {
    pid_t tid;
    char name[PROCFS_COMM_MAX];
    bool armed;   /* seen waiting once: it has a wait to come back to */
    bool loop;    /* seen in epoll_wait, poll or select */
    bool stalled; /* since last_wait_ns */
    bool listed;  /* still there at the last listing */
    uint64_t last_wait_ns;
    long syscall;
};

struct stallwatch {
    char root[PATH_MAX];
    pid_t pid;
    enum mode mode;
    char name[PROCFS_COMM_MAX];
    uint64_t stall_ns, gil_lo, gil_hi;
    uint64_t listed_ns; /* 0: never listed */
    struct watched *t;  /* ascending tid */
    size_t n;
    struct stallwatch_event queue[QUEUE_MAX];
    size_t nqueue;
};

static const struct {
    long nr;
    const char *name;
} names[] = {
    {SYS_read, "read"},
    {SYS_write, "write"},
    {SYS_open, "open"},
    {SYS_openat, "openat"},
    {SYS_close, "close"},
    {SYS_poll, "poll"},
    {SYS_ppoll, "ppoll"},
    {SYS_select, "select"},
    {SYS_pselect6, "pselect6"},
    {SYS_epoll_wait, "epoll_wait"},
    {SYS_epoll_pwait, "epoll_pwait"},
#ifdef SYS_epoll_pwait2
    {SYS_epoll_pwait2, "epoll_pwait2"},
#endif
    {SYS_futex, "futex"},
    {SYS_nanosleep, "nanosleep"},
    {SYS_clock_nanosleep, "clock_nanosleep"},
    {SYS_readv, "readv"},
    {SYS_writev, "writev"},
    {SYS_pread64, "pread64"},
    {SYS_pwrite64, "pwrite64"},
    {SYS_recvfrom, "recvfrom"},
    {SYS_recvmsg, "recvmsg"},
    {SYS_sendto, "sendto"},
    {SYS_sendmsg, "sendmsg"},
    {SYS_connect, "connect"},
    {SYS_accept, "accept"},
    {SYS_accept4, "accept4"},
    {SYS_fsync, "fsync"},
    {SYS_fdatasync, "fdatasync"},
    {SYS_flock, "flock"},
    {SYS_fcntl, "fcntl"},
    {SYS_wait4, "wait4"},
    {SYS_waitid, "waitid"},
    {SYS_ioctl, "ioctl"},
};

const char *stallwatch_syscall_name(long nr)
{
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (names[i].nr == nr)
            return names[i].name;
    return NULL;
}

static bool loop_wait(long nr)
{
    return nr == SYS_epoll_wait || nr == SYS_epoll_pwait || nr == SYS_poll || nr == SYS_ppoll ||
#ifdef SYS_epoll_pwait2
           nr == SYS_epoll_pwait2 ||
#endif
           nr == SYS_select || nr == SYS_pselect6;
}

static bool waiting(const struct stallwatch *w, const struct watched *t,
                    const struct offcpu_syscall *sc)
{
    if (loop_wait(sc->nr))
        return true;
    if (t->loop)
        return false;
    if (sc->nr == SYS_futex)
        return !(sc->args[0] >= w->gil_lo && sc->args[0] < w->gil_hi);
    return sc->nr == SYS_nanosleep || sc->nr == SYS_clock_nanosleep;
}

static void queue(struct stallwatch *w, enum stallwatch_kind kind, const struct watched *t,
                  uint64_t now, bool gone)
{
    if (w->nqueue == QUEUE_MAX)
        return; /* a caller that never takes its events: the oldest are kept */
    w->queue[w->nqueue++] = (struct stallwatch_event){
        .kind = kind,
        .tid = t->tid,
        .since_ns = t->last_wait_ns,
        .until_ns = kind == STALLWATCH_ENDED ? now : 0,
        .syscall = t->syscall,
        .gone = gone,
    };
    snprintf(w->queue[w->nqueue - 1].name, PROCFS_COMM_MAX, "%s", t->name);
}

static struct watched *find(struct stallwatch *w, pid_t tid)
{
    for (size_t i = 0; i < w->n; i++)
        if (w->t[i].tid == tid)
            return &w->t[i];
    return NULL;
}

/* The threads to watch now; those gone end their stalls. */
static int relist(struct stallwatch *w, uint64_t now)
{
    struct watched *next;
    pid_t *tids = NULL;
    size_t ntids = 0, n = 0;
    int r = procfs_list_tasks(w->root, w->pid, &tids, &ntids);

    if (r < 0)
        return r;
    next =
        calloc(ntids < STALLWATCH_THREADS_MAX ? ntids + 1 : STALLWATCH_THREADS_MAX, sizeof(*next));
    if (!next) {
        free(tids);
        return -ENOMEM;
    }
    for (size_t i = 0; i < ntids && n < STALLWATCH_THREADS_MAX; i++) {
        struct watched *old = find(w, tids[i]);
        char comm[PROCFS_COMM_MAX] = "";

        /* Gone since the listing, or (renamed) no longer one of those watched. */
        if ((!old || w->mode == MODE_NAMED) &&
            (procfs_read_comm(w->root, w->pid, tids[i], comm) < 0 ||
             (w->mode == MODE_NAMED && strcmp(comm, w->name) != 0)))
            continue;
        if (old) {
            next[n] = *old;
            old->listed = true;
        } else {
            next[n] = (struct watched){.tid = tids[i], .syscall = -1};
            snprintf(next[n].name, sizeof(next[n].name), "%s", comm);
        }
        next[n++].listed = false;
    }
    for (size_t i = 0; i < w->n; i++)
        if (!w->t[i].listed && w->t[i].stalled)
            queue(w, STALLWATCH_ENDED, &w->t[i], now, true);
    free(tids);
    free(w->t);
    w->t = next;
    w->n = n;
    w->listed_ns = now;
    return 0;
}

int stallwatch_new(const char *root, pid_t pid, const char *thread, uint64_t stall_ns,
                   uint64_t gil_lo, uint64_t gil_hi, struct stallwatch **ret, struct error *err)
{
    struct stallwatch *w;

    error_clear(err);
    if (!root || pid <= 0 || !thread || !*thread || stall_ns == 0)
        return error_set(err, -EINVAL, NULL);
    if (strlen(thread) >= PROCFS_COMM_MAX)
        return error_set(err, -EINVAL, "a thread name has at most %d characters",
                         PROCFS_COMM_MAX - 1);
    if (strlen(root) >= sizeof(w->root))
        return error_set(err, -EINVAL, NULL);
    w = calloc(1, sizeof(*w));
    if (!w)
        return error_set(err, -ENOMEM, NULL);
    snprintf(w->root, sizeof(w->root), "%s", root);
    snprintf(w->name, sizeof(w->name), "%s", thread);
    w->pid = pid;
    w->stall_ns = stall_ns;
    w->gil_lo = gil_lo;
    w->gil_hi = gil_hi;
    w->mode = strcmp(thread, STALLWATCH_MAIN) == 0  ? MODE_MAIN
              : strcmp(thread, STALLWATCH_ALL) == 0 ? MODE_ALL
                                                    : MODE_NAMED;
    if (w->mode == MODE_MAIN) {
        w->t = calloc(1, sizeof(*w->t));
        if (!w->t) {
            free(w);
            return error_set(err, -ENOMEM, NULL);
        }
        w->n = 1;
        w->t[0] = (struct watched){.tid = pid, .syscall = -1};
        if (procfs_read_comm(root, pid, pid, w->t[0].name) < 0)
            snprintf(w->t[0].name, sizeof(w->t[0].name), "%s", STALLWATCH_MAIN);
    }
    *ret = w;
    return 0;
}

void stallwatch_free(struct stallwatch *w)
{
    if (!w)
        return;
    free(w->t);
    free(w);
}

/* Every open stall ends: the process has gone. */
static int all_gone(struct stallwatch *w, uint64_t now)
{
    for (size_t i = 0; i < w->n; i++)
        if (w->t[i].stalled) {
            w->t[i].stalled = false;
            queue(w, STALLWATCH_ENDED, &w->t[i], now, true);
        }
    return -ESRCH;
}

/* -ESRCH when the thread has gone. */
static int look(struct stallwatch *w, struct watched *t, uint64_t now)
{
    struct offcpu_syscall sc;
    int r = offcpu_read_syscall(w->root, w->pid, t->tid, &sc);

    if (r == -ESRCH || r == -ENOENT) {
        if (t->stalled)
            queue(w, STALLWATCH_ENDED, t, now, true);
        t->stalled = t->armed = false;
        return -ESRCH;
    }
    if (r == 0 && loop_wait(sc.nr))
        t->loop = true;
    if (r == 0 && waiting(w, t, &sc)) {
        if (t->stalled)
            queue(w, STALLWATCH_ENDED, t, now, false);
        t->stalled = false;
        t->armed = true;
        t->last_wait_ns = now;
        return 0;
    }
    t->syscall = r == 0 ? sc.nr : -1;
    if (t->armed && !t->stalled && now - t->last_wait_ns >= w->stall_ns) {
        t->stalled = true;
        queue(w, STALLWATCH_BEGUN, t, now, false);
    }
    return 0;
}

int stallwatch_check(struct stallwatch *w, uint64_t now_ns, struct stallwatch_event *out,
                     size_t max, size_t *ret_n)
{
    int r = 0;

    if (w->mode != MODE_MAIN && (!w->listed_ns || now_ns - w->listed_ns >= STALLWATCH_REFRESH_NS))
        r = relist(w, now_ns);
    if (r == -ESRCH || r == -ENOENT)
        r = all_gone(w, now_ns);
    /* The main thread gone is the process gone. */
    for (size_t i = 0; r == 0 && i < w->n; i++)
        if (look(w, &w->t[i], now_ns) < 0 && w->mode == MODE_MAIN)
            r = -ESRCH;
    size_t n = w->nqueue < max ? w->nqueue : max;
    memcpy(out, w->queue, n * sizeof(*out));
    memmove(w->queue, w->queue + n, (w->nqueue - n) * sizeof(*out));
    w->nqueue -= n;
    *ret_n = n;
    return r;
}
