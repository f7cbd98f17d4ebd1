/* The actions that look into the target from outside: log_thread_frames (the engine's snapshot
 * unwinder) and dump_sockets. Unwinder state is expensive to build (modules, unwind tables,
 * symbols), so one struct stacks per live target is kept here, keyed by pid and start time, and
 * used by one dump at a time: two ptrace sessions on one process would fight. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "action.h"
#include "cachestat.h"
#include "sockets.h"
#include "stacks.h"

#define UNWINDERS_MAX 8

struct unwinder {
    pid_t pid;
    uint64_t starttime;
    uint64_t last_used;
    struct stacks *stacks;
    pthread_mutex_t busy;
};

static struct unwinder unwinders[UNWINDERS_MAX] = {
    [0 ... UNWINDERS_MAX - 1] = {.busy = PTHREAD_MUTEX_INITIALIZER},
};
static pthread_mutex_t unwinders_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t use_clock;
CACHESTAT_DEFINE(unwinder_stats, "unwinders", UNWINDERS_MAX)

/* Returns the slot for target, locked; a new or recycled slot gets fresh state. */
static int unwinder_get(const struct target *t, struct unwinder **ret)
{
    struct unwinder *u = NULL, *oldest = NULL;
    unsigned long used = 0;
    int r = 0;

    pthread_mutex_lock(&unwinders_lock);
    for (int i = 0; i < UNWINDERS_MAX; i++) {
        struct unwinder *c = &unwinders[i];

        if (c->stacks && c->pid == t->pid && c->starttime == t->starttime)
            u = c;
        if (!oldest || (oldest->stacks && (!c->stacks || c->last_used < oldest->last_used)))
            oldest = c;
    }
    if (u) {
        cachestat_hit(&unwinder_stats);
    } else {
        cachestat_miss(&unwinder_stats);
        u = oldest;
    }
    u->last_used = ++use_clock;
    pthread_mutex_unlock(&unwinders_lock);

    pthread_mutex_lock(&u->busy);
    if (!u->stacks || u->pid != t->pid || u->starttime != t->starttime) {
        stacks_free(u->stacks);
        u->stacks = NULL;
        r = stacks_new(t->pid, &u->stacks);
        if (r < 0) {
            pthread_mutex_unlock(&u->busy);
            return r;
        }
        u->pid = t->pid;
        u->starttime = t->starttime;
    }
    pthread_mutex_lock(&unwinders_lock);
    for (int i = 0; i < UNWINDERS_MAX; i++)
        used += unwinders[i].stacks != NULL;
    pthread_mutex_unlock(&unwinders_lock);
    cachestat_size(&unwinder_stats, used);
    *ret = u;
    return 0;
}

static int engine_fail(struct run *run, const char *what, int r)
{
    pid_t pid = run->target.pid;

    switch (r) {
    case -ESRCH:
        return run_fail(run, "%s: target process %d has exited", what, (int)pid);
    case -EPERM:
    case -EACCES:
        return run_fail(run, "%s: not permitted to trace process %d (the agent needs "
                        "CAP_SYS_PTRACE, or the target's user and kernel.yama.ptrace_scope 0; "
                        "a process already traced by a debugger cannot be traced again)",
                        what, (int)pid);
    default:
        return run_fail(run, "%s of process %d failed: %s", what, (int)pid, strerror(-r));
    }
}

/* Milliseconds with microsecond precision, printed as such rather than as a binary fraction. */
static struct json_object *json_ms(uint64_t ns)
{
    char text[32];

    snprintf(text, sizeof(text), "%.3f", (double)ns / 1e6);
    return json_object_new_double_s((double)ns / 1e6, text);
}

int action_log_thread_frames(struct run *run)
{
    struct stacks_dump *d = NULL;
    struct unwinder *u;
    size_t frames = 0, failed = 0;
    int r;

    r = unwinder_get(&run->target, &u);
    if (r < 0)
        return engine_fail(run, "thread dump", r);
    r = stacks_dump_threads(u->stacks, &d);
    if (r < 0) {
        pthread_mutex_unlock(&u->busy);
        return engine_fail(run, "thread dump", r);
    }
    for (size_t i = 0; i < d->nthreads; i++) {
        char *text;

        frames += d->threads[i]->nframes;
        failed += d->threads[i]->err != 0;
        if (stacks_format_thread(d->threads[i], &text) == 0) {
            run_record(run, "%s", text);
            free(text);
        }
    }
    json_object_object_add(run->summary, "threads", json_object_new_int64((int64_t)d->nthreads));
    json_object_object_add(run->summary, "frames", json_object_new_int64((int64_t)frames));
    json_object_object_add(run->summary, "stopped_ms", json_ms(d->stopped_ns));
    json_object_object_add(run->summary, "duration_ms", json_ms(d->total_ns));
    if (failed)
        run_warn(run, "%zu of %zu threads could not be captured", failed, d->nthreads);
    stacks_dump_free(d);
    pthread_mutex_unlock(&u->busy);
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
        return engine_fail(run, "socket listing", r);
    }
    run_record(run, "Sockets used by %s (pid %d):%s", run->target.name, (int)run->target.pid,
               lines.text ? lines.text : "");
    json_object_object_add(run->summary, "sockets", json_object_new_int((int)lines.count));
    free(lines.text);
    return 0;
}
