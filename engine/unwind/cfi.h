/* The CFI row of one address, read from a mapped file's .eh_frame as the compiler wrote it: how
 * to find the caller's frame (CFA = rsp or rbp + offset) and where the return address and the
 * callee-saved registers were saved. Only the rules compilers emit for ordinary functions are
 * run (offsets from the CFA, same value, undefined); DWARF expressions, register-to-register
 * rules and signal frames are left to libunwind, which unwind.c calls for those. It reads the
 * file's bytes through the module (symbols.h), never the live process, and caches nothing:
 * unwind.c keeps the rows it was given. */
#ifndef CFI_H
#define CFI_H

#include <stdint.h>
#include "unwind/modules.h"

/* Registers restored from a row, in this order; DWARF's x86-64 numbers, which are libunwind's
 * and snapshot.h's too. */
enum cfi_reg { CFI_RA, CFI_RBP, CFI_RBX, CFI_R12, CFI_R13, CFI_R14, CFI_R15, CFI_NREGS };
#define CFI_DWARF_RSP 7
#define CFI_DWARF_RBP 6

enum cfi_how {
    CFI_SAME,  /* the callee did not change it */
    CFI_UNDEF, /* not recoverable: for the return address, the outermost frame */
    CFI_AT,    /* saved at CFA + off */
};

struct cfi_row {
    uint8_t cfa_reg; /* CFI_DWARF_RSP or CFI_DWARF_RBP */
    int32_t cfa_off;
    uint8_t how[CFI_NREGS];
    int32_t off[CFI_NREGS];
};

#define CFI_STATE_MAX 16    /* DW_CFA_remember_state nesting */
#define CFI_INSNS_MAX 65536 /* bytes of CIE and FDE instructions run for one row */

/* The .eh_frame_hdr entry for vaddr in mod: the start of the last function listed at or below
 * it and the address of its FDE (ELF virtual addresses). -ENOENT when the module has no table or
 * vaddr lies below its first function. */
int cfi_find(struct module *mod, uint64_t vaddr, uint64_t *ret_start, uint64_t *ret_fde);
/* The row in effect at vaddr in mod. -ENOENT: no FDE covers vaddr; -EOPNOTSUPP: its rules are
 * beyond those above, or it is a signal frame; -EINVAL: the CIE or FDE is malformed. */
int cfi_row_at(struct module *mod, uint64_t vaddr, struct cfi_row *ret);

#endif
