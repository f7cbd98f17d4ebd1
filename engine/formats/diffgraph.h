/* A differential flame graph of two runs, as Brendan Gregg draws them: the frames of the later
 * run, widths by its samples, each colored by how its share of samples changed since the
 * earlier run (red grew, blue shrank, white the same; the deeper, the larger the change against
 * the largest one drawn). Built from both runs' folded stacks (profile_collapsed_text), each
 * count taken as a share of its run's total, as difffolded.pl -n normalises them. Also written:
 * the difffolded.pl file ("STACK BEFORE AFTER" per line, the raw counts) from which
 * flamegraph.pl draws its own, and the functions that changed most. Frames of the earlier run
 * alone have no width in a graph of the later one: the graph lists them beneath its frames and
 * diffgraph_top names them. Not the profile or its other writers (profile.h). */
#ifndef DIFFGRAPH_H
#define DIFFGRAPH_H

#include <stddef.h>
#include <stdint.h>
#include "formats/profile.h"
#include "os/error.h"

#define DIFFGRAPH_MAX_TEXT ((size_t)256 << 20) /* bytes of one run's stacks */
#define DIFFGRAPH_MAX_FRAMES 1024              /* frames of one stack */

enum { DIFFGRAPH_BEFORE, DIFFGRAPH_AFTER };
enum diffgraph_change { DIFFGRAPH_GREW, DIFFGRAPH_SHRANK, DIFFGRAPH_GONE };

struct diffgraph;

/* A function (a frame's text, thread roots left out) over both runs. */
struct diffgraph_func {
    const char *label;  /* as in the folded stacks; owned by the graph */
    const char *module; /* NULL when the later run's profile has no such function */
    /* Shares of each run's samples (0..1), [DIFFGRAPH_BEFORE] and [DIFFGRAPH_AFTER]: as the
     * innermost frame, and in the stack at all (once per stack). */
    double self[2], total[2];
};

/* Builds the graph from the earlier run's folded stacks and the later one's (lines
 * "FRAME;FRAME;... COUNT"). after_profile, when not NULL, is the profile the later text was
 * made of: its functions' modules and files go into the hover texts and diffgraph_top (it must
 * outlive *ret). -EBADMSG when a line is not FRAMES COUNT, -E2BIG past DIFFGRAPH_MAX_TEXT or
 * DIFFGRAPH_MAX_FRAMES, -ENODATA when a run has no samples (err says which run and line);
 * -ENOMEM. */
int diffgraph_new(const char *before, size_t before_len, const char *after, size_t after_len,
                  const struct profile *after_profile, struct diffgraph **ret, struct error *err);
void diffgraph_free(struct diffgraph *d);
/* A run's samples: the sum of its counts. */
uint64_t diffgraph_samples(const struct diffgraph *d, int run);
/* Up to n of the functions that changed most in one way into out, most first; returns how
 * many changed so in all. GREW: a larger self share; SHRANK: a smaller one, still in the later
 * run; GONE: in no stack of the later run, the largest share before first. One thread at a
 * time on one graph: the ordering is done in room the graph keeps. */
size_t diffgraph_top(const struct diffgraph *d, enum diffgraph_change how,
                     struct diffgraph_func *out, size_t n);
/* The SVG (one file, its script embedded): title on top; before_name ("run 12") names the
 * earlier run in its words. Hovering a frame tells "LABEL in MODULE at FILE:LINE (B% -> A%,
 * +D pts)": its shares of each run's samples and the difference in percentage points.
 * -errno, in err too. */
int diffgraph_write_svg(const struct diffgraph *d, const char *path, const char *title,
                        const char *before_name, struct error *err);
/* The difffolded.pl file: "STACK BEFORE AFTER" for each stack of either run, as they came.
 * -errno, in err too. */
int diffgraph_write_folded(const struct diffgraph *d, const char *path, struct error *err);

#endif
