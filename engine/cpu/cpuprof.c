/* One CPU profile run (see cpuprof.h): samples from the sampler are unwound with the target's
 * long-lived struct stacks and folded into a profile as they arrive, so memory stays bounded by
 * the profile's distinct stacks, not by the run's length. Thread names are remembered per run,
 * read from /proc once per new thread unless the sampler named it first. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <libunwind.h>
#include <sys/uio.h>
#include "cpu/cpuprof.h"
#include "cpu/offcpu.h"
#include "os/procfs.h"
#include "python/pyframes.h"

#define POLL_MAX_MS 100 /* how long a cancel may go unnoticed */
#define PROGRESS_NS 1000000000ull
#define NAMES_MAX 4096              /* threads named at once; past it the table starts over */
#define NAMES_SLOTS (2 * NAMES_MAX) /* open addressing, at most half full */
#define UNKNOWN_THREAD "[unknown]"
#define PY_THREADS_NS 1000000000ull   /* the copier's thread table is read again this often */
#define PY_THREADS_MIN_NS 50000000ull /* and at most this often when a thread is missing */
/* A record timed before a poll began may still be on its way into a ring: this much older. */
#define HORIZON_SLACK_NS 1000000ull

struct name_slot {
    pid_t tid; /* 0: empty */
    char name[PROCFS_COMM_MAX];
};

struct run {
    pid_t pid;
    const struct cpuprof_options *o;
    struct stacks *s;
    struct profile *prof;
    struct name_slot *names;
    size_t nnames;
    uint64_t samples, truncated, unwind_ns, python_samples, python_unpaired;
    struct pyframes *py; /* a CPython target's interpreter, else NULL */
    struct sampler *smp;
    /* The in-kernel copier's threads: when their table was last read, and the threads told. */
    uint64_t py_threads_ns;
    pid_t *py_tids;
    size_t npy_tids;
    /* ptrace: the Python stacks read while this tick's threads were stopped. */
    struct pyframes_thread *held;
    size_t nheld;
    /* Wall-clock profiles: the stretches off the CPU, and samples per state. */
    struct offcpu *off;
    bool off_failed; /* out of memory in a callback that cannot say so */
    bool off_only;   /* cpuprof_options.off_only */
    uint64_t states[CPUPROF_NSTATES];
    unsigned freq;
    struct stacks_frame frames[STACKS_MAX_FRAMES];
};

/* A sample's stack as it goes into the profile: its native frames, or those merged with the
 * Python frames of the same moment. */
struct stack {
    const struct stacks_frame *frames;
    size_t n;
    int truncated;
    struct stacks_thread *merged;
    struct pyframes_thread pt; /* decoded for this sample (pt_owned), else lent */
    bool pt_owned;
};

static uint64_t clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}

static struct name_slot *slot_of(struct run *r, pid_t tid)
{
    size_t i = ((uint32_t)tid * 2654435761u) % NAMES_SLOTS;
    while (r->names[i].tid && r->names[i].tid != tid)
        i = (i + 1) % NAMES_SLOTS;
    return &r->names[i];
}

static void set_name(struct run *r, pid_t tid, const char *name)
{
    if (tid <= 0)
        return;
    struct name_slot *sl = slot_of(r, tid);
    if (!sl->tid) {
        if (r->nnames == NAMES_MAX) {
            /* Thread churn: forget them all rather than grow; a name read again is cheap. */
            memset(r->names, 0, NAMES_SLOTS * sizeof(*r->names));
            r->nnames = 0;
            sl = slot_of(r, tid);
        }
        sl->tid = tid;
        r->nnames++;
    }
    snprintf(sl->name, sizeof(sl->name), "%s", name);
}

static const char *name_of(struct run *r, pid_t tid)
{
    char comm[PROCFS_COMM_MAX];
    if (tid <= 0)
        return UNKNOWN_THREAD;
    struct name_slot *sl = slot_of(r, tid);
    if (sl->tid)
        return sl->name;
    /* A thread gone before its samples were read is named once, as unknown. */
    if (procfs_read_comm(PROCFS_ROOT, r->pid, tid, comm) < 0 || !comm[0])
        snprintf(comm, sizeof(comm), "%s", UNKNOWN_THREAD);
    set_name(r, tid, comm);
    return slot_of(r, tid)->name;
}

/* Whether the stack runs in the interpreter: an eval-loop frame by name, or any frame of its
 * file (a stripped interpreter names none). */
static bool in_interpreter(const struct stacks_frame *f, size_t n, const char *interp)
{
    for (size_t i = 0; i < n; i++)
        if (pyframes_is_eval(f[i].func) || (f[i].module && !strcmp(f[i].module, interp)))
            return true;
    return false;
}

static bool is_libc(const char *module)
{
    const char *base = module ? strrchr(module, '/') : NULL;
    return base && (!strncmp(base + 1, "libc.so", 7) || !strncmp(base + 1, "libm.so", 7) ||
                    !strncmp(base + 1, "ld-linux", 8));
}

/* Native frames inside the innermost Python frame that are only the interpreter (and the C
 * library under it) working for that Python code are charged to the Python function, as
 * py-spy shows without --native; a C extension's frames stay. Returns how many to skip. */
static size_t interpreter_inner(const struct stacks_thread *t, const char *interp)
{
    size_t k = 0;

    while (k < t->nframes && !t->frames[k].python)
        k++;
    if (k == t->nframes)
        return 0;
    for (size_t i = 0; i < k; i++) {
        const char *m = t->frames[i].module;
        if (!(m && !strcmp(m, interp)) && !is_libc(m))
            return 0;
    }
    return k;
}

/* Tells the in-kernel copier where every Python thread's state is, and forgets threads gone.
 * Once a second, and sooner (not more than every PY_THREADS_MIN_NS) when a sample of the
 * interpreter came without Python frames: a thread started since the last read. */
static void py_threads_refresh(struct run *r, uint64_t now)
{
    struct pyframes_thread *ts;
    size_t n, kept = 0;

    r->py_threads_ns = now;
    if (pyframes_read(r->py, &ts, &n) < 0)
        return;
    for (size_t i = 0; i < r->npy_tids; i++) {
        bool alive = false;
        for (size_t k = 0; k < n && !alive; k++)
            alive = ts[k].tid == r->py_tids[i];
        if (!alive)
            sampler_python_thread(r->smp, r->py_tids[i], 0);
    }
    pid_t *tids = realloc(r->py_tids, (n ? n : 1) * sizeof(*tids));
    if (tids) {
        r->py_tids = tids;
        for (size_t k = 0; k < n; k++)
            if (sampler_python_thread(r->smp, ts[k].tid, ts[k].tstate) == 0)
                tids[kept++] = ts[k].tid;
        r->npy_tids = kept;
    }
    pyframes_threads_free(ts, n);
}

static void on_held(const pid_t *tids, size_t n, void *userdata)
{
    struct run *r = userdata;
    (void)tids;
    (void)n;
    pyframes_threads_free(r->held, r->nheld);
    r->held = NULL;
    r->nheld = 0;
    if (pyframes_read(r->py, &r->held, &r->nheld) < 0) {
        r->held = NULL;
        r->nheld = 0;
    }
}

/* The Python stack of the sample's own moment into *pt: copied in the kernel at the sample, or
 * read while the ptrace backend held the thread (lent: 1). -ENOENT when there is none: the
 * sample's native and Python parts would be of different moments, so they are not merged. */
static int python_of_sample(struct run *r, const struct sampler_sample *smp,
                            struct pyframes_thread *pt)
{
    if (smp->has_python)
        return pyframes_decode(r->py, smp->tid, smp->python, smp->npython, smp->python_truncated,
                               pt);
    if (!smp->held)
        return -ENOENT;
    for (size_t i = 0; i < r->nheld; i++) {
        if (r->held[i].tid != smp->tid)
            continue;
        *pt = r->held[i];
        return 1;
    }
    return -ENOENT;
}

static void stack_clear(struct stack *st)
{
    free(st->merged);
    if (st->pt_owned)
        pyframes_thread_clear(&st->pt);
}

/* The stack of smp into *out (stack_clear it): unwound, and on a CPython target merged with
 * the Python stack of the same moment, given (a blocked thread's, read while it stayed blocked)
 * or the sample's own. A sample inside the interpreter without one is counted and kept native. */
static int sample_stack(struct run *r, const struct sampler_sample *smp,
                        const struct pyframes_thread *given, struct stack *out)
{
    size_t n = 0;
    int truncated = 0, e = 0;
    /* The unwinder's own CPU time, not the wall clock: on a loaded machine the thread may wait
     * for a CPU in the middle, which is not what unwinding costs. Not for the flight recorder,
     * which does not report it: the two system calls were a third of the agent's time on a
     * wall-clock recording of threads that block a thousand times a second. */
    bool timed = !r->o->sink;
    uint64_t t0 = timed ? clock_ns(CLOCK_THREAD_CPUTIME_ID) : 0;

    memset(out, 0, sizeof(*out));
    if (stacks_unwind_regs(r->s, smp->regs, smp->stack_addr, smp->stack, smp->stack_len, r->frames,
                           STACKS_MAX_FRAMES, &n, &truncated) < 0) {
        n = 0; /* a malformed sample still took time: [unknown] */
        truncated = 1;
    }
    if (timed)
        r->unwind_ns += clock_ns(CLOCK_THREAD_CPUTIME_ID) - t0;
    r->samples++;
    r->truncated += truncated != 0;
    out->frames = r->frames;
    out->n = n;
    out->truncated = truncated;
    if (!r->py)
        return 0;
    const char *interp = pyframes_module(r->py);
    if (given)
        out->pt = *given;
    else
        e = python_of_sample(r, smp, &out->pt);
    out->pt_owned = !given && e == 0;
    if (e == -ENOENT && in_interpreter(r->frames, n, interp)) {
        r->python_unpaired++;
        if (!smp->held && r->npy_tids < PYFRAMES_MAX_THREADS &&
            now_ns() - r->py_threads_ns > PY_THREADS_MIN_NS)
            py_threads_refresh(r, now_ns());
    }
    if (e < 0)
        return e == -ENOMEM ? e : 0;
    struct stacks_thread *native = malloc(sizeof(*native) + n * sizeof(native->frames[0]));
    if (!native)
        return -ENOMEM;
    memset(native, 0, sizeof(*native));
    native->tid = smp->tid;
    native->truncated = truncated;
    native->nframes = n;
    memcpy(native->frames, r->frames, n * sizeof(r->frames[0]));
    e = pyframes_merge(native, &out->pt, &out->merged);
    free(native);
    if (e < 0)
        return e;
    size_t skip = interpreter_inner(out->merged, interp);
    r->python_samples++;
    out->frames = out->merged->frames + skip;
    out->n = out->merged->nframes - skip;
    return 0;
}

/* A closed off-CPU stretch (offcpu_sink), counted in samples of the run's rate. */
static int add_stretch(void *ctx, pid_t tid, const struct stacks_frame *frames, size_t n,
                       int truncated, enum cpuprof_state st, uint64_t weight_ns)
{
    struct run *r = ctx;
    r->states[st] += (weight_ns * r->freq + 500000000u) / 1000000000u;
    return profile_add(r->prof, name_of(r, tid), frames, n, truncated, weight_ns);
}

/* The flight recorder's off-CPU stretches (offcpu_sink): the stack as one opens, the time as
 * it closes. */
static int stretch_opened(void *ctx, pid_t tid, uint64_t t, enum cpuprof_state st,
                          const struct stacks_frame *frames, size_t n, int truncated)
{
    struct run *r = ctx;
    struct cpuprof_sample s = {
        .time_ns = t,
        .tid = tid,
        .thread = name_of(r, tid),
        .frames = frames,
        .n = n,
        .truncated = truncated,
        .off_cpu = true,
        .state = st,
    };
    return r->o->sink(&s, r->o->userdata);
}

static int stretch_closed(void *ctx, pid_t tid, uint64_t t)
{
    struct run *r = ctx;
    return r->o->sink_back(tid, t, r->o->userdata);
}

/* Where the run's stretches go: the profile, or (offcpu_follow) the flight recorder's sink. */
static struct offcpu_sink stretch_sink(struct run *r)
{
    return (struct offcpu_sink){r->o->sink ? NULL : add_stretch, r};
}

/* An on-CPU sample into the profile, or to the flight recorder's sink. */
static int add_sample(struct run *r, const struct sampler_sample *smp, const struct stack *st)
{
    const char *thread = name_of(r, smp->tid);

    if (r->o->sink) {
        struct cpuprof_sample s = {
            .time_ns = smp->time_ns,
            .tid = smp->tid,
            .thread = thread,
            .frames = st->frames,
            .n = st->n,
            .truncated = st->truncated,
            .weight_ns = smp->period_ns,
        };
        return r->o->sink(&s, r->o->userdata);
    }
    return profile_add(r->prof, thread, st->frames, st->n, st->truncated, smp->period_ns);
}

static int on_sample(const struct sampler_sample *smp, void *userdata)
{
    struct run *r = userdata;
    struct stack st;
    int e = sample_stack(r, smp, NULL, &st);

    if (e == 0 && r->off && smp->off_cpu) {
        e = offcpu_begin(r->off, smp->tid, smp->time_ns, offcpu_state(r->off, smp->regs), st.frames,
                         st.n, st.truncated);
    } else if (e == 0) {
        if (r->off)
            e = offcpu_back(r->off, smp->tid, smp->time_ns);
        if (!r->off_only)
            r->states[CPUPROF_RUNNING]++;
        if (e == 0 && !r->off_only)
            e = add_sample(r, smp, &st);
    }
    stack_clear(&st);
    return e;
}

static void on_switch_in(pid_t tid, uint64_t time_ns, void *userdata)
{
    struct run *r = userdata;
    if (offcpu_back(r->off, tid, time_ns) < 0)
        r->off_failed = true;
}

/* Wall-clock profiles: the threads blocked in a system call when sampling began leave no
 * switch sample; each opens a stretch from what /proc says of it and its stack as it is, read
 * without stopping it and kept only when the call is still the same afterwards (so both halves
 * are of one moment). */
static int blocked_threads(struct run *r, uint64_t start)
{
    pid_t *tids = NULL;
    size_t n = 0;
    unsigned char *stack = malloc(SAMPLER_STACK_BYTES);
    int e = stack ? procfs_list_tasks(PROCFS_ROOT, r->pid, &tids, &n) : -ENOMEM;

    for (size_t i = 0; e == 0 && i < n; i++) {
        struct offcpu_syscall sc, again;
        struct pyframes_thread pt = {0};
        struct stack st;
        bool have_pt = false;

        if (offcpu_read_syscall(PROCFS_ROOT, r->pid, tids[i], &sc) < 0)
            continue;
        struct iovec local = {stack, SAMPLER_STACK_BYTES};
        struct iovec remote = {(void *)(uintptr_t)sc.sp, SAMPLER_STACK_BYTES};
        ssize_t got = process_vm_readv(r->pid, &local, 1, &remote, 1, 0);
        if (got <= 0)
            continue;
        if (r->py)
            have_pt = pyframes_read_tid(r->py, tids[i], &pt) == 0;
        if (offcpu_read_syscall(PROCFS_ROOT, r->pid, tids[i], &again) == 0 &&
            !memcmp(&sc, &again, sizeof(sc))) {
            struct sampler_sample smp = {
                .tid = tids[i], .stack_addr = sc.sp, .stack = stack, .stack_len = (size_t)got};
            smp.regs[UNW_X86_64_RIP] = sc.pc;
            smp.regs[UNW_X86_64_RSP] = sc.sp;
            e = sample_stack(r, &smp, have_pt ? &pt : NULL, &st);
            if (e == 0)
                e = offcpu_begin(r->off, tids[i], start, offcpu_syscall_state(r->off, &sc),
                                 st.frames, st.n, st.truncated);
            stack_clear(&st);
        }
        if (have_pt)
            pyframes_thread_clear(&pt);
    }
    free(tids);
    free(stack);
    return e;
}

static void on_maps_changed(void *userdata)
{
    struct run *r = userdata;
    stacks_maps_changed(r->s);
}

static void on_thread_name(pid_t tid, const char *name, void *userdata)
{
    set_name(userdata, tid, name && name[0] ? name : UNKNOWN_THREAD);
}

static unsigned smp_frequency(const struct sampler *smp)
{
    struct sampler_stats st;
    sampler_get_stats(smp, &st);
    return st.frequency;
}

static const char *smp_method(const struct sampler *smp)
{
    struct sampler_stats st;
    sampler_get_stats(smp, &st);
    return st.method;
}

/* Whether the sampler copies Python frames in the kernel; if not, why into why. */
static bool smp_python_in_kernel(const struct sampler *smp, struct error *why)
{
    struct sampler_stats st;
    sampler_get_stats(smp, &st);
    *why = st.python_fallback;
    return st.python_in_kernel;
}

static void report(const struct cpuprof_options *o, const struct run *r, uint64_t start)
{
    if (!o->progress)
        return;
    struct cpuprof_progress p = {(double)(now_ns() - start) / 1e9, o->seconds, r->samples};
    o->progress(&p, o->userdata);
}

int cpuprof_run(pid_t pid, struct stacks *s, const struct cpuprof_options *o,
                struct cpuprof_result *ret, struct error *err)
{
    static const struct sampler_callbacks plain = {on_sample, on_maps_changed, on_thread_name, NULL,
                                                   NULL};
    static const struct sampler_callbacks held = {on_sample, on_maps_changed, on_thread_name,
                                                  on_held, NULL};
    static const struct sampler_callbacks wall = {on_sample, on_maps_changed, on_thread_name, NULL,
                                                  on_switch_in};
    const struct sampler_callbacks *cb = &plain;
    struct error pyfallback = {0};
    struct sampler *smp = NULL;
    struct run *r = NULL;
    bool exited = false, cancelled = false, pyerr_keep = false;
    char pyversion[PYFRAMES_VERSION_MAX];
    struct error pyerr = {0};
    int e;

    error_clear(err);
    if (!s || !o)
        return error_set(err, -EINVAL, NULL);
    if (!(o->seconds > 0) || o->seconds > CPUPROF_MAX_SECONDS)
        return error_set(err, -EINVAL, "a profile lasts more than 0 and at most %d seconds",
                         (int)CPUPROF_MAX_SECONDS);
    if (o->sink && o->wall && !o->sink_back)
        return error_set(err, -EINVAL, "a wall-clock recording needs to know when stretches end");
    r = calloc(1, sizeof(*r));
    if (!r)
        return error_set(err, -ENOMEM, NULL);
    r->pid = pid;
    r->o = o;
    r->s = s;
    r->names = calloc(NAMES_SLOTS, sizeof(*r->names));
    if (!r->names) {
        e = -ENOMEM;
        goto out;
    }
    e = profile_new(&r->prof);
    if (e < 0)
        goto out;
    if (o->wall)
        profile_set_timed(r->prof);
    /* Not CPython, or a version we cannot read: native frames only, and for the latter the
     * reason goes out with the result. */
    e = pyframes_attach(pid, pyversion, sizeof(pyversion), &r->py, &pyerr);
    if (e < 0)
        r->py = NULL;
    if (e < 0 && e != -ENOENT && e != -ESRCH && e != -ENOMEM)
        pyerr_keep = true;
    if (o->wall) {
        uint64_t lo = 0, hi = 0;
        if (r->py)
            pyframes_gil_range(r->py, &lo, &hi);
        e = offcpu_new(pid, lo, hi, &r->off);
        if (e < 0)
            goto out;
        if (o->sink)
            offcpu_follow(r->off, &(struct offcpu_follower){stretch_opened, stretch_closed, r});
        cb = &wall;
        r->off_only = o->off_only;
    }
    e = sampler_open(pid, o->frequency,
                     (o->force_ptrace ? SAMPLER_FORCE_PTRACE : 0) | (o->wall ? SAMPLER_WALL : 0),
                     r->py ? pyframes_layout(r->py) : NULL, &smp, err);
    if (e == 0 && o->no_ptrace && strcmp(smp_method(smp), "perf_event") != 0) {
        struct sampler_stats st;

        sampler_get_stats(smp, &st);
        e = error_set(err, -EPERM, "%s", st.fallback.reason);
    } else if (e == 0 && r->py && strcmp(smp_method(smp), "perf_event") == 0 &&
               !smp_python_in_kernel(smp, &pyfallback) && o->no_ptrace) {
        /* Snapshots would stop the target at every sample: native frames only, from a sampler
         * that no longer holds the interpreter's layout. */
        sampler_close(smp);
        smp = NULL;
        pyframes_free(r->py);
        r->py = NULL;
        e = sampler_open(pid, o->frequency, 0, NULL, &smp, err);
    } else if (e == 0 && r->py && strcmp(smp_method(smp), "perf_event") == 0 &&
               !smp_python_in_kernel(smp, &pyfallback)) {
        /* Python frames read after the sample would be of a later moment: snapshots instead,
         * whose threads stay stopped while their Python stacks are read. */
        sampler_close(smp);
        smp = NULL;
        e = sampler_open(pid, o->frequency, SAMPLER_FORCE_PTRACE, NULL, &smp, err);
    }
    if (e < 0)
        goto out;
    r->smp = smp;
    r->freq = smp_frequency(smp);
    if (r->py && strcmp(smp_method(smp), "ptrace") == 0)
        cb = &held;
    else if (r->py)
        py_threads_refresh(r, now_ns());

    uint64_t start = now_ns(), duration = (uint64_t)(o->seconds * 1e9);
    if (r->off) {
        offcpu_start(r->off, start);
        e = blocked_threads(r, start);
        if (e < 0)
            goto out;
    }
    uint64_t next_progress = start + PROGRESS_NS;
    for (;;) {
        uint64_t now = now_ns();
        if (o->cancel && atomic_load(o->cancel)) {
            cancelled = true;
            break;
        }
        if (now - start >= duration)
            break;
        if (now >= next_progress) {
            report(o, r, start);
            next_progress += PROGRESS_NS;
            continue;
        }
        uint64_t wait = start + duration - now;
        if (next_progress - now < wait)
            wait = next_progress - now;
        uint64_t ms = (wait + 999999) / 1000000;
        if (r->py && cb == &plain && now - r->py_threads_ns >= PY_THREADS_NS)
            py_threads_refresh(r, now);
        /* Every ring is read past this time by the poll: switches up to it can be ordered. */
        uint64_t horizon = now_ns() - HORIZON_SLACK_NS;
        e = sampler_poll(smp, ms > POLL_MAX_MS ? POLL_MAX_MS : (int)ms, cb, r);
        if (r->off && (e == 0 || e == -ESRCH)) {
            struct offcpu_sink sink = stretch_sink(r);
            int e2 = r->off_failed ? -ENOMEM : offcpu_settle(r->off, horizon, &sink);
            if (e2 < 0) {
                e = e2;
                goto out;
            }
        }
        if (e == -ESRCH) {
            exited = true;
            break;
        }
        if (e < 0)
            goto out;
    }
    /* Samples taken before the end that are still queued belong to the run. */
    if (!exited) {
        e = sampler_poll(smp, 0, cb, r);
        if (e == -ESRCH)
            exited = true;
        else if (e < 0)
            goto out;
    }
    if (r->off) {
        uint64_t end = now_ns();
        struct offcpu_sink sink = stretch_sink(r);
        e = offcpu_end_all(r->off, end < start + duration ? end : start + duration, &sink);
        if (e < 0)
            goto out;
    }
    report(o, r, start);

    memset(ret, 0, sizeof(*ret));
    ret->wall = r->off != NULL;
    ret->off_only = r->off_only;
    memcpy(ret->states, r->states, sizeof(ret->states));
    snprintf(ret->python, sizeof(ret->python), "%s", r->py ? pyversion : "");
    if (pyerr_keep) {
        ret->python_error = pyerr;
        snprintf(ret->python_version, sizeof(ret->python_version), "%s", pyversion);
    }
    ret->python_samples = r->python_samples;
    ret->python_unpaired = r->python_unpaired;
    ret->python_fallback = pyfallback;
    sampler_get_stats(smp, &ret->stats);
    /* Our own literals: the sampler's strings go with it. */
    ret->stats.method =
        ret->stats.method && strcmp(ret->stats.method, "ptrace") == 0 ? "ptrace" : "perf_event";
    ret->stats.target_exited = ret->stats.target_exited || exited;
    ret->truncated = r->truncated;
    ret->elapsed = (double)(now_ns() - start) / 1e9;
    ret->unwind_us_per_sample = r->samples ? (double)r->unwind_ns / 1e3 / (double)r->samples : 0;
    ret->cancelled = cancelled;
    ret->profile = r->prof;
    r->prof = NULL;
    e = 0;
out:
    if (e < 0)
        error_fill(err, e);
    sampler_close(smp);
    if (r) {
        offcpu_free(r->off);
        pyframes_threads_free(r->held, r->nheld);
        free(r->py_tids);
        pyframes_free(r->py);
        profile_free(r->prof);
        free(r->names);
        free(r);
    }
    return e;
}
