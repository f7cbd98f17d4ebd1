/* The `log_thread_frames` action: every thread's native stack, one record per thread, from the
 * engine's snapshot unwinder (its state kept per target by unwinders.c), with the Python frames
 * of a CPython target in place of the interpreter's. Not the unwinder (engine/unwind/) nor the
 * Python reader (engine/python/). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "actions.h"
#include "python/pyframes.h"
#include "run.h"
#include "unwind/stacks.h"
#include "unwinders.h"

/* The Python stacks of a CPython target, read right after the native snapshot, or none (not
 * Python: silently; anything else: a warning, the native stacks still go out). */
static void read_python(struct run *run, struct pyframes_thread **ret, size_t *ret_n)
{
    struct pyframes *p;
    char version[PYFRAMES_VERSION_MAX] = "";
    int r = pyframes_open(run->target.pid, version, sizeof(version), &p);

    *ret = NULL;
    *ret_n = 0;
    if (r == -ENOENT || r == -ESRCH)
        return;
    if (r < 0) {
        run_warn(run, "Python %s found in the target, but its frames cannot be read: %s",
                 version[0] ? version : "(unknown version)",
                 r == -EOPNOTSUPP ? "only CPython 3.11 is supported" : strerror(-r));
        return;
    }
    r = pyframes_read(p, ret, ret_n);
    if (r < 0)
        run_warn(run, "Python frames could not be read: %s", strerror(-r));
    else
        json_object_object_add(run->summary, "python", json_object_new_string(version));
    pyframes_free(p);
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
    struct stacks_dump *d = NULL;
    struct pyframes_thread *py = NULL;
    struct unwinder *u;
    struct error e;
    size_t frames = 0, failed = 0, npy = 0, pyframes = 0;
    int r;

    r = unwinders_get(&run->target, UNWINDERS_DUMP, &u);
    if (r < 0)
        return run_engine_fail(run, "thread dump", r);
    r = stacks_dump_threads(unwinders_stacks(u), &d, &e);
    if (r < 0) {
        unwinders_put(u);
        return run_engine_fail_error(run, "thread dump", &e);
    }
    read_python(run, &py, &npy);
    for (size_t i = 0; i < d->nthreads; i++) {
        const struct stacks_thread *t = d->threads[i];
        const struct pyframes_thread *pt = python_of(py, npy, t->tid);
        struct stacks_thread *merged = NULL;
        char *text;

        if (pt && pyframes_merge(t, pt, &merged) == 0) {
            t = merged;
            pyframes += pt->nframes;
        }
        frames += t->nframes;
        failed += t->err != 0;
        if (stacks_format_thread(t, &text) == 0) {
            run_record(run, "%s", text);
            free(text);
        }
        free(merged);
    }
    json_object_object_add(run->summary, "threads", json_object_new_int64((int64_t)d->nthreads));
    json_object_object_add(run->summary, "frames", json_object_new_int64((int64_t)frames));
    if (npy)
        json_object_object_add(run->summary, "python_frames",
                               json_object_new_int64((int64_t)pyframes));
    json_object_object_add(run->summary, "stopped_ms",
                           run_json_decimal((double)d->stopped_ns / 1e6, 3));
    json_object_object_add(run->summary, "duration_ms",
                           run_json_decimal((double)d->total_ns / 1e6, 3));
    if (failed)
        run_warn(run, "%zu of %zu threads could not be captured", failed, d->nthreads);
    pyframes_threads_free(py, npy);
    stacks_dump_free(d);
    unwinders_put(u);
    return 0;
}
