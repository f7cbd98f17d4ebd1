/* The actions that look into the target from outside: log_thread_frames (the engine's snapshot
 * unwinder, with state kept per target by unwinders.c), dump_sockets, and the object actions
 * (dump_log_objects, log_event_loop_scheduled, and starting and stopping object logging). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "action.h"
#include "loggers.h"
#include "objects/objects.h"
#include "privs.h"
#include "python/pyframes.h"
#include "objects/sockets.h"
#include "unwind/stacks.h"
#include "unwinders.h"

int action_engine_fail(struct run *run, const char *what, int r)
{
    pid_t pid = run->target.pid;

    switch (r) {
    case -ESRCH:
        return run_fail(run, "%s: target process %d has exited", what, (int)pid);
    case -EPERM:
    case -EACCES: {
        char why[AGENT_ERROR_MAX / 2];

        privs_ptrace_denied(pid, why, sizeof(why));
        return run_fail(run, "%s: not permitted to trace process %d: %s", what, (int)pid, why);
    }
    case -EBUSY:
        return run_fail(run,
                        "%s: the agent is already inspecting too many processes at once; "
                        "try again when a job finishes",
                        what);
    default:
        return run_fail(run, "%s of process %d failed: %s", what, (int)pid, strerror(-r));
    }
}

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
    size_t frames = 0, failed = 0, npy = 0, pyframes = 0;
    int r;

    r = unwinders_get(&run->target, UNWINDERS_DUMP, &u);
    if (r < 0)
        return action_engine_fail(run, "thread dump", r);
    r = stacks_dump_threads(unwinders_stacks(u), &d);
    if (r < 0) {
        unwinders_put(u);
        return action_engine_fail(run, "thread dump", r);
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
                           json_decimal((double)d->stopped_ns / 1e6, 3));
    json_object_object_add(run->summary, "duration_ms", json_decimal((double)d->total_ns / 1e6, 3));
    if (failed)
        run_warn(run, "%zu of %zu threads could not be captured", failed, d->nthreads);
    pyframes_threads_free(py, npy);
    stacks_dump_free(d);
    unwinders_put(u);
    return 0;
}

struct socket_lines {
    char *text;
    size_t len, cap;
    unsigned count;
};

static int add_socket_line(const char *line, void *userdata)
{
    struct socket_lines *s = userdata;
    size_t n = strlen(line);

    if (s->len + n + 2 > s->cap) {
        size_t cap = (s->cap + n + 2) * 2;
        char *p = realloc(s->text, cap);

        if (!p)
            return -ENOMEM;
        s->text = p;
        s->cap = cap;
    }
    s->text[s->len++] = '\n';
    memcpy(s->text + s->len, line, n + 1);
    s->len += n;
    s->count++;
    return 0;
}

int action_dump_sockets(struct run *run)
{
    struct socket_lines lines = {0};
    int r;

    r = sockets_dump(PROCFS_ROOT, run->target.pid, add_socket_line, &lines);
    if (r < 0) {
        free(lines.text);
        return action_engine_fail(run, "socket listing", r);
    }
    run_record(run, "Sockets used by %s (pid %d):%s", run->target.name, (int)run->target.pid,
               lines.text ? lines.text : "");
    json_object_object_add(run->summary, "sockets", json_object_new_int((int)lines.count));
    free(lines.text);
    return 0;
}

int action_start_log_objects(struct run *run)
{
    char err[AGENT_ERROR_MAX];
    struct json_object *v;
    double interval = 30.0;

    if (json_object_object_get_ex(run->params, "scan_interval", &v))
        interval = json_object_get_double(v);
    if (loggers_start_objects(run->agent, &run->target, run->target_spec, interval, err,
                              sizeof(err)) < 0)
        return run_fail(run, "%s", err);
    json_object_object_add(run->summary, "scan_interval", json_decimal(interval, 3));
    return 0;
}

int action_stop_log_objects(struct run *run)
{
    if (loggers_stop_objects() < 0)
        return run_fail(run, "Object logging not running");
    return 0;
}

int action_start_log_object_sources(struct run *run)
{
    char err[AGENT_ERROR_MAX];
    struct json_object *v;
    double interval = 30.0;
    int max_objects = 5;

    if (json_object_object_get_ex(run->params, "scan_interval", &v))
        interval = json_object_get_double(v);
    if (json_object_object_get_ex(run->params, "max_objects", &v))
        max_objects = json_object_get_int(v);
    if (loggers_start_sources(run->agent, &run->target, run->target_spec, interval,
                              (unsigned)max_objects, err, sizeof(err)) < 0)
        return run_fail(run, "%s", err);
    json_object_object_add(run->summary, "scan_interval", json_decimal(interval, 3));
    json_object_object_add(run->summary, "max_objects", json_object_new_int(max_objects));
    return 0;
}

int action_stop_log_object_sources(struct run *run)
{
    if (loggers_stop_sources() < 0)
        return run_fail(run, "Object source logging not running");
    return 0;
}

struct object_records {
    struct run *run;
    const char *prefix;
    unsigned count;
};

static int record_object(const char *repr, void *userdata)
{
    struct object_records *o = userdata;

    run_record(o->run, "%s%s", o->prefix, repr);
    o->count++;
    return 0;
}

int action_dump_log_objects(struct run *run)
{
    char prefix[64], known[256] = "";
    struct object_records o = {.run = run, .prefix = prefix};
    enum objects_type type;
    struct json_object *v;
    const char *name;
    int r;

    json_object_object_get_ex(run->params, "type", &v);
    name = json_object_get_string(v);
    if (objects_type_parse(name, &type) < 0) {
        for (int t = 0; t < OBJECTS_NTYPES; t++)
            snprintf(known + strlen(known), sizeof(known) - strlen(known), "%s%s", t ? ", " : "",
                     objects_type_name(t));
        return run_fail(run, "type: unknown type '%s'; known types: %s", name, known);
    }
    snprintf(prefix, sizeof(prefix), "%s object in memory: ", objects_type_name(type));
    r = objects_dump(PROCFS_ROOT, run->target.pid, type, record_object, &o);
    if (r < 0)
        return action_engine_fail(run, "object listing", r);
    json_object_object_add(run->summary, "objects", json_object_new_int((int)o.count));
    return 0;
}

int action_log_event_loop_scheduled(struct run *run)
{
    struct object_records o = {.run = run, .prefix = "Scheduled: "};
    int r;

    r = objects_scheduled(PROCFS_ROOT, run->target.pid, record_object, &o);
    if (r < 0)
        return action_engine_fail(run, "listing what is scheduled", r);
    json_object_object_add(run->summary, "scheduled", json_object_new_int((int)o.count));
    return 0;
}
