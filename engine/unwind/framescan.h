/* The caller of a frame whose code has no CFI (musl's libc, hand-written assembly, stripped
 * .eh_frame), found as Breakpad's stack walker finds it: through the frame pointer where the
 * code keeps one, else by scanning the stack copy for a word that looks like a return address:
 * inside an executable segment of a mapped file, right after a call instruction. It reads only
 * the stack copy and the files' bytes, never the live process, and it does not read CFI:
 * unwind.c does, and asks here only where CFI is missing. */
#ifndef FRAMESCAN_H
#define FRAMESCAN_H

#include <stdbool.h>
#include <stdint.h>
#include "os/snapshot.h"
#include "unwind/modules.h"

#define FRAMESCAN_BYTES 2048 /* stack bytes searched for one caller */

enum framescan_how {
    FRAMESCAN_NONE,  /* no caller found */
    FRAMESCAN_FP,    /* through the frame pointer: rbp pointed at a frame record */
    FRAMESCAN_STACK, /* the first word above sp that looks like a return address */
};

struct framescan_regs {
    uint64_t ip, sp, rbp;
};

struct framescan;

/* Reads modules through m, which must outlive it. -ENOMEM. */
int framescan_new(struct modules *m, struct framescan **ret);
void framescan_free(struct framescan *fs);
/* Forgets what it learnt of the modules: call when they changed. */
void framescan_flush(struct framescan *fs);
/* The caller of frame in t's stack copy. The frame pointer is taken when rbp points into the
 * copy at a record {saved rbp, return address} with no return address below it; otherwise the
 * first return address from sp up, within FRAMESCAN_BYTES and the copy (the caller's rbp is
 * then the frame's, which code without a frame pointer leaves alone). *ret_bounded: nothing was
 * found before the search limit, while the copy went on. */
enum framescan_how framescan_caller(struct framescan *fs, const struct snapshot_thread *t,
                                    const struct framescan_regs *frame,
                                    struct framescan_regs *caller, bool *ret_bounded);
/* Whether addr is inside an executable segment of a mapped file, just after a call (e8 rel32
 * into the same file's code, or ff /2 in any of its addressing forms), and not the start of a
 * function listed in the file's .eh_frame_hdr. */
bool framescan_is_return_address(struct framescan *fs, uint64_t addr);
/* The word at addr of t's stack copy into *ret; false when it is not all inside the copy. */
bool framescan_stack_word(const struct snapshot_thread *t, uint64_t addr, uint64_t *ret);
/* Whether the return address ip is in the code at a file's ELF entry point (_start), the
 * outermost frame of a process's first thread. */
bool framescan_is_entry(struct framescan *fs, uint64_t ip);

#endif
