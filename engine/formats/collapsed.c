/* The profile as Brendan Gregg's collapsed stacks, the input of flamegraph.pl, inferno and
 * speedscope: one line per call tree path with samples ending there, "thread NAME;outermost;...;
 * innermost COUNT", COUNT in samples (in microseconds for a timed profile: profile_set_timed); as a
 * file, or as text in memory that a run keeps for a later comparison (diffgraph.c). Not a flame
 * graph itself (flamegraph.c draws one); the lines are callpaths_fold's. */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include "formats/callpaths.h"

/* What the last line of a cut text says, and room for it with its count. */
#define NOT_KEPT "[stacks not kept]"
#define NOT_KEPT_ROOM (sizeof(NOT_KEPT) + 24)

/* Node n's whole line into t (emptied first). */
static int line_of(const struct callpaths *c, uint32_t n, struct callpaths_text *t)
{
    int r;

    t->len = 0;
    r = callpaths_fold(c, n, t);
    if (r == 0)
        r = callpaths_text_printf(t, " %" PRIu64 "\n", c->self_count[n]);
    return r;
}

int profile_write_collapsed(const struct profile *p, const char *path, struct error *err)
{
    struct callpaths c;
    struct callpaths_text line = {0};
    struct atomicfile *f = NULL;
    size_t n;
    int r;

    error_clear(err);
    r = callpaths_init(&c, p);
    if (r < 0)
        return error_fill(err, r);
    r = atomicfile_open(path, &f);
    if (r < 0)
        goto out;
    for (n = 0; n < p->nnode; n++) {
        if (!c.self_count[n])
            continue;
        r = line_of(&c, (uint32_t)n, &line);
        if (r < 0)
            goto out;
        atomicfile_write(f, line.s, line.len);
    }
    r = atomicfile_commit(f);
    f = NULL;
out:
    error_fill(err, r);
    atomicfile_abort(f);
    free(line.s);
    callpaths_destroy(&c);
    return r;
}

struct by_weight {
    const uint64_t *self;
};

/* Heaviest first; of equal weight, the earlier node. */
static int cmp_weight(const void *a, const void *b, void *ctx)
{
    const uint64_t *self = ((const struct by_weight *)ctx)->self;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

    if (self[x] != self[y])
        return self[x] > self[y] ? -1 : 1;
    return (x > y) - (x < y);
}

int profile_collapsed_text(const struct profile *p, size_t max_stacks, size_t max_bytes,
                           struct profile_folded *ret, struct error *err)
{
    struct callpaths c;
    struct callpaths_text line = {0}, text = {0};
    struct profile_folded out = {0};
    uint32_t *order = NULL;
    bool *keep = NULL;
    size_t n, i, bytes = 0;
    int r;

    error_clear(err);
    r = callpaths_init(&c, p);
    if (r < 0)
        return error_fill(err, r);
    order = malloc((p->nnode ? p->nnode : 1) * sizeof(*order));
    keep = calloc(p->nnode ? p->nnode : 1, sizeof(*keep));
    r = -ENOMEM;
    if (!order || !keep)
        goto out;
    for (n = 0; n < p->nnode; n++)
        if (c.self_count[n]) {
            order[out.stacks++] = (uint32_t)n;
            out.samples += c.self_count[n];
        }
    /* The heaviest stacks while they fit, room left for the line of the others. */
    qsort_r(order, out.stacks, sizeof(*order), cmp_weight,
            &(struct by_weight){.self = c.self_count});
    for (i = 0; i < out.stacks && out.kept < max_stacks; i++) {
        r = line_of(&c, order[i], &line);
        if (r < 0)
            goto out;
        if (bytes + line.len + NOT_KEPT_ROOM > max_bytes)
            break;
        bytes += line.len;
        keep[order[i]] = true;
        out.kept++;
        out.kept_samples += c.self_count[order[i]];
    }
    /* In the order the collapsed file has them: the same text when nothing was left out. */
    r = callpaths_text_add(&text, "", 0);
    for (n = 0; n < p->nnode && r == 0; n++)
        if (keep[n] && (r = line_of(&c, (uint32_t)n, &line)) == 0)
            r = callpaths_text_add(&text, line.s, line.len);
    if (r == 0 && out.kept < out.stacks)
        r = callpaths_text_printf(&text, NOT_KEPT " %" PRIu64 "\n", out.samples - out.kept_samples);
    if (r < 0)
        goto out;
    out.text = text.s;
    out.len = text.len;
    text.s = NULL;
    *ret = out;
out:
    error_fill(err, r);
    free(text.s);
    free(line.s);
    free(order);
    free(keep);
    callpaths_destroy(&c);
    return r;
}

void profile_folded_destroy(struct profile_folded *f)
{
    free(f->text);
    memset(f, 0, sizeof(*f));
}
