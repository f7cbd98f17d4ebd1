/* Object-growth logging (see loggers.h). The logger thread sleeps on a condition variable with a
 * deadline, so a stop wakes it at once and nothing polls. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "clock.h"
#include "loggers.h"
#include "objects.h"

#define GROWTH_TEXT_MAX 2048

struct objlog {
    bool running;           /* the thread exists (joined by stop) */
    bool stop;
    bool ended;             /* the thread ended by itself (target gone) */
    struct agent *agent;
    struct target target;
    char spec[TARGET_SPEC_MAX];
    double interval;
    int64_t started_mono_us;
    uint64_t scans;
    struct objects_count last;
    bool have_last;
    pthread_t thread;
};

static struct objlog objlog;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;

static void emit(struct agent *a, const char *text)
{
    a->out.record(NULL, text, a->out.userdata);
}

struct growth {
    enum objects_type type;
    uint64_t count;
    uint64_t increase;
};

static int by_increase(const void *x, const void *y)
{
    const struct growth *a = x, *b = y;

    if (a->increase != b->increase)
        return a->increase < b->increase ? 1 : -1;
    return (int)a->type - (int)b->type;
}

/* objgraph.growth()'s form: types that grew since the last scan, largest increase first. */
static void log_growth(struct objlog *l, const struct objects_count *now)
{
    struct growth g[OBJECTS_NTYPES];
    char text[GROWTH_TEXT_MAX];
    size_t n = 0, len;

    for (int t = 0; t < OBJECTS_NTYPES; t++) {
        uint64_t before = l->have_last ? l->last.n[t] : 0;

        if (now->n[t] > before)
            g[n++] = (struct growth){t, now->n[t], now->n[t] - before};
    }
    if (n == 0)
        return;
    qsort(g, n, sizeof(g[0]), by_increase);
    len = (size_t)snprintf(text, sizeof(text), "Memory Growth: [");
    for (size_t i = 0; i < n && len < sizeof(text); i++)
        len += (size_t)snprintf(text + len, sizeof(text) - len, "%s('%s', %llu, %llu)",
                                i ? ", " : "", objects_type_name(g[i].type),
                                (unsigned long long)g[i].count,
                                (unsigned long long)g[i].increase);
    if (len < sizeof(text))
        snprintf(text + len, sizeof(text) - len, "]");
    emit(l->agent, text);
}

static void *objlog_main(void *arg)
{
    struct objlog *l = arg;
    struct objects_count now;
    struct timespec deadline;
    int r;

    pthread_mutex_lock(&lock);
    while (!l->stop) {
        pthread_mutex_unlock(&lock);
        r = objects_count(PROCFS_ROOT, l->target.pid, &now);
        pthread_mutex_lock(&lock);
        if (r < 0) {
            char text[TARGET_SPEC_MAX + 128];

            snprintf(text, sizeof(text), "Object logging stopped: target %s (pid %d) %s",
                     l->spec, (int)l->target.pid,
                     r == -ESRCH ? "has exited" : strerror(-r));
            l->ended = true;
            pthread_mutex_unlock(&lock);
            emit(l->agent, text);
            if (l->agent->out.state_changed)
                l->agent->out.state_changed(l->agent, l->agent->out.userdata);
            return NULL;
        }
        pthread_mutex_unlock(&lock);
        log_growth(l, &now);
        pthread_mutex_lock(&lock);
        l->last = now;
        l->have_last = true;
        l->scans++;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += (time_t)l->interval;
        deadline.tv_nsec += (long)((l->interval - (double)(time_t)l->interval) * 1e9);
        if (deadline.tv_nsec >= 1000000000) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000;
        }
        while (!l->stop && pthread_cond_timedwait(&wake, &lock, &deadline) == 0)
            ;
    }
    pthread_mutex_unlock(&lock);
    return NULL;
}

/* Joins a thread that ended by itself, so a new start finds the slot free. Called locked. */
static void reap_locked(void)
{
    if (objlog.running && objlog.ended) {
        pthread_mutex_unlock(&lock);
        pthread_join(objlog.thread, NULL);
        pthread_mutex_lock(&lock);
        objlog.running = false;
    }
}

int loggers_start_objects(struct agent *a, const struct target *t, const char *spec,
                          double interval, char *err, size_t errlen)
{
    int r = 0;

    pthread_mutex_lock(&lock);
    reap_locked();
    if (objlog.running) {
        snprintf(err, errlen, "Object logging already started");
        r = -EEXIST;
        goto out;
    }
    memset(&objlog, 0, sizeof(objlog));
    objlog.agent = a;
    objlog.target = *t;
    snprintf(objlog.spec, sizeof(objlog.spec), "%s", spec);
    objlog.interval = interval;
    objlog.started_mono_us = clock_monotonic_us();
    r = -pthread_create(&objlog.thread, NULL, objlog_main, &objlog);
    if (r < 0) {
        snprintf(err, errlen, "cannot start the object logger: %s", strerror(-r));
        goto out;
    }
    objlog.running = true;
out:
    pthread_mutex_unlock(&lock);
    return r;
}

int loggers_stop_objects(void)
{
    pthread_mutex_lock(&lock);
    reap_locked();
    if (!objlog.running) {
        pthread_mutex_unlock(&lock);
        return -ENOENT;
    }
    objlog.stop = true;
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&lock);
    pthread_join(objlog.thread, NULL);
    pthread_mutex_lock(&lock);
    objlog.running = false;
    pthread_mutex_unlock(&lock);
    return 0;
}

void loggers_stop_all(void)
{
    loggers_stop_objects();
}

void loggers_describe(struct json_object *array)
{
    pthread_mutex_lock(&lock);
    if (objlog.running && !objlog.ended) {
        struct json_object *o = json_object_new_object();

        json_object_object_add(o, "logger", json_object_new_string("objects"));
        json_object_object_add(o, "target", json_object_new_string(objlog.spec));
        json_object_object_add(o, "pid", json_object_new_int(objlog.target.pid));
        json_object_object_add(o, "scan_interval", json_decimal(objlog.interval, 3));
        json_object_object_add(o, "scans", json_object_new_int64((int64_t)objlog.scans));
        json_object_array_add(array, o);
    }
    pthread_mutex_unlock(&lock);
}

void loggers_tasks(void (*fn)(const char *line, void *userdata), void *userdata)
{
    char line[512] = "";

    pthread_mutex_lock(&lock);
    if (objlog.running && !objlog.ended)
        snprintf(line, sizeof(line),
                 "Task: <logger objects target=%s pid=%d scan_interval=%.3fs scans=%llu "
                 "elapsed=%.3fs>",
                 objlog.spec, (int)objlog.target.pid, objlog.interval,
                 (unsigned long long)objlog.scans,
                 (double)(clock_monotonic_us() - objlog.started_mono_us) / 1e6);
    pthread_mutex_unlock(&lock);
    if (line[0])
        fn(line, userdata);
}
