/* Internals of the CPU profile, shared by its aggregation (profile.c), its three writers
 * (pstats.c, callgrind.c, flamegraph.c) and its unit test. Nothing else should include it:
 * the public interface is profile.h. */
#ifndef PROFILE_PRIV_H
#define PROFILE_PRIV_H

#include <stdint.h>
#include <stddef.h>
#include "os/atomicfile.h"
#include "formats/profile.h"

/* Limits on what a profile keeps; past them samples still count but lose detail (dropped). */
#define PROFILE_MAX_FUNCS (1u << 20)
#define PROFILE_MAX_EDGES (4u << 20)
#define PROFILE_MAX_SITES (4u << 20)
#define PROFILE_MAX_LINES (4u << 20)
#define PROFILE_MAX_NODES (4u << 20)
#define PROFILE_MAX_STRINGS (3u << 20)
#define PROFILE_MAX_STRING_BYTES (64u << 20)
#define PROFILE_MAX_NAME 4096     /* bytes kept of one name, path or thread name */
#define PROFILE_NO_STRING 0       /* string id of "unknown" (a file that is not known) */
#define PROFILE_STR_CACHE 4096    /* recently interned caller pointers (a power of 2) */
#define PROFILE_PYTHON "[python]" /* the module of a Python frame that names no file */

/* A function: (module, symbol, source file, first line), as string ids. */
struct profile_func {
    uint32_t module, name, file;
    int func_line;
    uint64_t self_samples, self_ns;   /* as the innermost frame */
    uint64_t total_samples, total_ns; /* samples it appears in, once per stack */
    uint64_t stamp;                   /* last sample counted, for once-per-stack */
};

/* caller -> callee, for pstats' callers. */
struct profile_edge {
    uint32_t caller, callee;
    uint64_t samples, ns;           /* samples containing the edge, once per stack */
    uint64_t self_samples, self_ns; /* callee innermost, called right from caller */
    uint64_t stamp;
};

/* A call from one source line of caller to callee, for Callgrind. calls counts the samples
 * containing it. incl is its inclusive cost as readers sum it (callgrind_annotate's inclusive
 * cost of a function is the sum over the calls into it): a sample goes to the call into the
 * outermost occurrence of each of its functions, so that recursion counts once; the root of a
 * truncated stack is called from the pseudo-function "[truncated]". */
struct profile_site {
    uint32_t caller, callee;
    int line;
    uint64_t calls, incl_samples, incl_ns;
    uint64_t stamp;
};

/* Self cost of a function at one source line (the innermost frame's line). */
struct profile_line {
    uint32_t func;
    int line;
    uint64_t samples, ns;
};

/* Call tree for the flame graph: node 0 is "all", depth 1 nodes are thread names (id is a
 * string id), deeper nodes are functions (id is a function index), outermost first. */
struct profile_node {
    uint32_t parent, id, depth;
    uint64_t samples, ns; /* the samples through it (its own and below), and their weight */
};

struct profile_index {
    uint64_t *slot; /* hash << 32 | (record index + 1); 0 = empty */
    size_t mask, count;
};

struct profile {
    char **str; /* str[0] is NULL: PROFILE_NO_STRING */
    size_t nstr, cap_str, str_bytes;
    struct profile_index istr;
    struct {
        const char *ptr; /* the caller's pointer: only a hint, content rechecked */
        uint32_t id;
    } str_cache[PROFILE_STR_CACHE];
    struct profile_func *func;
    size_t nfunc, cap_func;
    struct profile_index ifunc;
    struct profile_edge *edge;
    size_t nedge, cap_edge;
    struct profile_index iedge;
    struct profile_site *site;
    size_t nsite, cap_site;
    struct profile_index isite;
    struct profile_line *line;
    size_t nline, cap_line;
    struct profile_index iline;
    struct profile_node *node;
    size_t nnode, cap_node;
    struct profile_index inode;
    uint32_t s_unknown, s_dropped; /* "[unknown]", "[dropped]" */
    uint32_t f_unknown, f_dropped; /* the functions named so */
    uint32_t f_truncated;          /* caller of truncated stacks' roots, no samples */
    uint64_t samples, truncated, dropped, total_ns, stamp;
    bool timed; /* profile_set_timed */
};

/* What the writers that count (flame graph widths, collapsed stacks) count for node n: its
 * samples, or in a timed profile its microseconds. */
static inline uint64_t profile_node_count(const struct profile *p, uint32_t n)
{
    return p->timed ? p->node[n].ns / 1000 : p->node[n].samples;
}

/* Names that make each function's key unique for a reader that keys functions by (location,
 * name) or, with by_line, (location, first line, name); location is the source file, else the
 * module path, or with no_module_file "???" (Callgrind's unknown file). Only functions with
 * samples (and "[truncated]") are listed, so only they count. ret[i] is NULL when the
 * function's own name is unique among them (the first of those that clash keeps it too), else
 * a malloc'd "name [module]". */
int profile_names_new(const struct profile *p, int by_line, int no_module_file, char ***ret);
void profile_names_free(char **names, size_t n);
const char *profile_func_name(const struct profile *p, char *const *names, uint32_t f);
/* A function's location as pstats and the flame graph name it: source file, else module. */
const char *profile_func_location(const struct profile *p, uint32_t f);

/* Decodes one UTF-8 character at s (len > 0 bytes available): its length, or 0 when the bytes
 * there are not valid UTF-8 (overlong, surrogate, past U+10FFFF, cut short). */
size_t profile_utf8_next(const char *s, size_t len, uint32_t *ret_cp);

/* Python marshal (format 4) values, written as CPython's marshal.c reads them. */
void profile_marshal_int(struct atomicfile *f, int64_t v);
void profile_marshal_float(struct atomicfile *f, double v);
void profile_marshal_str(struct atomicfile *f, const char *s);
void profile_marshal_tuple(struct atomicfile *f, size_t n);
void profile_marshal_dict_begin(struct atomicfile *f);
void profile_marshal_dict_end(struct atomicfile *f);

#endif
