/* The `lru_stats` action. On a Python target (and python_exec on), the target's own caches from
 * inside: the agent's script pyscripts/lru_stats.py runs in it at a safe point
 * (engine/python/pyexec.h) and reports every functools.lru_cache wrapper and lru-dict LRU, one
 * record each as Home Assistant's Profiler logs them (`Cache stats for lru_cache <function f at
 * 0x...> at FILE: CacheInfo(...)`); the agent's own caches go to the summary. When the target
 * cannot run it (no safe point in python_timeout, remote debugging disabled, ...), and on any
 * other target, the agent's own caches as records (engine/os/cachestat.h), with a warning saying
 * why in the first case. Not the mechanism (pyexec) nor the search (the script). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "actions.h"
#include "os/cachestat.h"
#include "python/pyexec.h"
#include "run.h"

#ifndef PROFILER_AGENT_PYSCRIPTDIR
#define PROFILER_AGENT_PYSCRIPTDIR "/usr/share/profiler-agent/pyscripts"
#endif

#define SCRIPT "lru_stats.py"
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

/* The script: beside the agent's executable (a build tree), in ../share/profiler-agent from it
 * (an installed tree unpacked anywhere), else where it was installed; as the schemas are found. */
static int script_path(char *buf, size_t len)
{
    static const char *const rel[] = {"/../pyscripts", "/../share/profiler-agent/pyscripts"};

    return run_shipped_file(SCRIPT, rel, sizeof(rel) / sizeof(rel[0]), PROFILER_AGENT_PYSCRIPTDIR,
                            buf, len);
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

/* The script's answer: its error, or a record per cache and the summary. */
static int report(struct run *run, const struct pyexec_result *res)
{
    struct json_object *a = json_tokener_parse(res->output), *v, *caches = NULL;
    struct json_object *s = run->summary;
    char version[16];

    if (!json_object_is_type(a, json_type_object)) {
        json_object_put(a);
        return run_fail(run, "the lru_stats script inside the target gave no valid answer");
    }
    snprintf(version, sizeof(version), "3.%u", res->minor);
    json_object_object_add(s, "python", json_object_new_string(version));
    json_object_object_add(s, "method", json_object_new_string(res->method));
    json_object_object_add(s, "thread", json_object_new_int(res->tid));
    json_object_object_add(s, "wait_ms", run_json_decimal(res->wait_ms, 1));
    if (json_object_object_get_ex(a, "held_ms", &v))
        json_object_object_add(s, "held_ms", run_json_decimal(json_object_get_double(v), 3));
    if (json_object_object_get_ex(a, "error", &v)) {
        const char *tb = json_object_get_string(v);
        run_record(run, "lru_stats.py raised inside the target:\n%s", tb);
        run_fail(run, "the lru_stats script raised inside the target: %s", tb);
        json_object_put(a);
        return -EINVAL;
    }
    json_object_object_get_ex(a, "caches", &caches);
    size_t n = json_object_is_type(caches, json_type_array) ? json_object_array_length(caches) : 0;
    for (size_t i = 0; i < n && i < MAX_CACHES; i++)
        if (json_object_is_type(json_object_array_get_idx(caches, i), json_type_object))
            cache_record(run, json_object_array_get_idx(caches, i));
    json_object_object_add(s, "caches", json_object_new_uint64(n));
    if (json_object_object_get_ex(a, "scanned", &v))
        json_object_object_add(s, "objects_scanned",
                               json_object_new_int64(json_object_get_int64(v)));
    if (json_object_object_get_ex(a, "stopped", &v) && v)
        run_warn(run, "the search inside the target %s", json_object_get_string(v));
    json_object_put(a);
    return 0;
}

/* Runs the script in the target: 1 when it answered (records made), 0 when the agent's own
 * caches must stand in (a warning says why when the target is Python), or the run's failure. */
static int from_inside(struct run *run)
{
    const struct config *c = run->host->config;
    struct pyexec_result res = {0};
    struct error e;
    char script[PATH_MAX], input[128];

    if (!c->python_exec || !run->has_target || run->target.pid == getpid())
        return 0;
    double budget = c->python_timeout / 4.0;
    if (budget > BUDGET_MAX_S)
        budget = BUDGET_MAX_S;
    snprintf(input, sizeof(input), "{\"max_objects\": %d, \"max_caches\": %d, \"budget_s\": %.2f}",
             MAX_OBJECTS, MAX_CACHES, budget);
    struct pyexec_request req = {.input = input,
                                 .script = script,
                                 .timeout_ms = c->python_timeout * 1000,
                                 .cancel = &run->cancel};
    if (script_path(script, sizeof(script)) < 0) {
        run_warn(run,
                 "cannot answer from inside the target: %s is not installed (looked beside "
                 "the agent and in %s); these are the agent's own caches",
                 SCRIPT, PROFILER_AGENT_PYSCRIPTDIR);
        return 0;
    }
    int r = pyexec_run(run->target.pid, &req, &res, &e);
    if (r == -ENOENT)
        return 0; /* not a Python process */
    if (r == -ESRCH)
        return run_engine_fail_error(run, "lru_stats inside the target", &e);
    if (r < 0) {
        run_warn(run, "cannot answer from inside the target: %s; these are the agent's own caches",
                 e.reason[0] ? e.reason : strerror(-r));
        return 0;
    }
    r = report(run, &res);
    free(res.output);
    return r < 0 ? r : 1;
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
