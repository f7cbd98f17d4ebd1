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
#define KIND_CAP (HPY_KIND_FRAMES * (FRAME_CAP + sizeof(" <- ")) + sizeof(" <- " HEAP_ELLIPSIS))
#define KIND_HEADER "Allocation site (function <- callers)"

struct row {
    char *kind;
    uint64_t count, size;
};

/* One frame of a KIND: its function, else module+0xOFF, else "??". dst[*len..cap) must hold
 * FRAME_CAP bytes. */
static void put_kind_frame(char *dst, size_t cap, size_t *len, const struct stacks_frame *fr)
{
    if (fr->func && *fr->func) {
        heap_put_clean(dst, len, fr->func, false);
    } else if (fr->module) {
        heap_put_clean(dst, len, heap_base_name(fr->module), false);
        *len += (size_t)snprintf(dst + *len, cap - *len, "+0x%" PRIx64, fr->offset);
    } else {
        memcpy(dst + *len, "??", 3);
        *len += 2;
    }
}

char *hpy_kind(const struct stacks_frame *frames, size_t nframes)
{
    char buf[KIND_CAP];
    size_t len = 0, i;

    if (!nframes) {
        memcpy(buf, "??", 3);
        len = 2;
    }
    for (i = 0; i < nframes && i < HPY_KIND_FRAMES; i++) {
        if (i) {
            memcpy(buf + len, " <- ", 5);
            len += 4;
        }
        put_kind_frame(buf, sizeof(buf), &len, &frames[i]);
    }
    if (nframes > HPY_KIND_FRAMES)
        memcpy(buf + len, " <- " HEAP_ELLIPSIS, sizeof(" <- " HEAP_ELLIPSIS));
    return strdup(buf);
}

static int cmp_row_kind(const void *a, const void *b)
{
    return strcmp(((const struct row *)a)->kind, ((const struct row *)b)->kind);
}

/* guppy lists rows largest size first; count and KIND only make the order reproducible. */
static int cmp_row_size(const void *a, const void *b)
{
    const struct row *x = a, *y = b;

    if (x->size != y->size)
        return x->size > y->size ? -1 : 1;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return strcmp(x->kind, y->kind);
}

/* Rows of one KIND merged into one, then guppy's order. Every rows[i].kind is malloc'd. */
static void merge_rows(struct row *rows, size_t *nrows)
{
    size_t i, j;

    if (!*nrows)
        return;
    qsort(rows, *nrows, sizeof(*rows), cmp_row_kind);
    for (i = 1, j = 0; i < *nrows; i++) {
        struct row cur = rows[i];

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
}

static void free_rows(struct row *rows, size_t nrows)
{
    for (size_t i = 0; i < nrows; i++)
        free(rows[i].kind);
    free(rows);
}

/* The dump of rows[0..nrows) (kinds malloc'd and cleaned, sizes not 0), merged in place and in
 * guppy's order; the caller frees rows[0..nrows) as before. kindheader is cleaned here. */
static int dump_rows(const char *path, struct row *rows, size_t nrows, const char *kindheader,
                     double timemade, struct error *err)
{
    struct atomicfile *f = NULL;
    uint64_t count = 0, size = 0;
    char header[HEAP_TEXT_CAP];
    size_t i, n = nrows, len = 0;
    int r;

    /* Merged rows never exceed the totals, so checking these covers every sum below. */
    for (i = 0; i < nrows; i++)
        if (__builtin_add_overflow(count, rows[i].count, &count) ||
            __builtin_add_overflow(size, rows[i].size, &size))
            return error_set(err, -EOVERFLOW,
                             "the sizes or counts of the rows add up to more than 2^64");
    merge_rows(rows, &n);
    heap_put_clean(header, &len, kindheader, false);
    r = atomicfile_open(path, &f);
    if (r < 0)
        return r;
    /* Partition.get_trows' order; .kindname is empty as for guppy's own set partitions. */
    atomicfile_printf(f,
                      ".loader: _load_stat\n.format: SetFormat\n.timemade: %f\n"
                      ".count: %" PRIu64 "\n.size: %" PRIu64 "\n.kindname: \n"
                      ".kindheader: %s\n.numrows: %zu\n",
                      timemade, count, size, header, n);
    for (i = 0; i < n; i++)
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
    struct row *rows;
    size_t nrows = 0, i;
    int r;

    error_clear(err);
    if (!path || bad_timemade(timemade))
        return error_set(err, -EINVAL, NULL);
    r = heap_check_sites(sites, nsites, err);
    if (r < 0)
        return r;
    rows = calloc(nsites ? nsites : 1, sizeof(*rows));
    if (!rows)
        return error_set(err, -ENOMEM, NULL);
    for (i = 0; i < nsites; i++) {
        if (!sites[i].bytes)
            continue;
        rows[nrows].kind = hpy_kind(sites[i].frames, sites[i].nframes);
        if (!rows[nrows].kind) {
            r = -ENOMEM;
            goto out;
        }
        rows[nrows].count = sites[i].blocks;
        rows[nrows++].size = sites[i].bytes;
    }
    r = dump_rows(path, rows, nrows, KIND_HEADER, timemade, err);
out:
    free_rows(rows, nrows);
    return error_fill(err, r);
}

int hpy_write_kinds(const char *path, const struct hpy_kind_row *rows, size_t nrows,
                    const char *kindheader, double timemade, struct error *err)
{
    struct row *out;
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
    r = dump_rows(path, out, n, kindheader, timemade, err);
out:
    free_rows(out, n);
    return error_fill(err, r);
}
