/* The off-CPU half of a wall-clock profile: each thread's stretch away from the CPU, opened
 * with the stack it left with (a context switch sample, or for a thread already blocked when
 * the run began, what /proc/PID/task/TID/syscall and its stack say without stopping it) and
 * closed when it is back on a CPU, weighing as long as it lasted; and what the thread was
 * doing meanwhile: waiting in a system call, waiting for the GIL, or preempted (runnable, so
 * counted as running). Internal to engine/cpu (cpuprof.c). Not a sampler, not an unwinder. */
#ifndef OFFCPU_H
#define OFFCPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "cpu/cpuprof.h"
#include "cpu/sampler.h"
#include "unwind/stacks.h"

#define OFFCPU_THREADS_MAX 65536 /* stretches open at once; a thread past it is not counted */

/* A thread blocked in a system call, from /proc/PID/task/TID/syscall. */
struct offcpu_syscall {
    long nr;
    uint64_t args[6];
    uint64_t sp, pc;
};

struct offcpu;

/* For target pid; [gil_lo, gil_hi) is its GIL (0, 0: not Python). */
int offcpu_new(pid_t pid, uint64_t gil_lo, uint64_t gil_hi, struct offcpu **ret);
void offcpu_free(struct offcpu *o);
/* Counts stretches from t on (the run's start): earlier time off the CPU is not the run's. */
void offcpu_start(struct offcpu *o, uint64_t t);
/* What a thread that left the CPU with these user registers waits for: in a system call (the
 * instruction before its ip is `syscall`), the GIL when that call's first argument points into
 * it, else it was preempted (CPUPROF_RUNNING). */
enum cpuprof_state offcpu_state(struct offcpu *o, const uint64_t regs[SAMPLER_NREGS]);
/* The state of a thread blocked in sc. */
enum cpuprof_state offcpu_syscall_state(const struct offcpu *o, const struct offcpu_syscall *sc);
/* Where a closed stretch goes: its stack, state, and weight (ns off the CPU). add may be NULL
 * (offcpu_follow's caller). */
struct offcpu_sink {
    int (*add)(void *ctx, pid_t tid, const struct stacks_frame *frames, size_t n, int truncated,
               enum cpuprof_state st, uint64_t weight_ns);
    void *ctx;
};
/* The flight recorder's view, which shows stretches still open: each as it opens (its stack),
 * then as it closes, in each thread's time order, at the settle that takes them; times cut to
 * the run's window. An opened while one is open replaces it (lost unweighed, as offcpu_settle
 * says). */
struct offcpu_follower {
    int (*opened)(void *ctx, pid_t tid, uint64_t t, enum cpuprof_state st,
                  const struct stacks_frame *frames, size_t n, int truncated);
    int (*closed)(void *ctx, pid_t tid, uint64_t t);
    void *ctx;
};
/* From now on stretches go to f too (copied). */
void offcpu_follow(struct offcpu *o, const struct offcpu_follower *f);
/* Thread tid left the CPU at t with frames (copied) in state st. Queued: the rings of
 * different CPUs are read one after the other, so a thread's switches come out of order;
 * offcpu_settle puts them back in order. */
int offcpu_begin(struct offcpu *o, pid_t tid, uint64_t t, enum cpuprof_state st,
                 const struct stacks_frame *frames, size_t n, int truncated);
/* Thread tid is on a CPU at t (switched in, or sampled running). Queued too. */
int offcpu_back(struct offcpu *o, pid_t tid, uint64_t t);
/* Takes every queued event up to horizon (a time by which all rings were read), each thread's
 * in time order: a stretch ends at the first time its thread is back, and goes to sink. */
int offcpu_settle(struct offcpu *o, uint64_t horizon, const struct offcpu_sink *sink);
/* Settles everything and closes the stretches still open at t (the run's end); none counts past
 * t. */
int offcpu_end_all(struct offcpu *o, uint64_t t, const struct offcpu_sink *sink);

/* Thread tid of pid now blocked in a system call: 0 with *ret, -EAGAIN when it is running (or
 * not in a call), -ESRCH when gone. root: /proc or a fixture tree. */
int offcpu_read_syscall(const char *root, pid_t pid, pid_t tid, struct offcpu_syscall *ret);

#endif
