/* The shared-memory ring between the allocation hooks injected into a target (memhook.so) and
 * the agent that drains it (memprof.c). The agent creates the file, sized by memring_size(), and
 * fills the header; the hooks map it and append one event per allocation or free. Many producers
 * (the target's threads), one consumer (the agent). x86-64 only, like the rest of the unwinder.
 * This header is shared by both sides and holds only layout, no code that needs a library. */
#ifndef MEMRING_H
#define MEMRING_H

#include <stdint.h>

#define MEMRING_MAGIC 0x50414d454d52494eull /* "PAMEMRIN" */
#define MEMRING_VERSION 1
#define MEMRING_NREGS 17         /* libunwind's x86-64 numbering: RAX..R15, RIP */
#define MEMRING_STACK_BYTES 8192 /* user stack copied per new call site, as perf copies */
#define MEMRING_STACK_NONE UINT32_MAX
/* The hooks wait for space while the agent's heartbeat is younger than this, then give up:
 * they restore every hook and record nothing more (the agent died or hangs). */
#define MEMRING_HEARTBEAT_TIMEOUT_NS 2000000000ull
/* memhook_release unmaps the ring only once the hooks have been off this long: a thread still
 * inside a hook when they went off has left it by then unless it was not running. */
#define MEMRING_RELEASE_QUIET_NS 2000000000ull

enum memring_kind {
    MEMRING_ALLOC = 1, /* ptr, size: a block returned by malloc/calloc/realloc/... */
    MEMRING_FREE = 2,  /* ptr: a block given to free/realloc (size 0) */
};

enum memring_state {
    MEMRING_STATE_NEW = 0,       /* written by the agent: not hooked yet */
    MEMRING_STATE_HOOKED = 1,    /* the hooks are installed and recording */
    MEMRING_STATE_STOPPED = 2,   /* hooks restored by memhook_stop */
    MEMRING_STATE_ABANDONED = 3, /* hooks restored because the heartbeat went stale */
};

struct memring_event {
    uint64_t seq; /* index + 1 once the event is complete (release store) */
    uint64_t ptr;
    uint64_t size;
    uint32_t stack; /* slot in the stack area, or MEMRING_STACK_NONE */
    uint32_t kind;  /* enum memring_kind */
};

/* Registers and a copy of the stack of the thread that called an allocation function, taken at
 * the hook's entry: regs describe the caller (RIP = the return address, RSP = just above it,
 * callee-saved registers as the caller left them; others 0). Written once, before `ready`. */
struct memring_stack {
    uint32_t ready; /* 1 once complete (release store) */
    uint32_t len;   /* bytes in data, from address sp up */
    uint64_t sp;
    uint64_t regs[MEMRING_NREGS];
    unsigned char data[MEMRING_STACK_BYTES];
};

/* Fields marked [agent] are written only by the agent; [hooks] only by the hooks. Counters are
 * accessed with __atomic builtins. */
struct memring_header {
    uint64_t magic;         /* [agent] MEMRING_MAGIC */
    uint32_t version;       /* [agent] MEMRING_VERSION */
    uint32_t header_size;   /* [agent] sizeof(struct memring_header) */
    uint64_t nevents;       /* [agent] a power of two */
    uint64_t nstacks;       /* [agent] stack slots */
    uint64_t sample_bytes;  /* [agent] 0: every allocation; else mean bytes between samples */
    uint64_t events_offset; /* [agent] from the start of the file, 64-byte aligned */
    uint64_t stacks_offset; /* [agent] from the start of the file, 64-byte aligned */

    uint64_t heartbeat_ns; /* [agent] CLOCK_MONOTONIC at the last drain */
    uint32_t stop;         /* [agent] nonzero: unhook at the next call */
    uint32_t pad0;
    uint64_t tail __attribute__((aligned(64))); /* [agent] events consumed */

    uint64_t head __attribute__((aligned(64))); /* [hooks] next event index to reserve */
    uint64_t stacks_used;     /* [hooks] stack slots handed out (may exceed nstacks) */
    uint64_t lost;            /* [hooks] allocations not recorded (no stack slot, no space) */
    uint64_t sampled_full;    /* [hooks] sampled blocks not tracked: the sampled set was full */
    uint32_t state;           /* [hooks] enum memring_state */
    int32_t hook_error;       /* [hooks] negative errno of a failed install, else 0 */
    uint64_t modules_patched; /* [hooks] modules whose GOT got at least one hook */
    uint64_t slots_patched;   /* [hooks] GOT entries rewritten */
};

static inline uint64_t memring_align64(uint64_t n)
{
    return (n + 63) & ~(uint64_t)63;
}

static inline uint64_t memring_events_offset(void)
{
    return memring_align64(sizeof(struct memring_header));
}

static inline uint64_t memring_stacks_offset(uint64_t nevents)
{
    return memring_align64(memring_events_offset() + nevents * sizeof(struct memring_event));
}

static inline uint64_t memring_size(uint64_t nevents, uint64_t nstacks)
{
    return memring_stacks_offset(nevents) + nstacks * sizeof(struct memring_stack);
}

#endif
