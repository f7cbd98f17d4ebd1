/* The snapshot unwinder: a consistent picture of every thread's native stack in a target.
 * Each dump seizes all threads (PTRACE_SEIZE + PTRACE_INTERRUPT), copies their registers
 * (PTRACE_GETREGSET) and live stacks (process_vm_readv), detaches at once, and then unwinds
 * offline with libunwind's remote API from the copy. One struct stacks per target keeps the
 * libunwind address space, module list, unwind tables and symbols across dumps; it is flushed
 * when the target's mappings change. Frames are symbolized from ELF .symtab/.dynsym and DWARF
 * lines (libdw), with separate debug files found by build-id. */
#ifndef STACKS_H
#define STACKS_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include "procfs.h"

#define STACKS_MAX_FRAMES 256
#define STACKS_MAX_THREADS 65536

struct stacks_frame {
    uint64_t ip;
    const char *module;     /* path of the mapped file, or NULL; owned by the stacks cache */
    uint64_t offset;        /* ip relative to the module's load base (as in perf's DSO offsets):
                               ip minus load bias, the ELF virtual address */
    const char *func;       /* symbol name or NULL; owned by the cache */
    const char *file;       /* DWARF source file or NULL; owned by the cache */
    int line;               /* 0 when unknown */
};

struct stacks_thread {
    pid_t tid;
    char name[PROCFS_COMM_MAX];
    int err;                        /* 0, or why this thread could not be captured/unwound */
    int truncated;                  /* unwinding stopped before the outermost frame */
    size_t nframes;
    struct stacks_frame frames[];   /* innermost first */
};

struct stacks_dump {
    size_t nthreads;
    struct stacks_thread **threads; /* in tid order */
    uint64_t stopped_ns;            /* longest time any thread was kept stopped */
    uint64_t total_ns;              /* whole dump, capture and unwind */
    size_t copied_bytes;            /* stack bytes copied */
};

struct stacks;

/* Per-target unwinder state. -ENOMEM, -ESRCH. */
int stacks_new(pid_t pid, struct stacks **ret);
void stacks_free(struct stacks *s);
/* Captures and unwinds every thread. The target is never left stopped or traced, whatever
 * fails. Threads that could not be seized are listed with err set. The dump's strings stay
 * valid until the next stacks_dump_threads on s or stacks_free. */
int stacks_dump_threads(struct stacks *s, struct stacks_dump **ret);
void stacks_dump_free(struct stacks_dump *d);
/* The log record for one thread, as the contract's log_thread_frames format says:
 * "Thread [NAME]: tid=TID" then frames outermost first. malloc'd. Lines are joined by '\n',
 * with no newline at the end. A frame is `  File "FILE", line N, in FUNC [MODULE+0xOFF]`
 * (FILE: DWARF source, else the module path; N: 0 when unknown; FUNC: `??` when no symbol;
 * OFF: ip minus load bias, an ELF virtual address as addr2line takes it); a frame outside any
 * file mapping ends in `[0xIP]` and names file "??". A thread that could not be captured has
 * one line `  <unavailable: STRERROR>`; a truncated stack ends with the line
 * `  <truncated: outer frames missing>` (the missing frames are the outermost ones). */
int stacks_format_thread(const struct stacks_thread *t, char **ret);

#endif
