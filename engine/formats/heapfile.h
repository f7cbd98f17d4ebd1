/* The two result files of the `memory` action, written from allocation sites the caller has
 * already collected and symbolized: guppy's stat dump (heap_profile.T.hpy) and Valgrind's Massif
 * format (massif.out.T). This module only formats; it neither tracks allocations nor unwinds. */
#ifndef HEAPFILE_H
#define HEAPFILE_H

#include <stddef.h>
#include <stdint.h>
#include "unwind/stacks.h"

#define HEAPFILE_MAX_SITES 100000     /* more: -E2BIG */
#define HEAPFILE_MAX_SNAPSHOTS 100000 /* more: -E2BIG */
#define HEAPFILE_KIND_FRAMES 8        /* frames named in a hpy KIND; deeper ones read "..." */
#define HEAPFILE_MASSIF_DEPTH                                                                      \
    30                        /* frames below the root of a massif tree, as massif's               \
                                 default --depth */
#define HEAPFILE_NAME_MAX 512 /* bytes kept of one function name or path */

enum {
    HEAPFILE_TREE_EMPTY,
    HEAPFILE_TREE_DETAILED,
    HEAPFILE_TREE_PEAK,
};

struct heapfile_site {                 /* one allocation site */
    const struct stacks_frame *frames; /* innermost first: frames[0] called malloc & co */
    size_t nframes;
    uint64_t bytes, blocks; /* live at the end of the run (what the hpy lists) */
};

struct heapfile_snapshot {
    uint64_t time;              /* the massif file's time unit: ms since the run started */
    uint64_t heap_bytes;        /* total live bytes at that time */
    uint64_t heap_extra_bytes;  /* allocator overhead estimate (may be 0) */
    int tree;                   /* HEAPFILE_TREE_EMPTY, _DETAILED or _PEAK */
    const uint64_t *site_bytes; /* unless EMPTY: live bytes per site, indexed like sites[];
                                   they must add up to heap_bytes */
};

/* A site's KIND as the hpy file names it: "func <- caller <- ...", malloc'd (NULL: -ENOMEM). */
char *heapfile_kind(const struct stacks_frame *frames, size_t nframes);

/* heap_profile.T.hpy, as guppy's Stat.dump writes it and hpy().load() reads it: the header
 * (.loader: _load_stat, .format: SetFormat, .timemade, .count, .size, .kindname (empty, as for
 * guppy's set partitions), .kindheader, .numrows), one `.r: COUNT SIZE KIND` row per distinct
 * KIND, then `.end: .loader: _load_stat`. KIND is `func <- caller <- ...` over the innermost
 * HEAPFILE_KIND_FRAMES frames (then ` <- ...`); a frame without a symbol reads MODULE+0xOFF
 * (module base name), or `??` without a module either; a site without frames is `??`. Sites
 * whose KINDs read the same are merged; sites with 0 bytes are left out. Rows go largest size
 * first, then most blocks, then by KIND. Text that would break the line format (control
 * characters, invalid UTF-8) reads `?`. timemade: Unix time, finite and >= 0.
 * -EINVAL (NULL path, sites NULL with nsites > 0, a site's frames NULL with nframes > 0, a bad
 * timemade), -E2BIG, -EOVERFLOW (totals beyond uint64), -ENOMEM, or atomicfile's errors. */
int heapfile_write_hpy(const char *path, const struct heapfile_site *sites, size_t nsites,
                       double timemade);

/* massif.out.T, as massif writes it and ms_print reads it: `desc:`, `cmd: CMD`, `time_unit: ms`,
 * then the snapshots in order, numbered from 0. A detailed or peak snapshot has its heap tree in
 * pre-order, one `nCHILDREN: BYTES DETAILS` line per node indented by its depth: the root
 * "(heap allocation functions) malloc/new/new[], --alloc-fns, etc.", under it the functions
 * that called the allocator (frames[0]), under each its callers, up to HEAPFILE_MASSIF_DEPTH
 * frames. Frames merge where the whole path from the root matches (address, function, file,
 * line, module). DETAILS read `0xADDR: func (file:line)`, `0xADDR: func (in /module)` or
 * `0xADDR: ???`. Children go largest first; those under 1% of the snapshot's heap plus extra
 * bytes (ms_print's default threshold) fold into one last `in N places, all below massif's
 * threshold (1.00%)` node, as massif does; zero-byte children are left out. A node's bytes are
 * the sum of its children's: where some stacks end at a frame that others pass through (an
 * unwind that stopped early), the bytes of those that end there form a child
 * `0x0: ??? (no caller recorded)`. With no snapshots, one empty snapshot at time 0 with 0 bytes
 * is written, since ms_print needs at least one.
 * -EINVAL (NULL path or cmd, sites or snaps NULL with a non-zero count, a frames NULL with
 * nframes > 0, times that go backwards, more than one peak, a bad tree value, a tree without
 * site_bytes, site_bytes not adding up to heap_bytes), -E2BIG, -EOVERFLOW, -ENOMEM, or
 * atomicfile's errors. */
int heapfile_write_massif(const char *path, const char *cmd, const struct heapfile_site *sites,
                          size_t nsites, const struct heapfile_snapshot *snaps, size_t nsnaps);

#endif
