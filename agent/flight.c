/* The flight recorder's thread and state (see flight.h). The thread resolves the spec, records
 * the process until it exits or a stop, and starts over; between processes it waits on a
 * condition variable, so a stop wakes it at once and nothing polls faster than once a second.
 * One lock guards the state; the ring has its own (recorder.c), always taken after this one. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "clock.h"
#include "cpu/recorder.h"
#include "flight.h"
#include "log.h"
#include "os/procfs.h"

#define WAIT_TARGET_S 1 /* a spec that names no process is tried again this often */
#define RETRY_S 5       /* and a recording that failed */

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool on, stop;
    pthread_t thread;
    atomic_int cancel; /* ends the recording under way */
    struct recorder *rec;
    char spec[TARGET_SPEC_MAX];
    unsigned freq;
    enum recorder_mode mode;
    struct target cur; /* the process recorded now, when has_cur */
    bool has_cur;
    char note[RUN_ERROR_MAX]; /* why it records nothing now; "" when it records */
} fl = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

/* Keeps why it records nothing; "" when it records again. Called locked. True when the reason
 * is new: the caller says it, once the lock is released (a warning goes out over MQTT, and the
 * network thread takes this lock to describe the recorder). */
static bool set_note_locked(const char *text)
{
    if (strcmp(fl.note, text) == 0)
        return false;
    snprintf(fl.note, sizeof(fl.note), "%s", text);
    return true;
}

static void set_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void set_note(const char *fmt, ...)
{
    char text[RUN_ERROR_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&fl.lock);
    bool said = set_note_locked(text);
    pthread_mutex_unlock(&fl.lock);
    if (said)
        log_warning("recorder: %s", text);
}

/* Waits up to seconds or until a stop. False when stopping. */
static bool pause_s(int seconds)
{
    struct timespec ts;
    bool go;

    clock_gettime(CLOCK_REALTIME, &ts); /* the condition variable's clock */
    ts.tv_sec += seconds;
    pthread_mutex_lock(&fl.lock);
    while (!fl.stop && pthread_cond_timedwait(&fl.wake, &fl.lock, &ts) == 0)
        ;
    go = !fl.stop;
    pthread_mutex_unlock(&fl.lock);
    return go;
}

static void record_one(const struct target *t)
{
    struct cpuprof_result res = {0};
    struct stacks *s = NULL;
    struct error e;
    int r = stacks_new(t->pid, &s);

    if (r < 0) {
        set_note("cannot read process %d of %s: %s", (int)t->pid, fl.spec, strerror(-r));
        pause_s(RETRY_S);
        return;
    }
    pthread_mutex_lock(&fl.lock);
    fl.cur = *t;
    fl.has_cur = true;
    set_note_locked("");
    pthread_mutex_unlock(&fl.lock);
    log_info("recorder: recording %s (pid %d) at %u Hz, %s", fl.spec, (int)t->pid, fl.freq,
             fl.mode == RECORDER_WALL ? "on and off the CPU" : "on the CPU");
    r = recorder_run(fl.rec, t->pid, s, fl.freq, &fl.cancel, &res, &e);
    stacks_free(s);
    pthread_mutex_lock(&fl.lock);
    fl.has_cur = false;
    pthread_mutex_unlock(&fl.lock);
    if (r < 0) {
        set_note("cannot sample process %d of %s: %s", (int)t->pid, fl.spec,
                 e.reason[0] ? e.reason : strerror(-r));
        pause_s(RETRY_S);
        return;
    }
    if (res.python_fallback.code)
        log_info("recorder: process %d: %s; its Python frames are not recorded", (int)t->pid,
                 res.python_fallback.reason[0] ? res.python_fallback.reason
                                               : strerror(-res.python_fallback.code));
    if (res.stats.target_exited)
        log_info("recorder: %s (pid %d) exited; recording again when it is back", fl.spec,
                 (int)t->pid);
}

static void *flight_main(void *arg)
{
    char why[RUN_ERROR_MAX];

    (void)arg;
    for (;;) {
        struct target t;
        struct error e;

        pthread_mutex_lock(&fl.lock);
        bool stop = fl.stop;
        pthread_mutex_unlock(&fl.lock);
        if (stop)
            break;
        if (target_resolve(PROCFS_ROOT, fl.spec, &t, &e) < 0) {
            set_note("waiting for target %s: %s", fl.spec, run_target_error(&e, why, sizeof(why)));
            pause_s(WAIT_TARGET_S);
            continue;
        }
        record_one(&t);
    }
    return NULL;
}

int flight_stop(void)
{
    pthread_mutex_lock(&fl.lock);
    if (!fl.on) {
        pthread_mutex_unlock(&fl.lock);
        return -ENOENT;
    }
    fl.stop = true;
    atomic_store(&fl.cancel, 1);
    pthread_cond_broadcast(&fl.wake);
    pthread_mutex_unlock(&fl.lock);
    pthread_join(fl.thread, NULL);
    pthread_mutex_lock(&fl.lock);
    recorder_free(fl.rec);
    fl.rec = NULL;
    fl.on = false;
    fl.note[0] = '\0';
    pthread_mutex_unlock(&fl.lock);
    log_info("recorder: stopped");
    return 0;
}

int flight_start(struct run_host *host, const char *spec, char *err, size_t errlen)
{
    return flight_start_mode(host, spec, 0, err, errlen);
}

int flight_start_mode(struct run_host *host, const char *spec, enum recorder_mode mode, char *err,
                      size_t errlen)
{
    const struct config *c = host->config;
    struct recorder_limits l = {(unsigned)c->recorder_minutes, (size_t)c->recorder_max_mb << 20,
                                mode};
    struct error e;
    int r;

    pthread_mutex_lock(&fl.lock);
    bool same = fl.on && strcmp(fl.spec, spec) == 0;
    bool remode = same && mode && fl.mode != mode;
    bool other = fl.on && (!same || remode);
    pthread_mutex_unlock(&fl.lock);
    if (same && !remode)
        return 0;
    if (other)
        flight_stop();
    if (!l.mode)
        l.mode = c->recorder_mode == CONFIG_RECORDER_WALL ? RECORDER_WALL : RECORDER_CPU;
    pthread_mutex_lock(&fl.lock);
    r = recorder_new(&l, &fl.rec, &e);
    if (r < 0) {
        snprintf(err, errlen, "cannot start the recorder: %s",
                 e.reason[0] ? e.reason : strerror(-r));
        goto out;
    }
    snprintf(fl.spec, sizeof(fl.spec), "%s", spec);
    fl.freq = (unsigned)c->recorder_frequency;
    fl.mode = l.mode;
    fl.stop = false;
    fl.has_cur = false;
    fl.note[0] = '\0';
    atomic_store(&fl.cancel, 0);
    r = -pthread_create(&fl.thread, NULL, flight_main, NULL);
    if (r < 0) {
        snprintf(err, errlen, "cannot start the recorder's thread: %s", strerror(-r));
        recorder_free(fl.rec);
        fl.rec = NULL;
        goto out;
    }
    fl.on = true;
    r = remode;
out:
    pthread_mutex_unlock(&fl.lock);
    return r;
}

const char *flight_mode_name(enum recorder_mode mode)
{
    return mode == RECORDER_WALL ? "wall" : mode == RECORDER_OFF ? "off" : "cpu";
}

int flight_mode_parse(const char *name, enum recorder_mode *ret)
{
    static const enum recorder_mode modes[] = {RECORDER_CPU, RECORDER_OFF, RECORDER_WALL};

    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
        if (name && strcmp(name, flight_mode_name(modes[i])) == 0) {
            *ret = modes[i];
            return 0;
        }
    return -EINVAL;
}

static uint64_t mono_ns(void)
{
    return (uint64_t)clock_monotonic_us() * 1000u;
}

void flight_describe(struct json_object *o)
{
    struct json_object *d = json_object_new_object();
    struct recorder_stats st;
    uint64_t now = mono_ns();

    pthread_mutex_lock(&fl.lock);
    json_object_object_add(d, "enabled", json_object_new_boolean(fl.on));
    if (fl.on) {
        recorder_get_stats(fl.rec, now, &st);
        json_object_object_add(d, "target", json_object_new_string(fl.spec));
        json_object_object_add(d, "pid", fl.has_cur ? json_object_new_int(fl.cur.pid) : NULL);
        json_object_object_add(d, "frequency", json_object_new_int((int)fl.freq));
        json_object_object_add(d, "mode", json_object_new_string(flight_mode_name(fl.mode)));
        json_object_object_add(
            d, "seconds",
            run_json_decimal(st.covered_from_ns ? (double)(now - st.covered_from_ns) / 1e9 : 0, 1));
        json_object_object_add(d, "mb", run_json_decimal((double)st.bytes / (1 << 20), 2));
        json_object_object_add(d, "samples", json_object_new_int64((int64_t)st.samples));
        if (fl.mode == RECORDER_WALL)
            json_object_object_add(d, "stretches", json_object_new_int64((int64_t)st.stretches));
        json_object_object_add(d, "stacks", json_object_new_int64((int64_t)st.stacks));
        json_object_object_add(d, "error", fl.note[0] ? json_object_new_string(fl.note) : NULL);
    }
    pthread_mutex_unlock(&fl.lock);
    json_object_object_add(o, "recorder", d);
}

int flight_profile(const char *spec, const struct target *t, int64_t from_us, int64_t to_us,
                   pid_t tid, struct profile **ret, struct flight_window *w, char *err,
                   size_t errlen)
{
    /* 0: what the ring records, known under the lock. */
    return flight_profile_mode(spec, t, from_us, to_us, tid, 0, ret, w, err, errlen);
}

int flight_profile_mode(const char *spec, const struct target *t, int64_t from_us, int64_t to_us,
                        pid_t tid, enum recorder_mode mode, struct profile **ret,
                        struct flight_window *w, char *err, size_t errlen)
{
    uint64_t now = mono_ns();
    int64_t real = clock_realtime_us();
    struct recorder_stats st;
    struct error e;
    int r;

    pthread_mutex_lock(&fl.lock);
    if (!fl.on) {
        r = -ENOENT;
        snprintf(err, errlen, "the recorder is off (recorder = on, or the recorder action)");
        goto out;
    }
    if (strcmp(spec, fl.spec) != 0 &&
        !(t && fl.has_cur && fl.cur.pid == t->pid && fl.cur.starttime == t->starttime)) {
        r = -ESRCH;
        snprintf(err, errlen, "the recorder records %s, not %s", fl.spec, spec);
        goto out;
    }
    if (!mode)
        mode = fl.mode;
    if (mode & ~fl.mode) {
        r = -EOPNOTSUPP;
        snprintf(err, errlen,
                 "mode %s: the recorder records time on the CPU only (recorder_mode = cpu); "
                 "recorder_mode = wall, or the recorder action with {\"mode\": \"wall\"}, "
                 "records blocked time too",
                 flight_mode_name(mode));
        goto out;
    }
    if (to_us > real)
        to_us = real;
    if (from_us > to_us)
        from_us = to_us;
    recorder_get_stats(fl.rec, now, &st);
    /* The ring's clock is the monotonic one: the window is moved over by how long ago it was. */
    uint64_t ago_from = (uint64_t)(real - from_us) * 1000u,
             ago_to = (uint64_t)(real - to_us) * 1000u;
    uint64_t from_ns = ago_from < now ? now - ago_from : 0;
    uint64_t to_ns = ago_to < now ? now - ago_to : 0;
    w->cut = from_ns < st.covered_from_ns;
    if (w->cut) {
        from_us += (int64_t)(st.covered_from_ns - from_ns) / 1000;
        from_ns = st.covered_from_ns;
    }
    w->from_us = from_us < to_us ? from_us : to_us;
    w->to_us = to_us;
    w->frequency = fl.freq;
    w->mode = mode;
    r = recorder_profile(fl.rec, from_ns, to_ns, tid, mode, ret, w->states_ns, &e);
    if (r < 0)
        snprintf(err, errlen, "cannot build the profile: %s",
                 e.reason[0] ? e.reason : strerror(-r));
out:
    pthread_mutex_unlock(&fl.lock);
    return r;
}
