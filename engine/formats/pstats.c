/* The profile as Python's pstats reads it: marshal.dump of the dict cProfile's snapshot_stats
 * builds, written byte by byte as CPython's Python/marshal.c reads it (format 4, no references).
 * Calls are sample counts and times are seconds; this is not a general marshal writer. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "formats/profile_priv.h"

#define M_INT 'i'
#define M_LONG 'l'
#define M_FLOAT 'g'
#define M_UNICODE 'u'
#define M_TUPLE '('
#define M_SMALL_TUPLE ')'
#define M_DICT '{'
#define M_NULL '0'
#define LONG_SHIFT 15 /* marshal's PyLong digits are 15 bits whatever the build's digit size */

static void w_u32(struct atomicfile *f, uint32_t v)
{
    unsigned char b[4] = {v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >> 24};
    atomicfile_write(f, b, sizeof(b));
}

void profile_marshal_int(struct atomicfile *f, int64_t v)
{
    uint64_t mag;
    uint32_t ndigits = 0;
    size_t i;

    if (v >= INT32_MIN && v <= INT32_MAX) {
        atomicfile_putc(f, M_INT);
        w_u32(f, (uint32_t)(int32_t)v);
        return;
    }
    /* Magnitude by unsigned negation: -INT64_MIN does not fit an int64_t. */
    mag = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    for (uint64_t m = mag; m; m >>= LONG_SHIFT)
        ndigits++;
    atomicfile_putc(f, M_LONG);
    w_u32(f, v < 0 ? (uint32_t) - (int32_t)ndigits : ndigits);
    for (i = 0; i < ndigits; i++) {
        uint16_t d = (uint16_t)((mag >> (i * LONG_SHIFT)) & 0x7fff);
        unsigned char b[2] = {d & 0xff, d >> 8};
        atomicfile_write(f, b, sizeof(b));
    }
}

void profile_marshal_float(struct atomicfile *f, double v)
{
    unsigned char b[8];
    uint64_t u;
    size_t i;

    memcpy(&u, &v, sizeof(u));
    for (i = 0; i < sizeof(b); i++)
        b[i] = (unsigned char)(u >> (8 * i));
    atomicfile_putc(f, M_FLOAT);
    atomicfile_write(f, b, sizeof(b));
}

/* s must be valid UTF-8 (the profile's strings are: it interns them so); marshal.load would
 * raise on anything else. */
void profile_marshal_str(struct atomicfile *f, const char *s)
{
    size_t n = strlen(s);
    atomicfile_putc(f, M_UNICODE);
    w_u32(f, (uint32_t)n);
    atomicfile_write(f, s, n);
}

void profile_marshal_tuple(struct atomicfile *f, size_t n)
{
    if (n < 256) {
        atomicfile_putc(f, M_SMALL_TUPLE);
        atomicfile_putc(f, (char)n);
    } else {
        atomicfile_putc(f, M_TUPLE);
        w_u32(f, (uint32_t)n);
    }
}

void profile_marshal_dict_begin(struct atomicfile *f)
{
    atomicfile_putc(f, M_DICT);
}

void profile_marshal_dict_end(struct atomicfile *f)
{
    atomicfile_putc(f, M_NULL);
}

static double seconds(uint64_t ns)
{
    return (double)ns / 1e9;
}

static int64_t count(uint64_t n)
{
    return n > INT64_MAX ? INT64_MAX : (int64_t)n;
}

static void write_key(struct atomicfile *f, const struct profile *p, char *const *names,
                      uint32_t fn)
{
    profile_marshal_tuple(f, 3);
    profile_marshal_str(f, profile_func_location(p, fn));
    profile_marshal_int(f, p->func[fn].func_line);
    profile_marshal_str(f, profile_func_name(p, names, fn));
}

int profile_write_pstats(const struct profile *p, const char *path, struct error *err)
{
    struct atomicfile *f = NULL;
    size_t *first = NULL, *order = NULL;
    char **names = NULL;
    size_t i, j;
    int r;

    error_clear(err);
    if (!p->samples)
        return error_set(err, -ENODATA, "the profile holds no samples");
    r = profile_names_new(p, 1, 0, &names);
    if (r < 0)
        goto out;
    /* Edges grouped by callee: first[callee] .. first[callee + 1] in order. */
    r = -ENOMEM;
    first = calloc(p->nfunc + 1, sizeof(*first));
    order = malloc((p->nedge ? p->nedge : 1) * sizeof(*order));
    if (!first || !order)
        goto out;
    for (i = 0; i < p->nedge; i++)
        first[p->edge[i].callee + 1]++;
    for (i = 0; i < p->nfunc; i++)
        first[i + 1] += first[i];
    for (i = 0; i < p->nedge; i++)
        order[first[p->edge[i].callee]++] = i;
    for (i = p->nfunc; i > 0; i--)
        first[i] = first[i - 1];
    first[0] = 0;

    r = atomicfile_open(path, &f);
    if (r < 0)
        goto out;
    profile_marshal_dict_begin(f);
    for (i = 0; i < p->nfunc; i++) {
        const struct profile_func *fn = &p->func[i];
        if (!fn->total_samples)
            continue;
        write_key(f, p, names, (uint32_t)i);
        profile_marshal_tuple(f, 5);
        profile_marshal_int(f, count(fn->total_samples));
        profile_marshal_int(f, count(fn->total_samples));
        profile_marshal_float(f, seconds(fn->self_ns));
        profile_marshal_float(f, seconds(fn->total_ns));
        profile_marshal_dict_begin(f);
        for (j = first[i]; j < first[i + 1]; j++) {
            const struct profile_edge *e = &p->edge[order[j]];
            if (!e->samples)
                continue;
            write_key(f, p, names, e->caller);
            profile_marshal_tuple(f, 4);
            profile_marshal_int(f, count(e->samples));
            profile_marshal_int(f, count(e->samples));
            profile_marshal_float(f, seconds(e->self_ns));
            profile_marshal_float(f, seconds(e->ns));
        }
        profile_marshal_dict_end(f);
    }
    profile_marshal_dict_end(f);
    r = atomicfile_commit(f);
    f = NULL;
out:
    error_fill(err, r);
    atomicfile_abort(f);
    profile_names_free(names, p->nfunc);
    free(first);
    free(order);
    return r;
}
