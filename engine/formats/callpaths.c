/* The call tree as whole stacks (see callpaths.h): self costs, threads and labels computed once
 * for a writer, in passes over the nodes in index order (a node comes after its parent). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats/callpaths.h"

/* A node's own samples and time: what went through it minus what went through its children. */
static void self_costs(struct callpaths *c)
{
    const struct profile *p = c->p;
    size_t n;

    for (n = 0; n < p->nnode; n++) {
        c->self_samples[n] = p->node[n].samples;
        c->self_ns[n] = p->node[n].ns;
    }
    for (n = 1; n < p->nnode; n++) {
        c->self_samples[p->node[n].parent] -= p->node[n].samples;
        c->self_ns[p->node[n].parent] -= p->node[n].ns;
    }
}

static char *base_label(const struct profile *p, uint32_t f)
{
    const struct profile_func *fn = &p->func[f];
    const char *m = p->str[fn->module], *b = strrchr(m, '/');
    char *s;

    if (fn->name != p->s_unknown || fn->module == p->s_unknown)
        return strdup(p->str[fn->name]);
    if (m[0] == '[') /* [vdso], [python]: a name already */
        return strdup(m);
    return asprintf(&s, "[%s]", b && b[1] ? b + 1 : m) < 0 ? NULL : s;
}

static int cmp_label(const void *a, const void *b, void *ctx)
{
    char *const *label = ctx;
    return strcmp(label[*(const uint32_t *)a], label[*(const uint32_t *)b]);
}

/* Labels of the functions on some path; those of one name get their location. */
static int labels(struct callpaths *c)
{
    const struct profile *p = c->p;
    uint32_t *order = malloc((p->nfunc ? p->nfunc : 1) * sizeof(*order));
    size_t n, used = 0, i, j, k;
    int r = -ENOMEM;

    if (!order)
        return -ENOMEM;
    for (n = 0; n < p->nnode; n++) {
        /* A path without functions is "[dropped]" (callpaths_frames). */
        uint32_t f = p->node[n].depth >= 2 ? p->node[n].id : p->f_dropped;
        if ((p->node[n].depth >= 2 || c->self_samples[n]) && !c->label[f] &&
            !(c->label[f] = base_label(p, f)))
            goto out;
    }
    for (n = 0; n < p->nfunc; n++)
        if (c->label[n])
            order[used++] = (uint32_t)n;
    qsort_r(order, used, sizeof(*order), cmp_label, c->label);
    for (i = 0; i < used; i = j) {
        for (j = i + 1; j < used && strcmp(c->label[order[i]], c->label[order[j]]) == 0; j++)
            ;
        for (k = i; j - i > 1 && k < j; k++) {
            const struct profile_func *fn = &p->func[order[k]];
            char *s, line[24] = "";

            if (fn->func_line > 0)
                snprintf(line, sizeof(line), ":%d", fn->func_line);
            if (asprintf(&s, "%s (%s%s)", c->label[order[k]], profile_func_location(p, order[k]),
                         line) < 0)
                goto out;
            free(c->label[order[k]]);
            c->label[order[k]] = s;
        }
    }
    r = 0;
out:
    free(order);
    return r;
}

int callpaths_init(struct callpaths *c, const struct profile *p)
{
    size_t nn = p->nnode ? p->nnode : 1, nf = p->nfunc ? p->nfunc : 1, n;
    int r = -ENOMEM;

    memset(c, 0, sizeof(*c));
    c->p = p;
    c->self_samples = calloc(nn, sizeof(*c->self_samples));
    c->self_ns = calloc(nn, sizeof(*c->self_ns));
    c->thread = calloc(nn, sizeof(*c->thread));
    c->label = calloc(nf, sizeof(*c->label));
    if (!c->self_samples || !c->self_ns || !c->thread || !c->label)
        goto out;
    self_costs(c);
    for (n = 0; n < p->nnode; n++) {
        const struct profile_node *nd = &p->node[n];
        if (nd->depth == 1)
            c->thread[n] = nd->id;
        else
            c->thread[n] = n && nd->parent < n ? c->thread[nd->parent] : p->s_dropped;
    }
    r = labels(c);
out:
    if (r < 0)
        callpaths_destroy(c);
    return r;
}

void callpaths_destroy(struct callpaths *c)
{
    size_t i;

    for (i = 0; c->label && i < c->p->nfunc; i++)
        free(c->label[i]);
    free(c->label);
    free(c->self_samples);
    free(c->self_ns);
    free(c->thread);
    memset(c, 0, sizeof(*c));
}

size_t callpaths_frames(const struct callpaths *c, uint32_t n, uint32_t *out)
{
    const struct profile *p = c->p;
    size_t k = 0;

    for (; n < p->nnode && p->node[n].depth >= 2 && k < CALLPATHS_MAX_FRAMES; n = p->node[n].parent)
        out[k++] = p->node[n].id;
    if (!k)
        out[k++] = p->f_dropped;
    return k;
}
