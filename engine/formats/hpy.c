/* guppy's stat dump from allocation sites or from counted kinds (see hpy.h): a KIND per site or
 * kind, rows of one KIND merged into one, rows in guppy's order. Names are cleaned by
 * formats/heap.c. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats/hpy.h"
#include "os/atomicfile.h"

#define FRAME_CAP (HEAP_TEXT_CAP + sizeof("+0x") + 16)
#define SEP " <- "
#define KIND_CAP (HPY_KIND_MAX_FRAMES * (FRAME_CAP + sizeof(SEP)) + sizeof(SEP HEAP_ELLIPSIS))
#define KIND_HEADER "Allocation site (function <- callers)"

enum { BY_NAME, BY_MODULE, BY_NOTHING }; /* how a frame reads in a KIND */

struct label {
    const struct heap_site *site;
    size_t n;   /* frames that may be named: at most HPY_KIND_MAX_FRAMES */
    size_t len; /* frames named */
};

static int frame_class(const struct stacks_frame *fr)
{
    return fr->func && *fr->func ? BY_NAME : fr->module ? BY_MODULE : BY_NOTHING;
}

/* One frame of a KIND: its function, else module+0xOFF, else "??". dst[*len..cap) must hold
 * FRAME_CAP bytes. */
static void put_kind_frame(char *dst, size_t cap, size_t *len, const struct stacks_frame *fr)
{
    switch (frame_class(fr)) {
    case BY_NAME:
        heap_put_clean(dst, len, fr->func, false);
        break;
    case BY_MODULE:
        heap_put_clean(dst, len, heap_base_name(fr->module), false);
        *len += (size_t)snprintf(dst + *len, cap - *len, "+0x%" PRIx64, heap_call_site(fr->offset));
        break;
    default:
        memcpy(dst + *len, "??", 3);
        *len += 2;
    }
}

/* Frames in the order of the text they read as (before cleaning). */
static int cmp_kind_frame(const struct stacks_frame *a, const struct stacks_frame *b)
{
    int ca = frame_class(a), cb = frame_class(b), c;

    if (ca != cb)
        return ca < cb ? -1 : 1;
    if (ca == BY_NAME)
        return strcmp(a->func, b->func);
    if (ca == BY_NOTHING)
        return 0;
    if ((c = strcmp(heap_base_name(a->module), heap_base_name(b->module))))
        return c;
    return (a->offset > b->offset) - (a->offset < b->offset);
}

/* Frames two labels read the same from the innermost on. */
static size_t common_frames(const struct label *x, const struct label *y)
{
    size_t i;

    for (i = 0; i < x->n && i < y->n; i++)
        if (cmp_kind_frame(&x->site->frames[i], &y->site->frames[i]))
            break;
    return i;
}

static int cmp_label(const void *a, const void *b)
{
    const struct label *x = a, *y = b;
    size_t i = common_frames(x, y);

    if (i < x->n && i < y->n)
        return cmp_kind_frame(&x->site->frames[i], &y->site->frames[i]);
    return (x->n > y->n) - (x->n < y->n);
}

static bool same_frames(const struct label *x, const struct label *y)
{
    return x->n == y->n && common_frames(x, y) == x->n;
}

/* How many frames each label names: the allocator's path and HPY_KIND_FRAMES more, or up to
 * the first frame that tells it from its neighbours in sorted order (those it shares the most
 * frames with). Labels that read the same all through are one row whatever their length: a run
 * of them gets one length, from the labels on either side of the run. Sorts labels. */
static void label_lengths(struct label *l, size_t n)
{
    size_t i, j, k, prev = 0, next, need, want;

    if (n > 1)
        qsort(l, n, sizeof(*l), cmp_label);
    for (i = 0; i < n; i = j) {
        for (j = i + 1; j < n && same_frames(&l[j - 1], &l[j]); j++)
            ;
        next = j < n ? common_frames(&l[j - 1], &l[j]) : 0;
        need = (prev > next ? prev : next) + 1;
        for (k = i; k < j; k++) {
            want = heap_alloc_path(l[k].site->frames, l[k].n) + HPY_KIND_FRAMES;
            if (want < need)
                want = need;
            l[k].len = want < l[k].n ? want : l[k].n;
        }
        prev = next;
    }
}

/* A label's KIND into buf (KIND_CAP bytes). */
static void put_kind(char *buf, const struct label *l)
{
    size_t len = 0, i;

    if (!l->site->nframes) {
        memcpy(buf, "??", 3);
        return;
    }
    for (i = 0; i < l->len; i++) {
        if (i) {
            memcpy(buf + len, SEP, sizeof(SEP));
            len += sizeof(SEP) - 1;
        }
        put_kind_frame(buf, KIND_CAP, &len, &l->site->frames[i]);
    }
    if (l->len < l->site->nframes)
        memcpy(buf + len, SEP HEAP_ELLIPSIS, sizeof(SEP HEAP_ELLIPSIS));
}

static int cmp_row_kind(const void *a, const void *b)
{
    return strcmp(((const struct hpy_row *)a)->kind, ((const struct hpy_row *)b)->kind);
}

/* guppy lists rows largest size first; count and KIND only make the order reproducible. */
static int cmp_row_size(const void *a, const void *b)
{
    const struct hpy_row *x = a, *y = b;

    if (x->size != y->size)
        return x->size > y->size ? -1 : 1;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return strcmp(x->kind, y->kind);
}

/* Rows of one KIND merged into one, then guppy's order; -EOVERFLOW when the totals overflow
 * (merged rows never exceed them). Every rows[i].kind is malloc'd; the caller frees
 * rows[0..nrows) as before. */
static int merge_rows(struct hpy_row *rows, size_t *nrows, struct error *err)
{
    uint64_t count = 0, size = 0;
    size_t i, j;

    for (i = 0; i < *nrows; i++)
        if (__builtin_add_overflow(count, rows[i].count, &count) ||
            __builtin_add_overflow(size, rows[i].size, &size))
            return error_set(err, -EOVERFLOW,
                             "the sizes or counts of the rows add up to more than 2^64");
    if (!*nrows)
        return 0;
    qsort(rows, *nrows, sizeof(*rows), cmp_row_kind);
    for (i = 1, j = 0; i < *nrows; i++) {
        struct hpy_row cur = rows[i];

        rows[i].kind = NULL;
        if (!strcmp(cur.kind, rows[j].kind)) {
            rows[j].count += cur.count;
            rows[j].size += cur.size;
            free(cur.kind);
        } else {
            rows[++j] = cur;
        }
    }
    *nrows = j + 1;
    qsort(rows, *nrows, sizeof(*rows), cmp_row_size);
    return 0;
}

void hpy_rows_free(struct hpy_row *rows, size_t n)
{
    if (!rows)
        return;
    for (size_t i = 0; i < n; i++)
        free(rows[i].kind);
    free(rows);
}

int hpy_rows_new(const struct heap_site *sites, size_t nsites, struct hpy_row **ret, size_t *ret_n,
                 struct error *err)
{
    struct hpy_row *rows = NULL;
    struct label *l = NULL;
    char *buf = NULL;
    size_t n = 0, nrows = 0, i;
    int r;

    error_clear(err);
    r = heap_check_sites(sites, nsites, err);
    if (r < 0)
        return r;
    r = -ENOMEM;
    rows = calloc(nsites ? nsites : 1, sizeof(*rows));
    l = malloc((nsites ? nsites : 1) * sizeof(*l));
    buf = malloc(KIND_CAP);
    if (!rows || !l || !buf)
        goto out;
    for (i = 0; i < nsites; i++)
        if (sites[i].bytes) {
            l[n].site = &sites[i];
            l[n++].n =
                sites[i].nframes < HPY_KIND_MAX_FRAMES ? sites[i].nframes : HPY_KIND_MAX_FRAMES;
        }
    label_lengths(l, n);
    for (i = 0; i < n; i++) {
        put_kind(buf, &l[i]);
        rows[nrows].kind = strdup(buf);
        if (!rows[nrows].kind)
            goto out;
        rows[nrows].count = l[i].site->blocks;
        rows[nrows++].size = l[i].site->bytes;
    }
    r = merge_rows(rows, &nrows, err);
    if (r < 0)
        goto out;
    *ret = rows;
    *ret_n = nrows;
    rows = NULL;
out:
    hpy_rows_free(rows, nrows);
    free(l);
    free(buf);
    return error_fill(err, r);
}

/* The dump of rows[0..nrows) (cleaned, merged, in guppy's order). kindheader is cleaned here. */
static int dump_rows(const char *path, const struct hpy_row *rows, size_t nrows,
                     const char *kindheader, double timemade)
{
    struct atomicfile *f = NULL;
    uint64_t count = 0, size = 0;
    char header[HEAP_TEXT_CAP];
    size_t i, len = 0;
    int r;

    for (i = 0; i < nrows; i++) {
        count += rows[i].count;
        size += rows[i].size;
    }
    heap_put_clean(header, &len, kindheader, false);
    r = atomicfile_open(path, &f);
    if (r < 0)
        return r;
    /* Partition.get_trows' order; .kindname is empty as for guppy's own set partitions. */
    atomicfile_printf(f,
                      ".loader: _load_stat\n.format: SetFormat\n.timemade: %f\n"
                      ".count: %" PRIu64 "\n.size: %" PRIu64 "\n.kindname: \n"
                      ".kindheader: %s\n.numrows: %zu\n",
                      timemade, count, size, header, nrows);
    for (i = 0; i < nrows; i++)
        atomicfile_printf(f, ".r: %" PRIu64 " %" PRIu64 " %s\n", rows[i].count, rows[i].size,
                          rows[i].kind);
    atomicfile_printf(f, ".end: .loader: _load_stat\n");
    return atomicfile_commit(f);
}

static bool bad_timemade(double timemade)
{
    return !isfinite(timemade) || timemade < 0;
}

int hpy_write(const char *path, const struct heap_site *sites, size_t nsites, double timemade,
              struct error *err)
{
    struct hpy_row *rows = NULL;
    size_t nrows = 0;
    int r;

    error_clear(err);
    if (!path || bad_timemade(timemade))
        return error_set(err, -EINVAL, NULL);
    r = hpy_rows_new(sites, nsites, &rows, &nrows, err);
    if (r == 0)
        r = dump_rows(path, rows, nrows, KIND_HEADER, timemade);
    hpy_rows_free(rows, nrows);
    return error_fill(err, r);
}

int hpy_write_kinds(const char *path, const struct hpy_kind_row *rows, size_t nrows,
                    const char *kindheader, double timemade, struct error *err)
{
    struct hpy_row *out;
    size_t n = 0, i;
    int r = 0;

    error_clear(err);
    if (!path || !kindheader || (nrows && !rows) || bad_timemade(timemade))
        return error_set(err, -EINVAL, NULL);
    if (nrows > HPY_MAX_KINDS)
        return error_set(err, -E2BIG, "%zu kinds of objects, more than the %d a file may hold",
                         nrows, HPY_MAX_KINDS);
    for (i = 0; i < nrows; i++)
        if (!rows[i].kind)
            return error_set(err, -EINVAL, NULL);
    out = calloc(nrows ? nrows : 1, sizeof(*out));
    if (!out)
        return error_set(err, -ENOMEM, NULL);
    for (i = 0; i < nrows; i++) {
        char buf[HEAP_TEXT_CAP];
        size_t len = 0;

        if (!rows[i].size)
            continue;
        heap_put_clean(buf, &len, rows[i].kind, false);
        out[n].kind = strdup(len ? buf : "?");
        if (!out[n].kind) {
            r = -ENOMEM;
            goto out;
        }
        out[n].count = rows[i].count;
        out[n++].size = rows[i].size;
    }
    r = merge_rows(out, &n, err);
    if (r == 0)
        r = dump_rows(path, out, n, kindheader, timemade);
out:
    hpy_rows_free(out, n);
    return error_fill(err, r);
}
