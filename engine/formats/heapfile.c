/* guppy's stat dump and Valgrind's Massif format, from allocation sites (see heapfile.h). Both
 * are line formats read by other people's parsers, so every name is cleaned to one line of valid
 * UTF-8 and cut to a bounded length before it is written. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "os/atomicfile.h"
#include "formats/heapfile.h"

#define ELLIPSIS "..."
#define TEXT_CAP (HEAPFILE_NAME_MAX + sizeof(ELLIPSIS))
#define FRAME_CAP (TEXT_CAP + sizeof("+0x") + 16)
#define KIND_CAP (HEAPFILE_KIND_FRAMES * (FRAME_CAP + sizeof(" <- ")) + sizeof(" <- " ELLIPSIS))
#define KIND_HEADER "Allocation site (function <- callers)"
#define MASSIF_ROOT "(heap allocation functions) malloc/new/new[], --alloc-fns, etc."
#define MASSIF_NO_CALLER "0x0: ??? (no caller recorded)"
#define NONE UINT32_MAX

/* Length of the valid UTF-8 sequence at s (1-4), or 0 when it is not one. Overlong forms,
 * surrogates and code points beyond U+10FFFF are invalid, as Python's decoder says. */
static size_t utf8_len(const unsigned char *s)
{
    unsigned char c = s[0];
    size_t n, i;
    unsigned char lo = 0x80, hi = 0xbf;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4;
    else
        return 0;
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return n;
}

/* Appends src at dst + *len as one line of valid UTF-8 of at most HEAPFILE_NAME_MAX bytes (then
 * "..."): control characters, invalid bytes and, with no_hash (ms_print drops everything after
 * a '#'), '#' read '?'. dst stays NUL-terminated; TEXT_CAP bytes must be free at dst + *len. */
static void put_clean(char *dst, size_t *len, const char *src, int no_hash)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t out = 0, n;

    while (*s) {
        n = utf8_len(s);
        if (out + (n ? n : 1) > HEAPFILE_NAME_MAX) {
            memcpy(dst + *len + out, ELLIPSIS, sizeof(ELLIPSIS) - 1);
            out += sizeof(ELLIPSIS) - 1;
            break;
        }
        if (!n || (n == 1 && (*s < 0x20 || *s == 0x7f || (no_hash && *s == '#')))) {
            dst[*len + out++] = '?';
            s++;
            continue;
        }
        memcpy(dst + *len + out, s, n);
        out += n;
        s += n;
    }
    *len += out;
    dst[*len] = '\0';
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash && slash[1] ? slash + 1 : path;
}

/* ---- heap_profile.T.hpy ---- */

struct hpy_row {
    char *kind;
    uint64_t count, size;
};

/* One frame of a KIND: its function, else module+0xOFF, else "??". dst[*len..cap) must hold
 * FRAME_CAP bytes. */
static void put_kind_frame(char *dst, size_t cap, size_t *len, const struct stacks_frame *fr)
{
    if (fr->func && *fr->func) {
        put_clean(dst, len, fr->func, 0);
    } else if (fr->module) {
        put_clean(dst, len, base_name(fr->module), 0);
        *len += (size_t)snprintf(dst + *len, cap - *len, "+0x%" PRIx64, fr->offset);
    } else {
        memcpy(dst + *len, "??", 3);
        *len += 2;
    }
}

char *heapfile_kind(const struct stacks_frame *frames, size_t nframes)
{
    char buf[KIND_CAP];
    size_t len = 0, i;

    if (!nframes) {
        memcpy(buf, "??", 3);
        len = 2;
    }
    for (i = 0; i < nframes && i < HEAPFILE_KIND_FRAMES; i++) {
        if (i) {
            memcpy(buf + len, " <- ", 5);
            len += 4;
        }
        put_kind_frame(buf, sizeof(buf), &len, &frames[i]);
    }
    if (nframes > HEAPFILE_KIND_FRAMES)
        memcpy(buf + len, " <- " ELLIPSIS, sizeof(" <- " ELLIPSIS));
    return strdup(buf);
}

static int cmp_row_kind(const void *a, const void *b)
{
    return strcmp(((const struct hpy_row *)a)->kind, ((const struct hpy_row *)b)->kind);
}

/* guppy lists rows largest size first; count and KIND only make the order reproducible. */
static int cmp_row_size(const void *a, const void *b)
{
    const struct hpy_row *x = a, *y = b;

    if (x->size != y->size)
        return x->size > y->size ? -1 : 1;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return strcmp(x->kind, y->kind);
}

static int check_sites(const struct heapfile_site *sites, size_t nsites)
{
    size_t i;

    if (nsites > HEAPFILE_MAX_SITES)
        return -E2BIG;
    if (nsites && !sites)
        return -EINVAL;
    for (i = 0; i < nsites; i++)
        if (sites[i].nframes && !sites[i].frames)
            return -EINVAL;
    return 0;
}

int heapfile_write_hpy(const char *path, const struct heapfile_site *sites, size_t nsites,
                       double timemade)
{
    struct hpy_row *rows = NULL;
    struct atomicfile *f = NULL;
    uint64_t count = 0, size = 0;
    size_t nrows = 0, i, j;
    int r;

    if (!path || !isfinite(timemade) || timemade < 0)
        return -EINVAL;
    r = check_sites(sites, nsites);
    if (r < 0)
        return r;
    /* Merged rows never exceed the totals, so checking these covers every sum below. */
    for (i = 0; i < nsites; i++) {
        if (!sites[i].bytes)
            continue;
        if (__builtin_add_overflow(count, sites[i].blocks, &count) ||
            __builtin_add_overflow(size, sites[i].bytes, &size))
            return -EOVERFLOW;
    }
    rows = calloc(nsites ? nsites : 1, sizeof(*rows));
    if (!rows)
        return -ENOMEM;
    for (i = 0; i < nsites; i++) {
        if (!sites[i].bytes)
            continue;
        rows[nrows].kind = heapfile_kind(sites[i].frames, sites[i].nframes);
        if (!rows[nrows].kind) {
            r = -ENOMEM;
            goto out;
        }
        rows[nrows].count = sites[i].blocks;
        rows[nrows++].size = sites[i].bytes;
    }
    if (nrows) {
        qsort(rows, nrows, sizeof(*rows), cmp_row_kind);
        for (i = 1, j = 0; i < nrows; i++) {
            struct hpy_row cur = rows[i];

            rows[i].kind = NULL;
            if (!strcmp(cur.kind, rows[j].kind)) {
                rows[j].count += cur.count;
                rows[j].size += cur.size;
                free(cur.kind);
            } else {
                rows[++j] = cur;
            }
        }
        nrows = j + 1;
        qsort(rows, nrows, sizeof(*rows), cmp_row_size);
    }

    r = atomicfile_open(path, &f);
    if (r < 0)
        goto out;
    /* Partition.get_trows' order; .kindname is empty as for guppy's own set partitions. */
    atomicfile_printf(f,
                      ".loader: _load_stat\n.format: SetFormat\n.timemade: %f\n"
                      ".count: %" PRIu64 "\n.size: %" PRIu64 "\n.kindname: \n"
                      ".kindheader: " KIND_HEADER "\n.numrows: %zu\n",
                      timemade, count, size, nrows);
    for (i = 0; i < nrows; i++)
        atomicfile_printf(f, ".r: %" PRIu64 " %" PRIu64 " %s\n", rows[i].count, rows[i].size,
                          rows[i].kind);
    atomicfile_printf(f, ".end: .loader: _load_stat\n");
    r = atomicfile_commit(f);
out:
    for (i = 0; i < nsites; i++)
        free(rows[i].kind);
    free(rows);
    return r;
}

/* ---- massif.out.T ---- */

struct mnode {
    uint32_t parent, first, next;     /* first child, next sibling */
    uint32_t end;                     /* the "no caller recorded" child, once made */
    const struct stacks_frame *frame; /* NULL for the root and "no caller recorded" nodes */
};

struct massif {
    const struct heapfile_site *sites;
    size_t nsites;
    struct mnode *node;
    size_t nnodes;
    uint32_t *site_node; /* the node each site's bytes are counted in */
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

static size_t tree_depth(const struct heapfile_site *s)
{
    return s->nframes < HEAPFILE_MASSIF_DEPTH ? s->nframes : HEAPFILE_MASSIF_DEPTH;
}

/* Stacks in lexicographic order, innermost frame first, a prefix before what extends it. */
static int cmp_site_stack(const void *a, const void *b, void *ctx)
{
    const struct heapfile_site *sites = ctx;
    const struct heapfile_site *x = &sites[*(const uint32_t *)a], *y = &sites[*(const uint32_t *)b];
    size_t nx = tree_depth(x), ny = tree_depth(y), i;
    int c;

    for (i = 0; i < nx && i < ny; i++)
        if ((c = cmp_frame(&x->frames[i], &y->frames[i])))
            return c;
    return nx == ny ? 0 : nx < ny ? -1 : 1;
}

static uint32_t add_node(struct massif *m, uint32_t parent, const struct stacks_frame *frame)
{
    uint32_t v = (uint32_t)m->nnodes++;

    m->node[v] = (struct mnode){parent, NONE, m->node[parent].first, NONE, frame};
    m->node[parent].first = v;
    return v;
}

/* The trie of all sites' stacks, built once for every snapshot: after sorting, each stack
 * shares the nodes of its common prefix with the one before it. */
static int build_tree(struct massif *m)
{
    uint32_t *order = NULL, path[HEAPFILE_MASSIF_DEPTH];
    size_t prev_n = 0, i, d, n, common;
    const struct heapfile_site *prev = NULL;
    int r = -ENOMEM;

    /* The root, a node per frame, and a "no caller recorded" node per site at most. */
    m->node = malloc((1 + m->nsites * (HEAPFILE_MASSIF_DEPTH + 1)) * sizeof(*m->node));
    m->site_node = malloc((m->nsites ? m->nsites : 1) * sizeof(*m->site_node));
    order = malloc((m->nsites ? m->nsites : 1) * sizeof(*order));
    if (!m->node || !m->site_node || !order)
        goto out;
    m->node[0] = (struct mnode){NONE, NONE, NONE, NONE, NULL};
    m->nnodes = 1;
    for (i = 0; i < m->nsites; i++)
        order[i] = (uint32_t)i;
    qsort_r(order, m->nsites, sizeof(*order), cmp_site_stack, (void *)m->sites);
    for (i = 0; i < m->nsites; i++) {
        const struct heapfile_site *s = &m->sites[order[i]];

        n = tree_depth(s);
        for (common = 0; prev && common < n && common < prev_n; common++)
            if (cmp_frame(&s->frames[common], &prev->frames[common]))
                break;
        for (d = common; d < n; d++)
            path[d] = add_node(m, d ? path[d - 1] : 0, &s->frames[d]);
        m->site_node[order[i]] = n ? path[n - 1] : 0;
        prev = s;
        prev_n = n;
    }
    /* A node's bytes must be its children's sum, so bytes of stacks that end where others go
     * on (or of stacks with no frames, at the root) get a child of their own. */
    for (i = 0; i < m->nsites; i++) {
        uint32_t v = m->site_node[i];

        if (v && m->node[v].first == NONE)
            continue;
        if (m->node[v].end == NONE)
            m->node[v].end = add_node(m, v, NULL);
        m->site_node[i] = m->node[v].end;
    }
    m->bytes = malloc(m->nnodes * sizeof(*m->bytes));
    m->scratch = malloc(m->nnodes * sizeof(*m->scratch));
    r = m->bytes && m->scratch ? 0 : -ENOMEM;
out:
    free(order);
    return r;
}

static void put_details(struct massif *m, uint32_t v)
{
    const struct stacks_frame *fr = m->node[v].frame;
    char buf[TEXT_CAP];
    size_t len;

    if (!v) {
        atomicfile_printf(m->f, "%s\n", MASSIF_ROOT);
        return;
    }
    if (!fr) {
        atomicfile_printf(m->f, "%s\n", MASSIF_NO_CALLER);
        return;
    }
    atomicfile_printf(m->f, "0x%" PRIX64 ": ", fr->ip);
    len = 0;
    put_clean(buf, &len, fr->func && *fr->func ? fr->func : "???", 1);
    atomicfile_write(m->f, buf, len);
    len = 0;
    if (fr->file) {
        put_clean(buf, &len, base_name(fr->file), 1);
        if (fr->line > 0)
            atomicfile_printf(m->f, " (%s:%d)", buf, fr->line);
        else
            atomicfile_printf(m->f, " (%s)", buf);
    } else if (fr->module) {
        put_clean(buf, &len, fr->module, 1);
        atomicfile_printf(m->f, " (in %s)", buf);
    }
    atomicfile_putc(m->f, '\n');
}

static int cmp_child(const void *a, const void *b, void *ctx)
{
    const struct massif *m = ctx;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    const struct stacks_frame *fx = m->node[x].frame, *fy = m->node[y].frame;

    if (m->bytes[x] != m->bytes[y])
        return m->bytes[x] > m->bytes[y] ? -1 : 1;
    if (!fx || !fy)
        return fx ? -1 : fy ? 1 : 0;
    return cmp_frame(fx, fy);
}

/* One node and its subtree in pre-order. Children below 1% of total fold into one line, as
 * massif and ms_print do by default; that also bounds a node to 100 printed children, and
 * the depth is bounded by the tree's. scratch[top..] is free for this node's children. */
static void put_node(struct massif *m, uint32_t v, size_t depth, size_t top,
                     unsigned __int128 total)
{
    size_t k = 0, nsig, i;
    uint64_t insig = 0;
    uint32_t c;

    for (c = m->node[v].first; c != NONE; c = m->node[c].next)
        if (m->bytes[c])
            m->scratch[top + k++] = c;
    qsort_r(m->scratch + top, k, sizeof(*m->scratch), cmp_child, m);
    for (nsig = 0; nsig < k && (unsigned __int128)m->bytes[m->scratch[top + nsig]] * 100 >= total;)
        nsig++;
    for (i = nsig; i < k; i++)
        insig += m->bytes[m->scratch[top + i]];
    atomicfile_printf(m->f, "%*sn%zu: %" PRIu64 " ", (int)depth, "", nsig + (nsig < k),
                      m->bytes[v]);
    put_details(m, v);
    for (i = 0; i < nsig; i++)
        put_node(m, m->scratch[top + i], depth + 1, top + k, total);
    if (nsig < k)
        atomicfile_printf(m->f,
                          "%*sn0: %" PRIu64 " in %zu place%s, %sbelow massif's threshold "
                          "(1.00%%)\n",
                          (int)depth + 1, "", insig, k - nsig, k - nsig == 1 ? "" : "s",
                          k - nsig == 1 ? "" : "all ");
}

static void put_tree(struct massif *m, const struct heapfile_snapshot *s)
{
    size_t i;
    uint32_t v;

    memset(m->bytes, 0, m->nnodes * sizeof(*m->bytes));
    for (i = 0; i < m->nsites; i++) {
        if (!s->site_bytes[i])
            continue;
        for (v = m->site_node[i]; v != NONE; v = m->node[v].parent)
            m->bytes[v] += s->site_bytes[i];
    }
    put_node(m, 0, 0, 0, (unsigned __int128)s->heap_bytes + s->heap_extra_bytes);
}

static void put_snapshot_header(struct atomicfile *f, size_t i, const struct heapfile_snapshot *s)
{
    static const char *const tree[] = {"empty", "detailed", "peak"};

    atomicfile_printf(f,
                      "#-----------\nsnapshot=%zu\n#-----------\ntime=%" PRIu64 "\n"
                      "mem_heap_B=%" PRIu64 "\nmem_heap_extra_B=%" PRIu64 "\nmem_stacks_B=0\n"
                      "heap_tree=%s\n",
                      i, s->time, s->heap_bytes, s->heap_extra_bytes, tree[s->tree]);
}

/* Checked before anything is written, as is every site's sum: a tree's root is heap_bytes. */
static int check_snapshots(const struct heapfile_snapshot *snaps, size_t nsnaps, size_t nsites)
{
    size_t i, j, peaks = 0;
    uint64_t sum;

    if (nsnaps > HEAPFILE_MAX_SNAPSHOTS)
        return -E2BIG;
    if (nsnaps && !snaps)
        return -EINVAL;
    for (i = 0; i < nsnaps; i++) {
        if (snaps[i].tree != HEAPFILE_TREE_EMPTY && snaps[i].tree != HEAPFILE_TREE_DETAILED &&
            snaps[i].tree != HEAPFILE_TREE_PEAK)
            return -EINVAL;
        if (snaps[i].tree != HEAPFILE_TREE_EMPTY && !snaps[i].site_bytes)
            return -EINVAL;
        if (i && snaps[i].time < snaps[i - 1].time)
            return -EINVAL;
        peaks += snaps[i].tree == HEAPFILE_TREE_PEAK;
        if (snaps[i].tree == HEAPFILE_TREE_EMPTY)
            continue;
        for (j = 0, sum = 0; j < nsites; j++)
            if (__builtin_add_overflow(sum, snaps[i].site_bytes[j], &sum))
                return -EOVERFLOW;
        if (sum != snaps[i].heap_bytes)
            return -EINVAL;
    }
    return peaks > 1 ? -EINVAL : 0;
}

int heapfile_write_massif(const char *path, const char *cmd, const struct heapfile_site *sites,
                          size_t nsites, const struct heapfile_snapshot *snaps, size_t nsnaps)
{
    static const struct heapfile_snapshot none = {0, 0, 0, HEAPFILE_TREE_EMPTY, NULL};
    struct massif m = {.sites = sites, .nsites = nsites};
    char buf[TEXT_CAP];
    size_t len = 0, i;
    int r;

    if (!path || !cmd)
        return -EINVAL;
    r = check_sites(sites, nsites);
    if (r < 0)
        return r;
    r = check_snapshots(snaps, nsnaps, nsites);
    if (r < 0)
        return r;
    r = build_tree(&m);
    if (r < 0)
        goto out;
    r = atomicfile_open(path, &m.f);
    if (r < 0)
        goto out;
    put_clean(buf, &len, cmd, 1);
    atomicfile_printf(m.f,
                      "desc: profiler-agent memory profile (live heap by allocation site; "
                      "depth %d, threshold 1.00%%)\ncmd: %s\ntime_unit: ms\n",
                      HEAPFILE_MASSIF_DEPTH, buf);
    if (!nsnaps)
        put_snapshot_header(m.f, 0, &none);
    for (i = 0; i < nsnaps; i++) {
        put_snapshot_header(m.f, i, &snaps[i]);
        if (snaps[i].tree == HEAPFILE_TREE_EMPTY)
            continue;
        put_tree(&m, &snaps[i]);
    }
    r = atomicfile_commit(m.f);
    m.f = NULL;
out:
    atomicfile_abort(m.f);
    free(m.node);
    free(m.site_node);
    free(m.bytes);
    free(m.scratch);
    return r;
}
