/* heap_profile.T.hpy, the `memory` action's file for guppy (heapy): its stat dump, written from
 * the allocation sites of formats/heap.h or from rows of kinds the caller counted (a Python heap
 * by class), and the rows that group sites under one KIND text (the action's summary lists the
 * same rows). Only formats; not the Massif file (massif.h), nor the counting. */
#ifndef HPY_H
#define HPY_H

#include <stddef.h>
#include <stdint.h>
#include "formats/heap.h"
#include "os/error.h"

#define HPY_KIND_FRAMES 8      /* frames a KIND names past the allocator's path, at least */
#define HPY_KIND_MAX_FRAMES 32 /* frames a KIND names at most; deeper ones read "..." */
#define HPY_MAX_KINDS 100000   /* rows hpy_write_kinds takes; more: -E2BIG */
/* guppy's header for its default partition, hpy().heap()'s */
#define HPY_KINDHEADER_CLASS "Kind (class / dict of class)"

struct hpy_kind_row { /* one kind of object and what its objects take */
    const char *kind; /* e.g. "str", "dict of module.Class" */
    uint64_t count, size;
};

struct hpy_row { /* one row of the dump: the sites or kinds under one KIND text */
    char *kind;
    uint64_t count, size;
};

/* The rows hpy_write writes for these sites, in its order: what the memory action's summary
 * lists as its top sites. A KIND is `func <- caller <- ...`, innermost first: the allocator's
 * own path (heap_alloc_path: malloc's callers named as allocation functions, and frames
 * without a symbol among them), then HPY_KIND_FRAMES more frames, and further frames where
 * another site's stack reads the same that far, up to the first frame where they differ (at
 * most HPY_KIND_MAX_FRAMES frames in all); ` <- ...` ends a KIND that leaves frames out. A
 * frame without a symbol reads MODULE+0xOFF (module base name; OFF the call site, the return
 * address - 1), or `??` without a module either; a site without frames is `??`. Sites whose
 * KINDs read the same are one row (stacks that differ only in lines, or only deeper than
 * HPY_KIND_MAX_FRAMES); sites with 0 bytes are left out. Rows go largest size first, then most
 * blocks, then by KIND. Text that would break the line format (control characters, invalid
 * UTF-8) reads `?`. *ret is malloc'd (free with hpy_rows_free). -EINVAL (sites NULL with nsites
 * > 0, a site's frames NULL with nframes > 0), -E2BIG, -EOVERFLOW (totals beyond uint64),
 * -ENOMEM; in err too (may be NULL), with a reason where the errno does not say it. */
int hpy_rows_new(const struct heap_site *sites, size_t nsites, struct hpy_row **ret, size_t *ret_n,
                 struct error *err);
void hpy_rows_free(struct hpy_row *rows, size_t n);

/* heap_profile.T.hpy, as guppy's Stat.dump writes it and hpy().load() reads it: the header
 * (.loader: _load_stat, .format: SetFormat, .timemade, .count, .size, .kindname (empty, as for
 * guppy's set partitions), .kindheader, .numrows), one `.r: COUNT SIZE KIND` row per row of
 * hpy_rows_new, then `.end: .loader: _load_stat`. timemade: Unix time, finite and >= 0. Written
 * atomically (atomicfile.h). hpy_rows_new's errors, -EINVAL for a NULL path or a bad timemade,
 * or atomicfile's errors; in err too (may be NULL). */
int hpy_write(const char *path, const struct heap_site *sites, size_t nsites, double timemade,
              struct error *err);

/* The same dump from rows the caller counted, as guppy dumps a partition by kind
 * (hpy().heap().dump(path) with kindheader HPY_KINDHEADER_CLASS): KIND and kindheader cleaned as
 * above (at most HEAP_NAME_MAX bytes each, then "..."; an empty KIND reads `?`), rows of one KIND
 * merged, rows of size 0 left out, the same order and totals. -EINVAL (NULL path or kindheader,
 * rows NULL with nrows > 0, a row's kind NULL, a bad timemade), -E2BIG past HPY_MAX_KINDS,
 * -EOVERFLOW, -ENOMEM, or atomicfile's errors; in err too (may be NULL). */
int hpy_write_kinds(const char *path, const struct hpy_kind_row *rows, size_t nrows,
                    const char *kindheader, double timemade, struct error *err);

#endif
