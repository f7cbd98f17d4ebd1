/* One CPU profile run: the sampler feeding the snapshot unwinder feeding the profile, for a
 * number of seconds or until cancelled or the target exits, with progress about once a second.
 * CPU time (on-CPU samples), or wall-clock time (on-CPU samples plus each thread's stretches
 * off the CPU, weighed by their length, as cProfile measures). No files here: the caller
 * writes what the profile holds. */
#ifndef CPUPROF_H
#define CPUPROF_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "formats/profile.h"
#include "cpu/sampler.h"
#include "unwind/stacks.h"

#define CPUPROF_MAX_SECONDS (24 * 3600.0) /* the longest run */

struct cpuprof_progress {
    double elapsed; /* seconds since sampling began */
    double seconds; /* the run's length */
    uint64_t samples;
};

/* What a thread was doing at a sample of a wall-clock profile. */
enum cpuprof_state {
    CPUPROF_RUNNING, /* on a CPU, or runnable (preempted) */
    CPUPROF_SYSCALL, /* blocked in a system call */
    CPUPROF_GIL,     /* a CPython thread waiting to take the GIL */
    CPUPROF_NSTATES
};

/* One sample as the flight recorder takes it (cpuprof_options.sink): its stack, merged with its
 * Python frames where the target is CPython; everything lent for the call only. On a CPU, or
 * (wall) a thread leaving it: a stretch off the CPU that opens at time_ns and lasts until
 * cpuprof_options.sink_back says the thread is back. */
struct cpuprof_sample {
    uint64_t time_ns; /* CLOCK_MONOTONIC */
    pid_t tid;
    const char *thread;
    const struct stacks_frame *frames; /* innermost first */
    size_t n;
    int truncated;
    uint64_t weight_ns;       /* the sampling period; 0 off the CPU */
    bool off_cpu;             /* the stack the thread left the CPU with */
    enum cpuprof_state state; /* off the CPU: why (CPUPROF_RUNNING: preempted) */
};

struct cpuprof_options {
    double seconds;
    unsigned frequency;
    /* Wall-clock time rather than CPU time: every thread counts all the time, off the CPU too
     * (perf_event only: the stacks threads leave the CPU with come from context switch
     * samples). */
    bool wall;
    /* With wall: only the time off the CPU (mode "off"), each stretch weighed by how long it
     * lasted, under the stack the thread left the CPU with; on-CPU samples only close them. */
    bool off_only;
    bool force_ptrace;  /* tests: use the fallback sampler */
    atomic_int *cancel; /* set: stop early, keep what was sampled */
    /* The flight recorder: every sample goes here as it is unwound, not into the result's
     * profile (left empty); with wall, each stretch off the CPU too, as it opens (in each
     * thread's time order, about a poll after it did), and sink_back as it ends (every one
     * that opened, the last at the run's end). A negative return ends the run with it. */
    int (*sink)(const struct cpuprof_sample *s, void *userdata);
    int (*sink_back)(pid_t tid, uint64_t time_ns, void *userdata);
    /* Never stop the target: perf_event or nothing (-EPERM, err says why), and on a CPython
     * target whose frames the kernel cannot copy, native frames only (python_fallback says
     * why) rather than ptrace snapshots. */
    bool no_ptrace;
    void (*progress)(const struct cpuprof_progress *p, void *userdata); /* ~1/s, may be NULL */
    void *userdata;                                                     /* progress's and sink's */
};

struct cpuprof_result {
    struct profile *profile; /* owned by the caller after cpuprof_run returns 0 */
    struct sampler_stats stats;
    uint64_t truncated; /* samples whose stack was not followed to its root */
    double elapsed;
    double unwind_us_per_sample; /* mean unwind cost, in the agent thread's CPU time (0: sink) */
    bool cancelled;
    char python[32];         /* "3.11.2" when Python frames were attributed, else "" */
    uint64_t python_samples; /* samples attributed to Python functions */
    /* Why a CPython target's frames could not be read (its version in python_version); code 0
     * when they were, or when the target is not CPython. */
    struct error python_error;
    char python_version[32];
    /* Samples inside the interpreter whose Python stack was not of the sample's moment (a
     * thread not known to the copier yet, a snapshot released early): kept with native frames
     * only, never merged with a later Python stack. */
    uint64_t python_unpaired;
    /* Why Python frames are not copied in the kernel at each sample (so ptrace snapshots were
     * used), code 0 when they were or the target is not CPython. */
    struct error python_fallback;
    bool wall, off_only;
    /* Wall-clock profiles: samples per state, off-CPU stretches counted as the samples the rate
     * would have taken in them. */
    uint64_t states[CPUPROF_NSTATES];
};

/* Profiles pid with the unwinder state s (kept per target by the caller). -EINVAL (a length
 * out of range), -ESRCH, -EPERM (neither perf_event nor ptrace allowed; err says why perf_event
 * was refused), or -ENOMEM, in err too (may be NULL); a target that exits mid-run is not an
 * error (stats.target_exited), and a fallback to ptrace is in stats.fallback. */
int cpuprof_run(pid_t pid, struct stacks *s, const struct cpuprof_options *o,
                struct cpuprof_result *ret, struct error *err);

#endif
