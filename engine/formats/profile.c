/* CPU profile aggregation: interned strings and functions, once-per-stack cumulative counts,
 * caller -> callee edges, Callgrind call sites and source lines, and a per-thread-name call tree.
 * It only counts; the file formats are in pstats.c, callgrind.c and flamegraph.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats/profile_priv.h"

#define INDEX_MIN 64

static uint32_t mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return (uint32_t)h;
}

static uint32_t mix3(uint32_t a, uint32_t b, uint64_t c)
{
    return mix(((uint64_t)a << 32 | b) ^ mix(c + 0x9e3779b97f4a7c15ULL));
}

static uint32_t hash_str(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return mix(h);
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* Makes room for one more entry, keeping the load at most one half. */
static int index_reserve(struct profile_index *x)
{
    size_t n, i, j;
    uint64_t *s;

    if (x->slot && (x->count + 1) * 2 <= x->mask + 1)
        return 0;
    n = x->slot ? (x->mask + 1) * 2 : INDEX_MIN;
    s = calloc(n, sizeof(*s));
    if (!s)
        return -ENOMEM;
    for (i = 0; x->slot && i <= x->mask; i++) {
        if (!x->slot[i])
            continue;
        for (j = (x->slot[i] >> 32) & (n - 1); s[j]; j = (j + 1) & (n - 1))
            ;
        s[j] = x->slot[i];
    }
    free(x->slot);
    x->slot = s;
    x->mask = n - 1;
    return 0;
}

/* The record with this hash and key, or -1 and where to insert it. */
static int64_t index_find(const struct profile *p, const struct profile_index *x, uint32_t h,
                          int (*eq)(const struct profile *, uint32_t, const void *),
                          const void *key, size_t *ret_slot)
{
    size_t i;
    for (i = h & x->mask; x->slot[i]; i = (i + 1) & x->mask) {
        uint32_t rec = (uint32_t)x->slot[i] - 1;
        if ((uint32_t)(x->slot[i] >> 32) == h && eq(p, rec, key))
            return rec;
    }
    *ret_slot = i;
    return -1;
}

static void index_set(struct profile_index *x, size_t slot, uint32_t h, size_t rec)
{
    x->slot[slot] = (uint64_t)h << 32 | (uint64_t)(rec + 1);
    x->count++;
}

static int grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    size_t c;
    void *a;

    if (n < *cap)
        return 0;
    c = *cap ? *cap * 2 : 64;
    a = realloc(*arr, c * elem);
    if (!a)
        return -ENOMEM;
    *arr = a;
    *cap = c;
    return 0;
}

size_t profile_utf8_next(const char *s, size_t len, uint32_t *ret_cp)
{
    const unsigned char *u = (const unsigned char *)s;
    uint32_t cp, min;
    size_t n, i;

    if (u[0] < 0x80) {
        *ret_cp = u[0];
        return 1;
    }
    if (u[0] >= 0xc2 && u[0] <= 0xdf) {
        n = 2, cp = u[0] & 0x1f, min = 0x80;
    } else if (u[0] >= 0xe0 && u[0] <= 0xef) {
        n = 3, cp = u[0] & 0x0f, min = 0x800;
    } else if (u[0] >= 0xf0 && u[0] <= 0xf4) {
        n = 4, cp = u[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len < n)
        return 0;
    for (i = 1; i < n; i++) {
        if ((u[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (u[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    *ret_cp = cp;
    return n;
}

/* Copies s as valid UTF-8 (bad bytes become U+FFFD) of at most PROFILE_MAX_NAME bytes. */
static void sanitize(const char *s, char *out)
{
    size_t len = strlen(s), i = 0, o = 0;
    while (i < len) {
        uint32_t cp;
        size_t k = profile_utf8_next(s + i, len - i, &cp);
        const char *src = k ? s + i : "\xef\xbf\xbd";
        size_t w = k ? k : 3;
        if (o + w > PROFILE_MAX_NAME)
            break;
        memcpy(out + o, src, w);
        o += w;
        i += k ? k : 1;
    }
    out[o] = '\0';
}

static int str_eq(const struct profile *p, uint32_t rec, const void *key)
{
    return strcmp(p->str[rec], key) == 0;
}

/* The id of a copy of s; *lost is set when a limit made it "[dropped]". */
static int intern(struct profile *p, const char *s, uint32_t *ret, int *lost)
{
    size_t c = ((uintptr_t)s >> 3) & (PROFILE_STR_CACHE - 1);
    char buf[PROFILE_MAX_NAME + 1];
    size_t slot, n;
    int64_t rec;
    uint32_t h;
    char *copy;

    /* The unwinder hands out the same pointers for the same names: skip copying and hashing
     * them. The content is compared because a freed name's address may come back. */
    if (p->str_cache[c].ptr == s && strcmp(p->str[p->str_cache[c].id], s) == 0) {
        *ret = p->str_cache[c].id;
        return 0;
    }
    sanitize(s, buf);
    h = hash_str(buf);
    if (index_reserve(&p->istr) < 0)
        return -ENOMEM;
    rec = index_find(p, &p->istr, h, str_eq, buf, &slot);
    if (rec >= 0) {
        p->str_cache[c].ptr = s;
        p->str_cache[c].id = (uint32_t)rec;
        *ret = (uint32_t)rec;
        return 0;
    }
    n = strlen(buf) + 1;
    if (p->nstr >= PROFILE_MAX_STRINGS || p->str_bytes + n > PROFILE_MAX_STRING_BYTES) {
        *ret = p->s_dropped;
        *lost = 1;
        return 0;
    }
    if (grow((void **)&p->str, &p->cap_str, p->nstr, sizeof(*p->str)) < 0)
        return -ENOMEM;
    copy = malloc(n);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, buf, n);
    p->str[p->nstr] = copy;
    index_set(&p->istr, slot, h, p->nstr);
    p->str_cache[c].ptr = s;
    p->str_cache[c].id = (uint32_t)p->nstr;
    *ret = (uint32_t)p->nstr++;
    p->str_bytes += n;
    return 0;
}

struct func_key {
    uint32_t module, name, file;
    int func_line;
};

static int func_eq(const struct profile *p, uint32_t rec, const void *key)
{
    const struct profile_func *f = &p->func[rec];
    const struct func_key *k = key;
    return f->module == k->module && f->name == k->name && f->file == k->file &&
           f->func_line == k->func_line;
}

static int func_get(struct profile *p, const struct func_key *k, uint32_t *ret, int *lost)
{
    uint32_t h = mix3(k->module, k->name, (uint64_t)k->file << 32 | (uint32_t)k->func_line);
    struct profile_func *f;
    size_t slot;
    int64_t rec;

    if (index_reserve(&p->ifunc) < 0)
        return -ENOMEM;
    rec = index_find(p, &p->ifunc, h, func_eq, k, &slot);
    if (rec >= 0) {
        *ret = (uint32_t)rec;
        return 0;
    }
    if (p->nfunc >= PROFILE_MAX_FUNCS) {
        *ret = p->f_dropped;
        *lost = 1;
        return 0;
    }
    if (grow((void **)&p->func, &p->cap_func, p->nfunc, sizeof(*p->func)) < 0)
        return -ENOMEM;
    f = &p->func[p->nfunc];
    memset(f, 0, sizeof(*f));
    f->module = k->module;
    f->name = k->name;
    f->file = k->file;
    f->func_line = k->func_line;
    index_set(&p->ifunc, slot, h, p->nfunc);
    *ret = (uint32_t)p->nfunc++;
    return 0;
}

/* A frame's function; a frame without a symbol is its module's "[unknown]", whatever its file.
 * A Python function has no module of its own: its .py file stands for it, as the object that
 * holds its code. */
static int frame_func(struct profile *p, const struct stacks_frame *fr, uint32_t *ret, int *lost)
{
    struct func_key k = {0, 0, PROFILE_NO_STRING, 0};
    const char *module = fr->python ? (fr->file ? fr->file : PROFILE_PYTHON) : fr->module;
    int r;

    k.module = p->s_unknown;
    if (module && (r = intern(p, module, &k.module, lost)) < 0)
        return r;
    k.name = p->s_unknown;
    if (fr->func) {
        if ((r = intern(p, fr->func, &k.name, lost)) < 0)
            return r;
        if (fr->file && (r = intern(p, fr->file, &k.file, lost)) < 0)
            return r;
        k.func_line = fr->func_line > 0 ? fr->func_line : 0;
    }
    return func_get(p, &k, ret, lost);
}

struct pair_key {
    uint32_t a, b;
    int line;
};

static int edge_eq(const struct profile *p, uint32_t rec, const void *key)
{
    const struct pair_key *k = key;
    return p->edge[rec].caller == k->a && p->edge[rec].callee == k->b;
}

static int site_eq(const struct profile *p, uint32_t rec, const void *key)
{
    const struct pair_key *k = key;
    const struct profile_site *s = &p->site[rec];
    return s->caller == k->a && s->callee == k->b && s->line == k->line;
}

static int line_eq(const struct profile *p, uint32_t rec, const void *key)
{
    const struct pair_key *k = key;
    return p->line[rec].func == k->a && p->line[rec].line == k->line;
}

static int node_eq(const struct profile *p, uint32_t rec, const void *key)
{
    const struct pair_key *k = key;
    return p->node[rec].parent == k->a && p->node[rec].id == k->b;
}

/* Generic find-or-add of a record in one of the tables; *ret is -1 when the table is full. */
static int record_get(struct profile *p, struct profile_index *x, void **arr, size_t *n,
                      size_t *cap, size_t elem, size_t max,
                      int (*eq)(const struct profile *, uint32_t, const void *),
                      const struct pair_key *k, int64_t *ret, int *lost)
{
    uint32_t h = mix3(k->a, k->b, (uint32_t)k->line);
    size_t slot;
    int64_t rec;

    if (index_reserve(x) < 0)
        return -ENOMEM;
    rec = index_find(p, x, h, eq, k, &slot);
    if (rec >= 0) {
        *ret = rec;
        return 0;
    }
    if (*n >= max) {
        *ret = -1;
        *lost = 1;
        return 0;
    }
    if (grow(arr, cap, *n, elem) < 0)
        return -ENOMEM;
    memset((char *)*arr + *n * elem, 0, elem);
    index_set(x, slot, h, *n);
    *ret = (int64_t)(*n)++;
    return 0;
}

static int edge_get(struct profile *p, uint32_t caller, uint32_t callee, int64_t *ret, int *lost)
{
    struct pair_key k = {caller, callee, 0};
    int r = record_get(p, &p->iedge, (void **)&p->edge, &p->nedge, &p->cap_edge, sizeof(*p->edge),
                       PROFILE_MAX_EDGES, edge_eq, &k, ret, lost);
    if (r == 0 && *ret >= 0) {
        p->edge[*ret].caller = caller;
        p->edge[*ret].callee = callee;
    }
    return r;
}

static int site_get(struct profile *p, uint32_t caller, uint32_t callee, int line, int64_t *ret,
                    int *lost)
{
    struct pair_key k = {caller, callee, line};
    int r = record_get(p, &p->isite, (void **)&p->site, &p->nsite, &p->cap_site, sizeof(*p->site),
                       PROFILE_MAX_SITES, site_eq, &k, ret, lost);
    if (r == 0 && *ret >= 0) {
        p->site[*ret].caller = caller;
        p->site[*ret].callee = callee;
        p->site[*ret].line = line;
    }
    return r;
}

static int line_get(struct profile *p, uint32_t func, int line, int64_t *ret, int *lost)
{
    struct pair_key k = {func, 0, line};
    int r = record_get(p, &p->iline, (void **)&p->line, &p->nline, &p->cap_line, sizeof(*p->line),
                       PROFILE_MAX_LINES, line_eq, &k, ret, lost);
    if (r == 0 && *ret >= 0) {
        p->line[*ret].func = func;
        p->line[*ret].line = line;
    }
    return r;
}

static int node_get(struct profile *p, uint32_t parent, uint32_t id, int64_t *ret, int *lost)
{
    struct pair_key k = {parent, id, 0};
    int r = record_get(p, &p->inode, (void **)&p->node, &p->nnode, &p->cap_node, sizeof(*p->node),
                       PROFILE_MAX_NODES, node_eq, &k, ret, lost);
    if (r == 0 && *ret >= 0) {
        p->node[*ret].parent = parent;
        p->node[*ret].id = id;
        p->node[*ret].depth = p->node[parent].depth + 1;
    }
    return r;
}

int profile_new(struct profile **ret)
{
    struct profile *p = calloc(1, sizeof(*p));
    struct func_key k = {0, 0, PROFILE_NO_STRING, 0};
    int lost = 0, r = -ENOMEM;

    if (!p)
        return -ENOMEM;
    if (grow((void **)&p->str, &p->cap_str, 0, sizeof(*p->str)) < 0)
        goto out;
    p->str[p->nstr++] = NULL;
    if ((r = intern(p, "[unknown]", &p->s_unknown, &lost)) < 0 ||
        (r = intern(p, "[dropped]", &p->s_dropped, &lost)) < 0)
        goto out;
    k.module = k.name = p->s_unknown;
    if ((r = func_get(p, &k, &p->f_unknown, &lost)) < 0)
        goto out;
    k.module = k.name = p->s_dropped;
    if ((r = func_get(p, &k, &p->f_dropped, &lost)) < 0)
        goto out;
    k.module = p->s_unknown;
    if ((r = intern(p, "[truncated]", &k.name, &lost)) < 0 ||
        (r = func_get(p, &k, &p->f_truncated, &lost)) < 0)
        goto out;
    r = -ENOMEM;
    if (grow((void **)&p->node, &p->cap_node, 0, sizeof(*p->node)) < 0)
        goto out;
    memset(&p->node[0], 0, sizeof(p->node[0]));
    p->nnode = 1;
    *ret = p;
    p = NULL;
    r = 0;
out:
    profile_free(p);
    return r;
}

void profile_free(struct profile *p)
{
    size_t i;
    if (!p)
        return;
    for (i = 0; i < p->nstr; i++)
        free(p->str[i]);
    free(p->str);
    free(p->istr.slot);
    free(p->func);
    free(p->ifunc.slot);
    free(p->edge);
    free(p->iedge.slot);
    free(p->site);
    free(p->isite.slot);
    free(p->line);
    free(p->iline.slot);
    free(p->node);
    free(p->inode.slot);
    free(p);
}

/* Everything one sample touches, found or added before anything is counted, so that a failure
 * (-ENOMEM) leaves the counts as they were. */
struct sample {
    size_t n;
    uint32_t fid[STACKS_MAX_FRAMES];
    int line[STACKS_MAX_FRAMES];
    int64_t edge[STACKS_MAX_FRAMES], site[STACKS_MAX_FRAMES], self_line;
    int64_t root_site; /* [truncated] -> outermost frame, or -1 */
    int64_t node[STACKS_MAX_FRAMES + 2];
    size_t nnode;
    int lost;
};

static int sample_resolve(struct profile *p, const char *thread, const struct stacks_frame *fr,
                          int truncated, struct sample *s)
{
    uint32_t tname;
    int64_t nd;
    size_t i;
    int r;

    for (i = 0; i < s->n; i++) {
        if (fr) {
            if ((r = frame_func(p, &fr[i], &s->fid[i], &s->lost)) < 0)
                return r;
            s->line[i] = fr[i].func && fr[i].line > 0 ? fr[i].line : 0;
        } else {
            s->fid[i] = p->f_unknown;
            s->line[i] = 0;
        }
    }
    for (i = 0; i + 1 < s->n; i++) {
        if ((r = edge_get(p, s->fid[i + 1], s->fid[i], &s->edge[i], &s->lost)) < 0 ||
            (r = site_get(p, s->fid[i + 1], s->fid[i], s->line[i + 1], &s->site[i], &s->lost)) < 0)
            return r;
    }
    s->root_site = -1;
    if (truncated &&
        (r = site_get(p, p->f_truncated, s->fid[s->n - 1], 0, &s->root_site, &s->lost)) < 0)
        return r;
    if ((r = line_get(p, s->fid[0], s->line[0], &s->self_line, &s->lost)) < 0)
        return r;
    if ((r = intern(p, thread ? thread : "[unknown]", &tname, &s->lost)) < 0)
        return r;
    s->node[0] = 0;
    s->nnode = 1;
    if ((r = node_get(p, 0, tname, &nd, &s->lost)) < 0)
        return r;
    /* A full tree keeps the sample on the deepest node it has. */
    for (i = s->n; nd >= 0; i--) {
        s->node[s->nnode++] = nd;
        if (i == 0)
            break;
        if ((r = node_get(p, (uint32_t)nd, s->fid[i - 1], &nd, &s->lost)) < 0)
            return r;
    }
    return 0;
}

int profile_add(struct profile *p, const char *thread, const struct stacks_frame *frames, size_t n,
                int truncated, uint64_t weight_ns)
{
    struct sample *s;
    uint32_t leaf;
    size_t i;
    int r;

    if (!p || (n && !frames))
        return -EINVAL;
    s = malloc(sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->lost = 0;
    s->n = n ? n : 1;
    if (n > STACKS_MAX_FRAMES) {
        /* Keep the innermost frames, as an unwinder that gave up would. */
        s->n = STACKS_MAX_FRAMES;
        truncated = 1;
    }
    r = sample_resolve(p, thread, n ? frames : NULL, truncated, s);
    if (r < 0)
        goto out;

    p->stamp++;
    p->samples++;
    p->total_ns = sat_add(p->total_ns, weight_ns);
    p->truncated += truncated != 0;
    p->dropped += s->lost;
    leaf = s->fid[0];
    p->func[leaf].self_samples++;
    p->func[leaf].self_ns = sat_add(p->func[leaf].self_ns, weight_ns);
    for (i = s->n; i-- > 0;) {
        struct profile_func *f = &p->func[s->fid[i]];
        int64_t in = i + 1 < s->n ? s->site[i] : s->root_site;
        if (f->stamp == p->stamp)
            continue;
        f->stamp = p->stamp;
        f->total_samples++;
        f->total_ns = sat_add(f->total_ns, weight_ns);
        if (in >= 0) {
            p->site[in].incl_samples++;
            p->site[in].incl_ns = sat_add(p->site[in].incl_ns, weight_ns);
        }
    }
    if (s->root_site >= 0) {
        p->site[s->root_site].stamp = p->stamp;
        p->site[s->root_site].calls++;
    }
    for (i = 0; i + 1 < s->n; i++) {
        if (s->edge[i] >= 0) {
            struct profile_edge *e = &p->edge[s->edge[i]];
            if (i == 0) {
                e->self_samples++;
                e->self_ns = sat_add(e->self_ns, weight_ns);
            }
            if (e->stamp != p->stamp) {
                e->stamp = p->stamp;
                e->samples++;
                e->ns = sat_add(e->ns, weight_ns);
            }
        }
        if (s->site[i] >= 0 && p->site[s->site[i]].stamp != p->stamp) {
            p->site[s->site[i]].stamp = p->stamp;
            p->site[s->site[i]].calls++;
        }
    }
    if (s->self_line >= 0) {
        p->line[s->self_line].samples++;
        p->line[s->self_line].ns = sat_add(p->line[s->self_line].ns, weight_ns);
    }
    for (i = 0; i < s->nnode; i++) {
        p->node[s->node[i]].samples++;
        p->node[s->node[i]].ns = sat_add(p->node[s->node[i]].ns, weight_ns);
    }
out:
    free(s);
    return r;
}

uint64_t profile_samples(const struct profile *p)
{
    return p->samples;
}

void profile_set_timed(struct profile *p)
{
    p->timed = true;
}

uint64_t profile_truncated(const struct profile *p)
{
    return p->truncated;
}

uint64_t profile_dropped(const struct profile *p)
{
    return p->dropped;
}

static int cmp_self(const void *a, const void *b, void *ctx)
{
    const struct profile *p = ctx;
    const struct profile_func *x = &p->func[*(const uint32_t *)a];
    const struct profile_func *y = &p->func[*(const uint32_t *)b];
    if (x->self_ns != y->self_ns)
        return x->self_ns > y->self_ns ? -1 : 1;
    if (x->self_samples != y->self_samples)
        return x->self_samples > y->self_samples ? -1 : 1;
    return strcmp(p->str[x->name], p->str[y->name]);
}

int profile_top(const struct profile *p, size_t n, struct profile_top *out, size_t *ret_n)
{
    uint32_t *idx;
    size_t i, k = 0;

    idx = malloc((p->nfunc ? p->nfunc : 1) * sizeof(*idx));
    if (!idx)
        return -ENOMEM;
    for (i = 0; i < p->nfunc; i++)
        if (p->func[i].self_samples)
            idx[k++] = (uint32_t)i;
    qsort_r(idx, k, sizeof(*idx), cmp_self, (void *)p);
    for (i = 0; i < k && i < n; i++) {
        const struct profile_func *f = &p->func[idx[i]];
        out[i].func = p->str[f->name];
        out[i].module = p->str[f->module];
        out[i].file = p->str[f->file];
        out[i].func_line = f->func_line;
        out[i].self_samples = f->self_samples;
        out[i].total_samples = f->total_samples;
        out[i].self_ns = f->self_ns;
        out[i].total_ns = f->total_ns;
    }
    free(idx);
    *ret_n = i;
    return 0;
}

const char *profile_func_location(const struct profile *p, uint32_t f)
{
    const struct profile_func *fn = &p->func[f];
    return fn->file ? p->str[fn->file] : p->str[fn->module];
}

const char *profile_func_name(const struct profile *p, char *const *names, uint32_t f)
{
    return names && names[f] ? names[f] : p->str[p->func[f].name];
}

static const char *name_loc(const struct profile *p, uint32_t f, int no_module_file)
{
    if (no_module_file && !p->func[f].file)
        return "???";
    return profile_func_location(p, f);
}

int profile_names_new(const struct profile *p, int by_line, int no_module_file, char ***ret)
{
    struct profile_index x = {NULL, 0, 0};
    char **names;
    size_t i, slot;
    int r = -ENOMEM;

    names = calloc(p->nfunc ? p->nfunc : 1, sizeof(*names));
    if (!names)
        return -ENOMEM;
    for (i = 0; i < p->nfunc; i++) {
        const struct profile_func *f = &p->func[i];
        const char *loc = name_loc(p, (uint32_t)i, no_module_file);
        uint32_t h = mix3(hash_str(loc), f->name, by_line ? (uint32_t)f->func_line : 0);
        int dup = 0;

        /* Only functions a file lists can clash: the profile's own "[unknown]" without samples
         * must not make a module's "[unknown]" take a longer name. */
        if (!f->total_samples && i != p->f_truncated)
            continue;
        if (index_reserve(&x) < 0)
            goto out;
        for (slot = h & x.mask; x.slot[slot]; slot = (slot + 1) & x.mask) {
            uint32_t o = (uint32_t)x.slot[slot] - 1;
            if ((uint32_t)(x.slot[slot] >> 32) == h && p->func[o].name == f->name &&
                (!by_line || p->func[o].func_line == f->func_line) &&
                strcmp(name_loc(p, o, no_module_file), loc) == 0) {
                dup = 1;
                break;
            }
        }
        if (!dup) {
            index_set(&x, slot, h, i);
            continue;
        }
        if (asprintf(&names[i], "%s [%s]", p->str[f->name], p->str[f->module]) < 0) {
            names[i] = NULL;
            goto out;
        }
    }
    *ret = names;
    names = NULL;
    r = 0;
out:
    profile_names_free(names, p->nfunc);
    free(x.slot);
    return r;
}

void profile_names_free(char **names, size_t n)
{
    size_t i;
    if (!names)
        return;
    for (i = 0; i < n; i++)
        free(names[i]);
    free(names);
}
