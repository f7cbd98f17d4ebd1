/* The call tree as whole stacks (see callpaths.h): self costs, threads and labels computed once
 * for a writer, in passes over the nodes in index order (a node comes after its parent). */
#include <errno.h>
#include <stdarg.h>
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
    for (n = 0; n < p->nnode; n++)
        c->self_count[n] = p->timed ? c->self_ns[n] / 1000 : c->self_samples[n];
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
    c->self_count = calloc(nn, sizeof(*c->self_count));
    c->thread = calloc(nn, sizeof(*c->thread));
    c->label = calloc(nf, sizeof(*c->label));
    if (!c->self_samples || !c->self_ns || !c->self_count || !c->thread || !c->label)
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
    free(c->self_count);
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

int callpaths_text_add(struct callpaths_text *t, const char *s, size_t len)
{
    if (len >= t->cap - t->len || !t->s) {
        size_t cap = t->cap ? t->cap : 256;
        char *p;

        while (cap - t->len <= len) {
            if (cap > SIZE_MAX / 2)
                return -ENOMEM;
            cap *= 2;
        }
        p = realloc(t->s, cap);
        if (!p)
            return -ENOMEM;
        t->s = p;
        t->cap = cap;
    }
    memcpy(t->s + t->len, s, len);
    t->len += len;
    t->s[t->len] = '\0';
    return 0;
}

int callpaths_text_printf(struct callpaths_text *t, const char *fmt, ...)
{
    char buf[128];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    /* Only ever short figures: a longer text is a caller's mistake, refused whole. */
    if (n < 0 || (size_t)n >= sizeof(buf))
        return -EINVAL;
    return callpaths_text_add(t, buf, (size_t)n);
}

/* len bytes of s with ';' as ':' and control characters as spaces: a ';' would split the frame
 * and a line break end the line. Spaces are fine: readers take the count after the last one. */
static int add_escaped(struct callpaths_text *t, const char *s, size_t len)
{
    static const char special[] = ";\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"
                                  "\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e"
                                  "\x1f\x7f";
    const char *end = s + len;
    int r = 0;

    while (s < end && r == 0) {
        size_t plain = strcspn(s, special);
        if (plain > (size_t)(end - s))
            plain = (size_t)(end - s);
        r = callpaths_text_add(t, s, plain);
        s += plain;
        if (s < end && r == 0)
            r = callpaths_text_add(t, *s++ == ';' ? ":" : " ", 1);
    }
    return r;
}

/* Where s ends in whitespace and a number ("worker 2", "x 1.5"): flamegraph.pl reads a stack
 * ending so as a differential profile's first count. The whitespace's offset, else len. */
static size_t count_like_tail(const char *s, size_t len)
{
    size_t i = len, digits;

    while (i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9')
        i--;
    if (i > 0 && s[i - 1] == '.')
        i--;
    for (digits = 0; i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9'; digits++)
        i--;
    if (i == len || (s[i] == '.' && !digits) || i == 0)
        return len;
    return (unsigned char)s[i - 1] <= ' ' ? i - 1 : len;
}

int callpaths_fold_frame(struct callpaths_text *t, const char *label, bool innermost)
{
    size_t len = strlen(label), k = innermost ? count_like_tail(label, len) : len;
    int r = add_escaped(t, label, k);

    if (r == 0 && k < len) {
        r = callpaths_text_add(t, "_", 1);
        if (r == 0)
            r = add_escaped(t, label + k + 1, len - k - 1);
    }
    return r;
}

int callpaths_fold(const struct callpaths *c, uint32_t n, struct callpaths_text *t)
{
    const struct profile *p = c->p;
    uint32_t frames[CALLPATHS_MAX_FRAMES];
    size_t k = callpaths_frames(c, n, frames);
    int r = callpaths_text_add(t, "thread ", 7);

    if (r == 0)
        r = add_escaped(t, p->str[c->thread[n]], strlen(p->str[c->thread[n]]));
    while (r == 0 && k-- > 0) {
        r = callpaths_text_add(t, ";", 1);
        if (r == 0)
            r = callpaths_fold_frame(t, c->label[frames[k]], k == 0);
    }
    return r;
}
