/* The ptrace fallback of the sampler (see sampler.h): at each tick of a timerfd, the threads of
 * the target that are running or runnable (state 'R' in /proc) are captured together with
 * snapshot_capture (stopped for the copy, then released) and each gives one sample, its stack
 * cut to SAMPLER_STACK_BYTES from sp as perf's copy is. Not a tracer that stays attached: the
 * target is traced only during each capture, by snapshot.c's short-lived helper process.
 *
 * Only 'R' threads, because this is an on-CPU profile: a thread's chance of being 'R' at a
 * random tick is its share of CPU time, as with cpu-clock. Two differences from perf remain:
 * 'R' includes runnable threads waiting for a CPU (an overloaded machine is over-counted),
 * and the state is read just before the capture, not at it. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libunwind.h>
#include <sys/timerfd.h>
#include "os/procfs.h"
#include "cpu/sampler_ops.h"
#include "os/snapshot.h"

#define MAPS_EVERY_NS 1000000000ull /* the mappings are read again once a second */

struct ptr {
    int tfd;
    struct snapshot *snap;
    struct snapshot_range *ranges;
    size_t nranges;
    uint64_t maps_hash; /* of the executable mappings: detects a change */
    uint64_t maps_read_ns;
    pid_t *running;
    size_t running_cap;
    bool exited;
};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static int range_cmp(const void *a, const void *b)
{
    const struct snapshot_range *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Reads the target's mappings into ranges; *ret_changed when the executable ones differ from
 * the last read (not on the first). */
static int maps_read(struct sampler *s, struct ptr *t, bool *ret_changed)
{
    struct procfs_map *maps = NULL;
    size_t n = 0;
    int r = procfs_read_maps(PROCFS_ROOT, s->pid, &maps, &n);
    if (r < 0)
        return r;
    struct snapshot_range *rg = calloc(n ? n : 1, sizeof(*rg));
    if (!rg) {
        r = -ENOMEM;
        goto out;
    }
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) {
        rg[i] = (struct snapshot_range){maps[i].start, maps[i].end};
        if (maps[i].perms[2] != 'x')
            continue;
        h = fnv(h, &maps[i].start, sizeof(maps[i].start));
        h = fnv(h, &maps[i].end, sizeof(maps[i].end));
        h = fnv(h, &maps[i].offset, sizeof(maps[i].offset));
        h = fnv(h, &maps[i].inode, sizeof(maps[i].inode));
        h = fnv(h, maps[i].path, strlen(maps[i].path));
    }
    if (n > 1)
        qsort(rg, n, sizeof(*rg), range_cmp);
    *ret_changed = t->maps_read_ns != 0 && h != t->maps_hash;
    free(t->ranges);
    t->ranges = rg;
    t->nranges = n;
    t->maps_hash = h;
    t->maps_read_ns = sampler_now_ns();
out:
    procfs_maps_free(maps, n);
    return r;
}

static void ptr_free(struct ptr *t)
{
    if (!t)
        return;
    if (t->tfd >= 0)
        close(t->tfd);
    snapshot_free(t->snap);
    free(t->ranges);
    free(t->running);
    free(t);
}

/* Lists the threads, keeps the running ones in t->running. *ret_n = 0 and
 * t->exited when only a zombie leader (or nothing) is left. */
static int list_running(struct sampler *s, struct ptr *t, size_t *ret_n)
{
    pid_t *tids = NULL;
    size_t n = 0, nrun = 0, alive = 0;
    int r = procfs_list_tasks(PROCFS_ROOT, s->pid, &tids, &n);
    if (r == -ESRCH) {
        t->exited = true;
        *ret_n = 0;
        return 0;
    }
    if (r < 0)
        return r;
    if (n > t->running_cap) {
        pid_t *p = realloc(t->running, n * sizeof(*p));
        if (!p) {
            r = -ENOMEM;
            goto out;
        }
        t->running = p;
        t->running_cap = n;
    }
    for (size_t i = 0; i < s->nthreads; i++)
        s->threads[i].exited = true;
    for (size_t i = 0; i < n; i++) {
        char st;
        if (procfs_read_state(PROCFS_ROOT, s->pid, tids[i], &st) < 0 || st == 'Z' || st == 'X')
            continue;
        alive++;
        struct sampler_thread *th = sampler_thread_find(s, tids[i]);
        if (th)
            th->exited = false;
        else
            sampler_thread_add(s, tids[i], &th); /* past the table's limit: not counted */
        if (st == 'R')
            t->running[nrun++] = tids[i];
    }
    sampler_threads_prune(s);
    if (alive == 0)
        t->exited = true;
    *ret_n = nrun;
out:
    free(tids);
    return r;
}

static int ptr_open(struct sampler *s)
{
    int r;
    bool changed;
    struct ptr *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->tfd = -1;
    r = snapshot_new(&t->snap);
    if (r < 0)
        goto out;
    r = maps_read(s, t, &changed);
    if (r < 0)
        goto out;
    /* One capture of the leader now, so that a target we may not trace fails here (-EPERM)
     * rather than at every tick. */
    r = snapshot_capture(t->snap, s->pid, &s->pid, 1, t->ranges, t->nranges);
    if (r == 0 && t->snap->threads[0].err == -EPERM)
        r = -EPERM;
    if (r < 0)
        goto out;
    t->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (t->tfd < 0) {
        r = -errno;
        goto out;
    }
    long ns = 1000000000L / (long)s->freq;
    struct itimerspec its = {{ns / 1000000000L, ns % 1000000000L},
                             {ns / 1000000000L, ns % 1000000000L}};
    if (timerfd_settime(t->tfd, 0, &its, NULL) < 0) {
        r = -errno;
        goto out;
    }
out:
    if (r < 0) {
        ptr_free(t);
        return r;
    }
    s->priv = t;
    return 0;
}

/* What a tick's callers read while the threads are stopped (sampler_callbacks.held). */
struct held {
    const struct sampler_callbacks *cb;
    const pid_t *tids;
    size_t n;
    void *userdata;
};

static void run_held(void *ctx)
{
    const struct held *h = ctx;
    h->cb->held(h->tids, h->n, h->userdata);
}

static int tick(struct sampler *s, struct ptr *t, const struct sampler_callbacks *cb,
                void *userdata)
{
    size_t n;
    bool changed = false;
    int r;
    if (sampler_now_ns() - t->maps_read_ns >= MAPS_EVERY_NS) {
        r = maps_read(s, t, &changed);
        if (r == -ESRCH) {
            t->exited = true;
            return 0;
        }
        if (r < 0)
            return r;
        if (changed && cb->maps_changed)
            cb->maps_changed(userdata);
    }
    r = list_running(s, t, &n);
    if (r < 0 || n == 0)
        return r;
    struct held h = {cb, t->running, n, userdata};
    struct snapshot_hold hold = {run_held, &h};
    r = snapshot_capture_hold(t->snap, s->pid, t->running, n, t->ranges, t->nranges,
                              cb->held ? &hold : NULL);
    if (r < 0)
        return r == -ESRCH ? 0 : r;
    uint64_t now = sampler_now_ns();
    for (size_t i = 0; i < t->snap->nthreads; i++) {
        const struct snapshot_thread *th = &t->snap->threads[i];
        if (th->err == -ESRCH)
            continue; /* exited meanwhile: it is not running */
        if (th->err && th->err != -EFAULT) {
            s->stats.lost++;
            continue;
        }
        struct sampler_sample smp = {
            .tid = th->tid,
            .time_ns = now,
            .period_ns = 1000000000ull / s->freq,
            .stack_addr = th->regs[UNW_X86_64_RSP],
            .held = cb->held && t->snap->held,
        };
        memcpy(smp.regs, th->regs, sizeof(smp.regs));
        /* The copy starts below sp (red zone); hand out from sp, like perf. */
        if (th->stack_len > 0 && smp.stack_addr >= th->stack_addr &&
            smp.stack_addr - th->stack_addr < th->stack_len) {
            size_t skip = (size_t)(smp.stack_addr - th->stack_addr);
            smp.stack = th->stack + skip;
            smp.stack_len = th->stack_len - skip;
            if (smp.stack_len > SAMPLER_STACK_BYTES)
                smp.stack_len = SAMPLER_STACK_BYTES;
        }
        struct sampler_thread *st = sampler_thread_find(s, th->tid);
        if (st)
            sampler_thread_first_sample(s, st, cb, userdata);
        s->stats.samples++;
        r = cb->sample(&smp, userdata);
        if (r < 0)
            return r;
    }
    return 0;
}

static int ptr_poll(struct sampler *s, int timeout_ms, const struct sampler_callbacks *cb,
                    void *userdata)
{
    struct ptr *t = s->priv;
    if (t->exited)
        goto exited;
    struct pollfd pfd = {.fd = t->tfd, .events = POLLIN};
    if (poll(&pfd, 1, timeout_ms) <= 0)
        return 0;
    uint64_t ticks;
    if (read(t->tfd, &ticks, sizeof(ticks)) != sizeof(ticks))
        return 0;
    /* Ticks missed while the caller was busy elsewhere: samples not taken. */
    if (ticks > 1)
        s->stats.lost += ticks - 1;
    int r = tick(s, t, cb, userdata);
    if (r < 0)
        return r;
    if (!t->exited)
        return 0;
exited:
    s->stats.target_exited = true;
    return -ESRCH;
}

static void ptr_close(struct sampler *s)
{
    ptr_free(s->priv);
    s->priv = NULL;
}

const struct sampler_ops sampler_ptrace_ops = {
    .name = "ptrace",
    .open = ptr_open,
    .poll = ptr_poll,
    .close = ptr_close,
};
