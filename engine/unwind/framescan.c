/* Callers without CFI (see framescan.h). Whether a word is a return address is decided from the
 * file's bytes: its executable PT_LOAD segments, read once per module from the program headers,
 * and the instruction that ends right before it. A direct call must also land in the same file's
 * code, which rules out most data that merely happens to hold an 0xe8 five bytes back. A word
 * that is where a function starts (by .eh_frame_hdr) is taken for what it far more often is, a
 * function pointer, though a call to a function that never returns can end the code before. */
#include <elf.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "unwind/cfi.h"
#include "unwind/framescan.h"

#define SEGS_MAX 4     /* executable PT_LOADs remembered per module (linkers write one or two) */
#define PHNUM_MAX 64   /* program headers read per module */
#define CACHE_BITS 6   /* modules whose segments are remembered, direct-mapped by address */
#define CALL_MAX_LEN 7 /* ff /2 with a SIB byte and a 32-bit displacement */
#define ENTRY_LEN 64   /* bytes of the ELF entry point's code (_start) a return address is in */

struct segs {
    const struct module *mod; /* NULL: empty */
    unsigned n;
    uint64_t lo[SEGS_MAX], hi[SEGS_MAX]; /* ELF virtual addresses */
    uint64_t entry;                      /* e_entry, 0: none */
};

struct framescan {
    struct modules *mods;
    struct segs cache[1u << CACHE_BITS];
};

int framescan_new(struct modules *m, struct framescan **ret)
{
    struct framescan *fs = calloc(1, sizeof(*fs));
    if (!fs)
        return -ENOMEM;
    fs->mods = m;
    *ret = fs;
    return 0;
}

void framescan_free(struct framescan *fs)
{
    free(fs);
}

void framescan_flush(struct framescan *fs)
{
    memset(fs->cache, 0, sizeof(fs->cache));
}

/* The file's executable segments from its program headers, which the first PT_LOAD maps along
 * with the ELF header in every file a linker writes. Anything else leaves none: no address in
 * the file then passes for a return address. */
static void load_segs(const struct module *mod, struct segs *e)
{
    Elf64_Ehdr h;
    uint64_t lo, hi;
    const unsigned char *p;

    e->mod = mod;
    e->n = 0;
    e->entry = 0;
    if (!mod->file)
        return;
    symfile_span(mod->file, &lo, &hi);
    p = symfile_data(mod->file, lo, sizeof(h));
    if (!p)
        return;
    memcpy(&h, p, sizeof(h));
    if (memcmp(h.e_ident, ELFMAG, SELFMAG) != 0 || h.e_phentsize != sizeof(Elf64_Phdr) ||
        h.e_phnum > PHNUM_MAX || h.e_phoff > hi - lo)
        return;
    e->entry = h.e_entry;
    for (unsigned i = 0; i < h.e_phnum && e->n < SEGS_MAX; i++) {
        Elf64_Phdr ph;
        p = symfile_data(mod->file, lo + h.e_phoff + (uint64_t)i * sizeof(ph), sizeof(ph));
        if (!p)
            return;
        memcpy(&ph, p, sizeof(ph));
        if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_X) || ph.p_vaddr + ph.p_memsz < ph.p_vaddr)
            continue;
        e->lo[e->n] = ph.p_vaddr;
        e->hi[e->n] = ph.p_vaddr + ph.p_memsz;
        e->n++;
    }
}

static const struct segs *segs_of(struct framescan *fs, struct module *mod)
{
    uint64_t key = (uint64_t)(uintptr_t)mod * 0x9e3779b97f4a7c15ull;
    struct segs *e = &fs->cache[key >> (64 - CACHE_BITS)];
    if (e->mod != mod)
        load_segs(mod, e);
    return e;
}

static bool in_segs(const struct segs *e, uint64_t vaddr)
{
    for (unsigned i = 0; i < e->n; i++)
        if (vaddr >= e->lo[i] && vaddr < e->hi[i])
            return true;
    return false;
}

/* Length of the ff /2 (call r/m64) instruction starting at p, 0 when it is not one; p holds at
 * least 3 bytes when modrm asks for a SIB byte. */
static unsigned indirect_call_len(const unsigned char *p, unsigned avail)
{
    unsigned modrm = p[1], mod = modrm >> 6, rm = modrm & 7, len = 2;

    if (p[0] != 0xff || ((modrm >> 3) & 7) != 2)
        return 0;
    if (mod == 3)
        return len;
    if (rm == 4) {
        if (avail < 3)
            return 0;
        len++;
        if (mod == 0 && (p[2] & 7) == 5)
            len += 4; /* SIB with no base: a 32-bit displacement */
    } else if (mod == 0 && rm == 5) {
        len += 4; /* rip-relative */
    }
    if (mod == 1)
        len += 1;
    else if (mod == 2)
        len += 4;
    return len;
}

/* Whether vaddr is the first byte of a function listed in mod's .eh_frame_hdr table. */
static bool function_start(struct module *mod, uint64_t vaddr)
{
    uint64_t start, fde;
    return cfi_find(mod, vaddr, &start, &fde) == 0 && start == vaddr;
}

/* Whether the instruction ending at vaddr in mod's file is a call. */
static bool after_call(const struct module *mod, const struct segs *e, uint64_t vaddr)
{
    const unsigned char *p;

    if (vaddr >= 5 && (p = symfile_data(mod->file, vaddr - 5, 5)) && p[0] == 0xe8) {
        int32_t rel;
        memcpy(&rel, p + 1, sizeof(rel));
        if (in_segs(e, vaddr + (uint64_t)(int64_t)rel))
            return true;
    }
    for (unsigned len = 2; len <= CALL_MAX_LEN; len++)
        if (vaddr >= len && (p = symfile_data(mod->file, vaddr - len, len)) &&
            indirect_call_len(p, len) == len)
            return true;
    return false;
}

/* The module holding addr with its segments, and addr as the file's virtual address; NULL when
 * no file is mapped there. */
static const struct segs *segs_at(struct framescan *fs, uint64_t addr, struct module **ret_mod,
                                  uint64_t *ret_vaddr)
{
    struct module *mod = modules_find(fs->mods, addr);
    if (!mod || !mod->file)
        return NULL;
    *ret_mod = mod;
    *ret_vaddr = addr - mod->bias;
    return segs_of(fs, mod);
}

bool framescan_is_return_address(struct framescan *fs, uint64_t addr)
{
    struct module *mod;
    uint64_t vaddr;
    const struct segs *e = segs_at(fs, addr, &mod, &vaddr);
    return e && in_segs(e, vaddr) && after_call(mod, e, vaddr) && !function_start(mod, vaddr);
}

bool framescan_is_entry(struct framescan *fs, uint64_t ip)
{
    struct module *mod;
    uint64_t vaddr;
    const struct segs *e = segs_at(fs, ip, &mod, &vaddr);
    return e && e->entry && vaddr > e->entry && vaddr - e->entry <= ENTRY_LEN;
}

bool framescan_stack_word(const struct snapshot_thread *t, uint64_t addr, uint64_t *ret)
{
    if (addr < t->stack_addr || t->stack_len < 8 || addr - t->stack_addr > t->stack_len - 8)
        return false;
    memcpy(ret, t->stack + (addr - t->stack_addr), 8);
    return true;
}

enum framescan_how framescan_caller(struct framescan *fs, const struct snapshot_thread *t,
                                    const struct framescan_regs *frame,
                                    struct framescan_regs *caller, bool *ret_bounded)
{
    uint64_t end = t->stack_addr + t->stack_len, fp_slot = 0, saved = 0, ra, limit, stop, a;

    *ret_bounded = false;
    if (frame->sp < t->stack_addr || frame->sp >= end)
        return FRAMESCAN_NONE;
    /* A frame record: the caller's rbp, then the return address, above this frame's sp, with
     * the saved rbp further up the stack (or 0, where the chain ends). */
    if (frame->rbp % 8 == 0 && frame->rbp >= frame->sp &&
        framescan_stack_word(t, frame->rbp, &saved) &&
        framescan_stack_word(t, frame->rbp + 8, &ra) && (saved == 0 || saved >= frame->rbp + 16) &&
        framescan_is_return_address(fs, ra))
        fp_slot = frame->rbp + 8;
    limit = end - frame->sp > FRAMESCAN_BYTES ? frame->sp + FRAMESCAN_BYTES : end;
    /* A return address below the record means rbp is not this frame's: code without a frame
     * pointer called from code with one leaves rbp at its caller's record, and following it
     * would skip that caller. */
    stop = fp_slot && fp_slot < limit ? fp_slot : limit;
    for (a = (frame->sp + 7) & ~7ull; a < stop; a += 8) {
        if (framescan_stack_word(t, a, &ra) && framescan_is_return_address(fs, ra)) {
            *caller = (struct framescan_regs){ra, a + 8, frame->rbp};
            return FRAMESCAN_STACK;
        }
    }
    if (fp_slot) {
        framescan_stack_word(t, fp_slot, &ra);
        *caller = (struct framescan_regs){ra, fp_slot + 8, saved};
        return FRAMESCAN_FP;
    }
    *ret_bounded = limit < end;
    return FRAMESCAN_NONE;
}
