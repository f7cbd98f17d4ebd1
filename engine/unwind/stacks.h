/* The snapshot unwinder: a consistent picture of every thread's native stack in a target.
 * Each dump seizes all threads (PTRACE_SEIZE + PTRACE_INTERRUPT), copies their registers
 * (PTRACE_GETREGSET) and live stacks (process_vm_readv), detaches at once, and then unwinds
 * offline from the copy (unwind.h). One struct stacks per target keeps the unwinder's state
 * (CFI rows, libunwind's address space), module list, unwind tables and symbols across dumps,
 * profiles and allocation samples; it is flushed when the target's mappings change. Frames
 * are symbolized from ELF .symtab/.dynsym and DWARF lines (libdw), with separate debug files
 * found by build-id. */
#ifndef STACKS_H
#define STACKS_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include "os/error.h"
#include "os/procfs.h"
#include "os/snapshot.h"

#define STACKS_MAX_FRAMES 256
#define STACKS_MAX_THREADS 65536
#define STACKS_NAME_MAX 128 /* a thread's name: its comm, or its Python name (threading.Thread) */

struct stacks_frame {
    uint64_t ip;
    uint64_t sp; /* the stack pointer in this frame (0: unknown): what lies between it and the
                    next frame's sp is this frame's, e.g. an eval loop's entry frame */
    const char *module; /* path of the mapped file, or NULL; owned by the stacks cache */
    uint64_t offset;    /* ip relative to the module's load base (as in perf's DSO offsets):
                           ip minus load bias, the ELF virtual address */
    const char *func;   /* symbol name or NULL; owned by the cache */
    const char *file;   /* DWARF source file or NULL; owned by the cache */
    int line;           /* 0 when unknown */
    int func_line;      /* first line of the function (DWARF decl_line), 0 when unknown */
    bool python;        /* a Python-level frame (pyframes.h): file, line, func and
                           func_line only, no ip or module */
    bool scanned;       /* found by scanning the stack below code without CFI (musl's libc):
                           a return address that is likely this frame's, not certainly */
};

struct stacks_thread {
    pid_t tid;
    char name[STACKS_NAME_MAX];
    int err;       /* 0, or why this thread could not be captured/unwound */
    int truncated; /* unwinding stopped before the outermost frame */
    size_t nframes;
    struct stacks_frame frames[]; /* innermost first */
};

struct stacks_dump {
    size_t nthreads;
    struct stacks_thread **threads; /* in tid order */
    uint64_t stopped_ns;            /* longest time any thread was kept stopped */
    uint64_t total_ns;              /* whole dump, capture and unwind */
    size_t copied_bytes;            /* stack bytes copied */
    bool held;                      /* the hold's fn ran while every captured thread was stopped */
};

struct stacks;

/* Per-target unwinder state. -ENOMEM, -ESRCH. */
int stacks_new(pid_t pid, struct stacks **ret);
void stacks_free(struct stacks *s);
/* Captures and unwinds every thread. The target is never left stopped or traced, whatever
 * fails. Threads that could not be seized are listed with err set. The dump's strings stay
 * valid until a later call on s finds the mappings changed (the next stacks_dump_threads, or a
 * stacks_unwind_regs that re-reads them) or stacks_free. -ESRCH: the target has gone; when no
 * thread could be captured, their common error (-EPERM: not allowed or already traced,
 * -ETIMEDOUT: none stopped in time, with why in err); an unreadable maps file (named in err);
 * -ENOMEM. hold (may be NULL): work done while the threads are still stopped (see
 * snapshot_capture_hold), d->held says whether it was. err may be NULL. */
int stacks_dump_threads(struct stacks *s, const struct snapshot_hold *hold,
                        struct stacks_dump **ret, struct error *err);
void stacks_dump_free(struct stacks_dump *d);
/* Unwinds one thread from registers and a stack copy taken elsewhere (a perf_event sample's
 * PERF_SAMPLE_REGS_USER + PERF_SAMPLE_STACK_USER, in libunwind's x86-64 register numbering;
 * stack[0] is at target address stack_addr). Frames go to out[0..max), innermost first; a stack
 * that could not be followed to its root sets *ret_truncated (its frames still count, and a
 * sample that cannot be unwound at all still gives its ip as one frame). Every read of the copy
 * is bounds-checked. Caches (modules, unwind tables, symbols, and symbolized frames by address)
 * are shared with stacks_dump_threads and kept across calls. The maps are re-read only after
 * stacks_maps_changed, or when an address falls outside every known module (at most every
 * 100 ms); a failed re-read keeps the previous modules. The frames' strings stay valid until
 * such a re-read finds the mappings changed (in this function or stacks_dump_threads), or
 * stacks_free: callers that keep them must copy them. -EINVAL for a NULL regs/out, max 0, or
 * a NULL stack with stack_len > 0. Not thread-safe, like everything on one struct stacks. */
int stacks_unwind_regs(struct stacks *s, const uint64_t regs[17], uint64_t stack_addr,
                       const unsigned char *stack, size_t stack_len, struct stacks_frame *out,
                       size_t max, size_t *ret_n, int *ret_truncated);
/* The target's mappings changed (a PERF_RECORD_MMAP2, an exec): the next unwind re-reads them,
 * drops libunwind's cached state and the modules that went away, and keeps those still mapped
 * with their loaded tables and symbols. */
void stacks_maps_changed(struct stacks *s);

/* The log record for one thread, as the contract's log_thread_frames format says:
 * "Thread [NAME]: tid=TID" then frames outermost first. malloc'd. Lines are joined by '\n',
 * with no newline at the end. A frame is `  File "FILE", line N, in FUNC [MODULE+0xOFF]`
 * (FILE: DWARF source, else the module path; N: 0 when unknown; FUNC: `??` when no symbol;
 * OFF: ip minus load bias, an ELF virtual address as addr2line takes it), followed by
 * ` (scanned)` for a frame found by stack scanning; a frame outside any
 * file mapping ends in `[0xIP]` and names file "??"; a Python frame has no bracket at all, as in
 * Python's own tracebacks. A thread that could not be captured has
 * one line `  <unavailable: STRERROR>`; a truncated stack ends with the line
 * `  <truncated: outer frames missing>` (the missing frames are the outermost ones). */
int stacks_format_thread(const struct stacks_thread *t, char **ret);

#endif
