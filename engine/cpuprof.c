/* One CPU profile run (see cpuprof.h): samples from the sampler are unwound with the target's
 * long-lived struct stacks and folded into a profile as they arrive, so memory stays bounded by
 * the profile's distinct stacks, not by the run's length. Thread names are remembered per run,
 * read from /proc once per new thread unless the sampler named it first. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "procfs.h"
#include "cpuprof.h"

#define CPUPROF_MAX_SECONDS (24 * 3600.0)
#define POLL_MAX_MS 100             /* how long a cancel may go unnoticed */
#define PROGRESS_NS 1000000000ull
#define NAMES_MAX 4096              /* threads named at once; past it the table starts over */
#define NAMES_SLOTS (2 * NAMES_MAX) /* open addressing, at most half full */
#define UNKNOWN_THREAD "[unknown]"

struct name_slot {
    pid_t tid;                      /* 0: empty */
    char name[PROCFS_COMM_MAX];
};

struct run {
    pid_t pid;
    struct stacks *s;
    struct profile *prof;
    struct name_slot *names;
    size_t nnames;
    uint64_t samples, truncated, unwind_ns;
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

static int on_sample(const struct sampler_sample *smp, void *userdata)
{
    struct run *r = userdata;
    size_t n = 0;
    int truncated = 0;
    uint64_t t0 = now_ns();
    if (stacks_unwind_regs(r->s, smp->regs, smp->stack_addr, smp->stack, smp->stack_len,
                           r->frames, STACKS_MAX_FRAMES, &n, &truncated) < 0) {
        n = 0;                      /* a malformed sample still took CPU time: [unknown] */
        truncated = 1;
    }
    r->unwind_ns += now_ns() - t0;
    r->samples++;
    r->truncated += truncated != 0;
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
    struct cpuprof_progress p = { (double)(now_ns() - start) / 1e9, o->seconds, r->samples };
    o->progress(&p, o->userdata);
}

int cpuprof_run(pid_t pid, struct stacks *s, const struct cpuprof_options *o,
                struct cpuprof_result *ret)
{
    static const struct sampler_callbacks cb = { on_sample, on_maps_changed, on_thread_name };
    struct sampler *smp = NULL;
    struct run *r = NULL;
    bool exited = false, cancelled = false;
    int e;

    if (!s || !o || !(o->seconds > 0) || o->seconds > CPUPROF_MAX_SECONDS)
        return -EINVAL;
    r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
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
    e = sampler_open(pid, o->frequency, o->force_ptrace, &smp);
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

    memset(ret, 0, sizeof(*ret));
    sampler_get_stats(smp, &ret->stats);
    /* Our own literals: the sampler's strings go with it. */
    ret->stats.method = ret->stats.method && strcmp(ret->stats.method, "ptrace") == 0 ?
                        "ptrace" : "perf_event";
    ret->stats.target_exited = ret->stats.target_exited || exited;
    ret->truncated = r->truncated;
    ret->elapsed = (double)(now_ns() - start) / 1e9;
    ret->unwind_us_per_sample = r->samples ? (double)r->unwind_ns / 1e3 / (double)r->samples : 0;
    ret->cancelled = cancelled;
    ret->profile = r->prof;
    r->prof = NULL;
    e = 0;
out:
    sampler_close(smp);
    if (r) {
        profile_free(r->prof);
        free(r->names);
        free(r);
    }
    return e;
}
