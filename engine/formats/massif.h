/* massif.out.T, the `memory` action's file for Valgrind's ms_print and massif-visualizer:
 * snapshots of the live heap over time, some with the tree of allocation sites behind their
 * bytes, written from the sites and snapshots of formats/heap.h. Only formats; not the hpy file
 * (hpy.h). */
#ifndef MASSIF_H
#define MASSIF_H

#include <stddef.h>
#include "formats/heap.h"
#include "os/error.h"

#define MASSIF_DEPTH                                                                               \
    30 /* frames below the root of a tree past the allocator's path, as massif's                   \
          default --depth */
/* How the node of a snapshot's before_bytes reads: what the memory profile puts there. */
#define MASSIF_BEFORE_WHAT                                                                         \
    "heap in use when the run started: the [heap] Rss in /proc/PID/smaps, not attributed"

/* massif.out.T, as massif writes it and ms_print reads it: `desc:`, `cmd: CMD`, `time_unit: ms`,
 * then the snapshots in order, numbered from 0. A detailed or peak snapshot has its heap tree in
 * pre-order, one `nCHILDREN: BYTES DETAILS` line per node indented by its depth: the root
 * "(heap allocation functions) malloc/new/new[], --alloc-fns, etc.", under it the functions
 * that called the allocator (frames[0]), under each its callers: the allocator's own path
 * (heap_alloc_path), then up to MASSIF_DEPTH frames more. Frames merge where the whole path
 * from the root matches (address, function, file, line, module). DETAILS read
 * `0xADDR: func (file:line)`, `0xADDR: func (in /module)` or `0xADDR: ???`, ADDR the call site
 * (heap_call_site). Children go largest first; those under 1% of the snapshot's heap plus extra
 * bytes (ms_print's default threshold) fold into one last `in N places, all below massif's
 * threshold (1.00%)` node, as massif does; zero-byte children are left out. A node's bytes are
 * the sum of its children's: where some stacks end at a frame that others pass through (an
 * unwind that stopped early), the bytes of those that end there form a child
 * `0x0: ??? (no caller recorded)`, and a snapshot's before_bytes are a child of the root,
 * `0x0: ??? (MASSIF_BEFORE_WHAT)`. With no snapshots, one empty snapshot at time 0 with 0 bytes
 * is written, since ms_print needs at least one. Written atomically (atomicfile.h).
 * -EINVAL (NULL path or cmd, sites or snaps NULL with a non-zero count, a frames NULL with
 * nframes > 0, times that go backwards, more than one peak, a bad tree value, a tree without
 * site_bytes, before_bytes over heap_bytes, site_bytes and before_bytes not adding up to
 * heap_bytes), -E2BIG, -EOVERFLOW, -ENOMEM, or atomicfile's errors; in err too (may be NULL),
 * with a reason where the errno does not say it. */
int massif_write(const char *path, const char *cmd, const struct heap_site *sites, size_t nsites,
                 const struct heap_snapshot *snaps, size_t nsnaps, struct error *err);

#endif
