/* `start`'s compare_to (see start_compare.h): every CPU profile run keeps its folded stacks in
 * the run store, bounded, so that a later run can be drawn against it as a differential flame
 * graph without the user having asked for the collapsed file then. Not the graph itself
 * (engine/formats/diffgraph.c), nor the store's table (store.c). */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats/diffgraph.h"
#include "formats/profile.h"
#include "run.h"
#include "stall.h"
#include "start_compare.h"
#include "store.h"

/* What a run keeps: its heaviest stacks up to these, the rest as one "[stacks not kept]" line.
 * A minute of a busy Python service has a few thousand distinct stacks of a KiB or two (deep
 * Python stacks with their native frames); zlib takes the text to a fiftieth or less, as frames
 * repeat line after line (8 MiB of 40-frame stacks: 100 KiB, in 35 ms). */
#define KEEP_MAX_STACKS 20000
#define KEEP_MAX_BYTES ((size_t)8 << 20)
#define TOP_CHANGES 5

/* The run compare_to names, as the store has it. */
struct earlier {
    int64_t id;
    bool found;
    char action[64], status[16], started[40], target[TARGET_SPEC_MAX];
    char error[RUN_ERROR_MAX];
    struct store_stacks stacks;
};

static int take_row(const struct store_row *row, void *userdata)
{
    struct earlier *e = userdata;

    e->found = true;
    snprintf(e->action, sizeof(e->action), "%s", row->action ? row->action : "?");
    snprintf(e->status, sizeof(e->status), "%s", row->status ? row->status : "?");
    snprintf(e->started, sizeof(e->started), "%s", row->started ? row->started : "");
    snprintf(e->target, sizeof(e->target), "%s", row->target_spec ? row->target_spec : "");
    snprintf(e->error, sizeof(e->error), "%s", row->error ? row->error : "no reason recorded");
    return 0;
}

static int db_fail(struct run *run)
{
    return run_fail(run, "cannot read the run database %s: %s", run->host->config->database,
                    store_errmsg(run->host->store));
}

/* The earlier run into *e, its stacks' text into *ret_text when not NULL; fails the run with
 * the reason it cannot be compared with. */
static int find_earlier(struct run *run, struct earlier *e, char **ret_text)
{
    struct store_query q = {.limit = 1};
    struct store *st = run->host->store;
    struct json_object *v;
    long long id;
    int r;

    memset(e, 0, sizeof(*e));
    json_object_object_get_ex(run->params, "compare_to", &v);
    e->id = id = json_object_get_int64(v);
    if (!st)
        return run_fail(run, "compare_to: there is no run database (`run` mode, or it could not "
                             "be opened at start: see the agent's log)");
    if (e->id == run->id)
        return run_fail(run, "compare_to: run %lld is this run; give the id of an earlier one", id);
    q.id = e->id;
    if (store_runs_list(st, &q, take_row, e) < 0)
        return db_fail(run);
    if (!e->found)
        return run_fail(run, "compare_to: there is no run %lld", id);
    if (strcmp(e->action, "start") != 0 && strcmp(e->action, STALL_RUN_ACTION) != 0)
        return run_fail(run,
                        "compare_to: run %lld is a `%s` run, not a CPU profile (`start`, or a "
                        "stall's)",
                        id, e->action);
    if (strcmp(e->status, "running") == 0)
        return run_fail(run,
                        "compare_to: run %lld is still running; compare with it once it "
                        "has finished",
                        id);
    if (strcmp(e->status, "error") == 0)
        return run_fail(run,
                        "compare_to: run %lld ended in error, without a profile to compare "
                        "with: %s",
                        id, e->error);
    r = store_stacks_get(st, e->id, KEEP_MAX_BYTES, ret_text, &e->stacks);
    if (r == -ENOENT && strcmp(e->status, "interrupted") == 0)
        return run_fail(run,
                        "compare_to: run %lld was interrupted before it had a profile to "
                        "compare with",
                        id);
    if (r == -ENOENT)
        return run_fail(run,
                        "compare_to: run %lld kept no stacks to compare with: it was recorded "
                        "by an agent older than compare_to, or its stacks were deleted to keep "
                        "the database small (the oldest runs' go first)",
                        id);
    if (r == -EFBIG)
        return run_fail(run,
                        "compare_to: the stacks kept for run %lld are larger than this agent "
                        "reads (%zu bytes)",
                        id, KEEP_MAX_BYTES);
    if (r == -EBADMSG)
        return run_fail(run,
                        "compare_to: the stacks kept for run %lld are damaged in the run "
                        "database",
                        id);
    if (r < 0)
        return db_fail(run);
    return 0;
}

int start_compare_check(struct run *run)
{
    struct earlier e;

    if (!json_object_object_get_ex(run->params, "compare_to", NULL))
        return 0;
    return find_earlier(run, &e, NULL);
}

/* The profile's mode, as the summary says it (a window's and a stall's are CPU time). */
static const char *mode_of(struct run *run)
{
    struct json_object *v;

    if (json_object_object_get_ex(run->summary, "mode", &v))
        return json_object_get_string(v);
    return "cpu";
}

/* Folds prof's stacks into *fo and keeps them with the run; says when they were cut. */
static int keep_stacks(struct run *run, const struct profile *prof, struct profile_folded *fo)
{
    struct store_stacks info = {0};
    struct error e;
    int r;

    r = profile_collapsed_text(prof, KEEP_MAX_STACKS, KEEP_MAX_BYTES, fo, &e);
    if (r < 0)
        return r;
    /* Said here, and warned of only where it matters: in a comparison (compare). */
    json_object_object_add(run->summary, "stacks", json_object_new_int64((int64_t)fo->stacks));
    json_object_object_add(run->summary, "stacks_kept", json_object_new_int64((int64_t)fo->kept));
    json_object_object_add(
        run->summary, "stacks_kept_percent",
        run_json_decimal(100.0 * (double)fo->kept_samples / (double)fo->samples, 2));
    if (!run->host->store || !run->id)
        return 0;
    snprintf(info.mode, sizeof(info.mode), "%s", mode_of(run));
    info.samples = fo->samples;
    info.stacks = fo->stacks;
    info.kept = fo->kept;
    info.len = fo->len;
    r = store_stacks_put(run->host->store, run->id, fo->text, &info);
    if (r < 0)
        run_warn(run, "its stacks are not kept for a later compare_to: %s",
                 r == -ENOENT                  ? "the run is no longer in the run database"
                 : r == -EFBIG || r == -ENOMEM ? strerror(-r)
                                               : store_errmsg(run->host->store));
    return 0;
}

static struct json_object *func_json(const struct diffgraph_func *f)
{
    struct json_object *o = json_object_new_object();

    json_object_object_add(o, "function", json_object_new_string(f->label));
    json_object_object_add(o, "module", f->module ? json_object_new_string(f->module) : NULL);
    json_object_object_add(o, "self_before", run_json_decimal(100 * f->self[DIFFGRAPH_BEFORE], 2));
    json_object_object_add(o, "self_after", run_json_decimal(100 * f->self[DIFFGRAPH_AFTER], 2));
    json_object_object_add(
        o, "self_delta",
        run_json_decimal(100 * (f->self[DIFFGRAPH_AFTER] - f->self[DIFFGRAPH_BEFORE]), 2));
    json_object_object_add(o, "total_before",
                           run_json_decimal(100 * f->total[DIFFGRAPH_BEFORE], 2));
    json_object_object_add(o, "total_after", run_json_decimal(100 * f->total[DIFFGRAPH_AFTER], 2));
    return o;
}

/* The functions that changed most in one way, as a list under key; how many changed so. */
static size_t add_changes(struct json_object *o, const char *key, const struct diffgraph *d,
                          enum diffgraph_change how, struct diffgraph_func *top)
{
    size_t total = diffgraph_top(d, how, top, TOP_CHANGES);
    struct json_object *list = json_object_new_array();

    for (size_t i = 0; i < total && i < TOP_CHANGES; i++)
        json_object_array_add(list, func_json(&top[i]));
    json_object_object_add(o, key, list);
    return total;
}

/* The summary's compare_to and the log record that says the same in a sentence. */
static void add_summary(struct run *run, const struct earlier *e, const struct diffgraph *d)
{
    struct diffgraph_func grew[TOP_CHANGES], shrank[TOP_CHANGES], gone[TOP_CHANGES];
    struct json_object *o = json_object_new_object();
    size_t ngrew, nshrank, ngone;
    char text[1024];
    int at;

    json_object_object_add(o, "run_id", json_object_new_int64(e->id));
    json_object_object_add(o, "action", json_object_new_string(e->action));
    json_object_object_add(o, "started", json_object_new_string(e->started));
    json_object_object_add(o, "target", e->target[0] ? json_object_new_string(e->target) : NULL);
    json_object_object_add(o, "mode", json_object_new_string(e->stacks.mode));
    json_object_object_add(o, "samples",
                           json_object_new_int64((int64_t)diffgraph_samples(d, DIFFGRAPH_BEFORE)));
    json_object_object_add(o, "stacks", json_object_new_int64((int64_t)e->stacks.stacks));
    json_object_object_add(o, "stacks_kept", json_object_new_int64((int64_t)e->stacks.kept));
    ngrew = add_changes(o, "grew", d, DIFFGRAPH_GREW, grew);
    nshrank = add_changes(o, "shrank", d, DIFFGRAPH_SHRANK, shrank);
    ngone = add_changes(o, "gone", d, DIFFGRAPH_GONE, gone);
    json_object_object_add(o, "grew_count", json_object_new_int64((int64_t)ngrew));
    json_object_object_add(o, "shrank_count", json_object_new_int64((int64_t)nshrank));
    json_object_object_add(o, "gone_count", json_object_new_int64((int64_t)ngone));
    json_object_object_add(run->summary, "compare_to", o);

    at = snprintf(text, sizeof(text), "Against run %lld (%" PRIu64 " samples, %" PRIu64 " here)",
                  (long long)e->id, diffgraph_samples(d, DIFFGRAPH_BEFORE),
                  diffgraph_samples(d, DIFFGRAPH_AFTER));
    if (ngrew && at < (int)sizeof(text))
        at += snprintf(text + at, sizeof(text) - (size_t)at,
                       ": %.200s grew most, %.2f%% -> %.2f%% of samples", grew[0].label,
                       100 * grew[0].self[DIFFGRAPH_BEFORE], 100 * grew[0].self[DIFFGRAPH_AFTER]);
    if (nshrank && at < (int)sizeof(text))
        at +=
            snprintf(text + at, sizeof(text) - (size_t)at,
                     "%s %.200s shrank most, %.2f%% -> %.2f%%", ngrew ? ";" : ":", shrank[0].label,
                     100 * shrank[0].self[DIFFGRAPH_BEFORE], 100 * shrank[0].self[DIFFGRAPH_AFTER]);
    if (ngone && at < (int)sizeof(text))
        snprintf(text + at, sizeof(text) - (size_t)at,
                 "%s %zu function(s) of run %lld are gone, the largest %.200s (%.2f%%)",
                 ngrew || nshrank ? ";" : ":", ngone, (long long)e->id, gone[0].label,
                 100 * gone[0].total[DIFFGRAPH_BEFORE]);
    run_record(run, "%s", text);
}

/* The two files against the earlier run, listed with the run's; fails the run with why not. */
static int compare(struct run *run, const struct profile *prof, const struct profile_folded *fo,
                   const char *dir)
{
    char path[PATH_MAX + 64], name[48], title[PROCFS_COMM_MAX + 64];
    long long t = (long long)run->started_us;
    struct diffgraph *d = NULL;
    struct earlier e;
    char *text = NULL;
    struct error err;
    int r;

    r = find_earlier(run, &e, &text);
    if (r < 0)
        return r;
    r = diffgraph_new(text, e.stacks.len, fo->text, fo->len, prof, &d, &err);
    free(text);
    if (r < 0)
        return run_fail(run, "compare_to: cannot compare with run %lld: %s", (long long)e.id,
                        err.reason[0] ? err.reason : strerror(-r));
    if (strcmp(e.stacks.mode, mode_of(run)) != 0)
        run_warn(run,
                 "run %lld is a profile of %s time and this one of %s time: their shares "
                 "measure different things",
                 (long long)e.id, e.stacks.mode, mode_of(run));
    if (e.stacks.kept < e.stacks.stacks)
        run_warn(run,
                 "run %lld kept only its %" PRIu64 " heaviest of %" PRIu64
                 " distinct stacks; the others are one \"[stacks not kept]\" frame here",
                 (long long)e.id, e.stacks.kept, e.stacks.stacks);
    if (fo->kept < fo->stacks)
        run_warn(run,
                 "this run's %zu heaviest of %zu distinct stacks (%.1f%% of its samples) are "
                 "compared; the others are one \"[stacks not kept]\" frame here",
                 fo->kept, fo->stacks, 100.0 * (double)fo->kept_samples / (double)fo->samples);
    snprintf(name, sizeof(name), "run %lld", (long long)e.id);
    snprintf(title, sizeof(title), "%s: run %lld to this run", run->target.name, (long long)e.id);
    snprintf(path, sizeof(path), "%s/flamegraph.%lld.diff.svg", dir, t);
    r = diffgraph_write_svg(d, path, title, name, &err);
    if (r == 0) {
        json_object_array_add(run->files, json_object_new_string(path));
        snprintf(path, sizeof(path), "%s/profile.%lld.diff.folded", dir, t);
        r = diffgraph_write_folded(d, path, &err);
    }
    if (r < 0) {
        r = run_fail(run, "cannot write %s: %s", path,
                     err.reason[0] ? err.reason : strerror(-err.code));
        goto out;
    }
    json_object_array_add(run->files, json_object_new_string(path));
    add_summary(run, &e, d);
out:
    diffgraph_free(d);
    return r;
}

int start_compare_finish(struct run *run, const struct profile *prof, const char *dir)
{
    bool asked = json_object_object_get_ex(run->params, "compare_to", NULL);
    struct profile_folded fo = {0};
    int r;

    r = keep_stacks(run, prof, &fo);
    if (r < 0 && asked)
        return run_fail(run, "compare_to: cannot fold this run's stacks: %s", strerror(-r));
    if (r < 0)
        run_warn(run, "its stacks are not kept for a later compare_to: %s", strerror(-r));
    else if (asked)
        r = compare(run, prof, &fo, dir);
    profile_folded_destroy(&fo);
    return r < 0 && asked ? r : 0;
}
