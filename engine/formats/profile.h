/* CPU profile aggregation and the files users open: samples (unwound stacks with a weight) are
 * folded into per-function self and cumulative time, caller -> callee edges, and a per-thread
 * call tree, then written as Python pstats (marshal), Callgrind and a self-contained flame graph
 * SVG. A function is (module, symbol, source file, first line); a Python function's module is its
 * .py file. Recursion counts once per stack for cumulative time and edges. The profile copies
 * every string it keeps. */
#ifndef PROFILE_H
#define PROFILE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "os/error.h"
#include "unwind/stacks.h"

struct profile;

struct profile_top {
    const char *func; /* symbol, or "[unknown]" for frames without one */
    const char *module;
    const char *file; /* NULL when unknown */
    int func_line;
    uint64_t self_samples, total_samples;
    uint64_t self_ns, total_ns;
};

int profile_new(struct profile **ret);
void profile_free(struct profile *p);
/* Adds one sample: frames innermost first (as stacks_unwind_regs gives them), the thread's name,
 * its weight (the sampling period in ns). A truncated stack still counts (its outermost known
 * frame becomes a root); n == 0 counts as an "[unknown]" frame. */
int profile_add(struct profile *p, const char *thread, const struct stacks_frame *frames, size_t n,
                int truncated, uint64_t weight_ns);
uint64_t profile_samples(const struct profile *p);
/* Its samples weigh unequal times (off-CPU stretches, as wall and off modes add them): the
 * writers that count samples (flame graph widths, collapsed stacks) count microseconds instead,
 * or a blocked second would weigh what a blocked millisecond does. */
void profile_set_timed(struct profile *p);
uint64_t profile_truncated(const struct profile *p);
/* Samples that lost detail to the profile's limits (distinct functions, call tree nodes, edges,
 * strings): they still count in the totals, but some of their frames went to "[dropped]" or
 * their tree path, call edges or source line are missing. */
uint64_t profile_dropped(const struct profile *p);
/* The n functions with the most self time, most first (functions never innermost are left
 * out). Strings owned by p. */
int profile_top(const struct profile *p, size_t n, struct profile_top *out, size_t *ret_n);

/* Each writer writes PATH.tmp.PID, then renames it to path (mode 0640): a reader never sees half
 * a file; on error nothing is left under either name. -errno on failure (-ENOSPC, -EACCES, ...),
 * in err too (may be NULL); pstats: -ENODATA for a profile without samples.
 * - pstats: marshal of {(file, first line, func): (cc, nc, tt, ct, {caller: (nc, cc, tt, ct)})},
 *   as cProfile writes it; file is the source file, else the module path; calls are sample
 *   counts; times in seconds. Read by `python3 -m pstats`, SnakeViz, gprof2dot.
 * - callgrind: `events: Samples Nanoseconds`, ob=/fl=/fn= with name compression (module in ob=,
 *   "???" in fl= without a source file, the name alone in fn= unless callgrind_annotate would
 *   merge two functions: then "name [module]"), self costs by source line, calls= lines with
 *   inclusive costs. Read by callgrind_annotate, KCachegrind.
 * - flamegraph: one SVG, no external resources; a root per thread name, frames labelled by
 *   function ("[MODULE]" for one without a symbol), hover titles with its module, file:first
 *   line, samples and percentages, click to zoom, search. cmd and pid go into the titles. */
int profile_write_pstats(const struct profile *p, const char *path, struct error *err);
int profile_write_callgrind(const struct profile *p, const char *path, const char *cmd, pid_t pid,
                            struct error *err);
int profile_write_flamegraph(const struct profile *p, const char *path, const char *title,
                             struct error *err);
/* Whole stacks, one per call tree path with samples ending there (formats/callpaths.h):
 * - collapsed: "thread NAME;outermost;...;innermost SAMPLES" lines (microseconds in a timed
 *   profile). Read by flamegraph.pl, inferno, speedscope.
 * - pprof: gzipped profile.proto, values [samples count, cpu nanoseconds], a "thread" label;
 *   start_ns (Unix time) and duration_ns go into its header. Read by `go tool pprof`, Pyroscope.
 * - speedscope: speedscope's JSON file format, a "sampled" profile per thread name in ns. */
int profile_write_collapsed(const struct profile *p, const char *path, struct error *err);
int profile_write_pprof(const struct profile *p, const char *path, uint64_t start_ns,
                        uint64_t duration_ns, struct error *err);
int profile_write_speedscope(const struct profile *p, const char *path, const char *title,
                             struct error *err);

/* The collapsed stacks as text in memory, to keep with a run and compare a later run with
 * (formats/diffgraph.h): the lines profile_write_collapsed writes, in its order, at most
 * max_stacks of them in at most max_bytes. Past either limit the heaviest stacks are kept and
 * one last line "[stacks not kept] N" holds the samples of the others, so that the counts still
 * add up to the profile's samples. */
struct profile_folded {
    char *text; /* NUL-terminated */
    size_t len;
    size_t stacks, kept; /* distinct stacks, and those with a line of their own */
    uint64_t samples, kept_samples;
};
int profile_collapsed_text(const struct profile *p, size_t max_stacks, size_t max_bytes,
                           struct profile_folded *ret, struct error *err);
void profile_folded_destroy(struct profile_folded *f);

#endif
