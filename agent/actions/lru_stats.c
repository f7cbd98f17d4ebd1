/* The `lru_stats` action. On a Python target (and python_exec on), the target's own caches from
 * inside: the agent's script pyscripts/lru_stats.py runs in it at a safe point
 * (engine/python/pyexec.h) and reports every functools.lru_cache wrapper and lru-dict LRU, one
 * record each as Home Assistant's Profiler logs them (`Cache stats for lru_cache <function f at
 * 0x...> at FILE: CacheInfo(...)`); the agent's own caches go to the summary. When the target
 * cannot run it (no safe point in python_timeout, remote debugging disabled, ...), and on any
 * other target, the agent's own caches as records (engine/os/cachestat.h), with a warning saying
 * why in the first case. Not the mechanism (pyexec) nor the search (the script). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "actions.h"
#include "os/cachestat.h"
#include "inside.h"
#include "run.h"

#define MAX_OBJECTS 20000000 /* objects the script looks at before it stops */
#define MAX_CACHES 10000     /* caches it reports */
#define BUDGET_MAX_S 2.0     /* the most it may hold the target's interpreter */
#define NAME_MAX_BYTES 512   /* of a name or file from the target, in a record */

static void agent_cache_record(const struct cachestat *c, void *userdata)
{
    struct run *run = userdata;
    char maxsize[32];

    if (c->maxsize)
        snprintf(maxsize, sizeof(maxsize), "%lu", c->maxsize);
    else
        snprintf(maxsize, sizeof(maxsize), "None");
    run_record(run, "Cache stats for %s: CacheInfo(hits=%lu, misses=%lu, maxsize=%s, currsize=%lu)",
               c->name, atomic_load(&c->hits), atomic_load(&c->misses), maxsize,
               atomic_load(&c->currsize));
}

static void agent_cache_summary(const struct cachestat *c, void *userdata)
{
    struct json_object *o = json_object_new_object();

    json_object_object_add(o, "hits", json_object_new_uint64(atomic_load(&c->hits)));
    json_object_object_add(o, "misses", json_object_new_uint64(atomic_load(&c->misses)));
    json_object_object_add(o, "maxsize", c->maxsize ? json_object_new_uint64(c->maxsize) : NULL);
    json_object_object_add(o, "currsize", json_object_new_uint64(atomic_load(&c->currsize)));
    json_object_object_add(userdata, c->name, o);
}

/* A string from the target for a record: cut, and no control characters (no forged lines). */
static const char *clean(struct json_object *o, const char *none, char *buf, size_t len)
{
    const char *s = json_object_is_type(o, json_type_string) ? json_object_get_string(o) : NULL;
    if (!s)
        return none;
    snprintf(buf, len, "%s", s);
    for (char *p = buf; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return buf;
}

static long long field(struct json_object *c, const char *key)
{
    struct json_object *v;
    return json_object_object_get_ex(c, key, &v) ? json_object_get_int64(v) : 0;
}

static void cache_record(struct run *run, struct json_object *c)
{
    struct json_object *kind, *name, *file, *maxsize;
    char nbuf[NAME_MAX_BYTES], fbuf[NAME_MAX_BYTES], max[32] = "None";

    json_object_object_get_ex(c, "kind", &kind);
    json_object_object_get_ex(c, "name", &name);
    json_object_object_get_ex(c, "file", &file);
    const char *n = clean(name, "?", nbuf, sizeof(nbuf)),
               *f = clean(file, "unknown", fbuf, sizeof(fbuf));
    if (json_object_object_get_ex(c, "maxsize", &maxsize) && maxsize)
        snprintf(max, sizeof(max), "%lld", (long long)json_object_get_int64(maxsize));
    if (kind && !strcmp(json_object_get_string(kind), "LRU"))
        run_record(run, "Cache stats for LRU %s at %s: (%lld, %lld)", n, f, field(c, "hits"),
                   field(c, "misses"));
    else
        run_record(run,
                   "Cache stats for lru_cache %s at %s: CacheInfo(hits=%lld, misses=%lld, "
                   "maxsize=%s, currsize=%lld)",
                   n, f, field(c, "hits"), field(c, "misses"), max, field(c, "currsize"));
}

/* A record per cache the script found, and the summary. */
static void report(struct run *run, struct json_object *a)
{
    struct json_object *v, *caches = NULL;

    json_object_object_get_ex(a, "caches", &caches);
    size_t n = json_object_is_type(caches, json_type_array) ? json_object_array_length(caches) : 0;
    for (size_t i = 0; i < n && i < MAX_CACHES; i++)
        if (json_object_is_type(json_object_array_get_idx(caches, i), json_type_object))
            cache_record(run, json_object_array_get_idx(caches, i));
    json_object_object_add(run->summary, "caches", json_object_new_uint64(n));
    if (json_object_object_get_ex(a, "scanned", &v))
        json_object_object_add(run->summary, "objects_scanned",
                               json_object_new_int64(json_object_get_int64(v)));
    if (json_object_object_get_ex(a, "stopped", &v) && v)
        run_warn(run, "the search inside the target %s", json_object_get_string(v));
}

/* Runs the script in the target: 1 when it answered (records made), 0 when the agent's own
 * caches must stand in (a warning says why when the target is Python), or the run's failure. */
static int from_inside(struct run *run)
{
    struct json_object *a;
    char input[128];
    double budget = run->host->config->python_timeout / 4.0;

    if (budget > BUDGET_MAX_S)
        budget = BUDGET_MAX_S;
    snprintf(input, sizeof(input), "{\"max_objects\": %d, \"max_caches\": %d, \"budget_s\": %.2f}",
             MAX_OBJECTS, MAX_CACHES, budget);
    int r = inside_run(run, "lru_stats", input, "these are the agent's own caches", &a);
    if (r <= 0)
        return r;
    report(run, a);
    json_object_put(a);
    return 1;
}

int action_lru_stats(struct run *run)
{
    int r = from_inside(run);
    if (r < 0)
        return r;
    if (r == 0) {
        cachestat_foreach(agent_cache_record, run);
        return 0;
    }
    struct json_object *own = json_object_new_object();
    cachestat_foreach(agent_cache_summary, own);
    json_object_object_add(run->summary, "agent_caches", own);
    return 0;
}
