/* CPU sampling of every thread of a process, behind a small ops table (as perf's unwind ops):
 * - perf_event: perf_event_open on each thread (software cpu-clock, frequency mode, user space
 *   only, inherited by threads created during the run), each sample carrying the user registers
 *   and a copy of the user stack, read from mmap'd ring buffers woken by poll, not busy polling;
 * - ptrace: where perf_event_open is refused (no CAP_PERFMON/CAP_SYS_ADMIN, a high
 *   perf_event_paranoid), snapshots of every thread at a lower rate, with the reason recorded.
 * Samples are handed out raw (registers + stack bytes); unwinding is the caller's business. */
#ifndef SAMPLER_H
#define SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "os/error.h"
#include "python/pyframes.h"
#include "python/pylayout.h"

#define SAMPLER_NREGS 17         /* libunwind's x86-64 numbering: RAX..R15, RIP */
#define SAMPLER_STACK_BYTES 8192 /* user stack copied per sample, as perf record does */
#define SAMPLER_MAX_FREQ 4999
#define SAMPLER_PTRACE_MAX_FREQ 49 /* the fallback stops the target: keep it rare */
/* sampler_open flags */
#define SAMPLER_FORCE_PTRACE 1u /* tests: use the fallback */
/* Wall-clock profiles (perf_event only): also a sample at each switch away from the CPU
 * (off_cpu), and callbacks.switch_in when the thread is back. */
#define SAMPLER_WALL 2u

struct sampler_sample {
    pid_t tid;
    uint64_t time_ns;   /* CLOCK_MONOTONIC */
    uint64_t period_ns; /* weight of this sample */
    uint64_t regs[SAMPLER_NREGS];
    uint64_t stack_addr;        /* target address of stack[0] (the sampled sp) */
    const unsigned char *stack; /* valid during the callback only */
    size_t stack_len;
    /* A CPython target's Python frames as they were at this very sample, copied in the kernel
     * (perf_event backend, pybpf.h), innermost first; has_python false when none were copied
     * (not a Python thread, or no in-kernel reader). Valid during the callback only. */
    bool has_python;
    bool python_truncated;
    bool held;    /* ptrace backend: callbacks.held ran while this thread was still stopped */
    bool off_cpu; /* SAMPLER_WALL: taken as the thread left the CPU (time_ns: when) */
    const struct pyframes_raw_frame *python;
    size_t npython;
};

struct sampler_callbacks {
    /* One sample. A negative return stops sampler_poll and is returned by it. */
    int (*sample)(const struct sampler_sample *s, void *userdata);
    /* The target's executable mappings changed (PERF_RECORD_MMAP2 with PROT_EXEC, exec). */
    void (*maps_changed)(void *userdata);
    /* A thread was named or renamed (PERF_RECORD_COMM, or first seen). May be NULL. */
    void (*thread_name)(pid_t tid, const char *name, void *userdata);
    /* ptrace backend: runs while the threads of a tick (tids, ascending) are stopped, after
     * their copies and before their samples are handed out, to read more of their state at
     * the same moment (Python stacks). May be NULL. */
    void (*held)(const pid_t *tids, size_t n, void *userdata);
    /* SAMPLER_WALL: thread tid is back on a CPU at time_ns (CLOCK_MONOTONIC). May be NULL. */
    void (*switch_in)(pid_t tid, uint64_t time_ns, void *userdata);
};

struct sampler_stats {
    uint64_t samples; /* handed to the sample callback */
    uint64_t lost;    /* PERF_RECORD_LOST and bad records */
    uint64_t threads; /* distinct threads seen */
    bool target_exited;
    const char *method; /* "perf_event" or "ptrace" */
    unsigned frequency; /* the rate in use (lower under ptrace) */
    /* Why perf_event was not used ("perf_event_open refused (kernel.perf_event_paranoid is
     * 3)"), code 0 when it was. */
    struct error fallback;
    /* With a Python layout: whether the in-kernel frame copier runs, and if not why. */
    bool python_in_kernel;
    struct error python_fallback;
};

struct sampler;

/* Starts sampling every thread of pid at freq_hz (1..SAMPLER_MAX_FREQ). Tries perf_event and
 * falls back to ptrace (recording why in stats.fallback) unless SAMPLER_FORCE_PTRACE. With py
 * (a CPython target's layout, else NULL) the perf_event backend copies each sampled thread's
 * Python frames in the kernel (see sampler_python_thread); where it cannot, stats say why.
 * -EINVAL for a bad rate or a thread id; -ESRCH if pid is gone; -EPERM when neither method is
 * allowed (err, which may be NULL, then says why perf_event was refused). */
int sampler_open(pid_t pid, unsigned freq_hz, unsigned flags, const struct pylayout *py,
                 struct sampler **ret, struct error *err);
/* Tells the in-kernel copier that thread tid's PyThreadState is at tstate (0: none any more).
 * -EOPNOTSUPP when no copier runs. */
int sampler_python_thread(struct sampler *s, pid_t tid, uint64_t tstate);
/* Waits up to timeout_ms for samples and hands every pending one to the callbacks. Returns 0,
 * -ESRCH once the target has exited and everything was handed out, or a callback's error. */
int sampler_poll(struct sampler *s, int timeout_ms, const struct sampler_callbacks *cb,
                 void *userdata);
void sampler_get_stats(const struct sampler *s, struct sampler_stats *ret);
/* Stops sampling and frees everything; the target is left untouched. Accepts NULL. */
void sampler_close(struct sampler *s);

#endif
