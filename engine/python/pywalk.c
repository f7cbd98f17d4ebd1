/* The frame walker (see pywalk.h). Every pointer comes from a process that may be changing under
 * us (or, in the fuzzer, from random bytes), so each object read is checked for its type (code,
 * str and bytes objects must point at the interpreter's own type objects), each index and count
 * for its bounds, and any failed check ends that thread's stack as truncated. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "python/pyline.h"
#include "python/pywalk.h"

#define CODE_UNITS_MAX (1 << 24)            /* bytecode longer than this is not believed */
#define PID_MAX (1 << 22)                   /* the kernel's PID_MAX_LIMIT */
#define STEPS_MAX (2 * PYFRAMES_MAX_FRAMES) /* frames visited per thread, shims included */

/* Code objects met during one pass, so that threads running the same functions cost one read
 * of each code object rather than six. Entries live for one pass only, and a hit also needs the
 * same name and line table pointers: a code object freed and another allocated at its address
 * within one pass is the same race as any other read of a changing target. */
#define CACHE_SLOTS 1024             /* a power of two; filled at most half */
#define CACHE_TABLE_BYTES (8u << 20) /* line table bytes kept per pass */

struct code_entry {
    uint64_t code; /* 0: a free slot */
    uint64_t filename_at, qualname_at, table_at;
    char *filename, *funcname;
    unsigned char *table;
    size_t table_len;
};

/* Thread names: dicts of the target read for threading._active[ident]._name. */
#define DICT_ENTRIES_MAX 8192 /* entries scanned in one dict (sys.modules has a few hundred) */
#define DK_LOG2_SIZE 8        /* struct _dictkeysobject (pycore_dict.h, 3.11-3.15 default build) */
#define DK_LOG2_INDEX_BYTES 9
#define DK_KIND 10
#define DK_NENTRIES 24
#define DK_INDICES 32
#define DK_KIND_GENERAL                                                                            \
    0                      /* PyDictKeyEntry {me_hash, me_key, me_value}; else PyDictUnicodeEntry  \
                              {me_key, me_value} (DICT_KEYS_UNICODE 1, DICT_KEYS_SPLIT 2) */
#define MD_DICT 16         /* PyModuleObject.md_dict (pycore_moduleobject.h) */
#define TP_BASICSIZE 32    /* PyTypeObject.tp_basicsize (Include/cpython/object.h) */
#define MANAGED_DICT (-24) /* pycore_object.h: MANAGED_DICT_OFFSET, 3.11 on */
#define VALUES_311 (-32)   /* 3.11: _PyObject_ValuesPointer */

/* A dict's (or shared keys') entries, read once. */
struct dict {
    unsigned char *entries;
    size_t n, size;  /* entries and bytes of each */
    uint64_t values; /* a split dict's PyDictValues values array, else 0 */
};

struct pywalk {
    struct pylayout l;
    struct pywalk_addrs a;
    struct pywalk_reader r;
    unsigned char *table; /* scratch for line tables */
    size_t table_cap;
    struct code_entry *cache; /* CACHE_SLOTS */
    size_t cache_n, cache_bytes;
    uint64_t active_interp, active; /* threading._active of that interpreter, once found */
    uint64_t name_keys;             /* shared keys met in this pass, and where "_name" is */
    int name_ix;
};

enum frame_kind { FRAME_PYTHON, FRAME_INCOMPLETE, FRAME_SHIM };

static int rd(const struct pywalk *w, uint64_t addr, void *buf, size_t len)
{
    if (addr == 0 || addr + len < addr)
        return -EFAULT;
    return w->r.read(w->r.ctx, addr, buf, len);
}

static uint64_t u64_at(const unsigned char *b, size_t off)
{
    uint64_t v;
    memcpy(&v, b + off, sizeof(v));
    return v;
}

static int32_t i32_at(const unsigned char *b, size_t off)
{
    int32_t v;
    memcpy(&v, b + off, sizeof(v));
    return v;
}

static int rd_u64(const struct pywalk *w, uint64_t addr, uint64_t *ret)
{
    unsigned char b[8];
    int r = rd(w, addr, b, sizeof(b));
    if (r == 0)
        *ret = u64_at(b, 0);
    return r;
}

int pywalk_new(const struct pylayout *l, const struct pywalk_addrs *a,
               const struct pywalk_reader *r, struct pywalk **ret)
{
    struct pywalk *w = calloc(1, sizeof(*w));

    if (!w)
        return -ENOMEM;
    w->cache = calloc(CACHE_SLOTS, sizeof(*w->cache));
    if (!w->cache) {
        free(w);
        return -ENOMEM;
    }
    w->l = *l;
    w->a = *a;
    w->r = *r;
    *ret = w;
    return 0;
}

/* ---- objects ---- */

static int put_utf8(char *out, size_t cap, size_t *pos, uint32_t c)
{
    unsigned char b[4];
    size_t n;

    if (c >= 0xd800 && c < 0xe000)
        c = '?'; /* a lone surrogate (surrogateescape'd file names) */
    if (c < 0x80) {
        b[0] = (unsigned char)c;
        n = 1;
    } else if (c < 0x800) {
        b[0] = (unsigned char)(0xc0 | (c >> 6));
        b[1] = (unsigned char)(0x80 | (c & 0x3f));
        n = 2;
    } else if (c < 0x10000) {
        b[0] = (unsigned char)(0xe0 | (c >> 12));
        b[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
        b[2] = (unsigned char)(0x80 | (c & 0x3f));
        n = 3;
    } else if (c < 0x110000) {
        b[0] = (unsigned char)(0xf0 | (c >> 18));
        b[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3f));
        b[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
        b[3] = (unsigned char)(0x80 | (c & 0x3f));
        n = 4;
    } else {
        return -EBADMSG;
    }
    if (*pos + n >= cap)
        return -E2BIG;
    memcpy(out + *pos, b, n);
    *pos += n;
    return 0;
}

/* A str object's text as UTF-8, cut at PYFRAMES_STR_MAX. Only compact strings (what code
 * objects hold; in 3.11 also ready ones): anything else is refused rather than guessed at.
 * state (Include/cpython/unicodeobject.h, 3.11-3.15): interned:2, kind:3, compact:1, ascii:1,
 * then 3.11's ready:1. */
static int read_str(const struct pywalk *w, uint64_t addr, char **ret)
{
    const struct pylayout *l = &w->l;
    unsigned char h[PYLAYOUT_SPAN_MAX];
    uint32_t raw[PYFRAMES_STR_MAX];
    char out[PYFRAMES_STR_MAX];
    size_t pos = 0;
    int r = rd(w, addr, h, l->str_span);

    if (r < 0)
        return r;
    uint64_t len = u64_at(h, l->str_length);
    uint32_t state = (uint32_t)i32_at(h, l->str_state);
    unsigned kind = (state >> 2) & 7, compact = (state >> 5) & 1, ascii = (state >> 6) & 1;
    if (u64_at(h, l->ob_type) != w->a.str_type || len > INT64_MAX || !compact ||
        (l->str_ready && !((state >> 7) & 1)) || (kind != 1 && kind != 2 && kind != 4) ||
        (ascii && kind != 1))
        return -EBADMSG;
    size_t n = len < PYFRAMES_STR_MAX - 1 ? (size_t)len : PYFRAMES_STR_MAX - 1;
    if (ascii) {
        r = rd(w, addr + l->str_ascii_data, out, n);
        if (r < 0)
            return r;
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)out[i] >= 0x80 || out[i] == '\0')
                return -EBADMSG;
        pos = n;
    } else {
        r = rd(w, addr + l->str_compact_data, raw, n * kind);
        if (r < 0)
            return r;
        for (size_t i = 0; i < n; i++) {
            const unsigned char *b = (const unsigned char *)raw + i * kind;
            uint32_t c = kind == 1   ? b[0]
                         : kind == 2 ? (uint32_t)(b[0] | b[1] << 8)
                                     : (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                                           (uint32_t)b[3] << 24;
            if (c == 0)
                return -EBADMSG;
            r = put_utf8(out, sizeof(out), &pos, c);
            if (r == -E2BIG)
                break;
            if (r < 0)
                return r;
        }
    }
    out[pos] = '\0';
    *ret = strdup(out);
    return *ret ? 0 : -ENOMEM;
}

/* The bytes of the line table object at addr, into w->table. */
static int read_table(struct pywalk *w, uint64_t addr, size_t *ret_n)
{
    unsigned char h[PYLAYOUT_SPAN_MAX];
    int r = rd(w, addr, h, w->l.bytes_sval);

    if (r < 0)
        return r;
    uint64_t n = u64_at(h, w->l.bytes_size);
    if (u64_at(h, w->l.ob_type) != w->a.bytes_type || n > PYFRAMES_LINETABLE_MAX)
        return -EBADMSG;
    if (n > w->table_cap) {
        unsigned char *t = realloc(w->table, n);
        if (!t)
            return -ENOMEM;
        w->table = t;
        w->table_cap = n;
    }
    r = n ? rd(w, addr + w->l.bytes_sval, w->table, n) : 0;
    if (r == 0)
        *ret_n = n;
    return r;
}

/* The slot of code: its entry, or the free slot where it would go (NULL when the cache is
 * full). */
static struct code_entry *cache_slot(struct pywalk *w, uint64_t code)
{
    size_t i = (size_t)((code >> 4) * 0x9e3779b97f4a7c15ull >> 54) & (CACHE_SLOTS - 1);

    while (w->cache[i].code && w->cache[i].code != code)
        i = (i + 1) & (CACHE_SLOTS - 1);
    return w->cache[i].code || w->cache_n < CACHE_SLOTS / 2 ? &w->cache[i] : NULL;
}

static void cache_put(struct pywalk *w, struct code_entry *e, const struct code_entry *from,
                      size_t table_len)
{
    if (w->cache_bytes + table_len > CACHE_TABLE_BYTES)
        return;
    *e = *from;
    e->filename = strdup(from->filename);
    e->funcname = strdup(from->funcname);
    e->table = malloc(table_len ? table_len : 1);
    if (!e->filename || !e->funcname || !e->table) {
        free(e->filename);
        free(e->funcname);
        free(e->table);
        memset(e, 0, sizeof(*e));
        return;
    }
    if (table_len)
        memcpy(e->table, w->table, table_len);
    e->table_len = table_len;
    w->cache_n++;
    w->cache_bytes += table_len;
}

static void cache_clear(struct pywalk *w)
{
    for (size_t i = 0; w->cache_n && i < CACHE_SLOTS; i++) {
        if (w->cache[i].code) {
            free(w->cache[i].filename);
            free(w->cache[i].funcname);
            free(w->cache[i].table);
            memset(&w->cache[i], 0, sizeof(w->cache[i]));
            w->cache_n--;
        }
    }
    w->cache_bytes = 0;
    w->name_keys = 0;
}

/* pywalk_decode keeps code objects from one call to the next: the cache may hold some. */
void pywalk_free(struct pywalk *w)
{
    if (!w)
        return;
    cache_clear(w);
    free(w->table);
    free(w->cache);
    free(w);
}

/* ---- frames ---- */

static void frame_clear(struct pyframes_frame *f)
{
    free(f->filename);
    free(f->funcname);
}

/* The index of the instruction a frame is at, from its instruction pointer: 3.11 and 3.12 keep
 * prev_instr, the code unit before the next instruction (one before the bytecode in a frame
 * that has not started: -1); 3.13 on keep instr_ptr, the instruction itself
 * (_PyInterpreterFrame_LASTI in pycore_frame.h / pycore_interpframe.h). */
static int frame_lasti(const struct pylayout *l, uint64_t instr, uint64_t start, uint64_t units,
                       int64_t *ret)
{
    uint64_t end = start + units * 2;

    if (l->instr_prev) {
        if (instr > UINT64_MAX - 2 || instr + 2 < start || instr >= end || (instr - start) % 2)
            return -EBADMSG;
        *ret = (int64_t)(instr + 2 - start) / 2 - 1;
    } else {
        if (instr < start || instr >= end || (instr - start) % 2)
            return -EBADMSG;
        *ret = (int64_t)(instr - start) / 2;
    }
    return 0;
}

/* One _PyInterpreterFrame from its fields (code object, instruction pointer, owner, 3.11's
 * is_entry). *ret_kind tells a shim frame an eval loop call pushes (3.12 on; f is untouched)
 * and a frame that has not reached its first traceable instruction (_PyFrame_IsIncomplete:
 * CPython hides those from tracebacks too) from a frame in f. */
static int decode_frame(struct pywalk *w, uint64_t code, uint64_t instr, unsigned owner,
                        bool is_entry, struct pyframes_frame *f, enum frame_kind *ret_kind)
{
    const struct pylayout *l = &w->l;
    unsigned char co[PYLAYOUT_SPAN_MAX];
    int r;

    if (owner > l->owner_max)
        return -EBADMSG;
    if (l->owner_shim && owner >= l->owner_shim) {
        *ret_kind = FRAME_SHIM;
        return 0;
    }
    r = rd(w, code, co, l->co_span);
    if (r < 0)
        return r;
    uint64_t units = u64_at(co, l->ob_size);
    int64_t lasti;
    if (u64_at(co, l->ob_type) != w->a.code_type || units == 0 || units > CODE_UNITS_MAX ||
        code > UINT64_MAX - l->co_code - 2 * (uint64_t)CODE_UNITS_MAX ||
        frame_lasti(l, instr, code + l->co_code, units, &lasti) < 0)
        return -EBADMSG;
    int firstlineno = i32_at(co, l->co_firstlineno);
    if (firstlineno < 0)
        return -EBADMSG;
    bool incomplete = owner != l->owner_generator && lasti < i32_at(co, l->co_firsttraceable);
    *ret_kind = incomplete ? FRAME_INCOMPLETE : FRAME_PYTHON;
    if (incomplete)
        return 0;
    f->firstlineno = firstlineno;
    f->is_entry = is_entry;
    struct code_entry want = {
        .code = code,
        .filename_at = u64_at(co, l->co_filename),
        .qualname_at = u64_at(co, l->co_qualname),
        .table_at = u64_at(co, l->co_linetable),
    };
    struct code_entry *e = cache_slot(w, code);
    const unsigned char *table;
    size_t table_len = 0;
    if (e && e->code == code && e->filename_at == want.filename_at &&
        e->qualname_at == want.qualname_at && e->table_at == want.table_at) {
        f->filename = strdup(e->filename);
        f->funcname = strdup(e->funcname);
        table = e->table;
        table_len = e->table_len;
        r = f->filename && f->funcname ? 0 : -ENOMEM;
    } else {
        r = read_table(w, want.table_at, &table_len);
        table = w->table;
        if (r == 0)
            r = read_str(w, want.filename_at, &f->filename);
        if (r == 0)
            r = read_str(w, want.qualname_at, &f->funcname);
        if (r == 0 && e && e->code == 0) {
            want.filename = f->filename;
            want.funcname = f->funcname;
            cache_put(w, e, &want, table_len);
        }
    }
    if (r == 0 && lasti < 0)
        f->line = firstlineno; /* not started yet: PyCode_Addr2Line's answer */
    else if (r == 0)
        r = pyline_addr2line(table, table_len, firstlineno, lasti, &f->line);
    if (r < 0) {
        frame_clear(f);
        memset(f, 0, sizeof(*f));
    }
    return r;
}

/* One _PyInterpreterFrame at addr, decoded as decode_frame says; *ret_previous: the next one. */
static int read_frame(struct pywalk *w, uint64_t addr, struct pyframes_frame *f,
                      uint64_t *ret_previous, enum frame_kind *ret_kind)
{
    const struct pylayout *l = &w->l;
    unsigned char fr[PYLAYOUT_SPAN_MAX];
    int r = rd(w, addr, fr, l->if_span);

    if (r < 0)
        return r;
    *ret_previous = u64_at(fr, l->if_previous);
    return decode_frame(w, u64_at(fr, l->if_code) & l->code_mask, u64_at(fr, l->if_instr),
                        fr[l->if_owner], l->has_is_entry && fr[l->if_is_entry] != 0, f, ret_kind);
}

/* Appends f (of kind, at addr) to t: a shim frame marks the frame before it (the first its eval
 * loop call ran) as an entry frame, as 3.11's is_entry does, and says where that call's C stack
 * is; an incomplete one is left out. Only allocation fails (f is then freed). */
static int add_frame(struct pyframes_thread *t, size_t *cap, enum frame_kind kind, uint64_t addr,
                     struct pyframes_frame *f)
{
    if (kind == FRAME_SHIM && t->nframes) {
        t->frames[t->nframes - 1].is_entry = true;
        t->frames[t->nframes - 1].entry_at = addr;
    }
    if (kind != FRAME_PYTHON)
        return 0;
    if (t->nframes == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        struct pyframes_frame *nf = realloc(t->frames, ncap * sizeof(*nf));
        if (!nf) {
            frame_clear(f);
            return -ENOMEM;
        }
        t->frames = nf;
        *cap = ncap;
    }
    t->frames[t->nframes++] = *f;
    return 0;
}

/* The frames of the thread whose current frame is addr, into t. Only allocation failure is an
 * error; anything unreadable ends the stack as truncated. */
static int read_frames(struct pywalk *w, uint64_t addr, struct pyframes_thread *t)
{
    size_t cap = 0;

    for (unsigned steps = 0; addr; steps++) {
        struct pyframes_frame f = {0};
        enum frame_kind kind;

        if (steps == STEPS_MAX || t->nframes == PYFRAMES_MAX_FRAMES) {
            t->truncated = true;
            break;
        }
        uint64_t at = addr;
        int r = read_frame(w, at, &f, &addr, &kind);
        if (r == -ENOMEM)
            return r;
        if (r < 0) {
            t->truncated = true;
            break;
        }
        if (add_frame(t, &cap, kind, at, &f) < 0)
            return -ENOMEM;
    }
    return 0;
}

/* ---- thread names ---- */

static void dict_clear(struct dict *d)
{
    free(d->entries);
    memset(d, 0, sizeof(*d));
}

/* The entries of the keys object at keys; values is the split values array or 0. */
static int keys_read(const struct pywalk *w, uint64_t keys, uint64_t values, struct dict *d)
{
    unsigned char h[DK_INDICES];
    int r = rd(w, keys, h, sizeof(h));

    if (r < 0)
        return r;
    uint64_t n = u64_at(h, DK_NENTRIES);
    unsigned log2_index = h[DK_LOG2_INDEX_BYTES];
    if (h[DK_KIND] > 2 || h[DK_LOG2_SIZE] > 30 || log2_index > 34 ||
        n > ((uint64_t)1 << h[DK_LOG2_SIZE]) || n > DICT_ENTRIES_MAX)
        return -EBADMSG;
    d->size = h[DK_KIND] == DK_KIND_GENERAL ? 24 : 16;
    d->n = (size_t)n;
    d->values = values;
    d->entries = malloc(n ? n * d->size : 1);
    if (!d->entries)
        return -ENOMEM;
    r = n ? rd(w, keys + DK_INDICES + ((uint64_t)1 << log2_index), d->entries, n * d->size) : 0;
    if (r < 0)
        dict_clear(d);
    return r;
}

/* The entries of the dict object at addr. */
static int dict_read(const struct pywalk *w, uint64_t addr, struct dict *d)
{
    unsigned char h[PYLAYOUT_SPAN_MAX];
    const struct pylayout *l = &w->l;
    uint32_t span = (l->dict_keys > l->dict_values ? l->dict_keys : l->dict_values) + 8;
    int r = span <= sizeof(h) ? rd(w, addr, h, span) : -EBADMSG;

    if (r < 0)
        return r;
    if (u64_at(h, l->ob_type) != w->a.dict_type)
        return -EBADMSG;
    return keys_read(w, u64_at(h, l->dict_keys), u64_at(h, l->dict_values), d);
}

/* The index of the entry whose key is the ASCII str want; -ENOENT when none. */
static int dict_find_str(const struct pywalk *w, const struct dict *d, const char *want)
{
    const struct pylayout *l = &w->l;
    size_t len = strlen(want), keyat = d->size == 24 ? 8 : 0;
    unsigned char h[PYLAYOUT_SPAN_MAX + 64];

    for (size_t i = 0; i < d->n; i++) {
        uint64_t key = u64_at(d->entries, i * d->size + keyat);
        if (!key || rd(w, key, h, l->str_ascii_data + len) < 0)
            continue;
        uint32_t state = (uint32_t)i32_at(h, l->str_state);
        if (u64_at(h, l->ob_type) == w->a.str_type && u64_at(h, l->str_length) == len &&
            (state >> 5 & 3) == 3 && memcmp(h + l->str_ascii_data, want, len) == 0)
            return (int)i;
    }
    return -ENOENT;
}

/* Value i of a split dict's values array (3.13 on, past the PyDictValues header of capacity,
 * size, embedded, valid and padding). */
static int values_get(const struct pywalk *w, uint64_t values, size_t i, uint64_t *ret)
{
    uint64_t at = values + (w->l.values_at == PYLAYOUT_VALUES_INLINE ? 8 : 0);
    return rd_u64(w, at + 8 * i, ret);
}

/* The value of entry i: from the entry, or from a split dict's values array. */
static int dict_value(const struct pywalk *w, const struct dict *d, size_t i, uint64_t *ret)
{
    if (d->values)
        return values_get(w, d->values, i, ret);
    *ret = u64_at(d->entries, i * d->size + (d->size == 24 ? 16 : 8));
    return 0;
}

/* dict[want] for the dict object at addr (want an ASCII str key). */
static int dict_get(const struct pywalk *w, uint64_t addr, const char *want, uint64_t *ret)
{
    struct dict d = {0};
    int r = dict_read(w, addr, &d);

    if (r == 0)
        r = dict_find_str(w, &d, want);
    if (r >= 0)
        r = dict_value(w, &d, (size_t)r, ret);
    dict_clear(&d);
    return r;
}

/* threading._active of interpreter interp: sys.modules["threading"].__dict__["_active"]. */
static int find_active(struct pywalk *w, uint64_t interp, uint64_t *ret)
{
    uint64_t modules, threading, md;
    unsigned char h[16];

    if (w->active_interp == interp && rd(w, w->active, h, sizeof(h)) == 0 &&
        u64_at(h, 8) == w->a.dict_type) {
        *ret = w->active;
        return 0;
    }
    int r = rd_u64(w, interp + w->l.is_modules, &modules);
    if (r == 0)
        r = dict_get(w, modules, "threading", &threading);
    if (r == 0)
        r = rd_u64(w, threading + MD_DICT, &md);
    if (r == 0)
        r = dict_get(w, md, "_active", ret);
    if (r == 0) {
        w->active_interp = interp;
        w->active = *ret;
    }
    return r;
}

/* obj._name, for a Thread object at obj (Include/internal/pycore_object.h of each minor). */
static int thread_name_of(struct pywalk *w, uint64_t obj, char *name, size_t len)
{
    uint64_t type, dict = 0, values = 0, keys, at = 0;
    struct dict d = {0};
    char *s;
    int r = rd_u64(w, obj + w->l.ob_type, &type);

    if (r == 0 && obj < 64)
        r = -EFAULT;
    if (r == 0 && w->l.values_at == PYLAYOUT_VALUES_311) {
        r = rd_u64(w, obj + VALUES_311, &values);
        if (r == 0 && !values)
            r = rd_u64(w, obj + MANAGED_DICT, &dict);
    } else if (r == 0 && w->l.values_at == PYLAYOUT_VALUES_312) {
        r = rd_u64(w, obj + MANAGED_DICT, &dict);
        if (r == 0 && (dict & 1)) {
            values = dict + 1;
            dict = 0;
        }
    } else if (r == 0) {
        unsigned char vh[8];
        int64_t basic = 0;
        r = rd_u64(w, obj + MANAGED_DICT, &dict);
        if (r == 0 && !dict)
            r = rd(w, type + TP_BASICSIZE, &basic, sizeof(basic));
        if (r == 0 && !dict && (basic < 16 || basic > PYLAYOUT_FIELD_MAX))
            r = -EBADMSG;
        if (r == 0 && !dict)
            r = rd(w, obj + (uint64_t)basic, vh, sizeof(vh));
        if (r == 0 && !dict && vh[3] != 1)
            r = -ENOENT; /* values not valid: the dict took them over */
        if (r == 0 && !dict)
            values = obj + (uint64_t)basic;
    }
    if (r == 0 && dict) {
        r = dict_get(w, dict, "_name", &at);
    } else if (r == 0 && values) {
        /* Every Thread of a class shares its keys: "_name" is looked up once a pass. */
        r = rd_u64(w, type + w->l.ht_cached_keys, &keys);
        if (r == 0 && keys != w->name_keys) {
            r = keys_read(w, keys, values, &d);
            if (r == 0)
                r = dict_find_str(w, &d, "_name");
            dict_clear(&d);
            if (r >= 0) {
                w->name_keys = keys;
                w->name_ix = r;
                r = 0;
            }
        }
        if (r == 0)
            r = values_get(w, values, (size_t)w->name_ix, &at);
    } else if (r == 0) {
        r = -ENOENT;
    }
    if (r == 0)
        r = read_str(w, at, &s);
    if (r == 0) {
        snprintf(name, len, "%s", s);
        free(s);
    }
    return r;
}

/* Names the threads ts[0..n) of interpreter interp from its threading._active, whose int keys
 * are the threads' idents: an int below 2^61 - 1 is its own hash (Python/pyhash.c,
 * _PyHASH_MODULUS), so the entries' me_hash finds them without reading the keys. */
static int name_threads(struct pywalk *w, uint64_t interp, struct pyframes_thread *ts, size_t n)
{
    struct dict d = {0};
    uint64_t active;
    int r = w->a.dict_type && w->l.values_at ? find_active(w, interp, &active) : -ENOENT;

    if (r == 0)
        r = dict_read(w, active, &d);
    if (r == 0 && d.size != 24)
        r = -EBADMSG;
    for (size_t i = 0; r == 0 && i < n; i++) {
        for (size_t k = 0; k < d.n; k++) {
            uint64_t thread = 0;
            if (u64_at(d.entries, k * 24) != ts[i].pthread_id || !u64_at(d.entries, k * 24 + 8) ||
                dict_value(w, &d, k, &thread) < 0)
                continue;
            if (thread_name_of(w, thread, ts[i].name, sizeof(ts[i].name)) == -ENOMEM)
                r = -ENOMEM;
            break;
        }
    }
    dict_clear(&d);
    return r == -ENOMEM ? r : 0;
}

/* ---- threads ---- */

/* The thread state holding the GIL of interpreter interp: 3.11 keeps it in the runtime, 3.12
 * on in the struct _gil_runtime_state the interpreter uses (its last_holder, while locked).
 * 0 when unknown. */
static uint64_t gil_holder(const struct pywalk *w, uint64_t interp)
{
    const struct pylayout *l = &w->l;
    uint64_t gil = 0, holder = 0;
    unsigned char locked[4];

    if (l->rt_gil_tstate)
        return rd_u64(w, w->a.runtime + l->rt_gil_tstate, &holder) == 0 ? holder : 0;
    if (rd_u64(w, interp + l->is_gil, &gil) < 0 || rd(w, gil + l->gil_locked, locked, 4) < 0 ||
        i32_at(locked, 0) == 0 || rd_u64(w, gil + l->gil_holder, &holder) < 0)
        return 0;
    return holder;
}

/* The thread state at ts of interpreter interp into t; -EBADMSG when it is not one (any more).
 * *ret_next gets the next thread state. With only != 0, a thread with another native id is
 * skipped (returns 1, t untouched). */
/* The thread state at ts into b (ts_span bytes) and its native id; -EBADMSG when it is not a
 * thread state of interpreter interp (any more). */
static int read_tstate(const struct pywalk *w, uint64_t ts, uint64_t interp, unsigned char *b,
                       uint64_t *ret_native)
{
    const struct pylayout *l = &w->l;
    int r = rd(w, ts, b, l->ts_span);

    if (r < 0)
        return r;
    uint64_t native = u64_at(b, l->ts_native_id);
    if (u64_at(b, l->ts_interp) != interp || native == 0 || native >= PID_MAX)
        return -EBADMSG;
    *ret_native = native;
    return 0;
}

static int read_thread(struct pywalk *w, uint64_t ts, uint64_t interp, uint64_t gil, pid_t only,
                       struct pyframes_thread *t, uint64_t *ret_next)
{
    const struct pylayout *l = &w->l;
    unsigned char b[PYLAYOUT_SPAN_MAX];
    uint64_t frame = 0, native;
    int r = read_tstate(w, ts, interp, b, &native);

    if (r < 0)
        return r;
    uint64_t fp = u64_at(b, l->ts_frame);
    *ret_next = u64_at(b, l->ts_next);
    if (only && (pid_t)native != only)
        return 1;
    memset(t, 0, sizeof(*t));
    t->tid = (pid_t)native;
    t->tstate = ts;
    t->pthread_id = u64_at(b, l->ts_thread_id);
    t->holds_gil = gil == ts;
    if (!l->ts_cframe)
        frame = fp;
    else if (fp && rd_u64(w, fp + l->cf_current_frame, &frame) < 0) {
        t->truncated = true;
        return 0;
    }
    return read_frames(w, frame, t);
}

void pyframes_thread_clear(struct pyframes_thread *t)
{
    for (size_t j = 0; j < t->nframes; j++)
        frame_clear(&t->frames[j]);
    free(t->frames);
    t->frames = NULL;
    t->nframes = 0;
}

void pyframes_threads_free(struct pyframes_thread *threads, size_t n)
{
    if (!threads)
        return;
    for (size_t i = 0; i < n; i++)
        pyframes_thread_clear(&threads[i]);
    free(threads);
}

/* Walks every interpreter's thread states: all into *ts (only == 0), or the one with native id
 * only into *one (returns 0 when found, else 1). */
static int walk(struct pywalk *w, pid_t only, struct pyframes_thread **ts, size_t *n,
                struct pyframes_thread *one)
{
    size_t cap = 0, seen = 0;
    uint64_t interp = 0;
    int r = rd_u64(w, w->a.runtime + w->l.rt_interp_head, &interp);

    if (r < 0)
        return r;
    for (unsigned ni = 0; interp && ni < PYFRAMES_MAX_INTERPS; ni++) {
        uint64_t next_interp = 0, tstate = 0;
        if (rd_u64(w, interp + w->l.is_next, &next_interp) < 0 ||
            rd_u64(w, interp + w->l.is_threads_head, &tstate) < 0)
            break;
        uint64_t gil = gil_holder(w, interp);
        size_t first = n ? *n : 0;
        while (tstate && seen++ < PYFRAMES_MAX_THREADS) {
            struct pyframes_thread *t = one;
            if (!only) {
                if (*n == cap) {
                    size_t ncap = cap ? cap * 2 : 16;
                    struct pyframes_thread *nt = realloc(*ts, ncap * sizeof(*nt));
                    if (!nt)
                        return -ENOMEM;
                    *ts = nt;
                    cap = ncap;
                }
                t = &(*ts)[*n];
            }
            r = read_thread(w, tstate, interp, gil, only, t, &tstate);
            if (r == -ENOMEM) {
                if (only)
                    pyframes_thread_clear(t);
                else
                    ++*n; /* its frames so far are freed with the rest */
                return r;
            }
            if (r < 0)
                break; /* not a thread state of this interpreter: the list changed */
            if (r == 0 && only)
                return 0;
            if (r == 0)
                ++*n;
        }
        if (!only && *n > first && name_threads(w, interp, *ts + first, *n - first) < 0)
            return -ENOMEM;
        interp = next_interp;
    }
    return only ? 1 : 0;
}

int pywalk_threads(struct pywalk *w, struct pyframes_thread **ret, size_t *ret_n)
{
    struct pyframes_thread *ts = NULL;
    size_t n = 0;
    int r = walk(w, 0, &ts, &n, NULL);

    cache_clear(w);
    if (r < 0) {
        pyframes_threads_free(ts, n);
        return r;
    }
    *ret = ts;
    *ret_n = n;
    return 0;
}

int pywalk_thread(struct pywalk *w, pid_t tid, struct pyframes_thread *ret)
{
    struct pyframes_thread t;
    int r = tid > 0 ? walk(w, tid, NULL, NULL, &t) : -EINVAL;

    cache_clear(w);
    if (r == 0)
        *ret = t;
    return r == 1 ? -ENOENT : r;
}

/* ---- for other readers of the same runtime ---- */

const struct pylayout *pywalk_layout(const struct pywalk *w)
{
    return &w->l;
}

const struct pywalk_addrs *pywalk_addrs(const struct pywalk *w)
{
    return &w->a;
}

int pywalk_read(const struct pywalk *w, uint64_t addr, void *buf, size_t len)
{
    return rd(w, addr, buf, len);
}

int pywalk_str(const struct pywalk *w, uint64_t addr, char **ret)
{
    return read_str(w, addr, ret);
}

int pywalk_frame(struct pywalk *w, uint64_t addr, struct pyframes_frame *f)
{
    struct pyframes_frame out = {0};
    enum frame_kind kind;
    uint64_t previous;
    int r = read_frame(w, addr, &out, &previous, &kind);

    if (r < 0)
        return r;
    if (kind != FRAME_PYTHON)
        return 1;
    *f = out;
    return 0;
}

void pywalk_frame_clear(struct pyframes_frame *f)
{
    frame_clear(f);
    memset(f, 0, sizeof(*f));
}

void pywalk_end_pass(struct pywalk *w)
{
    cache_clear(w);
}

int pywalk_each_thread(struct pywalk *w,
                       int (*fn)(void *ctx, uint64_t interp, uint64_t tstate, pid_t tid), void *ctx)
{
    const struct pylayout *l = &w->l;
    unsigned char b[PYLAYOUT_SPAN_MAX];
    uint64_t interp = 0;
    size_t seen = 0;
    int r = rd_u64(w, w->a.runtime + l->rt_interp_head, &interp);

    for (unsigned ni = 0; r == 0 && interp && ni < PYFRAMES_MAX_INTERPS; ni++) {
        uint64_t next = 0, ts = 0, native;
        if (rd_u64(w, interp + l->is_next, &next) < 0 ||
            rd_u64(w, interp + l->is_threads_head, &ts) < 0)
            break;
        while (ts && seen++ < PYFRAMES_MAX_THREADS && read_tstate(w, ts, interp, b, &native) == 0) {
            int stop = fn(ctx, interp, ts, (pid_t)native);
            if (stop)
                return stop;
            ts = u64_at(b, l->ts_next);
        }
        interp = next;
    }
    return r;
}

int pywalk_decode(struct pywalk *w, const struct pyframes_raw_frame *raw, size_t n,
                  struct pyframes_thread *ret)
{
    struct pyframes_thread t = {0};
    size_t cap = 0;
    int r = 0;

    if (w->cache_n >= CACHE_SLOTS / 2)
        cache_clear(w);
    for (size_t i = 0; i < n && r == 0; i++) {
        struct pyframes_frame f = {0};
        enum frame_kind kind;

        if (t.nframes == PYFRAMES_MAX_FRAMES) {
            t.truncated = true;
            break;
        }
        r = decode_frame(w, raw[i].code, raw[i].instr, raw[i].owner, raw[i].is_entry, &f, &kind);
        if (r < 0 && r != -ENOMEM) {
            t.truncated = true; /* freed or reused since the copy: the rest is unknown */
            r = 0;
            break;
        }
        if (r == 0)
            r = add_frame(&t, &cap, kind, raw[i].addr, &f);
    }
    if (r < 0) {
        pyframes_thread_clear(&t);
        return r;
    }
    *ret = t;
    return 0;
}
