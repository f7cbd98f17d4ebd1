/* CFI rows from .eh_frame (see cfi.h): the FDE found through .eh_frame_hdr's sorted table, its
 * CIE's augmentation and initial instructions, then the FDE's instructions run up to the
 * address. Every read is bounded by the record's length and by the file's bytes. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include "unwind/cfi.h"

#define AUG_MAX 8 /* augmentation string bytes ("zPLRS" and the like) */
#define RULE_UNSUPPORTED 0xff

/* DWARF pointer encodings (DW_EH_PE_*) and call frame instructions (DW_CFA_*) used below. */
enum {
    PE_ABSPTR = 0x00,
    PE_ULEB128 = 0x01,
    PE_UDATA2 = 0x02,
    PE_UDATA4 = 0x03,
    PE_UDATA8 = 0x04,
    PE_SLEB128 = 0x09,
    PE_SDATA2 = 0x0a,
    PE_SDATA4 = 0x0b,
    PE_SDATA8 = 0x0c,
    PE_PCREL = 0x10,
    PE_OMIT = 0xff,
};
enum {
    CFA_NOP = 0x00,
    CFA_SET_LOC,
    CFA_ADVANCE_LOC1,
    CFA_ADVANCE_LOC2,
    CFA_ADVANCE_LOC4,
    CFA_OFFSET_EXTENDED,
    CFA_RESTORE_EXTENDED,
    CFA_UNDEFINED,
    CFA_SAME_VALUE,
    CFA_REGISTER,
    CFA_REMEMBER_STATE,
    CFA_RESTORE_STATE,
    CFA_DEF_CFA,
    CFA_DEF_CFA_REGISTER,
    CFA_DEF_CFA_OFFSET,
    CFA_DEF_CFA_EXPRESSION,
    CFA_EXPRESSION,
    CFA_OFFSET_EXTENDED_SF,
    CFA_DEF_CFA_SF,
    CFA_DEF_CFA_OFFSET_SF,
    CFA_VAL_OFFSET,
    CFA_VAL_OFFSET_SF,
    CFA_VAL_EXPRESSION,
    CFA_GNU_ARGS_SIZE = 0x2e,
    CFA_GNU_NEGATIVE_OFFSET_EXTENDED = 0x2f,
    CFA_ADVANCE_LOC = 0x40,
    CFA_OFFSET = 0x80,
    CFA_RESTORE = 0xc0,
};

/* A bounded reader over bytes of the file; vaddr is where p is. */
struct rd {
    const unsigned char *p, *end;
    uint64_t vaddr;
};

struct cie {
    uint64_t code_align;
    int64_t data_align;
    uint64_t ra_reg;
    uint8_t fde_enc;
    bool z, signal;
    struct rd insns;
};

/* The rules being built: the row, plus whether the CFA rule is one we run. */
struct state {
    struct cfi_row row;
    uint64_t cfa_reg;
    bool cfa_expr; /* the CFA rule is not one we run: an expression, or a wild offset */
};

static int rd_bytes(struct rd *r, void *out, size_t n)
{
    if ((size_t)(r->end - r->p) < n)
        return -EINVAL;
    memcpy(out, r->p, n);
    r->p += n;
    r->vaddr += n;
    return 0;
}

static int rd_skip(struct rd *r, uint64_t n)
{
    if ((uint64_t)(r->end - r->p) < n)
        return -EINVAL;
    r->p += n;
    r->vaddr += n;
    return 0;
}

static int rd_u8(struct rd *r, uint8_t *v)
{
    return rd_bytes(r, v, 1);
}

/* A LEB128 number; signed ones have their last byte's sign bit extended. */
static int rd_leb(struct rd *r, bool sign, uint64_t *v)
{
    uint64_t x = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        uint8_t b;
        if (rd_u8(r, &b) < 0)
            return -EINVAL;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            if (sign && shift + 7 < 64 && (b & 0x40))
                x |= ~0ull << (shift + 7);
            *v = x;
            return 0;
        }
    }
    return -EINVAL;
}

static int rd_uleb(struct rd *r, uint64_t *v)
{
    return rd_leb(r, false, v);
}

static int rd_sleb(struct rd *r, int64_t *v)
{
    uint64_t x;
    if (rd_leb(r, true, &x) < 0)
        return -EINVAL;
    *v = (int64_t)x;
    return 0;
}

/* An n-byte little-endian integer, sign-extended when asked. */
static int rd_fixed(struct rd *r, size_t n, bool sign, uint64_t *v)
{
    uint64_t x = 0;
    if (rd_bytes(r, &x, n) < 0)
        return -EINVAL;
    if (sign && n < 8 && ((x >> (8 * n - 1)) & 1))
        x |= ~0ull << (8 * n);
    *v = x;
    return 0;
}

/* A pointer in encoding enc; pcrel applied when asked (pc_begin, set_loc, not pc_range). */
static int rd_ptr(struct rd *r, uint8_t enc, bool apply, uint64_t *v)
{
    uint64_t at = r->vaddr, x;
    int64_t sx;
    int e;
    switch (enc & 0x0f) {
    case PE_ABSPTR:
    case PE_UDATA8:
    case PE_SDATA8:
        e = rd_fixed(r, 8, false, &x);
        break;
    case PE_UDATA2:
    case PE_SDATA2:
        e = rd_fixed(r, 2, (enc & 0x0f) == PE_SDATA2, &x);
        break;
    case PE_UDATA4:
    case PE_SDATA4:
        e = rd_fixed(r, 4, (enc & 0x0f) == PE_SDATA4, &x);
        break;
    case PE_ULEB128:
        e = rd_uleb(r, &x);
        break;
    case PE_SLEB128:
        e = rd_sleb(r, &sx);
        x = (uint64_t)sx;
        break;
    default:
        return -EINVAL;
    }
    if (e < 0)
        return e;
    if (apply && (enc & 0x70) == PE_PCREL)
        x += at;
    else if (apply && (enc & 0x70) != 0)
        return -EINVAL; /* textrel, datarel, funcrel: not written in .eh_frame by linkers */
    *v = x;
    return 0;
}

/* The CIE or FDE at vaddr: *r spans its body (after the length word). */
static int record(const struct module *mod, uint64_t vaddr, struct rd *r)
{
    const unsigned char *p = symfile_data(mod->file, vaddr, 4);
    uint32_t len;
    if (!p)
        return -EINVAL;
    memcpy(&len, p, 4);
    /* 0: a terminator; all ones: the 64-bit format, which no x86-64 toolchain writes. */
    if (len == 0 || len == 0xffffffffu || len > CFI_INSNS_MAX)
        return -EINVAL;
    if (!(p = symfile_data(mod->file, vaddr + 4, len)))
        return -EINVAL;
    *r = (struct rd){p, p + len, vaddr + 4};
    return 0;
}

static int parse_cie(const struct module *mod, uint64_t vaddr, struct cie *c)
{
    struct rd r;
    uint32_t id;
    uint8_t version, aug[AUG_MAX + 1];
    size_t n = 0;
    int e;

    if ((e = record(mod, vaddr, &r)) < 0 || (e = rd_bytes(&r, &id, 4)) < 0 ||
        (e = rd_u8(&r, &version)) < 0)
        return e;
    if (id != 0 || (version != 1 && version != 3 && version != 4))
        return -EINVAL;
    for (;;) {
        if (n > AUG_MAX || rd_u8(&r, &aug[n]) < 0)
            return -EINVAL;
        if (!aug[n++])
            break;
    }
    memset(c, 0, sizeof(*c));
    c->fde_enc = PE_ABSPTR;
    if (version == 4 && rd_skip(&r, 2) < 0) /* address and segment selector sizes */
        return -EINVAL;
    if (rd_uleb(&r, &c->code_align) < 0 || rd_sleb(&r, &c->data_align) < 0)
        return -EINVAL;
    if (version == 1) {
        uint8_t ra;
        if (rd_u8(&r, &ra) < 0)
            return -EINVAL;
        c->ra_reg = ra;
    } else if (rd_uleb(&r, &c->ra_reg) < 0) {
        return -EINVAL;
    }
    if (aug[0] == 'z') {
        uint64_t len, pers;
        uint8_t enc;
        if (rd_uleb(&r, &len) < 0 || (uint64_t)(r.end - r.p) < len)
            return -EINVAL;
        struct rd a = {r.p, r.p + len, r.vaddr};
        c->z = true;
        for (size_t i = 1; aug[i]; i++) {
            if (aug[i] == 'R') {
                if (rd_u8(&a, &c->fde_enc) < 0)
                    return -EINVAL;
            } else if (aug[i] == 'P') {
                if (rd_u8(&a, &enc) < 0 || rd_ptr(&a, enc & 0x7f, false, &pers) < 0)
                    return -EINVAL;
            } else if (aug[i] == 'L') {
                if (rd_u8(&a, &enc) < 0)
                    return -EINVAL;
            } else if (aug[i] == 'S') {
                c->signal = true;
            } else {
                break; /* the length covers what follows */
            }
        }
        rd_skip(&r, len);
    } else if (aug[0]) {
        return -EOPNOTSUPP;
    }
    if (c->fde_enc == PE_OMIT || c->code_align == 0)
        return -EINVAL;
    c->insns = r;
    return 0;
}

static int tracked(const struct cie *c, uint64_t reg)
{
    if (reg == c->ra_reg)
        return CFI_RA;
    switch (reg) {
    case 6:
        return CFI_RBP;
    case 3:
        return CFI_RBX;
    case 12:
    case 13:
    case 14:
    case 15:
        return CFI_R12 + (int)(reg - 12);
    default:
        return -1;
    }
}

/* factored * data_align, if it fits the 32 bits a row keeps (no real frame comes close). */
static bool scale(const struct cie *c, int64_t factored, int32_t *ret)
{
    int64_t x;
    if (__builtin_mul_overflow(factored, c->data_align, &x) || x < INT32_MIN || x > INT32_MAX)
        return false;
    *ret = (int32_t)x;
    return true;
}

static void set_rule(struct state *s, const struct cie *c, uint64_t reg, uint8_t how, int32_t off)
{
    int i = tracked(c, reg);
    if (i < 0)
        return;
    s->row.how[i] = how;
    s->row.off[i] = off;
}

/* The rule "saved at CFA + factored * data_align"; an offset past 32 bits is not run. */
static void set_saved(struct state *s, const struct cie *c, uint64_t reg, int64_t factored)
{
    int32_t off;
    if (scale(c, factored, &off))
        set_rule(s, c, reg, CFI_AT, off);
    else
        set_rule(s, c, reg, RULE_UNSUPPORTED, 0);
}

/* The offset operand of def_cfa(_sf) and def_cfa_offset(_sf): unsigned, or signed and scaled
 * by data_align; past 32 bits the CFA rule becomes one not run. */
static int cfa_offset(struct rd *r, const struct cie *c, bool sf, struct state *s)
{
    uint64_t u;
    int64_t sv;
    int32_t off = 0;
    bool ok;

    if (sf) {
        if (rd_sleb(r, &sv) < 0)
            return -EINVAL;
        ok = scale(c, sv, &off);
    } else {
        if (rd_uleb(r, &u) < 0)
            return -EINVAL;
        ok = u <= INT32_MAX;
        off = ok ? (int32_t)u : 0;
    }
    s->row.cfa_off = off;
    s->cfa_expr = s->cfa_expr || !ok;
    return 0;
}

/* Runs instructions from r until the location passes vaddr: 1 when it did (the row for vaddr is
 * in s), 0 at the end of the instructions, <0 malformed. */
static int run(struct rd *r, const struct cie *c, uint64_t *loc, uint64_t vaddr, struct state *s,
               const struct state *initial, struct state *stack, size_t *depth)
{
    while (r->p < r->end) {
        uint8_t op;
        uint64_t reg = 0, u = 0, delta = 0;
        int64_t sv = 0;
        bool advance = false;

        if (rd_u8(r, &op) < 0)
            return -EINVAL;
        switch (op & 0xc0) {
        case CFA_ADVANCE_LOC:
            delta = op & 0x3f;
            advance = true;
            break;
        case CFA_OFFSET:
            if (rd_uleb(r, &u) < 0)
                return -EINVAL;
            set_saved(s, c, op & 0x3f, u > INT64_MAX ? INT64_MAX : (int64_t)u);
            continue;
        case CFA_RESTORE:
            if (tracked(c, op & 0x3f) >= 0) {
                int i = tracked(c, op & 0x3f);
                s->row.how[i] = initial->row.how[i];
                s->row.off[i] = initial->row.off[i];
            }
            continue;
        default:
            break;
        }
        if (!advance) {
            switch (op) {
            case CFA_NOP:
                break;
            case CFA_SET_LOC:
                if (rd_ptr(r, c->fde_enc, true, &u) < 0)
                    return -EINVAL;
                if (u > vaddr)
                    return 1;
                *loc = u;
                break;
            case CFA_ADVANCE_LOC1:
            case CFA_ADVANCE_LOC2:
            case CFA_ADVANCE_LOC4: {
                size_t len = op == CFA_ADVANCE_LOC1 ? 1 : op == CFA_ADVANCE_LOC2 ? 2 : 4;
                if (rd_fixed(r, len, false, &delta) < 0)
                    return -EINVAL;
                advance = true;
                break;
            }
            case CFA_OFFSET_EXTENDED:
                if (rd_uleb(r, &reg) < 0 || rd_uleb(r, &u) < 0)
                    return -EINVAL;
                set_saved(s, c, reg, u > INT64_MAX ? INT64_MAX : (int64_t)u);
                break;
            case CFA_OFFSET_EXTENDED_SF:
                if (rd_uleb(r, &reg) < 0 || rd_sleb(r, &sv) < 0)
                    return -EINVAL;
                set_saved(s, c, reg, sv);
                break;
            case CFA_GNU_NEGATIVE_OFFSET_EXTENDED:
                if (rd_uleb(r, &reg) < 0 || rd_uleb(r, &u) < 0)
                    return -EINVAL;
                set_saved(s, c, reg, u > INT64_MAX ? INT64_MIN : -(int64_t)u);
                break;
            case CFA_RESTORE_EXTENDED:
                if (rd_uleb(r, &reg) < 0)
                    return -EINVAL;
                if (tracked(c, reg) >= 0) {
                    int i = tracked(c, reg);
                    s->row.how[i] = initial->row.how[i];
                    s->row.off[i] = initial->row.off[i];
                }
                break;
            case CFA_UNDEFINED:
            case CFA_SAME_VALUE:
                if (rd_uleb(r, &reg) < 0)
                    return -EINVAL;
                set_rule(s, c, reg, op == CFA_UNDEFINED ? CFI_UNDEF : CFI_SAME, 0);
                break;
            case CFA_REGISTER:
                if (rd_uleb(r, &reg) < 0 || rd_uleb(r, &u) < 0)
                    return -EINVAL;
                set_rule(s, c, reg, RULE_UNSUPPORTED, 0);
                break;
            case CFA_VAL_OFFSET:
            case CFA_VAL_OFFSET_SF:
                if (rd_uleb(r, &reg) < 0 ||
                    (op == CFA_VAL_OFFSET ? rd_uleb(r, &u) : rd_sleb(r, &sv)) < 0)
                    return -EINVAL;
                set_rule(s, c, reg, RULE_UNSUPPORTED, 0);
                break;
            case CFA_EXPRESSION:
            case CFA_VAL_EXPRESSION:
                if (rd_uleb(r, &reg) < 0 || rd_uleb(r, &u) < 0 || rd_skip(r, u) < 0)
                    return -EINVAL;
                set_rule(s, c, reg, RULE_UNSUPPORTED, 0);
                break;
            case CFA_REMEMBER_STATE:
                if (*depth == CFI_STATE_MAX)
                    return -EINVAL;
                stack[(*depth)++] = *s;
                break;
            case CFA_RESTORE_STATE:
                if (*depth == 0)
                    return -EINVAL;
                *s = stack[--*depth];
                break;
            case CFA_DEF_CFA:
            case CFA_DEF_CFA_SF:
                if (rd_uleb(r, &s->cfa_reg) < 0)
                    return -EINVAL;
                s->cfa_expr = false;
                if (cfa_offset(r, c, op == CFA_DEF_CFA_SF, s) < 0)
                    return -EINVAL;
                break;
            case CFA_DEF_CFA_REGISTER:
                if (rd_uleb(r, &s->cfa_reg) < 0)
                    return -EINVAL;
                break;
            case CFA_DEF_CFA_OFFSET:
            case CFA_DEF_CFA_OFFSET_SF:
                if (cfa_offset(r, c, op == CFA_DEF_CFA_OFFSET_SF, s) < 0)
                    return -EINVAL;
                break;
            case CFA_DEF_CFA_EXPRESSION:
                if (rd_uleb(r, &u) < 0 || rd_skip(r, u) < 0)
                    return -EINVAL;
                s->cfa_expr = true;
                break;
            case CFA_GNU_ARGS_SIZE:
                if (rd_uleb(r, &u) < 0)
                    return -EINVAL;
                break;
            default:
                return -EINVAL;
            }
        }
        if (advance) {
            delta *= c->code_align;
            if (delta > vaddr - *loc)
                return 1;
            *loc += delta;
        }
    }
    return 0;
}

int cfi_find(struct module *mod, uint64_t vaddr, uint64_t *ret_start, uint64_t *ret_fde)
{
    if (!mod->file || modules_eh_table(mod) < 0)
        return -ENOENT;
    uint64_t hdr = mod->eh_hdr, table = mod->eh_table;
    size_t lo = 0, hi = mod->eh_count;
    bool found = false;
    /* The last entry whose start is at or below vaddr. */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const unsigned char *p = symfile_data(mod->file, table + mid * 8, 8);
        int32_t rel[2];
        if (!p)
            return -ENOENT;
        memcpy(rel, p, sizeof(rel));
        uint64_t start = hdr + (uint64_t)(int64_t)rel[0];
        if (start <= vaddr) {
            *ret_start = start;
            *ret_fde = hdr + (uint64_t)(int64_t)rel[1];
            found = true;
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return found ? 0 : -ENOENT;
}

int cfi_row_at(struct module *mod, uint64_t vaddr, struct cfi_row *ret)
{
    uint64_t start, fde, begin, range, len;
    uint32_t cie_ptr;
    struct rd r;
    struct cie c;
    struct state s, initial, stack[CFI_STATE_MAX];
    size_t depth = 0;
    int e;

    if ((e = cfi_find(mod, vaddr, &start, &fde)) < 0)
        return e;
    if ((e = record(mod, fde, &r)) < 0 || (e = rd_bytes(&r, &cie_ptr, 4)) < 0)
        return e;
    if (cie_ptr == 0 || cie_ptr > fde + 4 || (e = parse_cie(mod, fde + 4 - cie_ptr, &c)) < 0)
        return e < 0 ? e : -EINVAL;
    if (rd_ptr(&r, c.fde_enc, true, &begin) < 0 || rd_ptr(&r, c.fde_enc & 0x0f, false, &range) < 0)
        return -EINVAL;
    if (vaddr < begin || vaddr - begin >= range)
        return -ENOENT;
    if (c.signal)
        return -EOPNOTSUPP;
    if (c.z && (rd_uleb(&r, &len) < 0 || rd_skip(&r, len) < 0))
        return -EINVAL;
    memset(&s, 0, sizeof(s));
    for (int i = 0; i < CFI_NREGS; i++)
        s.row.how[i] = CFI_SAME;
    uint64_t loc = begin;
    struct rd ci = c.insns;
    if ((e = run(&ci, &c, &loc, vaddr, &s, &s, stack, &depth)) < 0)
        return e;
    initial = s;
    depth = 0;
    if (e == 0 && (e = run(&r, &c, &loc, vaddr, &s, &initial, stack, &depth)) < 0)
        return e;
    if (s.cfa_expr || (s.cfa_reg != CFI_DWARF_RSP && s.cfa_reg != CFI_DWARF_RBP) ||
        s.row.how[CFI_RA] == CFI_SAME)
        return -EOPNOTSUPP;
    for (int i = 0; i < CFI_NREGS; i++)
        if (s.row.how[i] == RULE_UNSUPPORTED)
            return -EOPNOTSUPP;
    s.row.cfa_reg = (uint8_t)s.cfa_reg;
    *ret = s.row;
    return 0;
}
