/* The profile's call tree as whole stacks, for the writers whose readers take one stack per
 * sample (collapsed, pprof, speedscope): each call tree node's self cost, its thread, the
 * functions on its path, and a label per function that tells apart two functions of one name.
 * Internal to engine/formats/ like profile_priv.h; it writes no file itself. */
#ifndef CALLPATHS_H
#define CALLPATHS_H

#include <stddef.h>
#include <stdint.h>
#include "formats/profile_priv.h"

/* Functions on one path at most: a stack's frames, as profile_add keeps them. */
#define CALLPATHS_MAX_FRAMES STACKS_MAX_FRAMES

struct callpaths {
    const struct profile *p;
    uint64_t *self_samples; /* per node: samples that end there (its own minus its children's) */
    uint64_t *self_ns;      /* per node: the time of those samples */
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

#endif
