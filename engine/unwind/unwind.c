/* Offline unwinding (see unwind.h). Each step takes the frame's CFI row from a cache of rows by
 * address, filled from .eh_frame by cfi.c, and applies it to the registers: a few reads of the
 * stack copy, no system call. libunwind's remote API steps where cfi.c runs no rule (signal
 * frames, DWARF expressions, PLT stubs); its every read goes through access_mem: the stack copy,
 * then the file bytes of the module holding the address. Its own cache is global per address
 * space and takes a lock around every step with two sigprocmask calls, which cost more than the
 * step: hence the rows. Where a frame's code has no CFI, framescan.c finds the caller. */
#include <errno.h>
#include <string.h>
#include <stdlib.h>
#include <libunwind.h>
#include "os/cachestat.h"
#include "unwind/cfi.h"
#include "unwind/framescan.h"
#include "unwind/unwind.h"

/* Exported by libunwind but not declared in its headers (perf declares it the same way). */
extern int UNW_OBJ(dwarf_search_unwind_table)(unw_addr_space_t as, unw_word_t ip,
                                              unw_dyn_info_t *di, unw_proc_info_t *pi,
                                              int need_unwind_info, void *arg);

/* Steps of one walk taken by libunwind or framescan: each costs system calls or a scan of up
 * to FRAMESCAN_BYTES. */
#define FALLBACK_MAX 64
#define ROWS_BITS 12 /* CFI rows kept per target, direct-mapped by address (~230 KiB) */

/* The row for one lookup address (a frame's exact ip, or a return address - 1). */
struct row_entry {
    uint64_t key; /* address + 1, 0: empty */
    int status;   /* cfi_row_at's: 0, or why there is no row to run */
    struct cfi_row row;
};

struct unwind {
    unw_addr_space_t as;
    struct modules *mods;
    struct framescan *fs;
    struct row_entry *rows; /* allocated by the first walk */
};

CACHESTAT_DEFINE(row_stats, "cfi_rows", 1u << ROWS_BITS)

struct uctx {
    struct unwind *u;
    const struct snapshot_thread *t;
    uint64_t regs[SNAPSHOT_NREGS]; /* where the walk (re)starts: t's, or a caller's */
    uint64_t ret_ip;               /* the walk restarted at this return address */
    int noinfo;                    /* find_proc_info found no CFI for the frame being stepped */
};

static int find_proc_info(unw_addr_space_t as, unw_word_t ip, unw_proc_info_t *pi,
                          int need_unwind_info, void *arg)
{
    struct uctx *c = arg;
    /* libunwind takes a restarted walk's first ip as exact; it is a return address, and the
     * call before it may be its function's last instruction. */
    if (c->ret_ip && ip == c->ret_ip)
        ip--;
    struct module *mod = modules_find(c->u->mods, ip);
    if (!mod || modules_eh_table(mod) < 0) {
        c->noinfo = 1;
        return -UNW_ENOINFO;
    }
    unw_dyn_info_t di;
    memset(&di, 0, sizeof(di));
    di.format = UNW_INFO_FORMAT_REMOTE_TABLE;
    di.start_ip = mod->start;
    di.end_ip = mod->end;
    di.u.rti.segbase = mod->eh_hdr + mod->bias;
    di.u.rti.table_data = mod->eh_table + mod->bias;
    /* In words, though each entry is two int32: libunwind's unit for this field. */
    di.u.rti.table_len = mod->eh_count * 8 / sizeof(unw_word_t);
    int r = UNW_OBJ(dwarf_search_unwind_table)(as, ip, &di, pi, need_unwind_info, arg);
    if (r < 0)
        c->noinfo = 1;
    return r;
}

/* Unwind info from REMOTE_TABLE lookups is freed by libunwind itself. */
static void put_unwind_info(unw_addr_space_t as, unw_proc_info_t *pi, void *arg)
{
    (void)as, (void)pi, (void)arg;
}

static int get_dyn_info_list_addr(unw_addr_space_t as, unw_word_t *dilap, void *arg)
{
    (void)as, (void)dilap, (void)arg;
    return -UNW_ENOINFO;
}

static int access_mem(unw_addr_space_t as, unw_word_t addr, unw_word_t *valp, int write, void *arg)
{
    struct uctx *c = arg;
    const struct snapshot_thread *t = c->t;
    (void)as;
    if (write)
        return -UNW_EINVAL;
    if (addr >= t->stack_addr && t->stack_len >= sizeof(*valp) &&
        addr - t->stack_addr <= t->stack_len - sizeof(*valp)) {
        memcpy(valp, t->stack + (addr - t->stack_addr), sizeof(*valp));
        return 0;
    }
    struct module *mod = modules_find(c->u->mods, addr);
    if (!mod || !mod->file)
        return -UNW_EINVAL;
    const unsigned char *p = symfile_data(mod->file, addr - mod->bias, sizeof(*valp));
    if (!p)
        return -UNW_EINVAL;
    memcpy(valp, p, sizeof(*valp));
    return 0;
}

static int access_reg(unw_addr_space_t as, unw_regnum_t reg, unw_word_t *valp, int write, void *arg)
{
    struct uctx *c = arg;
    (void)as;
    if (write)
        return -UNW_EREADONLYREG;
    if (reg < 0 || reg >= SNAPSHOT_NREGS)
        return -UNW_EBADREG;
    *valp = c->regs[reg];
    return 0;
}

static int access_fpreg(unw_addr_space_t as, unw_regnum_t reg, unw_fpreg_t *val, int write,
                        void *arg)
{
    (void)as, (void)reg, (void)val, (void)write, (void)arg;
    return -UNW_EBADREG;
}

static int resume(unw_addr_space_t as, unw_cursor_t *cp, void *arg)
{
    (void)as, (void)cp, (void)arg;
    return -UNW_EINVAL;
}

static unw_accessors_t accessors = {
    .find_proc_info = find_proc_info,
    .put_unwind_info = put_unwind_info,
    .get_dyn_info_list_addr = get_dyn_info_list_addr,
    .access_mem = access_mem,
    .access_reg = access_reg,
    .access_fpreg = access_fpreg,
    .resume = resume,
    .get_proc_name = NULL,
};

int unwind_new(struct modules *m, struct unwind **ret)
{
    struct unwind *u = calloc(1, sizeof(*u));
    if (!u)
        return -ENOMEM;
    u->as = unw_create_addr_space(&accessors, 0);
    if (!u->as) {
        free(u);
        return -ENOMEM;
    }
    /* Caching is off for new address spaces; the space lives as long as the target does. */
    unw_set_caching_policy(u->as, UNW_CACHE_GLOBAL);
    u->mods = m;
    if (framescan_new(m, &u->fs) < 0) {
        unwind_free(u);
        return -ENOMEM;
    }
    *ret = u;
    return 0;
}

void unwind_free(struct unwind *u)
{
    if (!u)
        return;
    unw_destroy_addr_space(u->as);
    framescan_free(u->fs);
    free(u->rows);
    free(u);
}

void unwind_flush(struct unwind *u)
{
    unw_flush_cache(u->as, 0, 0);
    framescan_flush(u->fs);
    if (u->rows)
        memset(u->rows, 0, sizeof(*u->rows) << ROWS_BITS);
}

/* The row for addr, computed once and kept; *tmp holds it when the table could not be had. */
static const struct row_entry *row_get(struct unwind *u, uint64_t addr, struct row_entry *tmp)
{
    struct row_entry *e = tmp;
    if (!u->rows)
        u->rows = calloc((size_t)1 << ROWS_BITS, sizeof(*u->rows));
    if (u->rows)
        e = &u->rows[(addr * 0x9e3779b97f4a7c15ull) >> (64 - ROWS_BITS)];
    if (e->key == addr + 1) {
        cachestat_hit(&row_stats);
        return e;
    }
    cachestat_miss(&row_stats);
    struct module *mod = modules_find(u->mods, addr);
    e->status = mod ? cfi_row_at(mod, addr - mod->bias, &e->row) : -ENOENT;
    e->key = addr + 1;
    return e;
}

/* Steps regs to the caller by row: 1, 0 at the outermost frame (return address undefined), -1
 * when the return address lies outside the stack copy or the CFA does not move up the stack. */
static int apply_row(const struct snapshot_thread *t, const struct cfi_row *row, uint64_t *regs)
{
    /* cfi.h's order, in libunwind's numbering (DWARF's, as cfa_reg is). */
    static const int dwarf[CFI_NREGS] = {UNW_X86_64_RIP, UNW_X86_64_RBP, UNW_X86_64_RBX,
                                         UNW_X86_64_R12, UNW_X86_64_R13, UNW_X86_64_R14,
                                         UNW_X86_64_R15};
    uint64_t vals[CFI_NREGS];
    uint64_t cfa = regs[row->cfa_reg] + (uint64_t)(int64_t)row->cfa_off;

    if (cfa <= regs[UNW_X86_64_RSP])
        return -1;
    for (int i = 0; i < CFI_NREGS; i++) {
        switch (row->how[i]) {
        case CFI_SAME:
            vals[i] = regs[dwarf[i]];
            break;
        case CFI_UNDEF:
            if (i == CFI_RA)
                return 0;
            vals[i] = 0;
            break;
        default: {
            uint64_t at = cfa + (uint64_t)(int64_t)row->off[i];
            /* In an epilogue the rules still name slots below sp that were popped already:
             * the register holds what they held. */
            if (i != CFI_RA && at < regs[UNW_X86_64_RSP]) {
                vals[i] = regs[dwarf[i]];
            } else if (!framescan_stack_word(t, at, &vals[i])) {
                if (i == CFI_RA)
                    return -1;
                vals[i] = 0; /* not in the copy: unknown, which only a frame pointer needs */
            }
            break;
        }
        }
    }
    for (int i = 0; i < CFI_NREGS; i++)
        regs[dwarf[i]] = vals[i];
    regs[UNW_X86_64_RSP] = cfa;
    return 1;
}

/* The caller of a frame without CFI, by framescan. 1 found, 0 none (*ret_bounded: the search
 * stopped at its limit, or at the end of a copy that did not reach the stack's end). */
static int step_without_cfi(struct uctx *c, int *ret_scanned, int *ret_bounded)
{
    struct framescan_regs f = {c->regs[UNW_X86_64_RIP], c->regs[UNW_X86_64_RSP],
                               c->regs[UNW_X86_64_RBP]},
                          caller;
    bool bounded;

    /* _start has no CFI in musl's crt1 and no caller either: what lies above it is argv and
     * the environment. */
    if (framescan_is_entry(c->u->fs, f.ip))
        return 0;
    enum framescan_how how = framescan_caller(c->u->fs, c->t, &f, &caller, &bounded);
    if (how == FRAMESCAN_NONE) {
        *ret_bounded = bounded || c->t->copy_capped;
        return 0;
    }
    /* Code without CFI is taken to have left the callee-saved registers as it found them. */
    c->regs[UNW_X86_64_RBP] = caller.rbp;
    c->regs[UNW_X86_64_RSP] = caller.sp;
    c->regs[UNW_X86_64_RIP] = caller.ip;
    *ret_scanned = how == FRAMESCAN_STACK;
    return 1;
}

/* One step by libunwind from c->regs, for rows cfi.c does not run. 1 stepped (*ret_sigframe:
 * the frame was a signal trampoline, so the caller's ip is exact), 0 outermost, -1 failed; a
 * frame libunwind finds no CFI for goes to framescan instead of its guess from rbp. */
static int step_libunwind(struct uctx *c, int exact, int *ret_sigframe, int *ret_scanned,
                          int *ret_bounded)
{
    static const unw_regnum_t kept[] = {UNW_X86_64_RBX, UNW_X86_64_RBP, UNW_X86_64_R12,
                                        UNW_X86_64_R13, UNW_X86_64_R14, UNW_X86_64_R15};
    unw_cursor_t cur;
    unw_word_t v;

    c->ret_ip = exact ? 0 : c->regs[UNW_X86_64_RIP];
    if (unw_init_remote(&cur, c->u->as, c) < 0)
        return -1;
    int sigframe = unw_is_signal_frame(&cur) > 0;
    c->noinfo = 0;
    int r = unw_step(&cur);
    c->ret_ip = 0;
    *ret_sigframe = sigframe;
    if (c->noinfo && !sigframe)
        return step_without_cfi(c, ret_scanned, ret_bounded);
    if (r <= 0)
        return r < 0 ? -1 : 0;
    /* A signal frame gives back every register of the interrupted code. */
    for (unw_regnum_t reg = 0; reg < SNAPSHOT_NREGS; reg++) {
        if (!sigframe && reg != UNW_X86_64_RIP && reg != UNW_X86_64_RSP)
            continue;
        if (unw_get_reg(&cur, reg, &v) < 0)
            return -1;
        c->regs[reg] = v;
    }
    for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]) && !sigframe; i++)
        c->regs[kept[i]] = unw_get_reg(&cur, kept[i], &v) < 0 ? 0 : v;
    return 1;
}

int unwind_thread(struct unwind *u, const struct snapshot_thread *t, struct unwind_frame *frames,
                  size_t max, size_t *ret_n, int *ret_truncated)
{
    struct uctx c = {.u = u, .t = t};
    struct row_entry tmp = {0};
    size_t n = 0, fallbacks = 0;
    int truncated = 0, exact = 1, scanned = 0;
    if (max > UNWIND_MAX_FRAMES)
        max = UNWIND_MAX_FRAMES;
    if (max == 0)
        return -EINVAL;
    memcpy(c.regs, t->regs, sizeof(c.regs));
    for (;;) {
        uint64_t ip = c.regs[UNW_X86_64_RIP], sp = c.regs[UNW_X86_64_RSP];
        /* A return address of 0 is no frame: the walk went astray. */
        if (ip == 0 && n > 0) {
            truncated = 1;
            break;
        }
        for (size_t i = 0; i < n; i++) {
            if (frames[i].ip == ip && frames[i].sp == sp) {
                truncated = 1; /* the same frame again: the walk loops */
                goto done;
            }
        }
        if (n == max) {
            truncated = 1;
            break;
        }
        frames[n] = (struct unwind_frame){.ip = ip, .exact = exact, .sp = sp, .scanned = scanned};
        n++;
        int r, sigframe = 0, bounded = 0;
        const struct row_entry *e = row_get(u, exact ? ip : ip - 1, &tmp);
        scanned = 0;
        if (e->status == 0) {
            r = apply_row(t, &e->row, c.regs);
        } else if (fallbacks++ < FALLBACK_MAX) {
            r = step_libunwind(&c, exact, &sigframe, &scanned, &bounded);
            /* A signal frame's ip is the trampoline's first byte, and the frame the signal
             * interrupted is at its exact ip: neither is a return address after a call. */
            frames[n - 1].exact |= sigframe;
        } else {
            r = -1;
        }
        if (r <= 0) {
            truncated = r < 0 || bounded;
            break;
        }
        exact = sigframe;
    }
done:
    *ret_n = n;
    *ret_truncated = truncated;
    return 0;
}
