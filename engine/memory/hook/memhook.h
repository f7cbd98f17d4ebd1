/* Internal interface of the injected allocation-hook library (libprofiler-agent-memhook.so):
 * the hook targets, the register frame the assembly entries hand to the C hooks, and the GOT
 * patcher. Nothing here is exported from the library; memring.h is the agent's side. */
#ifndef MEMHOOK_H
#define MEMHOOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One function whose GOT slots get rewritten: `hook` replaces it, `real` is the definition the
 * process binds it to (0: not present, never patched). `canonical` is the executable's canonical
 * PLT entry for it, or 0: the function's address as the program sees it, never patched over. */
struct memhook_target {
    const char *name;
    uintptr_t hook;
    uintptr_t real;
    uintptr_t canonical;
};

/* What an entry trampoline (entry.S) saves on the stack before calling its C hook: the caller's
 * callee-saved registers, then the return address the call pushed. The caller's stack pointer
 * is &ret + 1. */
struct memhook_frame {
    uint64_t rbx, rbp, r12, r13, r14, r15;
    uint64_t pad;
    uint64_t ret;
};

struct got_stats {
    uint64_t modules; /* modules with at least one slot newly patched */
    uint64_t slots;   /* slots newly patched */
};

/* Patches every slot of `targets` in every ready module but this library and the dynamic
 * loader; slots already pointing at their hook are left as they are. On failure the slots
 * patched so far stay patched: call got_restore_all(). Callers serialize all got_ calls. */
int got_patch_all(const struct memhook_target *targets, size_t n, struct got_stats *ret_stats);
/* Puts back the original value of every patched slot that still holds its hook. */
int got_restore_all(void);
/* What the PLT slot for name of the module holding addr is bound to; 0 when it has none or it
 * is not bound yet (lazy binding). *ret_canonical: addr is that module's canonical PLT entry
 * for name (its undefined symbol name has addr as its value). */
uintptr_t got_plt_binding(uintptr_t addr, const char *name, bool *ret_canonical);
/* A counter that grows whenever a module gets loaded (dl_iterate_phdr's dlpi_adds). */
uint64_t got_loads(void);

/* entry.S: save the caller's registers into a struct memhook_frame and call memhook_c_NAME. */
void *memhook_entry_malloc(size_t n);
void *memhook_entry_calloc(size_t nmemb, size_t size);
void *memhook_entry_realloc(void *old, size_t n);
void *memhook_entry_reallocarray(void *old, size_t nmemb, size_t size);
int memhook_entry_posix_memalign(void **out, size_t align, size_t n);
void *memhook_entry_aligned_alloc(size_t align, size_t n);
void *memhook_entry_memalign(size_t align, size_t n);
void *memhook_entry_valloc(size_t n);
void *memhook_entry_pvalloc(size_t n);

void *memhook_c_malloc(size_t n, const struct memhook_frame *f);
void *memhook_c_calloc(size_t nmemb, size_t size, const struct memhook_frame *f);
void *memhook_c_realloc(void *old, size_t n, const struct memhook_frame *f);
void *memhook_c_reallocarray(void *old, size_t nmemb, size_t size, const struct memhook_frame *f);
int memhook_c_posix_memalign(void **out, size_t align, size_t n, const struct memhook_frame *f);
void *memhook_c_aligned_alloc(size_t align, size_t n, const struct memhook_frame *f);
void *memhook_c_memalign(size_t align, size_t n, const struct memhook_frame *f);
void *memhook_c_valloc(size_t n, const struct memhook_frame *f);
void *memhook_c_pvalloc(size_t n, const struct memhook_frame *f);

#endif
