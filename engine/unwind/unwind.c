/* Offline unwinding (see unwind.h). Every read libunwind makes goes through access_mem: first the
 * thread's stack copy, then the file bytes of the module holding the address (.eh_frame_hdr,
 * .eh_frame, and code, which libunwind inspects to recognise the signal trampoline). Writable
 * data is served from the file too, i.e. before relocation; unwinding never needs it. */
#include <errno.h>
#include <string.h>
#include <stdlib.h>
#include <libunwind.h>
#include "unwind/unwind.h"

/* Exported by libunwind but not declared in its headers (perf declares it the same way). */
extern int UNW_OBJ(dwarf_search_unwind_table)(unw_addr_space_t as, unw_word_t ip,
                                              unw_dyn_info_t *di, unw_proc_info_t *pi,
                                              int need_unwind_info, void *arg);

struct unwind {
    unw_addr_space_t as;
    struct modules *mods;
};

struct uctx {
    struct unwind *u;
    const struct snapshot_thread *t;
};

static int find_proc_info(unw_addr_space_t as, unw_word_t ip, unw_proc_info_t *pi,
                          int need_unwind_info, void *arg)
{
    struct uctx *c = arg;
    struct module *mod = modules_find(c->u->mods, ip);
    if (!mod || modules_eh_table(mod) < 0)
        return -UNW_ENOINFO;
    unw_dyn_info_t di;
    memset(&di, 0, sizeof(di));
    di.format = UNW_INFO_FORMAT_REMOTE_TABLE;
    di.start_ip = mod->start;
    di.end_ip = mod->end;
    di.u.rti.segbase = mod->eh_hdr + mod->bias;
    di.u.rti.table_data = mod->eh_table + mod->bias;
    /* In words, though each entry is two int32: libunwind's unit for this field. */
    di.u.rti.table_len = mod->eh_count * 8 / sizeof(unw_word_t);
    return UNW_OBJ(dwarf_search_unwind_table)(as, ip, &di, pi, need_unwind_info, arg);
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
    *valp = c->t->regs[reg];
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
    *ret = u;
    return 0;
}

void unwind_free(struct unwind *u)
{
    if (!u)
        return;
    unw_destroy_addr_space(u->as);
    free(u);
}

void unwind_flush(struct unwind *u)
{
    unw_flush_cache(u->as, 0, 0);
}

int unwind_thread(struct unwind *u, const struct snapshot_thread *t, struct unwind_frame *frames,
                  size_t max, size_t *ret_n, int *ret_truncated)
{
    struct uctx c = {u, t};
    unw_cursor_t cur;
    size_t n = 0;
    int truncated = 0, exact = 1;
    unw_word_t sps[UNWIND_MAX_FRAMES];
    if (max > UNWIND_MAX_FRAMES)
        max = UNWIND_MAX_FRAMES;
    if (max == 0 || unw_init_remote(&cur, u->as, &c) < 0)
        return -EINVAL;
    for (;;) {
        unw_word_t ip, sp;
        if (unw_get_reg(&cur, UNW_REG_IP, &ip) < 0 || unw_get_reg(&cur, UNW_REG_SP, &sp) < 0) {
            truncated = 1;
            break;
        }
        for (size_t i = 0; i < n; i++) {
            if (frames[i].ip == ip && sps[i] == sp) {
                truncated = 1; /* the same frame again: the walk loops */
                goto done;
            }
        }
        if (n == max) {
            truncated = 1;
            break;
        }
        /* A signal frame's ip is the trampoline's first byte, and the frame the signal
         * interrupted is at its exact ip: neither is a return address after a call. */
        int sigframe = unw_is_signal_frame(&cur) > 0;
        frames[n].ip = ip;
        frames[n].exact = exact || sigframe;
        frames[n].sp = sp;
        sps[n] = sp;
        n++;
        exact = sigframe;
        int r = unw_step(&cur);
        if (r == 0)
            break;
        if (r < 0) {
            truncated = 1;
            break;
        }
    }
done:
    if (n == 0)
        return -EINVAL;
    *ret_n = n;
    *ret_truncated = truncated;
    return 0;
}
