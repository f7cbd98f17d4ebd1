/* The profile's call tree as whole stacks, for the writers whose readers take one stack per
 * sample (collapsed, pprof, speedscope, the differential flame graph): each call tree node's
 * self cost, its thread, the functions on its path, a label per function that tells apart two
 * functions of one name, and a path as one line of Brendan Gregg's folded (collapsed) stacks.
 * Internal to engine/formats/ like profile_priv.h; it writes no file itself. */
#ifndef CALLPATHS_H
#define CALLPATHS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "formats/profile_priv.h"

/* Functions on one path at most: a stack's frames, as profile_add keeps them. */
#define CALLPATHS_MAX_FRAMES STACKS_MAX_FRAMES

struct callpaths {
    const struct profile *p;
    uint64_t *self_samples; /* per node: samples that end there (its own minus its children's) */
    uint64_t *self_ns;      /* per node: the time of those samples */
    uint64_t *self_count;   /* per node: what collapsed stacks count (profile_node_count) */
    uint32_t *thread;       /* per node: the string id of its thread's name */
    char **label;           /* per function: its label, NULL for a function on no path */
};

/* Fills c for p (which must outlive it). A node's self costs are exact: the samples and time
 * that went through it minus what went through its children, as the tree keeps both.
 * A label is the function's name ("[MODULE]" for one without a symbol, MODULE the file's base
 * name, as perf names them), followed by " (LOCATION:LINE)" (file, else module, and first
 * line) when another function has the same name. -ENOMEM. */
int callpaths_init(struct callpaths *c, const struct profile *p);
void callpaths_destroy(struct callpaths *c);
/* The functions on node n's path into out (CALLPATHS_MAX_FRAMES of room), innermost first;
 * returns how many, at least one: a sample that kept no function in the tree (its limits were
 * reached) gets the "[dropped]" function. */
size_t callpaths_frames(const struct callpaths *c, uint32_t n, uint32_t *out);

/* Text built a piece at a time: s (malloc'd, NUL-terminated once anything was added) holds len
 * bytes; free(s) when done. */
struct callpaths_text {
    char *s;
    size_t len, cap;
};

/* Appends label as one frame of a folded line, as flamegraph.pl splits lines (frames between
 * ';', the count after the last space): a ';' in it becomes ':', control characters spaces,
 * and an innermost frame ending in whitespace and a number ("worker 2", which flamegraph.pl
 * would read as a differential line's first count) has that whitespace as '_'. -ENOMEM. */
int callpaths_fold_frame(struct callpaths_text *t, const char *label, bool innermost);
/* Appends node n's path as a folded line without its count: "thread NAME;outermost;...;
 * innermost". -ENOMEM. */
int callpaths_fold(const struct callpaths *c, uint32_t n, struct callpaths_text *t);
/* Appends len bytes of s, or printf's text. -ENOMEM. */
int callpaths_text_add(struct callpaths_text *t, const char *s, size_t len);
int callpaths_text_printf(struct callpaths_text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
