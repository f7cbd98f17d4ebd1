/* Off-CPU stretches of a wall-clock profile (see offcpu.h). Switches are queued as they are read
 * and applied in each thread's time order at a settle; a stretch keeps a deep copy of its
 * stack, which outlives the unwinder's strings (a mapping change re-reads them) and the Python
 * frames decoded for it. Open stretches are one per blocked thread: an array searched
 * linearly. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libunwind.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include "cpu/offcpu.h"
#include "os/procfs.h"

#define SYSCALL_LINE_MAX 256
#define INSN_CACHE 64 /* instruction pointers known to follow a syscall instruction, or not */

#define EVENTS_MAX (1u << 20) /* queued switches of all threads; past it they are dropped */

/* A switch of one thread: away (frames != NULL, or a stack of no frames: away) or back. */
struct event {
    pid_t tid;
    bool away;
    enum cpuprof_state st;
    int truncated;
    uint64_t t;
    size_t n;
    struct stacks_frame *frames; /* strings in the same allocation */
};

struct insn_slot {
    uint64_t ip;
    bool syscall;
};

struct offcpu {
    pid_t pid;
    uint64_t gil_lo, gil_hi;
    struct event *q; /* queued, in arrival order */
    size_t nq, qcap;
    struct event *open; /* one per thread off the CPU, by tid in no order */
    size_t nopen, opencap;
    uint64_t from, until;          /* the run's window: stretches are cut to it */
    struct offcpu_follower follow; /* opened NULL: none */
    struct insn_slot insn[INSN_CACHE];
};

int offcpu_new(pid_t pid, uint64_t gil_lo, uint64_t gil_hi, struct offcpu **ret)
{
    struct offcpu *o = calloc(1, sizeof(*o));
    if (!o)
        return -ENOMEM;
    o->pid = pid;
    o->gil_lo = gil_lo;
    o->gil_hi = gil_hi;
    o->until = UINT64_MAX;
    *ret = o;
    return 0;
}

void offcpu_free(struct offcpu *o)
{
    if (!o)
        return;
    for (size_t i = 0; i < o->nq; i++)
        free(o->q[i].frames);
    for (size_t i = 0; i < o->nopen; i++)
        free(o->open[i].frames);
    free(o->q);
    free(o->open);
    free(o);
}

/* Whether the two bytes before ip are `syscall` (0f 05): the thread is inside a system call. */
static bool after_syscall(struct offcpu *o, uint64_t ip)
{
    struct insn_slot *sl = &o->insn[(ip >> 1) % INSN_CACHE];
    unsigned char b[2];
    struct iovec local = {b, sizeof(b)}, remote = {(void *)(uintptr_t)(ip - 2), sizeof(b)};

    if (sl->ip == ip)
        return sl->syscall;
    if (ip < 2 || process_vm_readv(o->pid, &local, 1, &remote, 1, 0) != (ssize_t)sizeof(b))
        return false;
    sl->ip = ip;
    sl->syscall = b[0] == 0x0f && b[1] == 0x05;
    return sl->syscall;
}

static bool in_gil(const struct offcpu *o, uint64_t addr)
{
    return o->gil_lo < o->gil_hi && addr >= o->gil_lo && addr < o->gil_hi;
}

enum cpuprof_state offcpu_state(struct offcpu *o, const uint64_t regs[SAMPLER_NREGS])
{
    if (!after_syscall(o, regs[UNW_X86_64_RIP]))
        return CPUPROF_RUNNING;
    return in_gil(o, regs[UNW_X86_64_RDI]) ? CPUPROF_GIL : CPUPROF_SYSCALL;
}

enum cpuprof_state offcpu_syscall_state(const struct offcpu *o, const struct offcpu_syscall *sc)
{
    return sc->nr == SYS_futex && in_gil(o, sc->args[0]) ? CPUPROF_GIL : CPUPROF_SYSCALL;
}

static size_t strsize(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

static const char *strput(char **at, const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = *at;
    memcpy(d, s, n);
    *at += n;
    return d;
}

static int push(struct offcpu *o, const struct event *ev)
{
    if (o->nq == EVENTS_MAX)
        return -ENOBUFS;
    if (o->nq == o->qcap) {
        size_t cap = o->qcap ? 2 * o->qcap : 256;
        struct event *q = realloc(o->q, cap * sizeof(*q));
        if (!q)
            return -ENOMEM;
        o->q = q;
        o->qcap = cap;
    }
    o->q[o->nq++] = *ev;
    return 0;
}

int offcpu_begin(struct offcpu *o, pid_t tid, uint64_t t, enum cpuprof_state st,
                 const struct stacks_frame *frames, size_t n, int truncated)
{
    size_t bytes = n * sizeof(*frames);

    for (size_t i = 0; i < n; i++)
        bytes += strsize(frames[i].module) + strsize(frames[i].func) + strsize(frames[i].file);
    struct stacks_frame *copy = malloc(bytes ? bytes : 1);
    if (!copy)
        return -ENOMEM;
    char *at = (char *)(copy + n);
    for (size_t i = 0; i < n; i++) {
        copy[i] = frames[i];
        copy[i].module = strput(&at, frames[i].module);
        copy[i].func = strput(&at, frames[i].func);
        copy[i].file = strput(&at, frames[i].file);
    }
    struct event ev = {tid, true, st, truncated, t, n, copy};
    int r = push(o, &ev);
    if (r < 0)
        free(copy);
    return r == -ENOBUFS ? 0 : r; /* too many to order: not counted rather than miscounted */
}

int offcpu_back(struct offcpu *o, pid_t tid, uint64_t t)
{
    struct event ev = {.tid = tid, .t = t};
    int r = push(o, &ev);
    return r == -ENOBUFS ? 0 : r;
}

static int by_tid_time(const void *a, const void *b)
{
    const struct event *x = a, *y = b;
    if (x->tid != y->tid)
        return x->tid < y->tid ? -1 : 1;
    return x->t < y->t ? -1 : x->t > y->t;
}

static struct event *open_of(struct offcpu *o, pid_t tid)
{
    for (size_t i = 0; i < o->nopen; i++)
        if (o->open[i].tid == tid)
            return &o->open[i];
    return NULL;
}

/* Hands the open stretch *op to sink as ending at t and forgets it. */
static int close_open(struct offcpu *o, struct event *op, uint64_t t,
                      const struct offcpu_sink *sink)
{
    struct event ev = *op;
    uint64_t from = ev.t > o->from ? ev.t : o->from, until = t < o->until ? t : o->until;
    int r = 0;

    *op = o->open[--o->nopen];
    if (sink->add && until > from)
        r = sink->add(sink->ctx, ev.tid, ev.frames, ev.n, ev.truncated, ev.st, until - from);
    if (o->follow.closed && r == 0)
        r = o->follow.closed(o->follow.ctx, ev.tid, until > from ? until : from);
    free(ev.frames);
    return r;
}

/* One event in time order. Away while away: the switch back between was lost (a ring
 * overrun), so the earlier stretch ends unweighed rather than swallowing the time on the CPU
 * since. */
static int apply(struct offcpu *o, struct event *ev, const struct offcpu_sink *sink)
{
    struct event *op = open_of(o, ev->tid);
    if (!ev->away)
        return op && ev->t > op->t ? close_open(o, op, ev->t, sink) : 0;
    if (o->follow.opened) {
        int r = o->follow.opened(o->follow.ctx, ev->tid, ev->t > o->from ? ev->t : o->from, ev->st,
                                 ev->frames, ev->n, ev->truncated);
        if (r < 0)
            return r;
    }
    if (op) {
        free(op->frames);
        *op = *ev;
        ev->frames = NULL;
        return 0;
    }
    if (o->nopen == o->opencap) {
        size_t cap = o->opencap ? 2 * o->opencap : 16;
        struct event *v = realloc(o->open, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        o->open = v;
        o->opencap = cap;
    }
    o->open[o->nopen++] = *ev;
    ev->frames = NULL;
    return 0;
}

int offcpu_settle(struct offcpu *o, uint64_t horizon, const struct offcpu_sink *sink)
{
    size_t keep = 0;
    int r = 0;

    if (o->nq > 1)
        qsort(o->q, o->nq, sizeof(*o->q), by_tid_time);
    for (size_t i = 0; i < o->nq; i++) {
        if (o->q[i].t > horizon) {
            o->q[keep++] = o->q[i];
            continue;
        }
        if (r == 0)
            r = apply(o, &o->q[i], sink);
        free(o->q[i].frames);
    }
    o->nq = keep;
    return r;
}

void offcpu_follow(struct offcpu *o, const struct offcpu_follower *f)
{
    o->follow = *f;
}

void offcpu_start(struct offcpu *o, uint64_t t)
{
    o->from = t;
}

int offcpu_end_all(struct offcpu *o, uint64_t t, const struct offcpu_sink *sink)
{
    o->until = t;
    int r = offcpu_settle(o, UINT64_MAX, sink);
    while (o->nopen && r == 0)
        r = close_open(o, &o->open[o->nopen - 1], t, sink);
    return r;
}

/* One unsigned number of /proc's syscall file (decimal, or 0x hex), then a space or the end. */
static int parse_num(const char **p, uint64_t *ret)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(*p, &end, 0);
    if (errno || end == *p || (*end != ' ' && *end != '\n' && *end != '\0'))
        return -EBADMSG;
    *ret = v;
    *p = *end == ' ' ? end + 1 : end;
    return 0;
}

int offcpu_read_syscall(const char *root, pid_t pid, pid_t tid, struct offcpu_syscall *ret)
{
    char buf[SYSCALL_LINE_MAX];
    struct offcpu_syscall sc;
    uint64_t nr;
    size_t len;

    int r = procfs_read_head(root, pid, tid, "syscall", buf, sizeof(buf), &len);
    if (r < 0)
        return r;
    /* "running", or "-1 SP PC" (blocked, not in a system call): nothing to stand for. */
    if (strncmp(buf, "running", 7) == 0 || buf[0] == '-')
        return -EAGAIN;
    const char *p = buf;
    r = parse_num(&p, &nr);
    for (size_t i = 0; r == 0 && i < 6; i++)
        r = parse_num(&p, &sc.args[i]);
    if (r == 0)
        r = parse_num(&p, &sc.sp);
    if (r == 0)
        r = parse_num(&p, &sc.pc);
    if (r < 0 || nr > 4096)
        return -EBADMSG;
    sc.nr = (long)nr;
    *ret = sc;
    return 0;
}
