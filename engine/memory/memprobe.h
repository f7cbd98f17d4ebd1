/* The uprobe fallback of the allocation profile: kernel uprobes (perf_event_open's uprobe PMU)
 * on the target's malloc family, turned into a time-ordered stream of ALLOC and FREE events with
 * the caller's registers and stack for each ALLOC. It changes nothing in the target that
 * outlives memprobe_close. Not the main method: each hit costs microseconds (see memprof). */
#ifndef MEMPROBE_H
#define MEMPROBE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "os/error.h"

#define MEMPROBE_NREGS 17         /* libunwind's x86-64 numbering, as stacks.h takes it */
#define MEMPROBE_STACK_BYTES 8192 /* user stack copied per ALLOC, as perf copies */
#define MEMPROBE_THREADS_MAX 4096 /* threads with calls in flight; more are counted lost */

struct memprobe;

struct memprobe_event {
    int kind; /* MEMRING_ALLOC or MEMRING_FREE (memring.h) */
    pid_t tid;
    uint64_t time_ns;   /* CLOCK_MONOTONIC: the return (ALLOC) or the entry (FREE) */
    uint64_t ptr, size; /* FREE: size 0 */
    /* ALLOC only, NULL/0 for FREE: the caller's state when the allocation function returned
     * (RIP the return address in the caller, RSP and callee-saved registers the caller's),
     * ready for stacks_unwind_regs; stack[0] is at target address stack_addr. Valid only
     * during the callback. */
    const uint64_t *regs;
    uint64_t stack_addr;
    const unsigned char *stack;
    size_t stack_len;
};

struct memprobe_stats {
    uint64_t allocs, frees; /* events handed out */
    uint64_t lost;          /* calls not reported: PERF_RECORD_LOST, unmatched returns,
                               malformed records, threads past MEMPROBE_THREADS_MAX */
    unsigned probes;        /* probe points (entry and return count apart) */
    size_t fds;             /* perf events opened: probes x CPUs x threads at start */
    const char *module;     /* the file probed, as the target maps it; valid while open */
};

/* Finds malloc, calloc, realloc, free, posix_memalign, aligned_alloc and memalign in the module
 * that provides the target's allocator (the executable when it defines malloc, as a static one
 * does, else the first library that does, skipping the dynamic loader), and opens uprobes on
 * them for every thread of pid (inherited by threads created later): entry probes read the
 * arguments, return probes complete ALLOC events, free's entry gives FREE. -ENOENT when no
 * malloc is found, -EPERM/-EACCES when perf_event_open refuses, -EOPNOTSUPP when the kernel has
 * no uprobe PMU, -ESRCH when the target is gone; in err too (may be NULL), with a reason for
 * the user on every failure. */
int memprobe_open(pid_t pid, struct memprobe **ret, struct error *err);
/* Waits up to timeout_ms for events and hands every complete one to cb in time order across
 * CPUs (events of the last millisecond wait for the next call, so that late writers on another
 * CPU are not overtaken). A negative return of cb stops and is returned. -ESRCH once the
 * target has exited and every event was handed out. */
int memprobe_poll(struct memprobe *p, int timeout_ms,
                  int (*cb)(const struct memprobe_event *e, void *userdata), void *userdata);
void memprobe_get_stats(const struct memprobe *p, struct memprobe_stats *ret);
/* Closes every event: the kernel removes the probes from the target. Accepts NULL. */
void memprobe_close(struct memprobe *p);

#endif
