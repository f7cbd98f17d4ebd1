/* Internal to the sampler (sampler.c, sampler_perf.c, sampler_ptrace.c): the backend ops table
 * and the state the backends share. Not for other modules: they use sampler.h. */
#ifndef SAMPLER_OPS_H
#define SAMPLER_OPS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "cpu/sampler.h"

#define SAMPLER_THREADS_MAX 65536 /* threads tracked at once; samples of more still go out */

struct sampler_ops {
    const char *name;
    /* Sets s->priv. Errors as sampler_open's; the perf backend's EACCES, EPERM, ENOENT, ENOSYS
     * and EOPNOTSUPP make sampler_open fall back to ptrace. */
    int (*open)(struct sampler *s);
    /* Hands out what is pending; sets s->stats.target_exited once everything was handed out
     * after the target exited. */
    int (*poll)(struct sampler *s, int timeout_ms, const struct sampler_callbacks *cb,
                void *userdata);
    void (*close)(struct sampler *s);
    /* sampler_python_thread; NULL: -EOPNOTSUPP. */
    int (*python_thread)(struct sampler *s, pid_t tid, uint64_t tstate);
};

/* A thread of the target the sampler knows of. chain: the perf backend's event chain this
 * thread's samples are taken from (see sampler_perf.c); sampled: it has been handed out. */
struct sampler_thread {
    pid_t tid;
    uint32_t chain;
    bool sampled;
    bool exited;
};

struct sampler {
    pid_t pid;
    unsigned freq;
    const struct pylayout *python; /* sampler_open's py */
    bool wall;                     /* SAMPLER_WALL */
    const struct sampler_ops *ops;
    void *priv;
    struct sampler_stats stats;
    struct sampler_thread *threads; /* ascending tid */
    size_t nthreads, threads_cap;
};

extern const struct sampler_ops sampler_perf_ops;
extern const struct sampler_ops sampler_ptrace_ops;

uint64_t sampler_now_ns(void);
struct sampler_thread *sampler_thread_find(struct sampler *s, pid_t tid);
/* Adds tid (not yet known) and returns its entry; -E2BIG past SAMPLER_THREADS_MAX. The entry
 * pointer is valid until the next add or prune. */
int sampler_thread_add(struct sampler *s, pid_t tid, struct sampler_thread **ret);
/* Drops the entries marked exited. */
void sampler_threads_prune(struct sampler *s);
/* Counts t as seen and reports its name from /proc (when the callback wants names) the first
 * time it is handed out. */
void sampler_thread_first_sample(struct sampler *s, struct sampler_thread *t,
                                 const struct sampler_callbacks *cb, void *userdata);

#endif
