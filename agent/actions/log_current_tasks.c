/* The `log_current_tasks` action. On a Python target, its asyncio tasks, one record each:
 * repr(task) as Home Assistant's Profiler logs it (`Task: <Task pending name=...>`), then the
 * task's stack. 3.14 on, read from outside (engine/python/pytasks): the coroutine stack and the
 * awaited-by chains `python -m asyncio ps` shows. 3.11 to 3.13, whose tasks only code inside the
 * process can walk, read from inside (pyscripts/event_loop.py, python_exec on): the
 * task.print_stack() lines; when the target cannot run the script, a warning says why and there are
 * no task records. The agent's own work goes to the summary. On any other target, and with none
 * configured (self), the agent's own work as records: this command, the runs on job threads and the
 * background object loggers. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "actions.h"
#include "clock.h"
#include "event_loop.h"
#include "python/pyframes.h"
#include "python/pytasks.h"
#include "run.h"
#include "watch.h"

#define RECORD_MAX (64 * 1024) /* bytes of one task's record before its lines are cut */

static int add_line(const char *line, void *userdata)
{
    json_object_array_add(userdata, json_object_new_string(line));
    return 0;
}

/* The agent's own work, a line each, to emit; returns how many lines. */
static unsigned agent_jobs(struct run *run, int (*emit)(const char *line, void *userdata),
                           void *userdata)
{
    struct run_host *h = run->host;
    int64_t now = clock_monotonic_us();
    char line[TARGET_SPEC_MAX * 2 + 256];
    unsigned n = 1;

    snprintf(line, sizeof(line), "Task: <run %lld %s target=%s elapsed=%.3fs (this command)>",
             (long long)run->id, run->action_name, run->target_spec,
             (double)(now - run->started_mono_us) / 1e6);
    emit(line, userdata);
    pthread_mutex_lock(&h->lock);
    for (struct run *j = h->jobs; j; j = j->next) {
        char pid[32] = "";

        /* This command runs on a job thread too: it is listed once, above. */
        if (j == run)
            continue;
        n++;

        if (j->has_target)
            snprintf(pid, sizeof(pid), " pid=%d", (int)j->target.pid);
        snprintf(line, sizeof(line), "Task: <run %lld %s target=%s%s elapsed=%.3fs>",
                 (long long)j->id, j->action_name, j->target_spec, pid,
                 (double)(now - j->started_mono_us) / 1e6);
        emit(line, userdata);
    }
    pthread_mutex_unlock(&h->lock);
    watch_tasks(emit, userdata);
    return n;
}

/* "FUNC FILE:LINE -> ...", innermost first, as asyncio's tools write a stack. */
static void put_stack(FILE *f, const struct pytasks_task *t)
{
    for (size_t i = 0; i < t->nstack; i++)
        fprintf(f, "%s%s %s:%d", i ? " -> " : "", t->stack[i].funcname, t->stack[i].filename,
                t->stack[i].line);
}

static const struct pytasks_task *find_task(const struct pytasks_task *ts, size_t n, uint64_t id)
{
    for (size_t i = 0; i < n; i++)
        if (ts[i].id == id)
            return &ts[i];
    return NULL;
}

/* One task's record: its repr, then its id and thread, its coroutine stack, and for each task
 * awaiting it that task's name, id and stack (the awaiter chain). */
static int task_record(struct run *run, const struct pytasks_task *ts, size_t n,
                       const struct pytasks_task *t)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    if (!f)
        return -ENOMEM;
    if (t->repr)
        fprintf(f, "Task: %s", t->repr);
    else
        fprintf(f, "Task: <Task at %#llx: could not be read>", (unsigned long long)t->id);
    fprintf(f, "\n  task id: %#llx, thread %d%s%s", (unsigned long long)t->id, (int)t->tid,
            t->running ? ", running" : "", t->truncated ? ", truncated" : "");
    fprintf(f, "\n  coroutine stack: ");
    put_stack(f, t);
    for (size_t i = 0; i < t->nawaiters; i++) {
        const struct pytasks_task *a = find_task(ts, n, t->awaiters[i]);
        if (ftell(f) > RECORD_MAX) {
            fprintf(f, "\n  ... %zu more awaiters", t->nawaiters - i);
            break;
        }
        fprintf(f, "\n  awaited by: '%s' (%#llx)", a ? a->name : "?",
                (unsigned long long)t->awaiters[i]);
        if (a && a->nstack) {
            fprintf(f, " at ");
            put_stack(f, a);
        }
    }
    if (fclose(f) != 0) {
        free(text);
        return -ENOMEM;
    }
    run_record(run, "%s", text);
    free(text);
    return 0;
}

/* A record per task of the answer: its repr as the Profiler logs it, then its print_stack lines,
 * indented (so none reads as a record of its own), up to RECORD_MAX bytes. */
static int inside_records(struct run *run, struct json_object *a)
{
    struct json_object *tasks, *t, *v, *stack;
    size_t n = event_loop_array(a, "tasks", EVENT_LOOP_ITEMS_MAX, &tasks);
    char buf[EVENT_LOOP_TEXT_MAX];

    for (size_t i = 0; i < n; i++) {
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);

        if (!f)
            return -ENOMEM;
        t = json_object_array_get_idx(tasks, i);
        json_object_object_get_ex(t, "repr", &v);
        fprintf(f, "Task: %s", event_loop_text(v, "?", buf, sizeof(buf)));
        size_t lines = event_loop_array(t, "stack", SIZE_MAX, &stack);
        for (size_t j = 0; j < lines; j++) {
            if (ftell(f) > RECORD_MAX) {
                fprintf(f, "\n  ... %zu more lines", lines - j);
                break;
            }
            fprintf(f, "\n  %s",
                    event_loop_text(json_object_array_get_idx(stack, j), "?", buf, sizeof(buf)));
        }
        if (fclose(f) != 0) {
            free(text);
            return -ENOMEM;
        }
        run_record(run, "%s", text);
        free(text);
    }
    json_object_object_add(run->summary, "tasks", json_object_new_uint64(n));
    return 0;
}

/* Before 3.14: the tasks from inside when the target can run the script (1), else 0 (a warning
 * says why) or the run's failure. */
static int inside_tasks(struct run *run, struct pyframes *p)
{
    struct json_object *a;
    const char *v = pyframes_version(p);
    long minor = strncmp(v, "3.", 2) ? 0 : strtol(v + 2, NULL, 10);

    if (minor < 11 || minor >= 14)
        return 0;
    int r = event_loop_inside(run, "tasks", false, "its tasks are not listed", &a);
    if (r <= 0)
        return r;
    r = inside_records(run, a);
    json_object_put(a);
    if (r < 0)
        return run_engine_fail(run, "asyncio tasks", r);
    return 1;
}

/* The target's tasks as records, the agent's work in the summary; a CPython whose tasks cannot
 * be read (before 3.14, or without asyncio) is a warning with no task records. */
static int python_tasks(struct run *run, struct pyframes *p)
{
    struct pytasks_task *ts = NULL;
    size_t n = 0, truncated = 0;
    struct error e;
    struct json_object *jobs = json_object_new_array();
    int r = pytasks_read(p, run->target.pid, &ts, &n, &e);

    agent_jobs(run, add_line, jobs);
    int in = r == -EOPNOTSUPP ? inside_tasks(run, p) : 0;

    json_object_object_add(run->summary, "agent_jobs", jobs);
    /* The whole version: the answer from inside gave only 3.MINOR. */
    json_object_object_add(run->summary, "python", json_object_new_string(pyframes_version(p)));
    if (in != 0)
        return in < 0 ? in : 0;
    if (r == -ENOENT || r == -EOPNOTSUPP) {
        run_warn(run, "%s", e.reason[0] ? e.reason : strerror(-r));
        json_object_object_add(run->summary, "tasks", json_object_new_int(0));
        return 0;
    }
    if (r < 0)
        return run_engine_fail_error(run, "asyncio tasks", &e);
    for (size_t i = 0; i < n && r == 0; i++) {
        truncated += ts[i].truncated;
        r = task_record(run, ts, n, &ts[i]);
    }
    pytasks_free(ts, n);
    if (r < 0)
        return run_engine_fail(run, "asyncio tasks", r);
    if (truncated)
        run_warn(run, "%zu of %zu tasks could not be read whole (a limit, or the target changed)",
                 truncated, n);
    json_object_object_add(run->summary, "tasks", json_object_new_int((int)n));
    return 0;
}

int action_log_current_tasks(struct run *run)
{
    struct run_lines lines = {.run = run, .prefix = ""};
    struct pyframes *p = NULL;
    struct error e;
    int r = pyframes_attach(run->target.pid, NULL, 0, &p, &e);

    if (r == 0) {
        r = python_tasks(run, p);
        pyframes_free(p);
        return r;
    }
    /* Not a CPython (-ENOENT), or one whose frames cannot be read: the agent's own work. */
    if (r != -ENOENT)
        run_warn(run, "the target's asyncio tasks cannot be read: %s",
                 e.reason[0] ? e.reason : strerror(-r));
    unsigned n = agent_jobs(run, run_record_line, &lines);
    json_object_object_add(run->summary, "tasks", json_object_new_int((int)n));
    return 0;
}
