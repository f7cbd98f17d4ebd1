/* The flight recorder: every thread of a process sampled continuously at a low rate (cpuprof's
 * sampler and unwinder, perf_event only, so the target is never stopped), each sample kept as
 * (time, thread, stack id) in a ring bounded by time and bytes, the oldest dropped first, with
 * each distinct stack stored once. A profile of any window the ring still covers is built from
 * it afterwards. One recorder outlives the processes it records: recorder_run records one until
 * it exits, and the caller starts it again on the next. Not the sampler or the unwinder
 * (cpuprof.h), not files (formats/), not which process to record (the agent's spec). */
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

struct recorder_limits {
    unsigned minutes; /* 1..RECORDER_MAX_MINUTES: samples older go */
    size_t max_bytes; /* RECORDER_MIN_BYTES..RECORDER_MAX_BYTES: samples, stacks and names */
};

struct recorder_stats {
    /* The ring holds every sample taken since this time (CLOCK_MONOTONIC; 0: never recorded):
     * a thread without samples in it did not run on a CPU. */
    uint64_t covered_from_ns;
    size_t bytes;     /* memory held: samples, stacks, frames, names and their indexes */
    uint64_t samples; /* samples in the ring */
    uint64_t stacks;  /* distinct stacks stored */
    uint64_t dropped; /* samples dropped for time or bytes since recorder_new */
    uint64_t lost;    /* samples not kept (out of memory) */
    bool recording;   /* recorder_run is under way */
};

struct recorder;

/* -EINVAL for limits out of range (err says which), -ENOMEM. */
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
/* A profile of the samples taken in [from_ns, to_ns) (CLOCK_MONOTONIC), of thread tid alone
 * when tid > 0. The profile may be empty. -ENOMEM. Any thread. */
int recorder_profile(struct recorder *r, uint64_t from_ns, uint64_t to_ns, pid_t tid,
                     struct profile **ret, struct error *err);
/* Drops what has aged past the window at now_ns (CLOCK_MONOTONIC) and reports. Any thread. */
void recorder_get_stats(struct recorder *r, uint64_t now_ns, struct recorder_stats *ret);

#endif
