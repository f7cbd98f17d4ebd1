/* The `start` action: a CPU profile of the target for `seconds` at `frequency` Hz, written in
 * output_dir in the `formats` asked (by default profile.T.cprof, callgrind.out.T and
 * flamegraph.T.svg), and with `compare_to` a differential flame graph against an earlier run
 * (start_compare.c). One profile per target at a time (two samplers on one process would double
 * its cost and split nothing useful); progress goes out about once a second; a clean stop of the
 * agent ends the run early with what it has.
 * Not the sampler or the writers (engine/cpu/, engine/formats/). */
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include "actions.h"
#include "claims.h"
#include "cpu/cpuprof.h"
#include "formats/profile.h"
#include "run.h"
#include "start_compare.h"
#include "unwinders.h"

#define TOP_FUNCTIONS 5

static struct claims claims = CLAIMS_INIT("a CPU profile");

/* A window of the recorder's ring samples nothing: no claim. */
int action_start_admit(struct run *run)
{
    return action_start_is_window(run) ? 0 : claims_take(&claims, run);
}

void action_start_release(struct run *run)
{
    if (!action_start_is_window(run))
        claims_drop(&claims, run);
}

static void progress(const struct cpuprof_progress *p, void *userdata)
{
    struct run *run = userdata;
    struct json_object *o = json_object_new_object();

    json_object_object_add(o, "run_id", json_object_new_int64(run->id));
    if (run->has_request_id)
        json_object_object_add(
            o, "request_id", json_object_new_string_len(run->request_id, (int)run->request_id_len));
    json_object_object_add(o, "action", json_object_new_string(run->action_name));
    json_object_object_add(o, "elapsed", run_json_decimal(p->elapsed, 3));
    json_object_object_add(o, "seconds", run_json_decimal(p->seconds, 3));
    json_object_object_add(o, "samples", json_object_new_int64((int64_t)p->samples));
    run_progress(run, json_object_to_json_string_ext(o, RUN_JSON_FLAGS));
    json_object_put(o);
}

static void add_top(struct run *run, const struct profile *prof)
{
    struct profile_top top[TOP_FUNCTIONS];
    struct json_object *list = json_object_new_array();
    uint64_t total = profile_samples(prof);
    size_t n = 0;

    if (profile_top(prof, TOP_FUNCTIONS, top, &n) < 0)
        n = 0;
    for (size_t i = 0; i < n; i++) {
        struct json_object *f = json_object_new_object();

        json_object_object_add(f, "function", json_object_new_string(top[i].func));
        json_object_object_add(f, "module",
                               top[i].module ? json_object_new_string(top[i].module) : NULL);
        json_object_object_add(f, "file", top[i].file ? json_object_new_string(top[i].file) : NULL);
        json_object_object_add(f, "line", json_object_new_int(top[i].func_line));
        json_object_object_add(f, "self_samples",
                               json_object_new_int64((int64_t)top[i].self_samples));
        json_object_object_add(
            f, "self_percent",
            run_json_decimal(total ? 100.0 * (double)top[i].self_samples / (double)total : 0, 2));
        json_object_array_add(list, f);
    }
    json_object_object_add(run->summary, "top", list);
}

static void add_summary(struct run *run, const struct cpuprof_result *res)
{
    struct json_object *s = run->summary;
    uint64_t samples = profile_samples(res->profile);

    json_object_object_add(s, "samples", json_object_new_int64((int64_t)samples));
    json_object_object_add(s, "threads", json_object_new_int64((int64_t)res->stats.threads));
    json_object_object_add(s, "lost", json_object_new_int64((int64_t)res->stats.lost));
    json_object_object_add(s, "truncated", json_object_new_int64((int64_t)res->truncated));
    json_object_object_add(
        s, "truncated_fraction",
        run_json_decimal(samples ? (double)res->truncated / (double)samples : 0, 4));
    json_object_object_add(s, "seconds", run_json_decimal(res->elapsed, 3));
    json_object_object_add(s, "frequency", json_object_new_int((int)res->stats.frequency));
    json_object_object_add(s, "method", json_object_new_string(res->stats.method));
    json_object_object_add(s, "mode",
                           json_object_new_string(res->off_only ? "off"
                                                  : res->wall   ? "wall"
                                                                : "cpu"));
    if (res->wall) {
        static const char *const names[CPUPROF_NSTATES] = {
            [CPUPROF_RUNNING] = "running", [CPUPROF_SYSCALL] = "syscall", [CPUPROF_GIL] = "gil"};
        struct json_object *st = json_object_new_object();
        for (int i = 0; i < CPUPROF_NSTATES; i++)
            json_object_object_add(st, names[i], json_object_new_int64((int64_t)res->states[i]));
        json_object_object_add(s, "states", st);
    }
    json_object_object_add(s, "unwind_us_per_sample",
                           run_json_decimal(res->unwind_us_per_sample, 2));
    if (res->python[0]) {
        json_object_object_add(s, "python", json_object_new_string(res->python));
        json_object_object_add(s, "python_samples",
                               json_object_new_int64((int64_t)res->python_samples));
        json_object_object_add(s, "python_unpaired",
                               json_object_new_int64((int64_t)res->python_unpaired));
    } else if (res->python_error.code && res->python_version[0]) {
        json_object_object_add(s, "python", json_object_new_string(res->python_version));
        json_object_object_add(s, "python_samples", json_object_new_int64(0));
    }
    add_top(run, res->profile);
}

enum { PSTATS, CALLGRIND, FLAMEGRAPH, COLLAPSED, PPROF, SPEEDSCOPE, NFORMATS };

/* What `formats` may ask for (schemas/start.json's enum), in the order the files are written
 * and listed; each file is PREFIX T SUFFIX, as the registry's row says for retention. */
static const struct {
    const char *name, *prefix, *suffix;
} formats[NFORMATS] = {
    [PSTATS] = {"pstats", "profile.", ".cprof"},
    [CALLGRIND] = {"callgrind", "callgrind.out.", ""},
    [FLAMEGRAPH] = {"flamegraph", "flamegraph.", ".svg"},
    [COLLAPSED] = {"collapsed", "profile.", ".collapsed"},
    [PPROF] = {"pprof", "profile.", ".pb.gz"},
    [SPEEDSCOPE] = {"speedscope", "profile.", ".speedscope.json"},
};

static int write_format(struct run *run, int format, const struct profile *prof, double seconds,
                        const char *path, struct error *e)
{
    switch (format) {
    case PSTATS:
        return profile_write_pstats(prof, path, e);
    case CALLGRIND:
        return profile_write_callgrind(prof, path, run->target.name, run->target.pid, e);
    case FLAMEGRAPH:
        return profile_write_flamegraph(prof, path, run->target.name, e);
    case COLLAPSED:
        return profile_write_collapsed(prof, path, e);
    case PPROF:
        return profile_write_pprof(prof, path, (uint64_t)run->started_us * 1000,
                                   (uint64_t)(seconds * 1e9), e);
    default:
        return profile_write_speedscope(prof, path, run->target.name, e);
    }
}

static bool format_asked(struct run *run, const char *name)
{
    struct json_object *list;

    if (!json_object_object_get_ex(run->params, "formats", &list))
        return false;
    for (size_t i = 0; i < json_object_array_length(list); i++)
        if (strcmp(json_object_get_string(json_object_array_get_idx(list, i)), name) == 0)
            return true;
    return false;
}

/* Writes the files `formats` asks for, over seconds of sampling, then keeps the stacks and
 * compares them as compare_to asks; a failure of one file is an error naming it, files already
 * written stay listed. */
static int write_files(struct run *run, const struct profile *prof, double seconds)
{
    char dir[PATH_MAX], path[PATH_MAX + 64];
    long long t = (long long)run->started_us;
    struct error e;
    int r;

    r = run_output_dir(run, dir);
    if (r < 0)
        return r;
    for (int i = 0; i < NFORMATS; i++) {
        if (!format_asked(run, formats[i].name))
            continue;
        snprintf(path, sizeof(path), "%s/%s%lld%s", dir, formats[i].prefix, t, formats[i].suffix);
        if (write_format(run, i, prof, seconds, path, &e) < 0)
            /* A file the user asked for, not the process, failed: said as such, not through
             * run_engine_fail_error's words about the target. */
            return run_fail(run, "cannot write %s: %s", path,
                            e.reason[0] ? e.reason : strerror(-e.code));
        json_object_array_add(run->files, json_object_new_string(path));
    }
    return start_compare_finish(run, prof, dir);
}

int action_start(struct run *run)
{
    struct cpuprof_options o = {.progress = progress, .userdata = run, .cancel = &run->cancel};
    struct cpuprof_result res = {0};
    struct json_object *v;
    struct unwinder *u;
    struct error e;
    int r;

    /* A run that cannot be compared with is said before the sampling, not a minute after. */
    r = start_compare_check(run);
    if (r < 0)
        return r;
    if (action_start_is_window(run))
        return action_start_window(run);
    json_object_object_get_ex(run->params, "seconds", &v);
    o.seconds = json_object_get_double(v);
    json_object_object_get_ex(run->params, "frequency", &v);
    o.frequency = (unsigned)json_object_get_int(v);
    const char *mode =
        json_object_object_get_ex(run->params, "mode", &v) ? json_object_get_string(v) : "cpu";
    o.off_only = strcmp(mode, "off") == 0;
    o.wall = o.off_only || strcmp(mode, "wall") == 0;
    r = unwinders_get(&run->target, UNWINDERS_PROFILE, &u);
    if (r < 0)
        return run_engine_fail(run, "CPU profile", r);
    r = cpuprof_run(run->target.pid, unwinders_stacks(u), &o, &res, &e);
    unwinders_put(u);
    if (r < 0)
        return run_engine_fail_error(run, "CPU profile", &e);
    if (res.stats.fallback.code)
        run_warn(run, "%s; sampling with ptrace snapshots at %u Hz instead",
                 res.stats.fallback.reason, res.stats.frequency);
    if (res.python_error.code)
        run_warn(run, "%s%s; the profile has native frames only",
                 res.python_error.reason[0] ? res.python_error.reason
                                            : "Python frames cannot be read: ",
                 res.python_error.reason[0] ? "" : strerror(-res.python_error.code));
    if (res.python_fallback.code)
        run_warn(run,
                 "%s; Python stacks are read while ptrace snapshots hold the threads, at %u Hz",
                 res.python_fallback.reason[0] ? res.python_fallback.reason
                                               : strerror(-res.python_fallback.code),
                 res.stats.frequency);
    if (res.stats.target_exited)
        run_warn(run, "the target exited after %.1f s; the profile covers that time", res.elapsed);
    if (res.cancelled)
        run_warn(run, "the agent was stopped after %.1f s; the profile covers that time",
                 res.elapsed);
    if (res.stats.lost)
        run_warn(run,
                 "%llu samples were lost (ring buffer overrun, or taken where the thread "
                 "had no user registers, e.g. while exiting)",
                 (unsigned long long)res.stats.lost);
    add_summary(run, &res);
    if (profile_samples(res.profile) == 0)
        r = run_fail(run, "no samples: the target used no CPU time in user space during the run");
    else
        r = write_files(run, res.profile, res.elapsed);
    profile_free(res.profile);
    return r;
}

int action_start_write(struct run *run, const struct profile *prof, double seconds)
{
    add_top(run, prof);
    return write_files(run, prof, seconds);
}
