/* The differential flame graph (see diffgraph.h): both runs' folded stacks merged into one tree
 * of frames by their text, each node with its samples in either run; the SVG through flamesvg,
 * the difffolded.pl file from the same tree. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats/callpaths.h"
#include "formats/diffgraph.h"
#include "formats/flamesvg.h"

#define GONE_SHOWN 8 /* functions the SVG names beneath its frames */
#define MAX_COUNT_DIGITS 19

static const char *const run_name[2] = {"earlier", "later"};

/* A frame's text, and its function's figures over all stacks. */
struct dg_label {
    char *s;
    size_t len;
    uint64_t self[2], total[2];
    uint64_t stamp; /* the line last counted in total, for once per stack */
    int64_t func;   /* the later profile's function of this text, -1 when none */
    bool frame;     /* seen below a root: a function, not a thread */
};

/* A node of the merged tree: node 0 is "all", depth 1 the roots of the stacks (threads). */
struct dg_node {
    uint32_t parent, label, depth;
    uint64_t self[2], incl[2];
};

/* A function and how much it changed, for ordering. */
struct ranked {
    uint32_t label;
    double key;
    const struct diffgraph *d;
};

/* Open addressing: hash << 32 | (index + 1); 0 is empty. */
struct dg_index {
    uint64_t *slot;
    size_t mask, count;
};

struct diffgraph {
    struct dg_label *label;
    size_t nlabel, cap_label;
    struct dg_index ilabel;
    struct dg_node *node;
    size_t nnode, cap_node;
    struct dg_index inode;
    uint64_t line;
    const struct profile *p;
    struct ranked *rank; /* room for every label, for diffgraph_top */
};

static uint32_t hash_bytes(const char *s, size_t len)
{
    uint32_t h = 2166136261u;

    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static uint32_t hash_node(uint32_t parent, uint32_t label)
{
    uint64_t k = ((uint64_t)parent << 32 | label) * 0x9e3779b97f4a7c15ull;

    return (uint32_t)(k >> 32);
}

/* Room for one more entry, at most half full. */
static int index_reserve(struct dg_index *ix)
{
    size_t cap = ix->slot ? ix->mask + 1 : 0, ncap, i;
    uint64_t *slot;

    if ((ix->count + 1) * 2 <= cap)
        return 0;
    ncap = cap ? cap * 2 : 1024;
    slot = calloc(ncap, sizeof(*slot));
    if (!slot)
        return -ENOMEM;
    for (i = 0; i < cap; i++) {
        size_t at;

        if (!ix->slot[i])
            continue;
        for (at = (ix->slot[i] >> 32) & (ncap - 1); slot[at]; at = (at + 1) & (ncap - 1))
            ;
        slot[at] = ix->slot[i];
    }
    free(ix->slot);
    ix->slot = slot;
    ix->mask = ncap - 1;
    return 0;
}

static int grow(void **arr, size_t *cap, size_t n, size_t size)
{
    size_t ncap = *cap ? *cap * 2 : 256;
    void *p;

    if (n < *cap)
        return 0;
    p = reallocarray(*arr, ncap, size);
    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = ncap;
    return 0;
}

/* The label id of s (len bytes), added when add; -ENOENT when not there and not added. */
static int64_t label_of(struct diffgraph *d, const char *s, size_t len, bool add)
{
    uint32_t h = hash_bytes(s, len);
    size_t at;
    struct dg_label *l;

    if (index_reserve(&d->ilabel) < 0)
        return -ENOMEM;
    for (at = h & d->ilabel.mask; d->ilabel.slot[at]; at = (at + 1) & d->ilabel.mask) {
        uint64_t e = d->ilabel.slot[at];

        l = &d->label[(uint32_t)e - 1];
        if ((uint32_t)(e >> 32) == h && l->len == len && memcmp(l->s, s, len) == 0)
            return (uint32_t)e - 1;
    }
    if (!add)
        return -ENOENT;
    if (grow((void **)&d->label, &d->cap_label, d->nlabel, sizeof(*d->label)) < 0)
        return -ENOMEM;
    l = &d->label[d->nlabel];
    memset(l, 0, sizeof(*l));
    l->s = strndup(s, len);
    if (!l->s)
        return -ENOMEM;
    l->len = len;
    l->func = -1;
    d->ilabel.slot[at] = (uint64_t)h << 32 | (d->nlabel + 1);
    d->ilabel.count++;
    return (int64_t)d->nlabel++;
}

/* The child of parent with that label, added when missing. */
static int64_t child_of(struct diffgraph *d, uint32_t parent, uint32_t label)
{
    uint32_t h = hash_node(parent, label);
    size_t at;
    struct dg_node *n;

    if (index_reserve(&d->inode) < 0)
        return -ENOMEM;
    for (at = h & d->inode.mask; d->inode.slot[at]; at = (at + 1) & d->inode.mask) {
        uint64_t e = d->inode.slot[at];

        n = &d->node[(uint32_t)e - 1];
        if ((uint32_t)(e >> 32) == h && n->parent == parent && n->label == label)
            return (uint32_t)e - 1;
    }
    if (grow((void **)&d->node, &d->cap_node, d->nnode, sizeof(*d->node)) < 0)
        return -ENOMEM;
    n = &d->node[d->nnode];
    memset(n, 0, sizeof(*n));
    n->parent = parent;
    n->label = label;
    n->depth = d->node[parent].depth + 1;
    d->inode.slot[at] = (uint64_t)h << 32 | (d->nnode + 1);
    d->inode.count++;
    return (int64_t)d->nnode++;
}

/* One line's stack (len bytes, frames between ';') with count samples in run. */
static int add_stack(struct diffgraph *d, int run, const char *s, size_t len, uint64_t count)
{
    const char *end = s + len;
    uint32_t node = 0;
    uint64_t stamp = ++d->line;

    d->node[0].incl[run] += count;
    for (;;) {
        const char *semi = memchr(s, ';', (size_t)(end - s));
        size_t flen = semi ? (size_t)(semi - s) : (size_t)(end - s);
        int64_t l = label_of(d, s, flen, true), n;

        if (l < 0)
            return (int)l;
        n = child_of(d, node, (uint32_t)l);
        if (n < 0)
            return (int)n;
        node = (uint32_t)n;
        d->node[node].incl[run] += count;
        if (d->node[node].depth >= 2) {
            struct dg_label *lb = &d->label[l];

            lb->frame = true;
            if (lb->stamp != stamp) {
                lb->stamp = stamp;
                lb->total[run] += count;
            }
        }
        if (!semi)
            break;
        s = semi + 1;
    }
    d->node[node].self[run] += count;
    if (d->node[node].depth >= 2)
        d->label[d->node[node].label].self[run] += count;
    return 0;
}

/* A run's text: "STACK COUNT" lines, the count after the last space. */
static int add_run(struct diffgraph *d, int run, const char *text, size_t len, struct error *err)
{
    const char *end = text + len, *s = text;
    size_t lineno = 0;

    if (len > DIFFGRAPH_MAX_TEXT)
        return error_set(err, -E2BIG, "the %s run's stacks take %zu bytes, more than %zu",
                         run_name[run], len, DIFFGRAPH_MAX_TEXT);
    for (; s < end; lineno++) {
        const char *nl = memchr(s, '\n', (size_t)(end - s)), *eol = nl ? nl : end, *sp;
        uint64_t count = 0;
        size_t digits, frames = 1;
        int r;

        if (eol == s) {
            s = eol + 1;
            continue;
        }
        for (sp = eol; sp > s && sp[-1] != ' '; sp--)
            ;
        digits = (size_t)(eol - sp);
        if (sp == s || digits == 0 || digits > MAX_COUNT_DIGITS)
            return error_set(err, -EBADMSG,
                             "line %zu of the %s run's stacks is not \"FRAME;...;FRAME COUNT\"",
                             lineno + 1, run_name[run]);
        for (const char *c = sp; c < eol; c++) {
            if (*c < '0' || *c > '9')
                return error_set(err, -EBADMSG,
                                 "line %zu of the %s run's stacks does not end in a count",
                                 lineno + 1, run_name[run]);
            count = count * 10 + (uint64_t)(*c - '0');
        }
        for (const char *c = s; c < sp - 1; c++)
            frames += *c == ';';
        if (frames > DIFFGRAPH_MAX_FRAMES)
            return error_set(err, -E2BIG, "line %zu of the %s run's stacks has more than %d frames",
                             lineno + 1, run_name[run], DIFFGRAPH_MAX_FRAMES);
        /* 19 digits stay below 2^64; their sum must too. */
        if (d->node[0].incl[run] + count < count)
            return error_set(err, -EOVERFLOW, "the %s run's counts add up past 2^64",
                             run_name[run]);
        if (count) {
            r = add_stack(d, run, s, (size_t)(sp - 1 - s), count);
            if (r < 0)
                return error_fill(err, r);
        }
        s = eol + 1;
    }
    if (!d->node[0].incl[run])
        return error_set(err, -ENODATA, "the %s run's stacks hold no samples", run_name[run]);
    return 0;
}

/* The later profile's functions behind the labels, for modules and files. */
static int name_functions(struct diffgraph *d, const struct profile *p)
{
    struct callpaths c;
    struct callpaths_text t = {0};
    int r = callpaths_init(&c, p);

    /* Room from the start: a label may be empty. */
    if (r == 0)
        r = callpaths_text_add(&t, "", 0);
    for (size_t f = 0; r == 0 && f < p->nfunc; f++) {
        for (int innermost = 0; r == 0 && c.label[f] && innermost < 2; innermost++) {
            int64_t l;

            t.len = 0;
            r = callpaths_fold_frame(&t, c.label[f], innermost);
            if (r < 0)
                break;
            l = label_of(d, t.s, t.len, false);
            if (l == -ENOMEM)
                r = -ENOMEM;
            else if (l >= 0 && d->label[l].func < 0)
                d->label[l].func = (int64_t)f;
        }
    }
    free(t.s);
    callpaths_destroy(&c);
    return r;
}

int diffgraph_new(const char *before, size_t before_len, const char *after, size_t after_len,
                  const struct profile *after_profile, struct diffgraph **ret, struct error *err)
{
    struct diffgraph *d = calloc(1, sizeof(*d));
    int r = -ENOMEM;

    error_clear(err);
    if (!d)
        return error_fill(err, -ENOMEM);
    d->p = after_profile;
    if (grow((void **)&d->node, &d->cap_node, 0, sizeof(*d->node)) < 0)
        goto fail;
    memset(&d->node[0], 0, sizeof(d->node[0]));
    d->nnode = 1;
    r = add_run(d, DIFFGRAPH_BEFORE, before, before_len, err);
    if (r == 0)
        r = add_run(d, DIFFGRAPH_AFTER, after, after_len, err);
    if (r == 0 && after_profile)
        r = name_functions(d, after_profile);
    if (r == 0 && !(d->rank = malloc((d->nlabel ? d->nlabel : 1) * sizeof(*d->rank))))
        r = -ENOMEM;
    if (r < 0)
        goto fail;
    *ret = d;
    return 0;
fail:
    diffgraph_free(d);
    return error_fill(err, r);
}

void diffgraph_free(struct diffgraph *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->nlabel; i++)
        free(d->label[i].s);
    free(d->label);
    free(d->ilabel.slot);
    free(d->node);
    free(d->inode.slot);
    free(d->rank);
    free(d);
}

uint64_t diffgraph_samples(const struct diffgraph *d, int run)
{
    return d->node[0].incl[run];
}

static double share(const struct diffgraph *d, uint64_t n, int run)
{
    return (double)n / (double)d->node[0].incl[run];
}

static double self_delta(const struct diffgraph *d, const struct dg_label *l)
{
    return share(d, l->self[DIFFGRAPH_AFTER], DIFFGRAPH_AFTER) -
           share(d, l->self[DIFFGRAPH_BEFORE], DIFFGRAPH_BEFORE);
}

/* Largest key first; of equal keys, by text. */
static int cmp_ranked(const void *a, const void *b)
{
    const struct ranked *x = a, *y = b;

    if (x->key != y->key)
        return x->key > y->key ? -1 : 1;
    return strcmp(x->d->label[x->label].s, y->d->label[y->label].s);
}

size_t diffgraph_top(const struct diffgraph *d, enum diffgraph_change how,
                     struct diffgraph_func *out, size_t n)
{
    struct ranked *r = d->rank;
    size_t count = 0, i;

    for (i = 0; i < d->nlabel; i++) {
        const struct dg_label *l = &d->label[i];
        double delta = self_delta(d, l);
        bool in_after = l->total[DIFFGRAPH_AFTER] > 0;

        if (!l->frame)
            continue;
        if (how == DIFFGRAPH_GREW && delta > 0)
            r[count++] = (struct ranked){(uint32_t)i, delta, d};
        else if (how == DIFFGRAPH_SHRANK && delta < 0 && in_after)
            r[count++] = (struct ranked){(uint32_t)i, -delta, d};
        else if (how == DIFFGRAPH_GONE && !in_after)
            r[count++] = (struct ranked){(uint32_t)i,
                                         share(d, l->total[DIFFGRAPH_BEFORE], DIFFGRAPH_BEFORE), d};
    }
    if (count > 1)
        qsort(r, count, sizeof(*r), cmp_ranked);
    for (i = 0; i < count && i < n; i++) {
        const struct dg_label *l = &d->label[r[i].label];
        const struct profile *p = d->p;

        out[i].label = l->s;
        out[i].module = p && l->func >= 0 && p->func[l->func].module != p->s_unknown
                            ? p->str[p->func[l->func].module]
                            : NULL;
        for (int run = 0; run < 2; run++) {
            out[i].self[run] = share(d, l->self[run], run);
            out[i].total[run] = share(d, l->total[run], run);
        }
    }
    return count;
}

static uint32_t dg_parent(const void *ctx, uint32_t n)
{
    return ((const struct diffgraph *)ctx)->node[n].parent;
}

static uint64_t dg_width(const void *ctx, uint32_t n)
{
    return ((const struct diffgraph *)ctx)->node[n].incl[DIFFGRAPH_AFTER];
}

static int dg_cmp(const void *ctx, uint32_t a, uint32_t b)
{
    const struct diffgraph *d = ctx;

    return strcmp(d->label[d->node[a].label].s, d->label[d->node[b].label].s);
}

/* How node n's share changed, in share units (-1..1). */
static double node_delta(const struct diffgraph *d, uint32_t n)
{
    return share(d, d->node[n].incl[DIFFGRAPH_AFTER], DIFFGRAPH_AFTER) -
           share(d, d->node[n].incl[DIFFGRAPH_BEFORE], DIFFGRAPH_BEFORE);
}

/* flamegraph.pl's color for a difference: white for none, to red (grew) or blue (shrank) at
 * the largest one. */
static void delta_color(double delta, double max, unsigned char rgb[3])
{
    double v = max > 0 ? fabs(delta) / max : 0;
    unsigned char fade = (unsigned char)(210 * (1 - (v > 1 ? 1 : v)));

    rgb[0] = rgb[1] = rgb[2] = 255;
    if (delta > 0)
        rgb[1] = rgb[2] = fade;
    else if (delta < 0)
        rgb[0] = rgb[1] = fade;
}

/* A percentage with two decimals, -0.00 printed as 0.00. */
static double pct2(double share)
{
    double v = round(share * 10000) / 100;

    return v == 0 ? 0 : v;
}

static void put_frame(struct flamesvg *s, const struct diffgraph *d, uint32_t n, uint64_t x,
                      double scale, double max)
{
    const struct dg_node *nd = &d->node[n];
    const struct dg_label *l = &d->label[nd->label];
    const char *label = n ? l->s : "all";
    double before = share(d, nd->incl[DIFFGRAPH_BEFORE], DIFFGRAPH_BEFORE);
    double after = share(d, nd->incl[DIFFGRAPH_AFTER], DIFFGRAPH_AFTER);
    unsigned char rgb[3];

    delta_color(after - before, max, rgb);
    flamesvg_frame_begin(s, label);
    if (n && nd->depth >= 2 && d->p && l->func >= 0)
        flamesvg_whereabouts(s, d->p, (uint32_t)l->func);
    atomicfile_printf(s->f, " (%.2f%% -> %.2f%%, %+.2f pts)", pct2(before), pct2(after),
                      pct2(after - before));
    flamesvg_frame_end(s, label, nd->depth, FLAMESVG_PAD_X + (double)x * scale,
                       (double)nd->incl[DIFFGRAPH_AFTER] * scale, rgb);
}

/* Beneath the frames: the functions of the earlier run that this one no longer has. */
static void put_gone(struct flamesvg *s, const char *before_name, const struct diffgraph_func *gone,
                     size_t shown, size_t count)
{
    double y = s->extra_y;
    size_t i;

    if (!count)
        return;
    atomicfile_printf(s->f, "<g id=\"gone\">\n<text x=\"%d\" y=\"%.1f\">Only in ", FLAMESVG_PAD_X,
                      y);
    flamesvg_text(s, before_name, SIZE_MAX);
    atomicfile_printf(s->f, ", not in this run (their share of samples there):</text>\n");
    for (i = 0; i < shown; i++) {
        y += FLAMESVG_LINE_H;
        atomicfile_printf(s->f, "<text x=\"%d\" y=\"%.1f\">", 3 * FLAMESVG_PAD_X, y);
        flamesvg_text(s, gone[i].label, 120);
        atomicfile_printf(s->f, " (%.2f%%)</text>\n", pct2(gone[i].total[DIFFGRAPH_BEFORE]));
    }
    if (count > shown)
        atomicfile_printf(s->f, "<text x=\"%d\" y=\"%.1f\">and %zu more</text>\n",
                          3 * FLAMESVG_PAD_X, y + FLAMESVG_LINE_H, count - shown);
    atomicfile_printf(s->f, "</g>\n");
}

int diffgraph_write_svg(const struct diffgraph *d, const char *path, const char *title,
                        const char *before_name, struct error *err)
{
    /* flamegraph.pl's gray: white frames, the unchanged ones, stand out on it. */
    static const unsigned char background[3] = {238, 238, 238};
    struct flamesvg_tree t = {
        .n = d->nnode, .ctx = d, .parent = dg_parent, .width = dg_width, .cmp = dg_cmp};
    struct diffgraph_func gone[GONE_SHOWN];
    struct flamesvg s = {0};
    uint64_t *x = NULL;
    uint64_t after = d->node[0].incl[DIFFGRAPH_AFTER];
    double scale = flamesvg_scale(after), max = 0;
    size_t ngone = diffgraph_top(d, DIFFGRAPH_GONE, gone, GONE_SHOWN), shown, i;
    uint32_t depth = 0;
    char subtitle[320];
    int r;

    error_clear(err);
    r = flamesvg_layout(&t, &x);
    if (r < 0)
        goto out;
    for (i = 0; i < d->nnode; i++)
        if ((double)d->node[i].incl[DIFFGRAPH_AFTER] * scale >= FLAMESVG_MIN_FRAME_W) {
            if (d->node[i].depth > depth)
                depth = d->node[i].depth;
            if (fabs(node_delta(d, (uint32_t)i)) > max)
                max = fabs(node_delta(d, (uint32_t)i));
        }
    shown = ngone < GONE_SHOWN ? ngone : GONE_SHOWN;
    snprintf(subtitle, sizeof(subtitle),
             "%" PRIu64 " samples against %.200s's %" PRIu64
             ", as shares of each: red grew, blue shrank; widths are this run's",
             after, before_name, d->node[0].incl[DIFFGRAPH_BEFORE]);
    r = flamesvg_open(&s, path, depth, ngone ? 1 + (unsigned)shown + (ngone > shown) : 0,
                      background, title ? title : "CPU profile, differential", subtitle);
    if (r < 0)
        goto out;
    put_gone(&s, before_name, gone, shown, ngone);
    flamesvg_frames(&s);
    for (i = 0; i < d->nnode; i++)
        if ((double)d->node[i].incl[DIFFGRAPH_AFTER] * scale >= FLAMESVG_MIN_FRAME_W)
            put_frame(&s, d, (uint32_t)i, x[i], scale, max);
    r = flamesvg_commit(&s);
out:
    error_fill(err, r);
    flamesvg_abort(&s);
    free(x);
    return r;
}

int diffgraph_write_folded(const struct diffgraph *d, const char *path, struct error *err)
{
    struct atomicfile *f = NULL;
    uint32_t *path_nodes = malloc((DIFFGRAPH_MAX_FRAMES + 1) * sizeof(*path_nodes));
    int r = -ENOMEM;

    error_clear(err);
    if (!path_nodes)
        goto out;
    r = atomicfile_open(path, &f);
    if (r < 0)
        goto out;
    for (size_t i = 1; i < d->nnode; i++) {
        const struct dg_node *nd = &d->node[i];
        size_t k = 0;

        if (!nd->self[DIFFGRAPH_BEFORE] && !nd->self[DIFFGRAPH_AFTER])
            continue;
        /* A stack is at most DIFFGRAPH_MAX_FRAMES deep (add_run). */
        for (uint32_t n = (uint32_t)i; n && k <= DIFFGRAPH_MAX_FRAMES; n = d->node[n].parent)
            path_nodes[k++] = n;
        while (k-- > 0) {
            const struct dg_label *l = &d->label[d->node[path_nodes[k]].label];

            atomicfile_write(f, l->s, l->len);
            atomicfile_putc(f, k ? ';' : ' ');
        }
        atomicfile_printf(f, "%" PRIu64 " %" PRIu64 "\n", nd->self[DIFFGRAPH_BEFORE],
                          nd->self[DIFFGRAPH_AFTER]);
    }
    r = atomicfile_commit(f);
    f = NULL;
out:
    error_fill(err, r);
    atomicfile_abort(f);
    free(path_nodes);
    return r;
}
