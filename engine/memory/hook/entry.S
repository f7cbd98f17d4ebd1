/* Entry trampolines of the allocation hooks: each saves the caller's callee-saved registers and
 * leaves the return address right above them (struct memhook_frame in memhook.h), then calls its
 * C hook with a pointer to that frame as one extra argument. x86-64 System V only. */

.macro HOOK_ENTRY name, framereg
    .globl memhook_entry_\name
    .hidden memhook_entry_\name
    .type memhook_entry_\name, @function
    .p2align 4
memhook_entry_\name:
    .cfi_startproc
    endbr64
    sub $56, %rsp                   /* 6 registers + 8 bytes to keep the call 16-byte aligned */
    .cfi_adjust_cfa_offset 56
    mov %rbx, 0(%rsp)
    .cfi_rel_offset %rbx, 0
    mov %rbp, 8(%rsp)
    .cfi_rel_offset %rbp, 8
    mov %r12, 16(%rsp)
    .cfi_rel_offset %r12, 16
    mov %r13, 24(%rsp)
    .cfi_rel_offset %r13, 24
    mov %r14, 32(%rsp)
    .cfi_rel_offset %r14, 32
    mov %r15, 40(%rsp)
    .cfi_rel_offset %r15, 40
    mov %rsp, \framereg
    call memhook_c_\name
    add $56, %rsp
    .cfi_adjust_cfa_offset -56
    ret
    .cfi_endproc
    .size memhook_entry_\name, . - memhook_entry_\name
.endm

    .text
    HOOK_ENTRY malloc, %rsi
    HOOK_ENTRY calloc, %rdx
    HOOK_ENTRY realloc, %rdx
    HOOK_ENTRY reallocarray, %rcx
    HOOK_ENTRY posix_memalign, %rcx
    HOOK_ENTRY aligned_alloc, %rdx
    HOOK_ENTRY memalign, %rdx
    HOOK_ENTRY valloc, %rsi
    HOOK_ENTRY pvalloc, %rsi

    .section .note.GNU-stack, "", @progbits
