/* guppy's stat dump from allocation sites (see hpy.h): a KIND per site, sites of one KIND merged
 * into one row, rows in guppy's order. Names are cleaned by formats/heap.c. */
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

/* The rows of sites with bytes, one per KIND, in guppy's order. */
static int make_rows(const struct heap_site *sites, size_t nsites, struct row *rows, size_t *ret_n)
{
    size_t nrows = 0, i, j;

    for (i = 0; i < nsites; i++) {
        if (!sites[i].bytes)
            continue;
        rows[nrows].kind = hpy_kind(sites[i].frames, sites[i].nframes);
        if (!rows[nrows].kind)
            return -ENOMEM;
        rows[nrows].count = sites[i].blocks;
        rows[nrows++].size = sites[i].bytes;
    }
    if (nrows) {
        qsort(rows, nrows, sizeof(*rows), cmp_row_kind);
        for (i = 1, j = 0; i < nrows; i++) {
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
        nrows = j + 1;
        qsort(rows, nrows, sizeof(*rows), cmp_row_size);
    }
    *ret_n = nrows;
    return 0;
}

int hpy_write(const char *path, const struct heap_site *sites, size_t nsites, double timemade,
              struct error *err)
{
    struct row *rows = NULL;
    struct atomicfile *f = NULL;
    uint64_t count = 0, size = 0;
    size_t nrows = 0, i;
    int r;

    error_clear(err);
    if (!path || !isfinite(timemade) || timemade < 0)
        return error_set(err, -EINVAL, NULL);
    r = heap_check_sites(sites, nsites, err);
    if (r < 0)
        return r;
    /* Merged rows never exceed the totals, so checking these covers every sum below. */
    for (i = 0; i < nsites; i++) {
        if (!sites[i].bytes)
            continue;
        if (__builtin_add_overflow(count, sites[i].blocks, &count) ||
            __builtin_add_overflow(size, sites[i].bytes, &size))
            return error_set(err, -EOVERFLOW,
                             "the live bytes or blocks of the allocation sites add up to more "
                             "than 2^64");
    }
    rows = calloc(nsites ? nsites : 1, sizeof(*rows));
    if (!rows)
        return error_set(err, -ENOMEM, NULL);
    r = make_rows(sites, nsites, rows, &nrows);
    if (r < 0)
        goto out;
    r = atomicfile_open(path, &f);
    if (r < 0)
        goto out;
    /* Partition.get_trows' order; .kindname is empty as for guppy's own set partitions. */
    atomicfile_printf(f,
                      ".loader: _load_stat\n.format: SetFormat\n.timemade: %f\n"
                      ".count: %" PRIu64 "\n.size: %" PRIu64 "\n.kindname: \n"
                      ".kindheader: " KIND_HEADER "\n.numrows: %zu\n",
                      timemade, count, size, nrows);
    for (i = 0; i < nrows; i++)
        atomicfile_printf(f, ".r: %" PRIu64 " %" PRIu64 " %s\n", rows[i].count, rows[i].size,
                          rows[i].kind);
    atomicfile_printf(f, ".end: .loader: _load_stat\n");
    r = atomicfile_commit(f);
out:
    for (i = 0; i < nsites; i++)
        free(rows[i].kind);
    free(rows);
    return error_fill(err, r);
}
