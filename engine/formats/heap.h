/* What the memory action's two files share: the allocation sites and snapshots the caller has
 * already collected and symbolized, the limits on them, and the cleaning of names that both line
 * formats need. The writers are hpy.c (guppy's stat dump) and massif.c (Valgrind's Massif); this
 * module writes no file, tracks no allocation and unwinds nothing. */
#ifndef HEAP_H
#define HEAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "os/error.h"
#include "unwind/stacks.h"

#define HEAP_MAX_SITES 100000     /* more: -E2BIG */
#define HEAP_MAX_SNAPSHOTS 100000 /* more: -E2BIG */
#define HEAP_NAME_MAX 512         /* bytes kept of one function name or path */
#define HEAP_ELLIPSIS "..."
/* Bytes a cleaned name may take, the NUL included. */
#define HEAP_TEXT_CAP (HEAP_NAME_MAX + sizeof(HEAP_ELLIPSIS))

enum {
    HEAP_TREE_EMPTY,
    HEAP_TREE_DETAILED,
    HEAP_TREE_PEAK,
};

struct heap_site {                     /* one allocation site */
    const struct stacks_frame *frames; /* innermost first: frames[0] called malloc & co */
    size_t nframes;
    uint64_t bytes, blocks; /* live at the end of the run (what the hpy lists) */
};

struct heap_snapshot {
    uint64_t time;              /* the massif file's time unit: ms since the run started */
    uint64_t heap_bytes;        /* total live bytes at that time */
    uint64_t heap_extra_bytes;  /* allocator overhead estimate (may be 0) */
    int tree;                   /* HEAP_TREE_EMPTY, _DETAILED or _PEAK */
    const uint64_t *site_bytes; /* unless EMPTY: live bytes per site, indexed like sites[];
                                   they must add up to heap_bytes */
};

/* Appends src at dst + *len as one line of valid UTF-8 of at most HEAP_NAME_MAX bytes (then
 * "..."): control characters, invalid bytes (as Python's decoder judges them) and, with no_hash
 * (ms_print drops everything after a '#'), '#' read '?'. dst stays NUL-terminated;
 * HEAP_TEXT_CAP bytes must be free at dst + *len. */
void heap_put_clean(char *dst, size_t *len, const char *src, bool no_hash);
/* The last component of path (path itself when it ends in '/' or has none). */
const char *heap_base_name(const char *path);
/* 0, or -E2BIG past HEAP_MAX_SITES (with a reason in err), -EINVAL for sites NULL with
 * nsites > 0 or a site's frames NULL with nframes > 0. */
int heap_check_sites(const struct heap_site *sites, size_t nsites, struct error *err);

#endif
