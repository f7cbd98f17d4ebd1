/* The SVG document of a flame graph, shared by the profile's flame graph (flamegraph.c) and the
 * differential one of two runs (diffgraph.c): the document with its style and embedded script
 * (zoom, search, hover details; nothing fetched), the frames' layout (siblings side by side in
 * their order, a parent's children within its width), one frame at a time, and the end. It
 * decides no widths, colors or words: its callers do. Internal to engine/formats/. */
#ifndef FLAMESVG_H
#define FLAMESVG_H

#include <stddef.h>
#include <stdint.h>
#include "formats/profile_priv.h"

#define FLAMESVG_WIDTH 1200
#define FLAMESVG_PAD_X 10
#define FLAMESVG_LINE_H 14       /* of a line of text the caller adds under the frames */
#define FLAMESVG_MIN_FRAME_W 0.1 /* narrower frames are left out (and so absent when zoomed) */

struct flamesvg {
    struct atomicfile *f;
    unsigned height;
    double base;    /* y of the bottom of the frame at depth 0's row */
    double extra_y; /* y of the first of the caller's extra lines under the frames */
};

/* A tree to lay out: nodes 0..n-1, 0 the root, each node's parent before it. */
struct flamesvg_tree {
    size_t n;
    const void *ctx;
    uint32_t (*parent)(const void *ctx, uint32_t node);
    uint64_t (*width)(const void *ctx, uint32_t node);   /* a parent's at least its children's */
    int (*cmp)(const void *ctx, uint32_t a, uint32_t b); /* the order of siblings */
};

/* Each node's offset from the left, in width units, into *ret_x (malloc'd, n entries): the
 * children of a node side by side from its own offset, in cmp's order. -ENOMEM. */
int flamesvg_layout(const struct flamesvg_tree *t, uint64_t **ret_x);
/* Pixels per width unit for a root of width total. */
double flamesvg_scale(uint64_t total);

/* Creates path (through atomicfile) and writes the document up to its frames: the background
 * color, title and subtitle (both plain text, escaped here), the buttons and the hover line;
 * rows for frames of depth 0..depth, and extra_lines lines of the caller's text below them (at
 * s->extra_y, one FLAMESVG_LINE_H apart). The caller may add elements of its own to s->f, then
 * calls flamesvg_frames. -errno. */
int flamesvg_open(struct flamesvg *s, const char *path, uint32_t depth, unsigned extra_lines,
                  const unsigned char background[3], const char *title, const char *subtitle);
/* Starts the group of frames the script works on: every frame after it. */
void flamesvg_frames(struct flamesvg *s);
/* A frame is flamesvg_frame_begin, the rest of its hover text (after its label) written by the
 * caller with flamesvg_text, flamesvg_whereabouts or atomicfile_printf, then flamesvg_frame_end.
 * The script's search strips a last " (N samples, P%)" or " (A% -> B%, +D pts)" off the hover
 * text; the rest is what it searches. */
void flamesvg_frame_begin(struct flamesvg *s, const char *label);
void flamesvg_frame_end(struct flamesvg *s, const char *label, uint32_t depth, double x, double w,
                        const unsigned char rgb[3]);
/* s as XML text, at most max characters: markup escaped, control characters as spaces, what
 * XML 1.0 cannot carry (bad UTF-8, U+FFFE, U+FFFF) as U+FFFD. */
void flamesvg_text(struct flamesvg *s, const char *text, size_t max);
/* What hovering function f of p adds to its label: " in MODULE" (unless unknown, or the Python
 * file that stands for it) and " at FILE:LINE" (its first line; FILE alone without). */
void flamesvg_whereabouts(struct flamesvg *s, const struct profile *p, uint32_t f);
/* Ends the document and renames it into place; on error nothing is left. -errno. */
int flamesvg_commit(struct flamesvg *s);
/* Drops a document not committed; accepts one never opened (zeroed). */
void flamesvg_abort(struct flamesvg *s);

#endif
