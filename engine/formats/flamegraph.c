/* The profile's call tree as one self-contained interactive flame graph SVG: "all" at the bottom,
 * a root per thread name above it, callers below callees, widths proportional to samples (to
 * time in a timed profile: profile_set_timed). A frame's label is its function; hovering it
 * tells the function's module and file:line too.
 * Zoom, search and hover details are a small script embedded in the file; nothing is fetched.
 * Frames narrower than a tenth of a pixel are left out (and so are absent when zoomed in). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats/flamesvg.h"

#define THREAD_PREFIX "thread "
#define LABEL_CAP (PROFILE_MAX_NAME + sizeof(THREAD_PREFIX) + 2)

/* Module palette: a function's color is its module's, shaded by its name. */
static const unsigned char palette[][3] = {
    {230, 110, 60}, {225, 170, 60}, {210, 90, 90},   {200, 160, 100},
    {230, 200, 80}, {185, 125, 65}, {220, 130, 130}, {205, 105, 45},
};

static uint32_t hash_name(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static const char *node_name(const struct profile *p, uint32_t n)
{
    if (n == 0)
        return "all";
    if (p->node[n].depth == 1)
        return p->str[p->node[n].id];
    return p->str[p->func[p->node[n].id].name];
}

static uint32_t node_parent(const void *ctx, uint32_t n)
{
    return ((const struct profile *)ctx)->node[n].parent;
}

static uint64_t node_width(const void *ctx, uint32_t n)
{
    return profile_node_count(ctx, n);
}

/* Siblings by name, as flame graphs order them. */
static int cmp_node(const void *ctx, uint32_t x, uint32_t y)
{
    const struct profile *p = ctx;
    int c = strcmp(node_name(p, x), node_name(p, y));
    if (c)
        return c;
    return (p->node[x].id > p->node[y].id) - (p->node[x].id < p->node[y].id);
}

static void node_color(const struct profile *p, uint32_t n, unsigned char rgb[3])
{
    const struct profile_node *nd = &p->node[n];
    uint32_t h;
    size_t i;

    if (n == 0 || nd->depth == 1) {
        h = n ? hash_name(node_name(p, n)) : 0;
        rgb[0] = (unsigned char)(150 + h % 30);
        rgb[1] = (unsigned char)(170 + h % 30);
        rgb[2] = 210;
        return;
    }
    if (p->func[nd->id].module == p->s_unknown) {
        rgb[0] = rgb[1] = rgb[2] = 190;
        return;
    }
    memcpy(rgb, palette[hash_name(p->str[p->func[nd->id].module]) % 8], 3);
    h = hash_name(node_name(p, n));
    for (i = 0; i < 3; i++) {
        int v = rgb[i] + (int)((h >> (8 * i)) & 31) - 16;
        rgb[i] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
}

/* A frame's label into buf (LABEL_CAP bytes): "all", "thread NAME", the function's name, or for
 * a function without a symbol its module's base name in brackets, as perf's flame graphs name
 * it ("[libx.so.1]"). */
static void frame_label(const struct profile *p, uint32_t n, char *buf)
{
    const struct profile_func *fn = n && p->node[n].depth > 1 ? &p->func[p->node[n].id] : NULL;
    const char *base;

    if (n && !fn) {
        snprintf(buf, LABEL_CAP, "%s%s", THREAD_PREFIX, node_name(p, n));
    } else if (fn && fn->name == p->s_unknown && fn->module != p->s_unknown) {
        base = strrchr(p->str[fn->module], '/');
        snprintf(buf, LABEL_CAP, "[%s]", base && base[1] ? base + 1 : p->str[fn->module]);
    } else {
        snprintf(buf, LABEL_CAP, "%s", node_name(p, n));
    }
}

static void put_frame(struct flamesvg *s, const struct profile *p, uint32_t n, uint64_t x,
                      double scale)
{
    const struct profile_node *nd = &p->node[n];
    unsigned char rgb[3];
    char label[LABEL_CAP];

    frame_label(p, n, label);
    node_color(p, n, rgb);
    flamesvg_frame_begin(s, label);
    if (n && nd->depth > 1)
        flamesvg_whereabouts(s, p, nd->id);
    if (p->timed)
        atomicfile_printf(s->f, " (%.3f ms, %.2f%%)", (double)nd->ns / 1e6,
                          100.0 * (double)nd->ns / (double)p->node[0].ns);
    else
        atomicfile_printf(s->f, " (%" PRIu64 " samples, %.2f%%)", nd->samples,
                          100.0 * (double)nd->samples / (double)p->node[0].samples);
    flamesvg_frame_end(s, label, nd->depth, FLAMESVG_PAD_X + (double)x * scale,
                       (double)profile_node_count(p, n) * scale, rgb);
}

int profile_write_flamegraph(const struct profile *p, const char *path, const char *title,
                             struct error *err)
{
    static const unsigned char background[3] = {250, 250, 245};
    struct flamesvg_tree t = {
        .n = p->nnode, .ctx = p, .parent = node_parent, .width = node_width, .cmp = cmp_node};
    struct flamesvg s = {0};
    uint64_t *x = NULL;
    uint32_t depth = 0;
    uint64_t whole = profile_node_count(p, 0);
    double scale = flamesvg_scale(whole);
    size_t i, threads = 0;
    char subtitle[160];
    int r;

    error_clear(err);
    r = flamesvg_layout(&t, &x);
    if (r < 0)
        goto out;
    for (i = 0; i < p->nnode; i++) {
        if (p->node[i].depth > depth)
            depth = p->node[i].depth;
        threads += p->node[i].depth == 1;
    }
    snprintf(subtitle, sizeof(subtitle),
             p->timed ? "%" PRIu64 " samples and stretches off the CPU, %zu thread names, %.3f s "
                        "of threads' time, widths by time; click a frame to zoom"
                      : "%" PRIu64 " samples, %zu thread names, %.3f s sampled; click a frame to "
                        "zoom",
             p->samples, threads, (double)p->total_ns / 1e9);
    r = flamesvg_open(&s, path, depth, 0, background, title ? title : "CPU profile", subtitle);
    if (r < 0)
        goto out;
    flamesvg_frames(&s);
    for (i = 0; i < p->nnode; i++)
        if (whole && (double)profile_node_count(p, (uint32_t)i) * scale >= FLAMESVG_MIN_FRAME_W)
            put_frame(&s, p, (uint32_t)i, x[i], scale);
    r = flamesvg_commit(&s);
out:
    error_fill(err, r);
    flamesvg_abort(&s);
    free(x);
    return r;
}
