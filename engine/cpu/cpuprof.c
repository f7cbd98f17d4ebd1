/* One CPU profile run (see cpuprof.h): samples from the sampler are unwound with the target's
 * long-lived struct stacks and folded into a profile as they arrive, so memory stays bounded by
 * the profile's distinct stacks, not by the run's length. Thread names are remembered per run,
 * read from /proc once per new thread unless the sampler named it first. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cpu/cpuprof.h"
#include "os/procfs.h"
#include "python/pyframes.h"

#define CPUPROF_MAX_SECONDS (24 * 3600.0)
#define POLL_MAX_MS 100 /* how long a cancel may go unnoticed */
#define PROGRESS_NS 1000000000ull
#define NAMES_MAX 4096              /* threads named at once; past it the table starts over */
#define NAMES_SLOTS (2 * NAMES_MAX) /* open addressing, at most half full */
#define UNKNOWN_THREAD "[unknown]"

struct name_slot {
    pid_t tid; /* 0: empty */
    char name[PROCFS_COMM_MAX];
};

struct run {
    pid_t pid;
    struct stacks *s;
    struct profile *prof;
    struct name_slot *names;
    size_t nnames;
    uint64_t samples, truncated, unwind_ns, python_samples;
    struct pyframes *py; /* a CPython target's interpreter, else NULL */
    struct stacks_frame frames[STACKS_MAX_FRAMES];
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
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

/* The module of the interpreter's eval loop in this stack, or NULL. */
static const char *eval_module(const struct stacks_frame *f, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (f[i].func && !strcmp(f[i].func, PYFRAMES_EVAL_FUNC))
            return f[i].module ? f[i].module : "";
    return NULL;
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

/* A sample inside the interpreter is attributed to the Python functions it runs: the thread's
 * Python stack is read now, a moment after the sample (perf copies only the C stack; Python's
 * frames live on the heap). A function that runs for more than a few microseconds is still the
 * one running; the attribution test checks the shares. */
static int add_python(struct run *r, const struct sampler_sample *smp, size_t n, int truncated,
                      const char *interp)
{
    struct stacks_thread *native = malloc(sizeof(*native) + n * sizeof(native->frames[0]));
    struct stacks_thread *merged = NULL;
    struct pyframes_thread pt;
    int e;

    if (!native)
        return -ENOMEM;
    memset(native, 0, sizeof(*native));
    native->tid = smp->tid;
    native->truncated = truncated;
    native->nframes = n;
    memcpy(native->frames, r->frames, n * sizeof(r->frames[0]));
    if (pyframes_read_tid(r->py, smp->tid, &pt) < 0) {
        e = profile_add(r->prof, name_of(r, smp->tid), r->frames, n, truncated, smp->period_ns);
        free(native);
        return e;
    }
    e = pyframes_merge(native, &pt, &merged);
    if (e == 0) {
        size_t skip = interpreter_inner(merged, interp);
        r->python_samples++;
        e = profile_add(r->prof, name_of(r, smp->tid), merged->frames + skip,
                        merged->nframes - skip, truncated, smp->period_ns);
    }
    free(merged);
    pyframes_thread_clear(&pt);
    free(native);
    return e;
}

static int on_sample(const struct sampler_sample *smp, void *userdata)
{
    struct run *r = userdata;
    size_t n = 0;
    int truncated = 0;
    uint64_t t0 = now_ns();
    if (stacks_unwind_regs(r->s, smp->regs, smp->stack_addr, smp->stack, smp->stack_len, r->frames,
                           STACKS_MAX_FRAMES, &n, &truncated) < 0) {
        n = 0; /* a malformed sample still took CPU time: [unknown] */
        truncated = 1;
    }
    r->unwind_ns += now_ns() - t0;
    r->samples++;
    r->truncated += truncated != 0;
    const char *interp = r->py ? eval_module(r->frames, n) : NULL;
    if (interp)
        return add_python(r, smp, n, truncated, interp);
    return profile_add(r->prof, name_of(r, smp->tid), r->frames, n, truncated, smp->period_ns);
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
    static const struct sampler_callbacks cb = {on_sample, on_maps_changed, on_thread_name};
    struct sampler *smp = NULL;
    struct run *r = NULL;
    bool exited = false, cancelled = false;
    int e;

    error_clear(err);
    if (!s || !o)
        return error_set(err, -EINVAL, NULL);
    if (!(o->seconds > 0) || o->seconds > CPUPROF_MAX_SECONDS)
        return error_set(err, -EINVAL, "a profile lasts more than 0 and at most %d seconds",
                         (int)CPUPROF_MAX_SECONDS);
    r = calloc(1, sizeof(*r));
    if (!r)
        return error_set(err, -ENOMEM, NULL);
    r->pid = pid;
    r->s = s;
    r->names = calloc(NAMES_SLOTS, sizeof(*r->names));
    if (!r->names) {
        e = -ENOMEM;
        goto out;
    }
    e = profile_new(&r->prof);
    if (e < 0)
        goto out;
    /* Not CPython, or a version we cannot read: native frames only. */
    if (pyframes_open(pid, ret->python, sizeof(ret->python), &r->py) < 0) {
        r->py = NULL;
        ret->python[0] = '\0';
    }
    e = sampler_open(pid, o->frequency,
                     (o->force_ptrace ? SAMPLER_FORCE_PTRACE : 0) | (r->py ? SAMPLER_PROMPT : 0),
                     &smp, err);
    if (e < 0)
        goto out;

    uint64_t start = now_ns(), duration = (uint64_t)(o->seconds * 1e9);
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
        e = sampler_poll(smp, ms > POLL_MAX_MS ? POLL_MAX_MS : (int)ms, &cb, r);
        if (e == -ESRCH) {
            exited = true;
            break;
        }
        if (e < 0)
            goto out;
    }
    /* Samples taken before the end that are still queued belong to the run. */
    if (!exited) {
        e = sampler_poll(smp, 0, &cb, r);
        if (e == -ESRCH)
            exited = true;
        else if (e < 0)
            goto out;
    }
    report(o, r, start);

    char python[sizeof(ret->python)];
    snprintf(python, sizeof(python), "%s", r->py ? ret->python : "");
    memset(ret, 0, sizeof(*ret));
    snprintf(ret->python, sizeof(ret->python), "%s", python);
    ret->python_samples = r->python_samples;
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
        pyframes_free(r->py);
        profile_free(r->prof);
        free(r->names);
        free(r);
    }
    return e;
}
