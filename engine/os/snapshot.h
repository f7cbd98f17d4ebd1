/* Thread snapshots: registers and a copy of the live stack of every listed thread of a process,
 * taken with ptrace while all of them are stopped together, then released at once. This is only
 * the capture; it does not unwind (unwind.c) nor know about modules (modules.c). */
#ifndef SNAPSHOT_H
#define SNAPSHOT_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#define SNAPSHOT_STACK_MAX (512u * 1024) /* bytes copied per thread, from sp - 128 up */
#define SNAPSHOT_ARENA_MAX (64u << 20)   /* bytes copied per dump, all threads together */
#define SNAPSHOT_NREGS 17                /* libunwind's x86-64 numbering: RAX..R15, RIP */
#define SNAPSHOT_RED_ZONE 128
/* Threads not stopped by then are given up (-ETIMEDOUT): a thread inside vfork() or in
 * uninterruptible sleep cannot enter a ptrace stop. */
#define SNAPSHOT_STOP_TIMEOUT_MS 300

struct snapshot_range {
    uint64_t start, end;
};

struct snapshot_thread {
    pid_t tid;
    int err;         /* 0, or -errno: why it was not captured */
    int copy_capped; /* the stack copy stopped at a limit, not the mapping's end */
    uint64_t regs[SNAPSHOT_NREGS];
    uint64_t stack_addr; /* target address of stack[0] */
    size_t stack_len;
    const unsigned char *stack; /* inside the snapshot's arena; valid until the next capture */
};

struct snapshot {
    size_t nthreads;
    struct snapshot_thread *threads; /* same order as the tids given to snapshot_capture */
    uint64_t stopped_ns;             /* first PTRACE_INTERRUPT to last PTRACE_DETACH */
    size_t copied_bytes;
    int held; /* snapshot_capture_hold: fn ran while every captured thread was stopped */
    struct snapshot_arena *arena; /* internal: memory shared with the tracer process */
};

int snapshot_new(struct snapshot **ret);
void snapshot_free(struct snapshot *s);
/* Stops the threads tids[0..n) of pid together, copies their registers and stacks, and resumes
 * them. tids must be ascending. ranges (sorted, disjoint) are the target's mappings: a stack is
 * copied up to the end of the range holding its sp. When pid is the calling process, the calling
 * thread is captured by itself and the others by a helper process. Per-thread failures are in
 * threads[i].err (-ESRCH: the thread exited meanwhile, -EPERM: not allowed or already traced,
 * -ETIMEDOUT: it did not stop in time). -ENOMEM, -EINVAL, or fork's errors otherwise. */
int snapshot_capture(struct snapshot *s, pid_t pid, const pid_t *tids, size_t n,
                     const struct snapshot_range *ranges, size_t nranges);

/* Work done while the captured threads are still stopped, after their copies: a dump reads the
 * Python stacks there, so that they describe the same moment as the native ones. fn runs once on
 * the calling thread, after the copies; the threads are released when it returns, or at the
 * stop deadline (SNAPSHOT_STOP_TIMEOUT_MS from the first stop) if it takes longer. */
struct snapshot_hold {
    void (*fn)(void *ctx);
    void *ctx;
};

/* snapshot_capture, then hold->fn while the threads stay stopped. s->held tells whether every
 * captured thread was still stopped when fn returned (0 when the deadline released them first,
 * when no thread stopped, or when pid is the calling process, whose stopped threads could hold
 * a lock fn needs: fn then runs after the release). */
int snapshot_capture_hold(struct snapshot *s, pid_t pid, const pid_t *tids, size_t n,
                          const struct snapshot_range *ranges, size_t nranges,
                          const struct snapshot_hold *hold);

#endif
