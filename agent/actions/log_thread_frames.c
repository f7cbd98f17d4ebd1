/* The `log_thread_frames` action: every thread's native stack, one record per thread, from the
 * engine's snapshot unwinder (its state kept per target by unwinders.c), with the Python frames
 * of a CPython target in place of the interpreter's. Not the unwinder (engine/unwind/) nor the
 * Python reader (engine/python/). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "actions.h"
#include "python/pyframes.h"
#include "run.h"
#include "unwind/stacks.h"
#include "unwinders.h"

/* The Python side of a dump: the interpreter found before the snapshot, its stacks read while
 * the threads are still stopped (read_held), so that both halves of a thread describe one
 * moment. */
struct python_read {
    struct pyframes *p;
    struct pyframes_thread *threads;
    size_t n;
    int r; /* pyframes_read's result */
};

static void read_held(void *ctx)
{
    struct python_read *pr = ctx;

    pr->r = pyframes_read(pr->p, &pr->threads, &pr->n);
}

/* Finds the target's interpreter. Not Python: nothing, silently; a CPython that cannot be read:
 * a warning that says which and why (the native stacks still go out). */
static void find_python(struct run *run, struct python_read *pr)
{
    char version[PYFRAMES_VERSION_MAX] = "";
    struct error e;
    int r = pyframes_attach(run->target.pid, version, sizeof(version), &pr->p, &e);

    if (r == -ENOENT || r == -ESRCH)
        return;
    if (r < 0)
        run_warn(run, "Python %s found in the target, but its frames cannot be read: %s",
                 version[0] ? version : "(unknown version)", e.reason[0] ? e.reason : strerror(-r));
    else
        json_object_object_add(run->summary, "python", json_object_new_string(version));
}

static const struct pyframes_thread *python_of(const struct pyframes_thread *py, size_t n,
                                               pid_t tid)
{
    for (size_t i = 0; i < n; i++)
        if (py[i].tid == tid)
            return &py[i];
    return NULL;
}

int action_log_thread_frames(struct run *run)
{
    return action_log_thread_frames_of(run, 0, NULL);
}

int action_log_thread_frames_of(struct run *run, pid_t tid, char **ret_text)
{
    struct stacks_dump *d = NULL;
    struct python_read pr = {0};
    struct snapshot_hold hold = {read_held, &pr};
    struct unwinder *u;
    struct error e;
    size_t frames = 0, failed = 0, pyframes = 0;
    int r;

    r = unwinders_get(&run->target, UNWINDERS_DUMP, &u);
    if (r < 0)
        return run_engine_fail(run, "thread dump", r);
    find_python(run, &pr);
    r = stacks_dump_threads(unwinders_stacks(u), pr.p ? &hold : NULL, &d, &e);
    if (r < 0) {
        pyframes_threads_free(pr.threads, pr.n);
        pyframes_free(pr.p);
        unwinders_put(u);
        return run_engine_fail_error(run, "thread dump", &e);
    }
    if (pr.p && pr.r < 0)
        run_warn(run, "Python frames could not be read: %s", strerror(-pr.r));
    else if (pr.p && !d->held)
        run_warn(run, "the Python stacks were read after the threads had resumed (the dump's "
                      "stop deadline passed): a thread's Python and native frames may be from "
                      "different moments");
    for (size_t i = 0; i < d->nthreads; i++) {
        const struct stacks_thread *t = d->threads[i];
        const struct pyframes_thread *pt = python_of(pr.threads, pr.n, t->tid);
        struct stacks_thread *merged = NULL;
        char *text;

        if (pt && pyframes_merge(t, pt, &merged) == 0) {
            /* The Profiler's `Thread [NAME]` is threading's name, not the process comm. */
            if (pt->name[0])
                snprintf(merged->name, sizeof(merged->name), "%s", pt->name);
            t = merged;
            pyframes += pt->nframes;
        }
        frames += t->nframes;
        failed += t->err != 0;
        if (stacks_format_thread(t, &text) == 0) {
            run_record(run, "%s", text);
            if (ret_text && !*ret_text && tid && t->tid == tid)
                *ret_text = text;
            else
                free(text);
        }
        free(merged);
    }
    json_object_object_add(run->summary, "threads", json_object_new_int64((int64_t)d->nthreads));
    json_object_object_add(run->summary, "frames", json_object_new_int64((int64_t)frames));
    if (pr.n)
        json_object_object_add(run->summary, "python_frames",
                               json_object_new_int64((int64_t)pyframes));
    json_object_object_add(run->summary, "stopped_ms",
                           run_json_decimal((double)d->stopped_ns / 1e6, 3));
    json_object_object_add(run->summary, "duration_ms",
                           run_json_decimal((double)d->total_ns / 1e6, 3));
    if (failed)
        run_warn(run, "%zu of %zu threads could not be captured", failed, d->nthreads);
    pyframes_threads_free(pr.threads, pr.n);
    pyframes_free(pr.p);
    stacks_dump_free(d);
    unwinders_put(u);
    return 0;
}
