/* The ring releases (see memrelease.h). */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "clock.h"
#include "log.h"
#include "memory/memprof.h"
#include "memory/memring.h"
#include "memrelease.h"

/* After a run the ring (about 25 MB of the target's /dev/shm) is unmapped this much later unless
 * another run of the target starts first: long past MEMRING_RELEASE_QUIET_NS, and long enough
 * for a user or a script to read a result and send the next run, which then replaces the ring
 * without a call into the target of its own. */
#define RELEASE_GRACE_S 10
#define RELEASE_TRIES 3 /* attempts of a release put off (a thread stopped), a grace apart */
#define RELEASE_MAX 64  /* targets waiting for theirs: past it a ring stays until the next run */

/* A target whose ring is unmapped at due_us (monotonic), unless a run of it is admitted first. */
struct release {
    struct target target; /* pid 0: a free slot */
    int64_t due_us;
    int64_t quiet_us; /* the earliest memhook_release accepts: the run's end + the quiet time */
    unsigned tries;
};

/* The releases waiting, and the thread that makes them (started with the first). A run admitted
 * for a target takes its release off the list; one under way then finishes first (rel.done). */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake; /* to the thread: a new release, or the agent stops (CLOCK_MONOTONIC) */
    pthread_cond_t done; /* from the thread: the release under way ended */
    pthread_t thread;
    bool started, stopping;
    struct release slot[RELEASE_MAX];
    struct target busy; /* whose release is under way; pid 0: none */
    bool busy_replaced; /* a run of it was admitted meanwhile: no second try */
} rel = {.lock = PTHREAD_MUTEX_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};

static bool same_target(const struct target *a, const struct target *b)
{
    return a->pid == b->pid && a->starttime == b->starttime;
}

/* One attempt, logged. True when it was put off and may work later (not when last). */
static bool release_one(const struct release *job, bool last)
{
    const struct target *t = &job->target;
    int64_t start = clock_monotonic_us();
    uint64_t bytes = 0;
    struct error e;
    int r = memprof_release(t->pid, t->starttime, &bytes, &e);
    const char *why = e.reason[0] ? e.reason : strerror(-r);

    switch (r) {
    case 0:
        log_info("memory: unmapped the %.1f MiB ring the last allocation profile left in process "
                 "%d (%s), in %.1f ms",
                 (double)bytes / 1048576.0, (int)t->pid, t->name,
                 (double)(clock_monotonic_us() - start) / 1000.0);
        return false;
    case -ESRCH:
        log_debug("memory: process %d (%s) is gone or was replaced: no ring to unmap", (int)t->pid,
                  t->name);
        return false;
    case -ENXIO:
        log_debug("memory: process %d (%s) has no ring mapped any more (it exec'd, or another "
                  "run replaced it)",
                  (int)t->pid, t->name);
        return false;
    case -EBUSY:
        log_info("memory: the ring in process %d (%s) is left alone: %s", (int)t->pid, t->name,
                 why);
        return false;
    case -EAGAIN:
    case -EPERM:
        if (!last) {
            log_debug("memory: unmapping the ring in process %d (%s) put off: %s; next try in "
                      "%d s",
                      (int)t->pid, t->name, why, RELEASE_GRACE_S);
            return true;
        }
        break;
    default:
        break;
    }
    log_warning("memory: the shared ring of the last allocation profile stays mapped in process "
                "%d (%s) until its next profile or its exit: %s",
                (int)t->pid, t->name, why);
    return false;
}

/* Waits for the first release due, or until deadline_us (INT64_MAX: none). Called locked. */
static void wait_locked(int64_t deadline_us)
{
    struct timespec ts;

    if (deadline_us == INT64_MAX) {
        pthread_cond_wait(&rel.wake, &rel.lock);
        return;
    }
    ts.tv_sec = deadline_us / 1000000;
    ts.tv_nsec = (long)(deadline_us % 1000000) * 1000;
    pthread_cond_timedwait(&rel.wake, &rel.lock, &ts);
}

/* Puts job in a free slot; false when none is left. Called locked. */
static bool put_locked(const struct release *job)
{
    for (size_t i = 0; i < RELEASE_MAX; i++)
        if (!rel.slot[i].target.pid) {
            rel.slot[i] = *job;
            return true;
        }
    return false;
}

/* Makes each release when due; once the agent stops, each as soon as the hooks accept it. */
static void *releaser_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&rel.lock);
    for (;;) {
        int64_t now = clock_monotonic_us(), next = INT64_MAX;
        struct release *due = NULL, job;

        for (size_t i = 0; i < RELEASE_MAX && !due; i++) {
            struct release *s = &rel.slot[i];
            int64_t at = rel.stopping ? s->quiet_us : s->due_us;

            if (!s->target.pid)
                continue;
            if (at <= now)
                due = s;
            else if (at < next)
                next = at;
        }
        if (!due && rel.stopping && next == INT64_MAX)
            break;
        if (!due) {
            wait_locked(next);
            continue;
        }
        job = *due;
        due->target.pid = 0;
        rel.busy = job.target;
        rel.busy_replaced = false;
        bool last = rel.stopping || job.tries + 1 >= RELEASE_TRIES;
        pthread_mutex_unlock(&rel.lock);
        bool again = release_one(&job, last);
        pthread_mutex_lock(&rel.lock);
        if (again && !rel.busy_replaced) {
            job.tries++;
            job.due_us = clock_monotonic_us() + RELEASE_GRACE_S * 1000000ll;
            put_locked(&job); /* the slot it had is free */
        }
        rel.busy.pid = 0;
        pthread_cond_broadcast(&rel.done);
    }
    pthread_mutex_unlock(&rel.lock);
    return NULL;
}

/* After a run of t, whatever its outcome: its ring (this run's, or the last one's when this run
 * did not start the hooks) is unmapped RELEASE_GRACE_S from now. */
void memrelease_schedule(const struct target *t)
{
    int64_t now = clock_monotonic_us();
    struct release job = {.target = *t,
                          .due_us = now + RELEASE_GRACE_S * 1000000ll,
                          .quiet_us = now + (int64_t)(MEMRING_RELEASE_QUIET_NS / 1000)};
    pthread_condattr_t attr;
    int r;

    if (t->pid == getpid())
        return;
    pthread_mutex_lock(&rel.lock);
    if (rel.stopping) {
        log_warning("memory: the agent is stopping: the ring of process %d (%s) stays mapped "
                    "until its next allocation profile or its exit",
                    (int)t->pid, t->name);
        goto out;
    }
    if (!rel.started) {
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&rel.wake, &attr);
        pthread_condattr_destroy(&attr);
        r = pthread_create(&rel.thread, NULL, releaser_main, NULL);
        if (r != 0) {
            pthread_cond_destroy(&rel.wake);
            log_warning("memory: cannot start the thread that unmaps rings (%s): the ring of "
                        "process %d (%s) stays mapped until its next allocation profile or its "
                        "exit",
                        strerror(r), (int)t->pid, t->name);
            goto out;
        }
        rel.started = true;
    }
    if (!put_locked(&job)) {
        log_warning("memory: %d rings wait to be unmapped already: the one of process %d (%s) "
                    "stays mapped until its next allocation profile or its exit",
                    RELEASE_MAX, (int)t->pid, t->name);
        goto out;
    }
    log_debug("memory: the ring in process %d (%s) is unmapped in %d s unless another run of it "
              "starts",
              (int)t->pid, t->name, RELEASE_GRACE_S);
    pthread_cond_signal(&rel.wake);
out:
    pthread_mutex_unlock(&rel.lock);
}

/* A run of t was admitted: its hooks replace the last ring, which is no longer released. */
void memrelease_cancel(const struct target *t)
{
    pthread_mutex_lock(&rel.lock);
    for (size_t i = 0; i < RELEASE_MAX; i++)
        if (rel.slot[i].target.pid && same_target(&rel.slot[i].target, t)) {
            rel.slot[i].target.pid = 0;
            log_debug("memory: a new run of process %d (%s) replaces the ring of the last one",
                      (int)t->pid, t->name);
        }
    if (rel.busy.pid && same_target(&rel.busy, t))
        rel.busy_replaced = true;
    pthread_mutex_unlock(&rel.lock);
}

/* A run must not call into its target while a release is: one tracer at a time. */
void memrelease_wait(const struct target *t)
{
    pthread_mutex_lock(&rel.lock);
    while (rel.busy.pid && same_target(&rel.busy, t))
        pthread_cond_wait(&rel.done, &rel.lock);
    pthread_mutex_unlock(&rel.lock);
}

/* The thread makes what is left as soon as the hooks accept it, then ends; an agent made again in
 * the same process (the tests) starts it again. */
void memrelease_shutdown(void)
{
    pthread_mutex_lock(&rel.lock);
    bool started = rel.started;
    rel.stopping = started;
    if (started)
        pthread_cond_signal(&rel.wake);
    pthread_mutex_unlock(&rel.lock);
    if (!started)
        return;
    pthread_join(rel.thread, NULL);
    pthread_mutex_lock(&rel.lock);
    pthread_cond_destroy(&rel.wake);
    rel.started = false;
    rel.stopping = false;
    pthread_mutex_unlock(&rel.lock);
}
