/* The flight recorder: every thread of a process sampled continuously at a low rate (cpuprof's
 * sampler and unwinder, perf_event only, so the target is never stopped), each sample kept as
 * (time, thread, stack id, weight) in a ring bounded by time and bytes, the oldest dropped
 * first, with each distinct stack stored once. In wall mode the ring also keeps each thread's
 * stretches off the CPU (cpuprof's wall mode: the stack it blocked in, weighed by how long until
 * it ran again), and knows the ones still open. A profile of any window the ring still covers is
 * built from it afterwards: on-CPU time, off-CPU time, or both. One recorder outlives the
 * processes it records: recorder_run records one until it exits, and the caller starts it again
 * on the next. Not the sampler or the unwinder (cpuprof.h), not files (formats/), not which
 * process to record (the agent's spec). */
#ifndef RECORDER_H
#define RECORDER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "cpu/cpuprof.h"
#include "formats/profile.h"
#include "os/error.h"
#include "unwind/stacks.h"

#define RECORDER_MAX_MINUTES 1440 /* a day: the ring's longest window */
#define RECORDER_MIN_BYTES (64u << 10)
#define RECORDER_MAX_BYTES (4096ull << 20)
#define RECORDER_NAME_MAX 1024 /* bytes kept of one name or path */

/* What a ring records (RECORDER_CPU or RECORDER_WALL), and what a profile takes from it. */
enum recorder_mode {
    RECORDER_CPU = 1,  /* time on a CPU: samples of running threads */
    RECORDER_OFF = 2,  /* time off the CPU: stretches, by the stack the thread blocked in */
    RECORDER_WALL = 3, /* both: every thread all the time */
};

struct recorder_limits {
    unsigned minutes;        /* 1..RECORDER_MAX_MINUTES: samples older go */
    size_t max_bytes;        /* RECORDER_MIN_BYTES..RECORDER_MAX_BYTES: samples, stacks, names */
    enum recorder_mode mode; /* RECORDER_CPU or RECORDER_WALL */
};

struct recorder_stats {
    /* The ring holds every sample taken since this time (CLOCK_MONOTONIC; 0: never recorded):
     * a thread without samples in it did not run on a CPU. */
    uint64_t covered_from_ns;
    size_t bytes;     /* memory held: samples, stacks, frames, names and their indexes */
    uint64_t samples; /* samples in the ring, stretches off the CPU included */
    /* of which time off the CPU: a stretch, or a thread's stretches in one place within one
     * sampling period (the open ones are apart) */
    uint64_t stretches;
    uint64_t stacks;  /* distinct stacks stored */
    uint64_t dropped; /* samples dropped for time or bytes since recorder_new */
    uint64_t lost;    /* samples not kept (out of memory) */
    bool recording;   /* recorder_run is under way */
};

struct recorder;

/* -EINVAL for limits out of range or another mode (err says which), -ENOMEM. */
int recorder_new(const struct recorder_limits *l, struct recorder **ret, struct error *err);
/* Accepts NULL. Not while recorder_run runs. */
void recorder_free(struct recorder *r);
/* Records pid with the unwinder s at freq Hz until cancel is set or pid exits (0 either way,
 * ret->stats.target_exited says which, ret->profile is NULL), or about a day has passed (0:
 * call again). cpuprof_run's errors; -EPERM too where perf_event is refused (err says why: the
 * recorder never falls back to ptrace). Python frames where the kernel copies them, else native
 * frames (ret->python_fallback says why). One call at a time. */
int recorder_run(struct recorder *r, pid_t pid, struct stacks *s, unsigned freq, atomic_int *cancel,
                 struct cpuprof_result *ret, struct error *err);
/* A profile of [from_ns, to_ns) (CLOCK_MONOTONIC), of thread tid alone when tid > 0: the on-CPU
 * samples taken then (RECORDER_CPU), the time threads spent off the CPU then, stretches that
 * straddle an edge cut to it and those still open counted up to now (RECORDER_OFF), or both
 * (RECORDER_WALL); each weighs its time in ns. states_ns (may be NULL) gets the time per
 * cpuprof_state. The profile may be empty. -EOPNOTSUPP for a mode the ring does not record (err
 * says so), -ENOMEM. Any thread. */
int recorder_profile(struct recorder *r, uint64_t from_ns, uint64_t to_ns, pid_t tid,
                     enum recorder_mode mode, struct profile **ret,
                     uint64_t states_ns[CPUPROF_NSTATES], struct error *err);
/* Drops what has aged past the window at now_ns (CLOCK_MONOTONIC) and reports. Any thread. */
void recorder_get_stats(struct recorder *r, uint64_t now_ns, struct recorder_stats *ret);

#endif
