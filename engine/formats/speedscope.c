/* The profile in speedscope's own JSON format (https://www.speedscope.app/file-format-schema.json):
 * the functions once in shared.frames, then one "sampled" profile per thread name whose samples
 * are the call tree's paths (root first) weighted by their time in nanoseconds. The profile keeps
 * no timeline, so speedscope's "Time Order" view shows the paths one after the other, not as
 * they happened; its "Left Heavy" and "Sandwich" views are exact. Written as a stream, not
 * through json-c: a large profile would be a large tree of objects. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include "formats/callpaths.h"

static void put_json_string(struct atomicfile *f, const char *s)
{
    atomicfile_putc(f, '"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            atomicfile_printf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            atomicfile_printf(f, "\\u%04x", (unsigned)*s);
        else
            atomicfile_putc(f, *s);
    }
    atomicfile_putc(f, '"');
}

static int cmp_thread(const void *a, const void *b, void *ctx)
{
    const struct callpaths *c = ctx;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    if (c->thread[x] != c->thread[y])
        return c->thread[x] < c->thread[y] ? -1 : 1;
    return (x > y) - (x < y);
}

static void put_frames(struct atomicfile *f, const struct callpaths *c, uint32_t *index)
{
    const struct profile *p = c->p;
    uint32_t next = 0;
    size_t i;

    atomicfile_printf(f, "\"shared\":{\"frames\":[");
    for (i = 0; i < p->nfunc; i++) {
        const struct profile_func *fn = &p->func[i];
        if (!c->label[i])
            continue;
        index[i] = next;
        atomicfile_printf(f, "%s{\"name\":", next++ ? ",\n" : "\n");
        put_json_string(f, c->label[i]);
        if (fn->file || fn->module != p->s_unknown) {
            atomicfile_printf(f, ",\"file\":");
            put_json_string(f, profile_func_location(p, (uint32_t)i));
        }
        if (fn->file && fn->func_line > 0)
            atomicfile_printf(f, ",\"line\":%d", fn->func_line);
        atomicfile_putc(f, '}');
    }
    atomicfile_printf(f, "]},\n");
}

/* One thread's profile: the paths nodes[0..n) (with samples ending there). */
static void put_profile(struct atomicfile *f, const struct callpaths *c, const uint32_t *index,
                        const uint32_t *nodes, size_t n)
{
    uint32_t frames[CALLPATHS_MAX_FRAMES];
    uint64_t total = 0;
    size_t i, k;

    for (i = 0; i < n; i++)
        total += c->self_ns[nodes[i]];
    atomicfile_printf(f, "{\"type\":\"sampled\",\"name\":");
    put_json_string(f, c->p->str[c->thread[nodes[0]]]);
    atomicfile_printf(
        f, ",\"unit\":\"nanoseconds\",\"startValue\":0,\"endValue\":%" PRIu64 ",\n\"samples\":[",
        total);
    for (i = 0; i < n; i++) {
        k = callpaths_frames(c, nodes[i], frames);
        atomicfile_printf(f, "%s[", i ? ",\n" : "\n");
        while (k-- > 0)
            atomicfile_printf(f, "%" PRIu32 "%s", index[frames[k]], k ? "," : "");
        atomicfile_putc(f, ']');
    }
    atomicfile_printf(f, "],\n\"weights\":[");
    for (i = 0; i < n; i++)
        atomicfile_printf(f, "%s%" PRIu64, i ? "," : "", c->self_ns[nodes[i]]);
    atomicfile_printf(f, "]}");
}

int profile_write_speedscope(const struct profile *p, const char *path, const char *title,
                             struct error *err)
{
    struct callpaths c;
    struct atomicfile *f = NULL;
    uint32_t *index = NULL, *nodes = NULL;
    size_t n, count = 0, i, j, profiles = 0;
    int r;

    error_clear(err);
    r = callpaths_init(&c, p);
    if (r < 0)
        return error_fill(err, r);
    r = -ENOMEM;
    index = calloc(p->nfunc ? p->nfunc : 1, sizeof(*index));
    nodes = malloc((p->nnode ? p->nnode : 1) * sizeof(*nodes));
    if (!index || !nodes)
        goto out;
    for (n = 0; n < p->nnode; n++)
        if (c.self_samples[n])
            nodes[count++] = (uint32_t)n;
    qsort_r(nodes, count, sizeof(*nodes), cmp_thread, &c);
    r = atomicfile_open(path, &f);
    if (r < 0)
        goto out;
    atomicfile_printf(f, "{\"$schema\":\"https://www.speedscope.app/file-format-schema.json\",\n"
                         "\"exporter\":\"profiler-agent\",\"name\":");
    put_json_string(f, title ? title : "CPU profile");
    atomicfile_printf(f, ",\"activeProfileIndex\":0,\n");
    put_frames(f, &c, index);
    atomicfile_printf(f, "\"profiles\":[");
    for (i = 0; i < count; i = j) {
        for (j = i + 1; j < count && c.thread[nodes[j]] == c.thread[nodes[i]]; j++)
            ;
        atomicfile_printf(f, "%s", profiles++ ? ",\n" : "\n");
        put_profile(f, &c, index, nodes + i, j - i);
    }
    atomicfile_printf(f, "]}\n");
    r = atomicfile_commit(f);
    f = NULL;
out:
    error_fill(err, r);
    atomicfile_abort(f);
    callpaths_destroy(&c);
    free(index);
    free(nodes);
    return r;
}
