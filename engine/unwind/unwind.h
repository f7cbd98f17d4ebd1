/* Offline unwinding of a thread snapshot with libunwind's remote API: one address space per
 * target, with accessors that read the copied stack, the captured registers, and code and
 * .eh_frame data from the mapped ELF files themselves (never the live process). Code without
 * CFI is walked through by frame pointer or stack scanning (framescan.h). It yields instruction
 * pointers; naming them is the symbolizer's job. */
#ifndef UNWIND_H
#define UNWIND_H

#include <stdint.h>
#include <stddef.h>
#include "unwind/modules.h"
#include "os/snapshot.h"

#define UNWIND_MAX_FRAMES 1024

struct unwind_frame {
    uint64_t ip;
    int exact;   /* ip is where the thread is, not a return address (look up ip - 1) */
    uint64_t sp; /* the stack pointer in this frame: its locals lie from here up to the next
                    frame's sp */
    int scanned; /* found by scanning the stack for a return address: likely, not certain */
};

struct unwind;

/* The unwinder reads modules through m, which must outlive it. -ENOMEM. */
int unwind_new(struct modules *m, struct unwind **ret);
void unwind_free(struct unwind *u);
/* Drops libunwind's cached unwind state: call when the modules changed. */
void unwind_flush(struct unwind *u);
/* Frames of t, innermost first, at most max, the first being t's registers. *ret_truncated:
 * the walk stopped before the outermost frame (error, loop, or max reached), or, in code without
 * CFI, found no caller within the scan's limit or the stack copy's (copy_capped). max is capped
 * at UNWIND_MAX_FRAMES. -EINVAL when max is 0. */
int unwind_thread(struct unwind *u, const struct snapshot_thread *t, struct unwind_frame *frames,
                  size_t max, size_t *ret_n, int *ret_truncated);

#endif
