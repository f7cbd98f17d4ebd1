/* Thread snapshots (see snapshot.h). The ptrace work always runs in a short-lived child process,
 * the tracer, which writes into memory shared with us (MAP_SHARED, prepared before fork):
 * - a process cannot trace its own threads, so `self` needs another process anyway, and one code
 *   path for both cases is one path to get right;
 * - whatever happens, the tracer exits within TRACER_HARD_S and the kernel detaches every tracee
 *   of an exiting tracer, so no path (a hung wait, a crash, SIGKILL of the agent) can leave the
 *   target stopped or traced.
 * All threads are seized first (which does not stop them), then interrupted together, then
 * waited for: the copies are one consistent picture, like py-spy's, and each thread is stopped
 * only for the short copy phase rather than for the whole list. The child calls only syscall
 * wrappers (no malloc, no locks), as a child forked from a threaded process must. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#include <elf.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/ptrace.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include "os/snapshot.h"

#define TRACER_SOFT_MS SNAPSHOT_STOP_TIMEOUT_MS
#define TRACER_HARD_S 2 /* then the tracer is killed by its own alarm */
/* And if its alarm never comes (its handler never ran: a sanitizer runtime that defers signals
 * in a forked child does that), the parent kills it this long after it started. */
#define TRACER_KILL_MS (TRACER_SOFT_MS + TRACER_HARD_S * 1000 + 500)

enum rec_state { REC_NONE, REC_SEIZED, REC_STOPPED, REC_DONE };

struct rec {
    pid_t tid;
    int err;
    int state;
    int sig; /* signal to hand back on detach (signal-delivery-stop) */
    int capped;
    uint64_t regs[SNAPSHOT_NREGS];
    uint64_t stack_addr;
    uint64_t stack_len;
    uint64_t stack_off; /* from the start of the stack area */
};

struct hdr {
    uint64_t stopped_ns;
    uint64_t copied;
    uint64_t stack_used;
    uint64_t stack_cap;
    uint32_t nrecs;
    uint32_t nranges;
    volatile uint32_t done; /* the tracer finished (its exit status may be reaped elsewhere) */
    uint32_t held;          /* the parent's hold ended before the deadline released anyone */
};

struct snapshot_arena {
    unsigned char *base;
    size_t size;
};

static volatile sig_atomic_t tracer_timed_out;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct rec *recs_of(struct hdr *h)
{
    return (struct rec *)(h + 1);
}
static struct snapshot_range *ranges_of(struct hdr *h)
{
    return (struct snapshot_range *)(recs_of(h) + h->nrecs);
}
static unsigned char *stacks_of(struct hdr *h)
{
    return (unsigned char *)(ranges_of(h) + h->nranges);
}

static const struct snapshot_range *range_find(struct hdr *h, uint64_t addr)
{
    const struct snapshot_range *r = ranges_of(h);
    size_t lo = 0, hi = h->nranges;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (addr < r[mid].start)
            hi = mid;
        else if (addr >= r[mid].end)
            lo = mid + 1;
        else
            return &r[mid];
    }
    return NULL;
}

static struct rec *rec_find(struct hdr *h, pid_t tid)
{
    struct rec *r = recs_of(h);
    size_t lo = 0, hi = h->nrecs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (tid < r[mid].tid)
            hi = mid;
        else if (tid > r[mid].tid)
            lo = mid + 1;
        else
            return &r[mid];
    }
    return NULL;
}

/* Copies [sp - red zone, end of sp's mapping) into the stack area, within both limits. */
static void copy_stack(struct hdr *h, pid_t pid, struct rec *r)
{
    uint64_t sp = r->regs[7];
    const struct snapshot_range *m = range_find(h, sp);
    uint64_t lo = sp >= SNAPSHOT_RED_ZONE ? sp - SNAPSHOT_RED_ZONE : 0;
    uint64_t hi;
    if (m) {
        if (lo < m->start)
            lo = m->start;
        hi = m->end;
    } else {
        /* A stack mapped after the maps were read: read until the first unreadable page. */
        hi = sp + 64 * 1024 < sp ? UINT64_MAX : sp + 64 * 1024;
    }
    uint64_t want = hi - lo;
    uint64_t room = h->stack_cap - h->stack_used;
    uint64_t len = want;
    if (len > SNAPSHOT_STACK_MAX)
        len = SNAPSHOT_STACK_MAX;
    if (len > room)
        len = room;
    r->capped = m && len < want;
    r->stack_addr = lo;
    r->stack_off = h->stack_used;
    r->stack_len = 0;
    if (len == 0)
        return;
    struct iovec local = {stacks_of(h) + h->stack_used, len};
    struct iovec remote = {(void *)(uintptr_t)lo, len};
    ssize_t got = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (got <= 0)
        return;
    r->stack_len = (uint64_t)got;
    h->stack_used += ((uint64_t)got + 15) & ~(uint64_t)15;
    h->copied += (uint64_t)got;
}

static void regs_from_user(uint64_t *o, const struct user_regs_struct *u)
{
    o[0] = u->rax;
    o[1] = u->rdx;
    o[2] = u->rcx;
    o[3] = u->rbx;
    o[4] = u->rsi;
    o[5] = u->rdi;
    o[6] = u->rbp;
    o[7] = u->rsp;
    o[8] = u->r8;
    o[9] = u->r9;
    o[10] = u->r10;
    o[11] = u->r11;
    o[12] = u->r12;
    o[13] = u->r13;
    o[14] = u->r14;
    o[15] = u->r15;
    o[16] = u->rip;
}

/* The calling thread's own registers and stack. noinline: the saved context must belong to a
 * frame that still exists while its stack is copied. */
static __attribute__((noinline)) int capture_self(struct hdr *h, pid_t pid, struct rec *r)
{
    ucontext_t uc;
    if (getcontext(&uc) < 0)
        return -errno;
    const greg_t *g = uc.uc_mcontext.gregs;
    uint64_t *o = r->regs;
    o[0] = (uint64_t)g[REG_RAX];
    o[1] = (uint64_t)g[REG_RDX];
    o[2] = (uint64_t)g[REG_RCX];
    o[3] = (uint64_t)g[REG_RBX];
    o[4] = (uint64_t)g[REG_RSI];
    o[5] = (uint64_t)g[REG_RDI];
    o[6] = (uint64_t)g[REG_RBP];
    o[7] = (uint64_t)g[REG_RSP];
    o[8] = (uint64_t)g[REG_R8];
    o[9] = (uint64_t)g[REG_R9];
    o[10] = (uint64_t)g[REG_R10];
    o[11] = (uint64_t)g[REG_R11];
    o[12] = (uint64_t)g[REG_R12];
    o[13] = (uint64_t)g[REG_R13];
    o[14] = (uint64_t)g[REG_R14];
    o[15] = (uint64_t)g[REG_R15];
    o[16] = (uint64_t)g[REG_RIP];
    /* process_vm_readv on ourselves, not memcpy: the kernel copy does not trip over ASan's
     * poisoned stack redzones. */
    copy_stack(h, pid, r);
    return 0;
}

static void on_alarm(int sig)
{
    (void)sig;
    tracer_timed_out = 1;
    signal(SIGALRM, SIG_DFL);
    alarm(TRACER_HARD_S);
}

/* With the threads stopped and copied: tells the parent over holdfd and waits for its word, or
 * for the stop deadline, before the threads are released. */
static void hold_stopped(struct hdr *h, int holdfd)
{
    char c = 'h';
    ssize_t got;

    if (tracer_timed_out || write(holdfd, &c, 1) != 1)
        return;
    while ((got = read(holdfd, &c, 1)) < 0 && errno == EINTR && !tracer_timed_out)
        ;
    h->held = got == 1;
}

/* The tracer's work. Only syscall wrappers from here on. holdfd: -1, or the parent's end to
 * hold the threads stopped for. */
static void trace_all(struct hdr *h, pid_t pid, int holdfd)
{
    struct rec *r = recs_of(h);
    size_t pending = 0, stopped = 0;
    uint64_t t0 = 0;

    for (size_t i = 0; i < h->nrecs; i++) {
        if (r[i].state != REC_NONE)
            continue;
        if (ptrace(PTRACE_SEIZE, r[i].tid, 0, 0) < 0) {
            r[i].err = -errno;
            r[i].state = REC_DONE;
        } else {
            r[i].state = REC_SEIZED;
        }
    }
    t0 = now_ns();
    for (size_t i = 0; i < h->nrecs; i++) {
        if (r[i].state != REC_SEIZED)
            continue;
        if (ptrace(PTRACE_INTERRUPT, r[i].tid, 0, 0) < 0)
            r[i].err = -errno; /* stays seized: released when the tracer exits */
        else
            pending++;
    }
    while (pending > 0 && !tracer_timed_out) {
        int st;
        pid_t w = waitpid(-1, &st, __WALL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        struct rec *x = rec_find(h, w);
        if (!x || x->state != REC_SEIZED || x->err)
            continue;
        pending--;
        if (WIFEXITED(st) || WIFSIGNALED(st)) {
            x->err = -ESRCH;
            x->state = REC_DONE;
        } else if (WIFSTOPPED(st)) {
            /* With PTRACE_SEIZE a plain signal-delivery-stop has no event in the high bits:
             * that signal was on its way to the thread and must be handed back on detach. */
            x->sig = (st >> 16) == 0 ? WSTOPSIG(st) : 0;
            x->state = REC_STOPPED;
        }
    }
    for (size_t i = 0; i < h->nrecs; i++) {
        if (r[i].state != REC_STOPPED)
            continue;
        struct user_regs_struct u;
        struct iovec iov = {&u, sizeof(u)};
        if (ptrace(PTRACE_GETREGSET, r[i].tid, NT_PRSTATUS, &iov) < 0)
            r[i].err = -errno;
        else if (iov.iov_len != sizeof(u))
            r[i].err = -EOPNOTSUPP; /* a 32-bit target */
        else {
            regs_from_user(r[i].regs, &u);
            copy_stack(h, pid, &r[i]);
            stopped++;
        }
    }
    if (holdfd >= 0 && stopped)
        hold_stopped(h, holdfd);
    for (size_t i = 0; i < h->nrecs; i++) {
        if (r[i].state == REC_STOPPED) {
            if (ptrace(PTRACE_DETACH, r[i].tid, 0, r[i].sig) < 0 && !r[i].err)
                r[i].err = -errno;
            r[i].state = REC_DONE;
        } else if (r[i].state == REC_SEIZED) {
            if (!r[i].err)
                r[i].err = -ETIMEDOUT;
            r[i].state = REC_DONE;
        }
    }
    h->stopped_ns = now_ns() - t0;
    h->done = 1;
}

static __attribute__((noreturn)) void tracer_main(struct hdr *h, pid_t pid, int syncfd, int holdfd)
{
    char c;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL); /* no SA_RESTART: the alarm must break waitpid */
    /* The mask is inherited from whichever thread dumps; a blocked SIGALRM would disarm both
     * deadlines. */
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    sigprocmask(SIG_UNBLOCK, &alrm, NULL);
    struct itimerval it = {{0, 0}, {0, TRACER_SOFT_MS * 1000}};
    setitimer(ITIMER_REAL, &it, NULL);
    /* Wait until the parent allowed us as its tracer (Yama); EOF also means go. */
    while (read(syncfd, &c, 1) < 0 && errno == EINTR && !tracer_timed_out)
        ;
    trace_all(h, pid, holdfd);
    _exit(0);
}

static int arena_reserve(struct snapshot_arena *a, size_t need)
{
    if (a->base && a->size >= need)
        return 0;
    void *p =
        mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -ENOMEM;
    if (a->base)
        munmap(a->base, a->size);
    a->base = p;
    a->size = need;
    return 0;
}

int snapshot_new(struct snapshot **ret)
{
    struct snapshot *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->arena = calloc(1, sizeof(*s->arena));
    if (!s->arena) {
        free(s);
        return -ENOMEM;
    }
    *ret = s;
    return 0;
}

void snapshot_free(struct snapshot *s)
{
    if (!s)
        return;
    if (s->arena->base)
        munmap(s->arena->base, s->arena->size);
    free(s->arena);
    free(s->threads);
    free(s);
}

/* Milliseconds left until deadline_ns (CLOCK_MONOTONIC), 0 when past it. */
static int ms_left(uint64_t deadline_ns)
{
    uint64_t now = now_ns();

    return now >= deadline_ns ? 0 : (int)((deadline_ns - now + 999999) / 1000000);
}

/* Waits until fd is readable or deadline_ns: 1 readable, 0 not in time. */
static int wait_readable(int fd, uint64_t deadline_ns)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r;

    while ((r = poll(&p, 1, ms_left(deadline_ns))) < 0 && errno == EINTR)
        ;
    return r > 0;
}

/* The parent's side of a hold: waits until the tracer holds the threads (or has given up:
 * EOF, or its deadline), runs fn, and lets the tracer go on. */
static void hold_run(int fd, const struct snapshot_hold *hold, uint64_t deadline_ns)
{
    char c;
    ssize_t got = -1;

    if (wait_readable(fd, deadline_ns))
        while ((got = read(fd, &c, 1)) < 0 && errno == EINTR)
            ;
    hold->fn(hold->ctx);
    c = 'r';
    /* A tracer past its deadline has stopped listening: nothing to tell it. */
    if (got == 1 && write(fd, &c, 1) < 0)
        return;
}

static int run_tracer(struct hdr *h, pid_t pid, int self, const struct snapshot_hold *hold)
{
    int r = 0, fds[2] = {-1, -1}, hfds[2] = {-1, -1};
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    if (hold && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, hfds) < 0) {
        r = -errno;
        goto out;
    }
    pid_t child = fork();
    if (child < 0) {
        r = -errno;
        goto out;
    }
    if (child == 0) {
        close(fds[1]);
        if (hfds[0] >= 0)
            close(hfds[0]);
        tracer_main(h, pid, fds[0], hfds[1]);
    }
    if (hfds[1] >= 0) {
        close(hfds[1]);
        hfds[1] = -1;
    }
    /* Yama's ptrace_scope=1 only lets a process trace its descendants, unless the tracee names
     * its tracer; EINVAL means Yama is not there. */
    if (self)
        prctl(PR_SET_PTRACER, child, 0, 0, 0);
    close(fds[1]);
    fds[1] = -1;
    uint64_t deadline = now_ns() + (uint64_t)TRACER_KILL_MS * 1000000;
    if (hold)
        hold_run(hfds[0], hold, deadline);
    /* The tracer's own alarms bound its life; a pidfd lets the parent bound it too. */
    int st, killed = 0, pfd = (int)syscall(SYS_pidfd_open, child, 0);
    if (pfd >= 0) {
        if (!wait_readable(pfd, deadline)) {
            kill(child, SIGKILL);
            killed = 1;
        }
        close(pfd);
    }
    pid_t w;
    while ((w = waitpid(child, &st, 0)) < 0 && errno == EINTR)
        ;
    if (self)
        prctl(PR_SET_PTRACER, 0, 0, 0, 0);
    if (!h->done)
        r = killed || (w == child && WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM) ? -ETIMEDOUT
                                                                                 : -ECHILD;
out:
    if (fds[0] >= 0)
        close(fds[0]);
    if (fds[1] >= 0)
        close(fds[1]);
    for (int i = 0; i < 2; i++)
        if (hfds[i] >= 0)
            close(hfds[i]);
    return r;
}

int snapshot_capture(struct snapshot *s, pid_t pid, const pid_t *tids, size_t n,
                     const struct snapshot_range *ranges, size_t nranges)
{
    return snapshot_capture_hold(s, pid, tids, n, ranges, nranges, NULL);
}

int snapshot_capture_hold(struct snapshot *s, pid_t pid, const pid_t *tids, size_t n,
                          const struct snapshot_range *ranges, size_t nranges,
                          const struct snapshot_hold *hold)
{
    int r;
    struct snapshot_thread *th = NULL;
    if (n == 0 || n > UINT32_MAX / 2 || nranges > UINT32_MAX / 2)
        return -EINVAL;
    size_t stack_cap =
        n > SNAPSHOT_ARENA_MAX / SNAPSHOT_STACK_MAX ? SNAPSHOT_ARENA_MAX : n * SNAPSHOT_STACK_MAX;
    size_t need = sizeof(struct hdr) + n * sizeof(struct rec) +
                  nranges * sizeof(struct snapshot_range) + stack_cap;
    r = arena_reserve(s->arena, need);
    if (r < 0)
        goto out;
    th = calloc(n, sizeof(*th));
    if (!th) {
        r = -ENOMEM;
        goto out;
    }
    struct hdr *h = (struct hdr *)s->arena->base;
    memset(h, 0, sizeof(*h));
    h->nrecs = (uint32_t)n;
    h->nranges = (uint32_t)nranges;
    h->stack_cap = stack_cap;
    struct rec *rc = recs_of(h);
    memset(rc, 0, n * sizeof(*rc));
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && tids[i] <= tids[i - 1]) {
            r = -EINVAL;
            goto out;
        }
        rc[i].tid = tids[i];
    }
    memcpy(ranges_of(h), ranges, nranges * sizeof(*ranges));

    int self = pid == getpid();
    if (self) {
        struct rec *me = rec_find(h, gettid());
        if (me) {
            me->err = capture_self(h, pid, me);
            me->state = REC_DONE;
        }
    }
    /* Our own stopped threads may hold a lock fn needs (malloc's): no hold for ourselves. */
    r = run_tracer(h, pid, self, self ? NULL : hold);
    if (self && hold)
        hold->fn(hold->ctx);
    if (r < 0)
        goto out;

    for (size_t i = 0; i < n; i++) {
        th[i].tid = rc[i].tid;
        th[i].err = rc[i].err;
        th[i].copy_capped = rc[i].capped;
        memcpy(th[i].regs, rc[i].regs, sizeof(th[i].regs));
        th[i].stack_addr = rc[i].stack_addr;
        th[i].stack_len = rc[i].stack_len;
        th[i].stack = stacks_of(h) + rc[i].stack_off;
        if (!th[i].err && th[i].stack_len == 0)
            th[i].err = -EFAULT;
    }
    free(s->threads);
    s->threads = th;
    th = NULL;
    s->nthreads = n;
    s->stopped_ns = h->stopped_ns;
    s->copied_bytes = h->copied;
    s->held = hold && !self && h->held;
out:
    free(th);
    return r;
}
