/* The profile in Valgrind's Callgrind format ("Calltree Profile Format, Version 1"), as
 * callgrind_annotate and KCachegrind read it: two events (samples, nanoseconds), self costs by
 * source line, calls with inclusive costs, compressed names. Positions are lines only: the
 * profile keeps no instruction addresses. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include "formats/profile_priv.h"

#define UNKNOWN_FILE "???" /* what valgrind writes, and what callgrind_annotate never opens */

struct cg {
    struct atomicfile *f;
    const struct profile *p;
    char **names;
    uint32_t *ob_id, *fl_id, *fn_id; /* compressed ids given so far, 0 = none yet */
    uint32_t next_ob, next_fl, next_fn;
};

/* Names and the command go on one line each: control characters would end or corrupt it. */
static void put_line_text(struct atomicfile *f, const char *s)
{
    for (; *s; s++)
        atomicfile_putc(f, (unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s);
}

static void put_name(struct cg *c, const char *key, uint32_t *ids, uint32_t *next, size_t i,
                     const char *name)
{
    if (ids[i]) {
        atomicfile_printf(c->f, "%s=(%" PRIu32 ")\n", key, ids[i]);
        return;
    }
    ids[i] = ++*next;
    atomicfile_printf(c->f, "%s=(%" PRIu32 ") ", key, ids[i]);
    put_line_text(c->f, name);
    atomicfile_putc(c->f, '\n');
}

static void put_ob(struct cg *c, const char *key, uint32_t fn)
{
    uint32_t m = c->p->func[fn].module;
    put_name(c, key, c->ob_id, &c->next_ob, m, c->p->str[m]);
}

static void put_fl(struct cg *c, const char *key, uint32_t fn)
{
    uint32_t s = c->p->func[fn].file;
    put_name(c, key, c->fl_id, &c->next_fl, s, s ? c->p->str[s] : UNKNOWN_FILE);
}

static void put_fn(struct cg *c, const char *key, uint32_t fn)
{
    put_name(c, key, c->fn_id, &c->next_fn, fn, profile_func_name(c->p, c->names, fn));
}

static int cmp_line(const void *a, const void *b, void *ctx)
{
    const struct profile *p = ctx;
    const struct profile_line *x = &p->line[*(const uint32_t *)a];
    const struct profile_line *y = &p->line[*(const uint32_t *)b];
    if (x->func != y->func)
        return x->func < y->func ? -1 : 1;
    return (x->line > y->line) - (x->line < y->line);
}

static int cmp_site(const void *a, const void *b, void *ctx)
{
    const struct profile *p = ctx;
    const struct profile_site *x = &p->site[*(const uint32_t *)a];
    const struct profile_site *y = &p->site[*(const uint32_t *)b];
    if (x->caller != y->caller)
        return x->caller < y->caller ? -1 : 1;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return (x->callee > y->callee) - (x->callee < y->callee);
}

static uint32_t *sorted(const struct profile *p, size_t n,
                        int (*cmp)(const void *, const void *, void *))
{
    uint32_t *idx = malloc((n ? n : 1) * sizeof(*idx));
    size_t i;
    if (!idx)
        return NULL;
    for (i = 0; i < n; i++)
        idx[i] = (uint32_t)i;
    qsort_r(idx, n, sizeof(*idx), cmp, (void *)p);
    return idx;
}

static void put_function(struct cg *c, uint32_t fn, const uint32_t *lines, size_t *li,
                         const uint32_t *sites, size_t *si)
{
    const struct profile *p = c->p;

    put_fn(c, "fn", fn);
    for (; *li < p->nline && p->line[lines[*li]].func == fn; (*li)++) {
        const struct profile_line *l = &p->line[lines[*li]];
        if (l->samples)
            atomicfile_printf(c->f, "%d %" PRIu64 " %" PRIu64 "\n", l->line, l->samples, l->ns);
    }
    for (; *si < p->nsite && p->site[sites[*si]].caller == fn; (*si)++) {
        const struct profile_site *s = &p->site[sites[*si]];
        /* callgrind_annotate reads the cost after calls=0 as self cost: never write one. */
        if (!s->calls)
            continue;
        put_ob(c, "cob", s->callee);
        put_fl(c, "cfi", s->callee);
        put_fn(c, "cfn", s->callee);
        atomicfile_printf(c->f, "calls=%" PRIu64 " %d\n", s->calls, p->func[s->callee].func_line);
        atomicfile_printf(c->f, "%d %" PRIu64 " %" PRIu64 "\n", s->line, s->incl_samples,
                          s->incl_ns);
    }
}

int profile_write_callgrind(const struct profile *p, const char *path, const char *cmd, pid_t pid,
                            struct error *err)
{
    struct cg c = {0};
    uint32_t *lines = NULL, *sites = NULL;
    uint32_t cur_ob = UINT32_MAX, cur_fl = UINT32_MAX;
    size_t i, li = 0, si = 0;
    int r;

    error_clear(err);
    c.p = p;
    r = profile_names_new(p, 0, 1, &c.names);
    if (r < 0)
        goto out;
    r = -ENOMEM;
    c.ob_id = calloc(p->nstr, sizeof(*c.ob_id));
    c.fl_id = calloc(p->nstr, sizeof(*c.fl_id));
    c.fn_id = calloc(p->nfunc, sizeof(*c.fn_id));
    lines = sorted(p, p->nline, cmp_line);
    sites = sorted(p, p->nsite, cmp_site);
    if (!c.ob_id || !c.fl_id || !c.fn_id || !lines || !sites)
        goto out;
    r = atomicfile_open(path, &c.f);
    if (r < 0)
        goto out;

    /* events: ends the header for callgrind_annotate; the rest is body. */
    atomicfile_printf(c.f,
                      "# callgrind format\nversion: 1\ncreator: profiler-agent\n"
                      "pid: %ld\ncmd: ",
                      (long)pid);
    put_line_text(c.f, cmd ? cmd : "");
    atomicfile_printf(c.f,
                      "\npart: 1\n\npositions: line\n"
                      "event: Samples : CPU samples\n"
                      "event: Nanoseconds : Sampled CPU time (ns)\n"
                      "events: Samples Nanoseconds\n"
                      "summary: %" PRIu64 " %" PRIu64 "\n\n",
                      p->samples, p->total_ns);
    for (i = 0; i < p->nfunc; i++) {
        const struct profile_func *fn = &p->func[i];
        if (!fn->total_samples && i != p->f_truncated)
            continue;
        if (fn->module != cur_ob) {
            put_ob(&c, "ob", (uint32_t)i);
            cur_ob = fn->module;
        }
        if (fn->file != cur_fl) {
            put_fl(&c, "fl", (uint32_t)i);
            cur_fl = fn->file;
        }
        /* Records of functions without samples sort before those of i: skip them. */
        while (li < p->nline && p->line[lines[li]].func < i)
            li++;
        while (si < p->nsite && p->site[sites[si]].caller < i)
            si++;
        put_function(&c, (uint32_t)i, lines, &li, sites, &si);
        atomicfile_putc(c.f, '\n');
    }
    atomicfile_printf(c.f, "totals: %" PRIu64 " %" PRIu64 "\n", p->samples, p->total_ns);
    r = atomicfile_commit(c.f);
    c.f = NULL;
out:
    error_fill(err, r);
    atomicfile_abort(c.f);
    profile_names_free(c.names, p->nfunc);
    free(c.ob_id);
    free(c.fl_id);
    free(c.fn_id);
    free(lines);
    free(sites);
    return r;
}
