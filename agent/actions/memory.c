/* The `memory` action: an allocation profile of the target for `seconds`, written as
 * heap_profile.T.hpy (guppy's stat dump) and massif.out.T in output_dir, with a summary of what
 * was allocated and what is still live, by site. On a Python target (python_exec on), at the end
 * the agent's pyscripts/heap.py counts the Python heap by kind from inside, as guppy's
 * hpy().heap() partitions it: that goes to heap_profile.T.hpy, what a Home Assistant user opens
 * with guppy, and the native sites to heap_native.T.hpy. One allocation profile per target at a
 * time; progress about once a second; a clean stop of the agent ends the run early with what it
 * has, and the hooks are taken out of the target on every path. The ring the hooks keep mapped
 * after a run is unmapped a little later (memrelease.h). Not the hooks, the writers or the
 * counting (engine/memory/, engine/formats/, the script). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "actions.h"
#include "claims.h"
#include "clock.h"
#include "formats/hpy.h"
#include "inside.h"
#include "memrelease.h"
#include "memory/memprof.h"
#include "run.h"
#include "unwinders.h"

#define TOP_SITES 5
#define TOP_KINDS 5
#define PY_MAX_OBJECTS 20000000 /* objects heap.py counts before it stops */
#define PY_MAX_KINDS 10000      /* rows it answers with; the rest add up to one more */
#define PY_BUDGET_MAX_S 5.0     /* the most it may hold the target's interpreter */
#define PY_TRACE_FRAMES 16      /* frames tracemalloc keeps per allocation */
#define PY_TRACE_SITES 20       /* tracebacks in the answer, the largest */
#define PY_GUARD_MARGIN_S 10.0  /* after the run's end, the guard stops a trace left on */
#define POLL_MS 100
#define CMDLINE_MAX 1024

#ifndef PROFILER_AGENT_LIBDIR
#define PROFILER_AGENT_LIBDIR "/usr/lib/profiler-agent"
#endif

static struct claims claims = CLAIMS_INIT("an allocation profile");

int action_memory_admit(struct run *run)
{
    int r = claims_take(&claims, run);

    if (r == 0)
        memrelease_cancel(&run->target);
    return r;
}

void action_memory_release(struct run *run)
{
    claims_drop(&claims, run);
}

/* The hook library: beside the agent's executable (a build tree), in ../lib/profiler-agent
 * from it (an installed tree unpacked anywhere), else where it was installed. */
static int hook_library(char *buf, size_t len)
{
    static const char *const rel[] = {"", "/../lib/profiler-agent"};

    return run_shipped_file(MEMPROF_HOOK_LIB, rel, sizeof(rel) / sizeof(rel[0]),
                            PROFILER_AGENT_LIBDIR, buf, len);
}

/* The target's command line with spaces between arguments, for massif's `cmd:` line. */
static void read_cmdline(pid_t pid, char *buf, size_t len)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    FILE *f = fopen(path, "re");
    size_t n = 0;

    buf[0] = '\0';
    if (!f)
        return;
    n = fread(buf, 1, len - 1, f);
    fclose(f);
    for (size_t i = 0; i < n; i++)
        if (buf[i] == '\0' || buf[i] == '\n')
            buf[i] = ' ';
    while (n > 0 && buf[n - 1] == ' ')
        n--;
    buf[n] = '\0';
}

static void progress(struct run *run, const struct memprof_stats *st, double seconds)
{
    struct json_object *o = json_object_new_object();

    json_object_object_add(o, "run_id", json_object_new_int64(run->id));
    if (run->has_request_id)
        json_object_object_add(
            o, "request_id", json_object_new_string_len(run->request_id, (int)run->request_id_len));
    json_object_object_add(o, "action", json_object_new_string(run->action_name));
    json_object_object_add(o, "elapsed", run_json_decimal((double)st->elapsed_ms / 1000.0, 3));
    json_object_object_add(o, "seconds", run_json_decimal(seconds, 3));
    json_object_object_add(o, "allocations", json_object_new_int64((int64_t)st->allocs));
    json_object_object_add(o, "live_bytes", json_object_new_int64((int64_t)st->live_bytes));
    run_progress(run, json_object_to_json_string_ext(o, RUN_JSON_FLAGS));
    json_object_put(o);
}

static void add_summary(struct run *run, struct memprof *m, const struct memprof_stats *st,
                        uint64_t sample_bytes)
{
    struct json_object *s = run->summary, *top = json_object_new_array();
    struct hpy_row *rows = NULL;
    size_t n = 0;

    json_object_object_add(s, "method", json_object_new_string(st->method));
    json_object_object_add(s, "seconds", run_json_decimal((double)st->elapsed_ms / 1000.0, 3));
    json_object_object_add(s, "sample_bytes", json_object_new_int64((int64_t)sample_bytes));
    json_object_object_add(s, "allocations", json_object_new_int64((int64_t)st->allocs));
    json_object_object_add(s, "frees", json_object_new_int64((int64_t)st->frees));
    json_object_object_add(s, "allocated_bytes", json_object_new_int64((int64_t)st->alloc_bytes));
    json_object_object_add(s, "live_bytes", json_object_new_int64((int64_t)st->live_bytes));
    json_object_object_add(s, "live_blocks", json_object_new_int64((int64_t)st->live_blocks));
    json_object_object_add(s, "peak_bytes", json_object_new_int64((int64_t)st->peak_bytes));
    json_object_object_add(s, "peak_seconds", run_json_decimal((double)st->peak_ms / 1000.0, 3));
    json_object_object_add(s, "lost", json_object_new_int64((int64_t)st->lost));
    json_object_object_add(s, "sites", json_object_new_int64((int64_t)st->sites));
    /* The hpy file's rows: the summary never groups sites otherwise than the file. */
    if (memprof_rows(m, &rows, &n, NULL) < 0)
        n = 0;
    for (size_t i = 0; i < n && i < TOP_SITES; i++) {
        struct json_object *o = json_object_new_object();

        json_object_object_add(o, "site", json_object_new_string(rows[i].kind));
        json_object_object_add(o, "live_bytes", json_object_new_int64((int64_t)rows[i].size));
        json_object_object_add(o, "live_blocks", json_object_new_int64((int64_t)rows[i].count));
        json_object_array_add(top, o);
    }
    hpy_rows_free(rows, n);
    json_object_object_add(s, "top", top);
}

static void add_warnings(struct run *run, const struct memprof_stats *st, bool cancelled,
                         uint64_t sample_bytes)
{
    if (st->fallback.code)
        run_warn(run,
                 "allocation hooks could not be injected (%s); uprobes were used instead, "
                 "which cost the target about 3-4 us per allocation and free during the run",
                 st->fallback.reason[0] ? st->fallback.reason : strerror(-st->fallback.code));
    if (st->target_exited)
        run_warn(run, "the target exited after %.1f s; the profile covers that time",
                 (double)st->elapsed_ms / 1000.0);
    if (cancelled)
        run_warn(run, "the agent was stopped after %.1f s; the profile covers that time",
                 (double)st->elapsed_ms / 1000.0);
    if (st->silent_hooks[0])
        run_warn(run, "%s", st->silent_hooks);
    if (st->hooks_abandoned)
        run_warn(run, "the hooks removed themselves early because the agent did not drain "
                      "them in time; later allocations are missing");
    if (st->lost)
        run_warn(run,
                 "%llu allocations were not recorded (no room in the shared ring or no "
                 "stack slot left)",
                 (unsigned long long)st->lost);
    if (st->untracked)
        run_warn(run, "%llu blocks were not tracked: more than %u were live at once",
                 (unsigned long long)st->untracked, MEMPROF_MAX_BLOCKS);
    if (sample_bytes)
        run_warn(run,
                 "sampled one allocation per %llu bytes on average: sizes and counts are "
                 "estimates",
                 (unsigned long long)sample_bytes);
}

/* The Python heap heap.py answered with: its rows (kinds point into answer). */
struct py_heap {
    struct json_object *answer;
    struct hpy_kind_row *rows;
    size_t nrows;
};

static int write_files(struct run *run, struct memprof *m, const struct py_heap *py)
{
    char dir[PATH_MAX], path[PATH_MAX + 64], cmd[CMDLINE_MAX];
    long long t = (long long)run->started_us;
    double timemade = (double)run->started_us / 1e6;
    struct error e;
    int r;

    r = run_output_dir(run, dir);
    if (r < 0)
        return r;
    snprintf(path, sizeof(path), "%s/heap_profile.%lld.hpy", dir, t);
    if (py->answer)
        r = hpy_write_kinds(path, py->rows, py->nrows, HPY_KINDHEADER_CLASS, timemade, &e);
    else
        r = memprof_write_hpy(m, path, timemade, &e);
    if (r < 0)
        goto fail;
    json_object_array_add(run->files, json_object_new_string(path));
    if (py->answer) {
        snprintf(path, sizeof(path), "%s/heap_native.%lld.hpy", dir, t);
        r = memprof_write_hpy(m, path, timemade, &e);
        if (r < 0)
            goto fail;
        json_object_array_add(run->files, json_object_new_string(path));
    }
    read_cmdline(run->target.pid, cmd, sizeof(cmd));
    if (!cmd[0])
        snprintf(cmd, sizeof(cmd), "%s (pid %d)", run->target.name, (int)run->target.pid);
    snprintf(path, sizeof(path), "%s/massif.out.%lld", dir, t);
    r = memprof_write_massif(m, path, cmd, &e);
    if (r < 0)
        goto fail;
    json_object_array_add(run->files, json_object_new_string(path));
    return 0;
fail:
    /* A file the user asked for, not the process, failed: said as such, not through
     * run_engine_fail_error's words about the target. */
    return run_fail(run, "cannot write %s: %s", path, e.reason[0] ? e.reason : strerror(-e.code));
}

/* The rows of heap.py's answer: ["KIND", COUNT, SIZE] each; others are left out. */
static int py_rows(struct py_heap *py)
{
    struct json_object *kinds = NULL;

    json_object_object_get_ex(py->answer, "kinds", &kinds);
    size_t n = json_object_is_type(kinds, json_type_array) ? json_object_array_length(kinds) : 0;
    if (n > PY_MAX_KINDS + 1)
        n = PY_MAX_KINDS + 1;
    py->rows = calloc(n ? n : 1, sizeof(*py->rows));
    if (!py->rows)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        struct json_object *k = json_object_array_get_idx(kinds, i);
        if (!json_object_is_type(k, json_type_array) || json_object_array_length(k) != 3)
            continue;
        struct json_object *name = json_object_array_get_idx(k, 0),
                           *count = json_object_array_get_idx(k, 1),
                           *size = json_object_array_get_idx(k, 2);
        if (!json_object_is_type(name, json_type_string) ||
            !json_object_is_type(count, json_type_int) ||
            !json_object_is_type(size, json_type_int) || json_object_get_int64(count) < 0 ||
            json_object_get_int64(size) < 0)
            continue;
        py->rows[py->nrows++] = (struct hpy_kind_row){json_object_get_string(name),
                                                      (uint64_t)json_object_get_int64(count),
                                                      (uint64_t)json_object_get_int64(size)};
    }
    return 0;
}

/* Moves what inside_run put in the summary (python, method, thread, wait_ms, held_ms) into o:
 * the allocation profile has a `method` of its own, and a run asks the target more than once. */
static void move_inside(struct run *run, struct json_object *o)
{
    static const char *const moved[] = {"python", "method", "thread", "wait_ms", "held_ms"};
    struct json_object *v;

    for (size_t i = 0; i < sizeof(moved) / sizeof(moved[0]); i++)
        if (json_object_object_get_ex(run->summary, moved[i], &v)) {
            json_object_object_add(o, moved[i], json_object_get(v));
            json_object_object_del(run->summary, moved[i]);
        }
}

/* summary.python_heap: what inside_run put in the summary (moved there, as the allocation
 * profile has a `method` of its own), the totals and the largest kinds. */
static void py_summary(struct run *run, const struct py_heap *py)
{
    struct json_object *s = run->summary, *o = json_object_new_object(), *v,
                       *top = json_object_new_array();

    move_inside(run, o);
    static const char *const totals[] = {"objects", "size"};
    for (size_t i = 0; i < sizeof(totals) / sizeof(totals[0]); i++)
        if (json_object_object_get_ex(py->answer, totals[i], &v))
            json_object_object_add(o, totals[i], json_object_new_int64(json_object_get_int64(v)));
    json_object_object_add(o, "kinds", json_object_new_uint64(py->nrows));
    /* heap.py lists them largest first. */
    for (size_t i = 0; i < py->nrows && i < TOP_KINDS; i++) {
        struct json_object *k = json_object_new_object();

        json_object_object_add(k, "kind", json_object_new_string(py->rows[i].kind));
        json_object_object_add(k, "count", json_object_new_uint64(py->rows[i].count));
        json_object_object_add(k, "size", json_object_new_uint64(py->rows[i].size));
        json_object_array_add(top, k);
    }
    json_object_object_add(o, "top", top);
    json_object_object_add(s, "python_heap", o);
}

/* tracemalloc over the run (pyscripts/tracemalloc.py): on when the target runs it, started when
 * the run started it (else the target's own trace, read and left on). */
struct py_trace {
    bool on, started;
    double start_held_ms;
};

/* 1: tracing; 0: not (not Python, python_exec off, tracemalloc off; a warning says why when
 * the target is Python); negative: the run failed. */
static int trace_start(struct run *run, double seconds, struct py_trace *t)
{
    struct json_object *a = NULL, *v, *junk = json_object_new_object();
    char input[128];
    double guard = seconds + 2.0 * run->host->config->python_timeout + PY_GUARD_MARGIN_S;

    snprintf(input, sizeof(input), "{\"op\": \"start\", \"frames\": %d, \"guard_s\": %.1f}",
             PY_TRACE_FRAMES, guard);
    int r = inside_run(run, "tracemalloc", input,
                       "the run has no Python allocations, only the native sites", &a);
    move_inside(run, junk);
    if (json_object_object_get_ex(junk, "held_ms", &v))
        t->start_held_ms = json_object_get_double(v);
    json_object_put(junk);
    if (r <= 0)
        return r;
    t->on = true;
    t->started = json_object_object_get_ex(a, "started", &v) && json_object_get_boolean(v);
    json_object_put(a);
    return 1;
}

/* tracemalloc's size form (tracemalloc._format_size): "12.3 KiB", "512 B". */
static void trace_size(uint64_t size, char *buf, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)size;

    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (v < 100.0 && i > 0) {
            snprintf(buf, len, "%.1f %s", v, units[i]);
            return;
        }
        if (v < 10.0 * 1024.0 || i == 4) {
            snprintf(buf, len, "%.0f %s", v, units[i]);
            return;
        }
        v /= 1024.0;
    }
}

/* One traceback of the answer as tracemalloc prints a Statistic and its Traceback.format():
 * the allocating line first, then the frames, outermost first. */
static void trace_record(struct run *run, struct json_object *site)
{
    struct json_object *tb = NULL, *v;
    char size[32], avg[32];
    uint64_t bytes = 0, count = 0;

    if (json_object_object_get_ex(site, "size", &v))
        bytes = (uint64_t)json_object_get_int64(v);
    if (json_object_object_get_ex(site, "count", &v))
        count = (uint64_t)json_object_get_int64(v);
    json_object_object_get_ex(site, "traceback", &tb);
    size_t n = json_object_is_type(tb, json_type_array) ? json_object_array_length(tb) : 0;
    if (n == 0 || count == 0)
        return;
    struct json_object *top = json_object_array_get_idx(tb, 0);
    trace_size(bytes, size, sizeof(size));
    trace_size(bytes / count, avg, sizeof(avg));
    run_record(run, "%s:%d: size=%s, count=%llu, average=%s",
               json_object_get_string(json_object_array_get_idx(top, 0)),
               json_object_get_int(json_object_array_get_idx(top, 1)), size,
               (unsigned long long)count, avg);
    for (size_t i = n; i-- > 0;) {
        struct json_object *f = json_object_array_get_idx(tb, i);

        run_record(run, "  File \"%s\", line %d",
                   json_object_get_string(json_object_array_get_idx(f, 0)),
                   json_object_get_int(json_object_array_get_idx(f, 1)));
    }
}

/* Reads what tracemalloc saw and stops the trace the run started: summary.python_allocations
 * and one record per traceback, the largest first. 0, or the run's failure. */
static int trace_stop(struct run *run, const struct py_trace *t)
{
    struct json_object *a = NULL, *o = json_object_new_object(), *v, *top = NULL;
    char input[128];
    double budget = run->host->config->python_timeout / 2.0;

    if (budget > PY_BUDGET_MAX_S)
        budget = PY_BUDGET_MAX_S;
    snprintf(input, sizeof(input),
             "{\"op\": \"stop\", \"started\": %s, \"max_sites\": %d, \"budget_s\": %.2f}",
             t->started ? "true" : "false", PY_TRACE_SITES, budget);
    int r = inside_run(run, "tracemalloc", input,
                       "the run has no Python allocations, only the native sites", &a);
    move_inside(run, o);
    if (r <= 0) {
        json_object_put(o);
        return r;
    }
    if (json_object_object_get_ex(a, "tracing", &v) && !json_object_get_boolean(v)) {
        run_warn(run, "tracemalloc was stopped inside the target during the run; the run has no "
                      "Python allocations");
        json_object_put(o);
        json_object_put(a);
        return 0;
    }
    json_object_object_add(o, "start_held_ms", run_json_decimal(t->start_held_ms, 3));
    json_object_object_add(o, "started_by_run", json_object_new_boolean(t->started));
    static const char *const keys[] = {"current", "peak", "sites"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (json_object_object_get_ex(a, keys[i], &v))
            json_object_object_add(o, keys[i], json_object_new_int64(json_object_get_int64(v)));
    if (json_object_object_get_ex(a, "top", &top) && json_object_is_type(top, json_type_array)) {
        size_t n = json_object_array_length(top);

        run_record(run, "Python allocations over the run still live at its end (tracemalloc, "
                        "by traceback, the largest first):");
        for (size_t i = 0; i < n && i < PY_TRACE_SITES; i++)
            trace_record(run, json_object_array_get_idx(top, i));
        json_object_object_add(o, "top", json_object_get(top));
    }
    if (!t->started)
        run_warn(run, "the target was tracing with tracemalloc already: its own trace was read "
                      "and left on");
    if (json_object_object_get_ex(a, "stopped", &v) && v)
        run_warn(run, "reading tracemalloc's traces inside the target %s",
                 json_object_get_string(v));
    json_object_object_add(run->summary, "python_allocations", o);
    json_object_put(a);
    return 0;
}

/* The Python heap from inside the target: 1 with py filled, 0 when the target cannot answer (a
 * warning says why when it is Python), or the run's failure. */
static int py_heap(struct run *run, struct py_heap *py)
{
    char input[128];
    struct json_object *v;
    double budget = run->host->config->python_timeout / 2.0;

    if (budget > PY_BUDGET_MAX_S)
        budget = PY_BUDGET_MAX_S;
    snprintf(input, sizeof(input), "{\"max_objects\": %d, \"max_kinds\": %d, \"budget_s\": %.2f}",
             PY_MAX_OBJECTS, PY_MAX_KINDS, budget);
    int r = inside_run(run, "heap", input,
                       "heap_profile.T.hpy holds the native allocation sites instead", &py->answer);
    if (r <= 0)
        return r;
    if (py_rows(py) < 0) {
        json_object_put(py->answer);
        py->answer = NULL;
        return run_fail(run, "out of memory for the Python heap's rows");
    }
    py_summary(run, py);
    if (json_object_object_get_ex(py->answer, "stopped", &v) && v)
        run_warn(run,
                 "the Python heap count inside the target %s; heap_profile.T.hpy has what "
                 "was counted",
                 json_object_get_string(v));
    return 1;
}

static int allocation_profile(struct run *run)
{
    struct memprof_options o = {0};
    struct memprof_stats st;
    struct memprof *m = NULL;
    struct json_object *v;
    struct unwinder *u;
    struct error e;
    char lib[PATH_MAX];
    int r;

    json_object_object_get_ex(run->params, "seconds", &v);
    o.seconds = json_object_get_double(v);
    json_object_object_get_ex(run->params, "sample_bytes", &v);
    o.sample_bytes = (uint64_t)json_object_get_int64(v);
    if (hook_library(lib, sizeof(lib)) < 0)
        return run_fail(run,
                        "the allocation hook library %s is not installed (looked beside "
                        "the agent and in %s)",
                        MEMPROF_HOOK_LIB, PROFILER_AGENT_LIBDIR);
    o.hook_path = lib;
    r = unwinders_get(&run->target, UNWINDERS_MEMORY, &u);
    if (r < 0)
        return run_engine_fail(run, "allocation profile", r);
    r = memprof_open(run->target.pid, unwinders_stacks(u), &o, &m, &e);
    if (r < 0) {
        unwinders_put(u);
        return run_engine_fail_error(run, "allocation profile", &e);
    }
    /* After the hooks are in: a failed start leaves nothing running in the target to undo. */
    struct py_trace trace = {0};
    json_object_object_get_ex(run->params, "tracemalloc", &v);
    int tr = json_object_get_boolean(v) ? trace_start(run, o.seconds, &trace) : 0;
    int64_t next_progress = clock_monotonic_us() + 1000000;
    bool cancelled = false;
    for (; tr >= 0;) {
        memprof_get_stats(m, &st);
        if ((double)st.elapsed_ms >= o.seconds * 1000.0)
            break;
        if (atomic_load(&run->cancel)) {
            cancelled = true;
            break;
        }
        double left_ms = o.seconds * 1000.0 - (double)st.elapsed_ms;
        r = memprof_poll(m, left_ms < POLL_MS ? (int)left_ms + 1 : POLL_MS, &e);
        if (r < 0)
            break;
        if (clock_monotonic_us() >= next_progress) {
            memprof_get_stats(m, &st);
            progress(run, &st, o.seconds);
            next_progress += 1000000;
        }
    }
    struct error fe;
    if (memprof_finish(m, &fe) < 0)
        run_warn(run,
                 "the hooks could not be removed by a call into the target (%s); they "
                 "remove themselves at the target's next allocation",
                 fe.reason[0] ? fe.reason : strerror(-fe.code));
    memprof_get_stats(m, &st);
    /* After the hooks are out, so that the count's own allocations are not in the profile;
     * its `method` in the summary is moved aside before the profile's own is added. */
    struct py_heap py = {0};
    int pr = tr < 0 ? tr : 0;
    /* Stopped whatever happened, cancelled or not: a trace left on slows every allocation. */
    if (trace.on && !st.target_exited)
        pr = trace_stop(run, &trace);
    if (r >= 0 && pr >= 0 && !cancelled && !st.target_exited)
        pr = py_heap(run, &py);
    add_warnings(run, &st, cancelled, o.sample_bytes);
    add_summary(run, m, &st, o.sample_bytes);
    if (r < 0 && r != -ESRCH)
        r = run_engine_fail_error(run, "allocation profile", &e);
    else
        r = write_files(run, m, &py);
    json_object_put(py.answer);
    free(py.rows);
    memprof_free(m);
    unwinders_put(u);
    /* A failed count inside (a traceback, say) fails the run, with the native files written. */
    return pr < 0 ? pr : r;
}

int action_memory(struct run *run)
{
    memrelease_wait(&run->target);
    int r = allocation_profile(run);
    memrelease_schedule(&run->target);
    return r;
}
