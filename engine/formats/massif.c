/* Valgrind's Massif format from allocation sites and snapshots (see massif.h). The trie of all
 * sites' stacks is built once, with one more node under the root for the heap in use before the
 * run; each detailed snapshot sums its bytes up that trie and prints it in pre-order. Names are
 * cleaned by formats/heap.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats/massif.h"
#include "os/atomicfile.h"

#define ROOT_DETAILS "(heap allocation functions) malloc/new/new[], --alloc-fns, etc."
#define NO_CALLER_DETAILS "0x0: ??? (no caller recorded)"
#define BEFORE_DETAILS "0x0: ??? (" MASSIF_BEFORE_WHAT ")"
#define NONE UINT32_MAX
#define PATH_MAX_FRAMES (HEAP_ALLOC_PATH_MAX + MASSIF_DEPTH) /* a site's frames in the tree */

enum { NODE_FRAME, NODE_NO_CALLER, NODE_BEFORE }; /* what a node other than the root is */

struct mnode {
    uint32_t parent, first, next;     /* first child, next sibling */
    uint32_t end;                     /* the "no caller recorded" child, once made */
    const struct stacks_frame *frame; /* NODE_FRAME's, else NULL */
    int kind;
};

struct tree {
    const struct heap_site *sites;
    size_t nsites;
    struct mnode *node;
    size_t nnodes;
    uint32_t *site_node; /* the node each site's bytes are counted in */
    uint32_t before;     /* the node of the heap in use before the run */
    uint64_t *bytes;     /* per node, in the snapshot being written */
    uint32_t *scratch;   /* children being printed, one run per tree level */
    struct atomicfile *f;
};

static int cmp_str(const char *a, const char *b)
{
    if (a == b)
        return 0;
    if (!a || !b)
        return a ? 1 : -1;
    return strcmp(a, b);
}

static int cmp_frame(const struct stacks_frame *a, const struct stacks_frame *b)
{
    int c;

    if (a->ip != b->ip)
        return a->ip < b->ip ? -1 : 1;
    if ((c = cmp_str(a->func, b->func)) || (c = cmp_str(a->file, b->file)))
        return c;
    if (a->line != b->line)
        return a->line < b->line ? -1 : 1;
    return cmp_str(a->module, b->module);
}

/* The allocator's own path does not count against MASSIF_DEPTH (see heap_alloc_path). */
static size_t tree_depth(const struct heap_site *s)
{
    size_t max = heap_alloc_path(s->frames, s->nframes) + MASSIF_DEPTH;
    return s->nframes < max ? s->nframes : max;
}

/* Stacks in lexicographic order, innermost frame first, a prefix before what extends it. */
static int cmp_site_stack(const void *a, const void *b, void *ctx)
{
    const struct heap_site *sites = ctx;
    const struct heap_site *x = &sites[*(const uint32_t *)a], *y = &sites[*(const uint32_t *)b];
    size_t nx = tree_depth(x), ny = tree_depth(y), i;
    int c;

    for (i = 0; i < nx && i < ny; i++)
        if ((c = cmp_frame(&x->frames[i], &y->frames[i])))
            return c;
    return nx == ny ? 0 : nx < ny ? -1 : 1;
}

static uint32_t add_node(struct tree *t, uint32_t parent, const struct stacks_frame *frame,
                         int kind)
{
    uint32_t v = (uint32_t)t->nnodes++;

    t->node[v] = (struct mnode){parent, NONE, t->node[parent].first, NONE, frame, kind};
    t->node[parent].first = v;
    return v;
}

/* The trie of all sites' stacks, built once for every snapshot: after sorting, each stack
 * shares the nodes of its common prefix with the one before it. */
static int build_tree(struct tree *t)
{
    uint32_t *order = NULL, path[PATH_MAX_FRAMES];
    size_t prev_n = 0, i, d, n, common;
    const struct heap_site *prev = NULL;
    int r = -ENOMEM;

    /* The root, the heap before the run, a node per frame, and a "no caller recorded" node per
     * site at most. */
    t->node = malloc((2 + t->nsites * (PATH_MAX_FRAMES + 1)) * sizeof(*t->node));
    t->site_node = malloc((t->nsites ? t->nsites : 1) * sizeof(*t->site_node));
    order = malloc((t->nsites ? t->nsites : 1) * sizeof(*order));
    if (!t->node || !t->site_node || !order)
        goto out;
    t->node[0] = (struct mnode){NONE, NONE, NONE, NONE, NULL, NODE_FRAME};
    t->nnodes = 1;
    t->before = add_node(t, 0, NULL, NODE_BEFORE);
    for (i = 0; i < t->nsites; i++)
        order[i] = (uint32_t)i;
    qsort_r(order, t->nsites, sizeof(*order), cmp_site_stack, (void *)t->sites);
    for (i = 0; i < t->nsites; i++) {
        const struct heap_site *s = &t->sites[order[i]];

        n = tree_depth(s);
        for (common = 0; prev && common < n && common < prev_n; common++)
            if (cmp_frame(&s->frames[common], &prev->frames[common]))
                break;
        for (d = common; d < n; d++)
            path[d] = add_node(t, d ? path[d - 1] : 0, &s->frames[d], NODE_FRAME);
        t->site_node[order[i]] = n ? path[n - 1] : 0;
        prev = s;
        prev_n = n;
    }
    /* A node's bytes must be its children's sum, so bytes of stacks that end where others go
     * on (or of stacks with no frames, at the root) get a child of their own. */
    for (i = 0; i < t->nsites; i++) {
        uint32_t v = t->site_node[i];

        if (v && t->node[v].first == NONE)
            continue;
        if (t->node[v].end == NONE)
            t->node[v].end = add_node(t, v, NULL, NODE_NO_CALLER);
        t->site_node[i] = t->node[v].end;
    }
    t->bytes = malloc(t->nnodes * sizeof(*t->bytes));
    t->scratch = malloc(t->nnodes * sizeof(*t->scratch));
    r = t->bytes && t->scratch ? 0 : -ENOMEM;
out:
    free(order);
    return r;
}

static void put_details(struct tree *t, uint32_t v)
{
    const struct stacks_frame *fr = t->node[v].frame;
    char buf[HEAP_TEXT_CAP];
    size_t len;

    if (!v) {
        atomicfile_printf(t->f, "%s\n", ROOT_DETAILS);
        return;
    }
    if (!fr) {
        atomicfile_printf(t->f, "%s\n",
                          t->node[v].kind == NODE_BEFORE ? BEFORE_DETAILS : NO_CALLER_DETAILS);
        return;
    }
    atomicfile_printf(t->f, "0x%" PRIX64 ": ", heap_call_site(fr->ip));
    len = 0;
    heap_put_clean(buf, &len, fr->func && *fr->func ? fr->func : "???", true);
    atomicfile_write(t->f, buf, len);
    len = 0;
    if (fr->file) {
        heap_put_clean(buf, &len, heap_base_name(fr->file), true);
        if (fr->line > 0)
            atomicfile_printf(t->f, " (%s:%d)", buf, fr->line);
        else
            atomicfile_printf(t->f, " (%s)", buf);
    } else if (fr->module) {
        heap_put_clean(buf, &len, fr->module, true);
        atomicfile_printf(t->f, " (in %s)", buf);
    }
    atomicfile_putc(t->f, '\n');
}

static int cmp_child(const void *a, const void *b, void *ctx)
{
    const struct tree *t = ctx;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    const struct stacks_frame *fx = t->node[x].frame, *fy = t->node[y].frame;

    if (t->bytes[x] != t->bytes[y])
        return t->bytes[x] > t->bytes[y] ? -1 : 1;
    if (!fx || !fy)
        return fx ? -1 : fy ? 1 : t->node[x].kind - t->node[y].kind;
    return cmp_frame(fx, fy);
}

/* One node and its subtree in pre-order. Children below 1% of total fold into one line, as
 * massif and ms_print do by default; that also bounds a node to 100 printed children, and
 * the depth is bounded by the tree's. scratch[top..] is free for this node's children. */
static void put_node(struct tree *t, uint32_t v, size_t depth, size_t top, unsigned __int128 total)
{
    size_t k = 0, nsig, i;
    uint64_t insig = 0;
    uint32_t c;

    for (c = t->node[v].first; c != NONE; c = t->node[c].next)
        if (t->bytes[c])
            t->scratch[top + k++] = c;
    qsort_r(t->scratch + top, k, sizeof(*t->scratch), cmp_child, t);
    for (nsig = 0; nsig < k && (unsigned __int128)t->bytes[t->scratch[top + nsig]] * 100 >= total;)
        nsig++;
    for (i = nsig; i < k; i++)
        insig += t->bytes[t->scratch[top + i]];
    atomicfile_printf(t->f, "%*sn%zu: %" PRIu64 " ", (int)depth, "", nsig + (nsig < k),
                      t->bytes[v]);
    put_details(t, v);
    for (i = 0; i < nsig; i++)
        put_node(t, t->scratch[top + i], depth + 1, top + k, total);
    if (nsig < k)
        atomicfile_printf(t->f,
                          "%*sn0: %" PRIu64 " in %zu place%s, %sbelow massif's threshold "
                          "(1.00%%)\n",
                          (int)depth + 1, "", insig, k - nsig, k - nsig == 1 ? "" : "s",
                          k - nsig == 1 ? "" : "all ");
}

static void put_tree(struct tree *t, const struct heap_snapshot *s)
{
    size_t i;
    uint32_t v;

    memset(t->bytes, 0, t->nnodes * sizeof(*t->bytes));
    t->bytes[t->before] = s->before_bytes;
    t->bytes[0] = s->before_bytes;
    for (i = 0; i < t->nsites; i++) {
        if (!s->site_bytes[i])
            continue;
        for (v = t->site_node[i]; v != NONE; v = t->node[v].parent)
            t->bytes[v] += s->site_bytes[i];
    }
    put_node(t, 0, 0, 0, (unsigned __int128)s->heap_bytes + s->heap_extra_bytes);
}

static void put_snapshot_header(struct atomicfile *f, size_t i, const struct heap_snapshot *s)
{
    static const char *const tree[] = {"empty", "detailed", "peak"};

    atomicfile_printf(f,
                      "#-----------\nsnapshot=%zu\n#-----------\ntime=%" PRIu64 "\n"
                      "mem_heap_B=%" PRIu64 "\nmem_heap_extra_B=%" PRIu64 "\nmem_stacks_B=0\n"
                      "heap_tree=%s\n",
                      i, s->time, s->heap_bytes, s->heap_extra_bytes, tree[s->tree]);
}

/* Checked before anything is written, as is every site's sum: a tree's root is heap_bytes. */
static int check_snapshots(const struct heap_snapshot *snaps, size_t nsnaps, size_t nsites,
                           struct error *err)
{
    size_t i, j, peaks = 0;
    uint64_t sum;

    if (nsnaps > HEAP_MAX_SNAPSHOTS)
        return error_set(err, -E2BIG, "%zu heap snapshots, more than the %d a file may hold",
                         nsnaps, HEAP_MAX_SNAPSHOTS);
    if (nsnaps && !snaps)
        return -EINVAL;
    for (i = 0; i < nsnaps; i++) {
        if (snaps[i].tree != HEAP_TREE_EMPTY && snaps[i].tree != HEAP_TREE_DETAILED &&
            snaps[i].tree != HEAP_TREE_PEAK)
            return -EINVAL;
        if (snaps[i].tree != HEAP_TREE_EMPTY && !snaps[i].site_bytes)
            return -EINVAL;
        if (i && snaps[i].time < snaps[i - 1].time)
            return -EINVAL;
        peaks += snaps[i].tree == HEAP_TREE_PEAK;
        if (snaps[i].before_bytes > snaps[i].heap_bytes)
            return -EINVAL;
        if (snaps[i].tree == HEAP_TREE_EMPTY)
            continue;
        for (j = 0, sum = snaps[i].before_bytes; j < nsites; j++)
            if (__builtin_add_overflow(sum, snaps[i].site_bytes[j], &sum))
                return error_set(err, -EOVERFLOW,
                                 "the live bytes of heap snapshot %zu add up to more than 2^64", i);
        if (sum != snaps[i].heap_bytes)
            return -EINVAL;
    }
    return peaks > 1 ? -EINVAL : 0;
}

int massif_write(const char *path, const char *cmd, const struct heap_site *sites, size_t nsites,
                 const struct heap_snapshot *snaps, size_t nsnaps, struct error *err)
{
    static const struct heap_snapshot none = {.tree = HEAP_TREE_EMPTY};
    struct tree t = {.sites = sites, .nsites = nsites};
    char buf[HEAP_TEXT_CAP];
    size_t len = 0, i;
    int r = -EINVAL;

    error_clear(err);
    if (!path || !cmd)
        goto out;
    r = heap_check_sites(sites, nsites, err);
    if (r == 0)
        r = check_snapshots(snaps, nsnaps, nsites, err);
    if (r == 0)
        r = build_tree(&t);
    if (r == 0)
        r = atomicfile_open(path, &t.f);
    if (r < 0)
        goto out;
    heap_put_clean(buf, &len, cmd, true);
    atomicfile_printf(t.f,
                      "desc: profiler-agent memory profile (live heap by allocation site; "
                      "depth %d, threshold 1.00%%)\ncmd: %s\ntime_unit: ms\n",
                      MASSIF_DEPTH, buf);
    if (!nsnaps)
        put_snapshot_header(t.f, 0, &none);
    for (i = 0; i < nsnaps; i++) {
        put_snapshot_header(t.f, i, &snaps[i]);
        if (snaps[i].tree == HEAP_TREE_EMPTY)
            continue;
        put_tree(&t, &snaps[i]);
    }
    r = atomicfile_commit(t.f);
    t.f = NULL;
out:
    atomicfile_abort(t.f);
    free(t.node);
    free(t.site_node);
    free(t.bytes);
    free(t.scratch);
    return error_fill(err, r);
}
