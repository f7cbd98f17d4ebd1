/* One CPU profile run: the sampler feeding the snapshot unwinder feeding the profile, for a
 * number of seconds or until cancelled or the target exits, with progress about once a second.
 * No files here: the caller writes what the profile holds. */
#ifndef CPUPROF_H
#define CPUPROF_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "formats/profile.h"
#include "cpu/sampler.h"
#include "unwind/stacks.h"

struct cpuprof_progress {
    double elapsed; /* seconds since sampling began */
    double seconds; /* the run's length */
    uint64_t samples;
};

struct cpuprof_options {
    double seconds;
    unsigned frequency;
    bool force_ptrace;  /* tests: use the fallback sampler */
    atomic_int *cancel; /* set: stop early, keep what was sampled */
    void (*progress)(const struct cpuprof_progress *p, void *userdata); /* ~1/s, may be NULL */
    void *userdata;
};

struct cpuprof_result {
    struct profile *profile; /* owned by the caller after cpuprof_run returns 0 */
    struct sampler_stats stats;
    uint64_t truncated; /* samples whose stack was not followed to its root */
    double elapsed;
    double unwind_us_per_sample; /* mean unwind cost */
    bool cancelled;
    char python[32];         /* "3.11.2" when Python frames were attributed, else "" */
    uint64_t python_samples; /* samples attributed to Python functions */
};

/* Profiles pid with the unwinder state s (kept per target by the caller). -EINVAL (a length
 * out of range), -ESRCH, -EPERM (neither perf_event nor ptrace allowed; err says why perf_event
 * was refused), or -ENOMEM, in err too (may be NULL); a target that exits mid-run is not an
 * error (stats.target_exited), and a fallback to ptrace is in stats.fallback. */
int cpuprof_run(pid_t pid, struct stacks *s, const struct cpuprof_options *o,
                struct cpuprof_result *ret, struct error *err);

#endif
