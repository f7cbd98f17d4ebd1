/* What the memory action's two files share: the allocation sites and snapshots the caller has
 * already collected and symbolized, the limits on them, the cleaning of names that both line
 * formats need, which frames of a site are the allocator's own path, and the call-site address
 * both print. The writers are hpy.c (guppy's stat dump) and massif.c (Valgrind's Massif); this
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
#define HEAP_ALLOC_PATH_MAX 16 /* frames heap_alloc_path looks at */
/* Bytes a cleaned name may take, the NUL included. */
#define HEAP_TEXT_CAP (HEAP_NAME_MAX + sizeof(HEAP_ELLIPSIS))

enum {
    HEAP_TREE_EMPTY,
    HEAP_TREE_DETAILED,
    HEAP_TREE_PEAK,
};

/* One allocation site. Every frame's ip is a return address, frames[0]'s too (where the call
 * into the allocator returns to): the files print the call instruction's address instead,
 * heap_call_site(), as heaptrack, perf and gdb do. */
struct heap_site {
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
                                   with before_bytes they must add up to heap_bytes */
    uint64_t before_bytes;      /* of heap_bytes, the heap in use when the run started, which
                                   no site accounts for (massif shows it as one node) */
};

/* Appends src at dst + *len as one line of valid UTF-8 of at most HEAP_NAME_MAX bytes (then
 * "..."): control characters, invalid bytes (as Python's decoder judges them) and, with no_hash
 * (ms_print drops everything after a '#'), '#' read '?'. dst stays NUL-terminated;
 * HEAP_TEXT_CAP bytes must be free at dst + *len. */
void heap_put_clean(char *dst, size_t *len, const char *src, bool no_hash);
/* The last component of path (path itself when it ends in '/' or has none). */
const char *heap_base_name(const char *path);
/* How many innermost frames of a site are the allocator's own path, shown in labels but not
 * counted against their frame budget: up to the outermost frame, among the first
 * HEAP_ALLOC_PATH_MAX, named as an allocation function (malloc, calloc, realloc, strdup,
 * operator new, an allocator's allocate, and wrappers named like them: xmalloc, g_malloc,
 * sqlite3Malloc, sqlite3DbStrNDup, PyMem_Malloc, pymalloc_alloc...), when only such functions
 * and frames without a symbol ("??", MODULE+0xOFF) come before it. 0 when there is none. */
size_t heap_alloc_path(const struct stacks_frame *frames, size_t nframes);
/* The call instruction's address of a frame (ip - 1, offset - 1; 0 stays 0): what files print. */
uint64_t heap_call_site(uint64_t return_address);
/* 0, or -E2BIG past HEAP_MAX_SITES (with a reason in err), -EINVAL for sites NULL with
 * nsites > 0 or a site's frames NULL with nframes > 0. */
int heap_check_sites(const struct heap_site *sites, size_t nsites, struct error *err);

#endif
