/* The stall watch's thread (see stall.h). Each stall is a run of its own, named "stall": its
 * row is written when the stall begins (status running) and finished when it ends, as a
 * command's would be; its files are written by start's writers, from the recorder's samples of
 * the stall. The thread sleeps on a condition variable between looks, so a stop wakes it. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "actions/actions.h"
#include "agent.h"
#include "clock.h"
#include "cpu/stallwatch.h"
#include "flight.h"
#include "log.h"
#include "python/pyframes.h"
#include "registry.h"
#include "schema.h"
#include "stall.h"

#define LOOK_MS 100        /* a wait shorter than this between two looks can go unseen */
#define WAIT_TARGET_S 1    /* a target that is not running is looked for again this often */
#define EVENTS_MAX 16      /* taken per look; more wait for the next */
#define EVENT_FRAMES 16    /* frames of the stalled thread in its event, innermost first */
#define FRAME_TEXT_MAX 512 /* bytes of one of them */

/* One stall under way: its run, from its start to its end. */
struct open_stall {
    pid_t tid;
    char name[PROCFS_COMM_MAX];
    uint64_t since_ns;
    struct run *run;
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool on, stop;
    pthread_t thread;
    struct run_host *host;
    struct agent *agent;
    struct target target; /* watched now, when watch is not NULL */
    struct stallwatch *watch;
    struct open_stall open[STALLWATCH_THREADS_MAX];
    size_t nopen;
} st = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static bool pause_ms(int ms)
{
    struct timespec ts;
    bool go;

    clock_gettime(CLOCK_REALTIME, &ts); /* the condition variable's clock */
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&st.lock);
    while (!st.stop && pthread_cond_timedwait(&st.wake, &st.lock, &ts) == 0)
        ;
    go = !st.stop;
    pthread_mutex_unlock(&st.lock);
    return go;
}

/* A monotonic time in ns as a wall clock time in us. */
static int64_t wall_of(uint64_t mono_ns)
{
    return clock_realtime_us() - (clock_monotonic_us() - (int64_t)(mono_ns / 1000));
}

static void add_iso(struct json_object *o, const char *key, int64_t us)
{
    char stamp[CLOCK_ISO_MAX];

    clock_iso8601(us, stamp, sizeof(stamp));
    json_object_object_add(o, key, json_object_new_string(stamp));
}

/* The run a stall becomes: start's parameters by default, so its files are start's. */
static struct run *new_run(int64_t started_us)
{
    const struct registry_action *start = registry_find("start");
    struct run *run = calloc(1, sizeof(*run));

    if (!run)
        return NULL;
    run->agent = st.agent;
    run->host = st.host;
    run->started_us = started_us;
    run->started_mono_us = clock_monotonic_us();
    snprintf(run->action_name, sizeof(run->action_name), "%s", STALL_RUN_ACTION);
    run->params = json_object_new_object();
    if (start)
        schema_apply_defaults(start->schema, run->params);
    snprintf(run->target_spec, sizeof(run->target_spec), "%s", st.host->config->target);
    run->has_target = true;
    run->target = st.target;
    run->files = json_object_new_array();
    run->summary = json_object_new_object();
    return run;
}

static void free_run(struct run *run)
{
    json_object_put(run->params);
    json_object_put(run->files);
    json_object_put(run->summary);
    json_object_put(run->warnings);
    free(run);
}

static bool is_runtime(const char *module)
{
    const char *base = strrchr(module, '/');

    base = base ? base + 1 : module;
    return !strncmp(base, "libc.so", 7) || !strncmp(base, "libc-", 5) ||
           !strncmp(base, "ld-linux", 8) || !strncmp(base, "libpthread", 10) ||
           !strncmp(base, "libpython", 9) || !strncmp(base, "python3", 7);
}

/* What the stall is in: the innermost Python frame of a thread dump's record (lines outermost
 * first, a Python frame without a [module] bracket), else its innermost native frame outside
 * libc and the interpreter, else its innermost frame. "" when the record has none. */
static void culprit_of(const char *text, char *buf, size_t len)
{
    const char *line = strchr(text, '\n'), *native = NULL, *python = NULL, *any = NULL;

    buf[0] = '\0';
    while (line) {
        const char *s = line + 1, *end = strchr(s, '\n'), *in = strstr(s, ", in ");
        size_t n = end ? (size_t)(end - s) : strlen(s);
        const char *bracket = memchr(s, '[', n);

        line = end;
        if (!in || in > s + n)
            continue;
        any = s;
        if (!bracket)
            python = s;
        else {
            char module[256];
            const char *plus = memchr(bracket, '+', n - (size_t)(bracket - s));
            size_t m = plus ? (size_t)(plus - bracket - 1) : 0;

            snprintf(module, sizeof(module), "%.*s", (int)(m < sizeof(module) ? m : 0),
                     bracket + 1);
            if (plus && !is_runtime(module))
                native = s;
        }
    }
    const char *pick = python ? python : native ? native : any;
    if (!pick)
        return;
    const char *f = strstr(pick, ", in ") + 5, *e = f;
    while (*e && *e != '\n' && *e != ' ')
        e++;
    snprintf(buf, len, "%.*s", (int)(e - f), f);
}

/* The record's frame lines, innermost first, at most EVENT_FRAMES of them. */
static struct json_object *frames_of(const char *text)
{
    struct json_object *a = json_object_new_array();
    const char *lines[EVENT_FRAMES];
    size_t n = 0;

    for (const char *p = strchr(text, '\n'); p; p = strchr(p + 1, '\n')) {
        const char *end = strchr(p + 1, '\n'), *in = strstr(p + 1, ", in ");

        if (!in || (end && in > end))
            continue; /* not a frame: "<truncated: ...>" */
        if (n == EVENT_FRAMES)
            memmove(lines, lines + 1, --n * sizeof(*lines));
        lines[n++] = p + 1;
    }
    while (n-- > 0) {
        const char *end = strchr(lines[n], '\n');
        size_t len = end ? (size_t)(end - lines[n]) : strlen(lines[n]);
        char frame[FRAME_TEXT_MAX];

        while (len && *lines[n] == ' ') {
            lines[n]++;
            len--;
        }
        snprintf(frame, sizeof(frame), "%.*s", (int)len, lines[n]);
        json_object_array_add(a, json_object_new_string(frame));
    }
    return a;
}

static void publish(struct json_object *ev)
{
    const char *text = json_object_to_json_string_ext(ev, RUN_JSON_FLAGS);

    /* Retained: a subscriber that comes later still learns of the last stall and its end. */
    if (st.host->out.event)
        st.host->out.event(text, true, st.host->out.userdata);
    json_object_put(ev);
}

static struct json_object *event_new(const char *type, const struct open_stall *o)
{
    struct json_object *ev = json_object_new_object();

    json_object_object_add(ev, "event_type", json_object_new_string(type));
    add_iso(ev, "time", clock_realtime_us());
    json_object_object_add(ev, "target", json_object_new_string(st.host->config->target));
    json_object_object_add(ev, "pid", json_object_new_int(st.target.pid));
    json_object_object_add(ev, "thread", json_object_new_string(o->name));
    json_object_object_add(ev, "tid", json_object_new_int(o->tid));
    add_iso(ev, "since", wall_of(o->since_ns));
    json_object_object_add(ev, "run_id", o->run->id ? json_object_new_int64(o->run->id) : NULL);
    return ev;
}

static void state_changed(void)
{
    if (st.host->out.state_changed)
        st.host->out.state_changed(st.agent, st.host->out.userdata);
}

static void begun(const struct stallwatch_event *e, uint64_t now)
{
    const char *call = e->syscall < 0 ? NULL : stallwatch_syscall_name(e->syscall);
    char doing[64], culprit[256] = "", since[CLOCK_ISO_MAX];
    double seconds = (double)(now - e->since_ns) / 1e9;
    struct open_stall stall = {.tid = e->tid, .since_ns = e->since_ns}, *o = &stall;
    char *text = NULL;

    if (st.nopen == STALLWATCH_THREADS_MAX)
        return; /* as many as the watch looks at: cannot be */
    snprintf(o->name, sizeof(o->name), "%s", e->name);
    o->run = new_run(wall_of(e->since_ns));
    if (!o->run)
        return;
    if (e->syscall < 0)
        snprintf(doing, sizeof(doing), "running on a CPU");
    else if (call)
        snprintf(doing, sizeof(doing), "blocked in %s", call);
    else
        snprintf(doing, sizeof(doing), "blocked in system call %ld", e->syscall);
    clock_iso8601(wall_of(e->since_ns), since, sizeof(since));
    run_record(o->run,
               "Stall: thread %s (tid %d) of %s (pid %d) has not returned to its wait for %.1f s "
               "(since %s), %s; its threads:",
               o->name, (int)o->tid, o->run->target_spec, (int)st.target.pid, seconds, since,
               doing);
    if (action_log_thread_frames_of(o->run, o->tid, &text) < 0)
        run_warn(o->run, "no thread dump: %s", o->run->error);
    o->run->error[0] = '\0';
    if (text)
        culprit_of(text, culprit, sizeof(culprit));
    json_object_object_add(o->run->summary, "thread", json_object_new_string(o->name));
    json_object_object_add(o->run->summary, "tid", json_object_new_int(o->tid));
    json_object_object_add(o->run->summary, "state", json_object_new_string(doing));
    json_object_object_add(o->run->summary, "in",
                           culprit[0] ? json_object_new_string(culprit) : NULL);
    agent_store_run(o->run, "running");

    struct json_object *ev = event_new("stall", o);
    json_object_object_add(ev, "seconds", run_json_decimal(seconds, 1));
    json_object_object_add(ev, "state", json_object_new_string(doing));
    json_object_object_add(ev, "in", culprit[0] ? json_object_new_string(culprit) : NULL);
    json_object_object_add(ev, "frames", text ? frames_of(text) : json_object_new_array());
    publish(ev);
    free(text);
    log_warning("stall: thread %s (tid %d) of %s has not returned to its wait for %.1f s%s%s",
                o->name, (int)o->tid, o->run->target_spec, seconds, culprit[0] ? ", in " : "",
                culprit);
    pthread_mutex_lock(&st.lock);
    st.open[st.nopen++] = stall;
    pthread_mutex_unlock(&st.lock);
}

/* The recorder's profile of the stall, as the run's files. */
static void keep_profile(struct run *run, int64_t from_us, int64_t to_us)
{
    struct profile *prof = NULL;
    struct flight_window w;
    char err[RUN_ERROR_MAX];

    if (flight_profile(run->target_spec, &run->target, from_us, to_us, 0, &prof, &w, err,
                       sizeof(err)) < 0) {
        run_warn(run, "no profile of the stall: %s", err);
        return;
    }
    if (w.cut)
        run_warn(run, "the recorder holds only the last %.1f s of the stall",
                 (double)(w.to_us - w.from_us) / 1e6);
    json_object_object_add(run->summary, "samples",
                           json_object_new_int64((int64_t)profile_samples(prof)));
    if (profile_samples(prof) == 0)
        run_warn(run, "no profile of the stall: the target used no CPU time in user space then");
    else if (action_start_write(run, prof, (double)(w.to_us - w.from_us) / 1e6) < 0)
        run_warn(run, "no profile of the stall: %s", run->error);
    run->error[0] = '\0';
    profile_free(prof);
}

static void ended(const struct stallwatch_event *e)
{
    struct open_stall *o = NULL;
    size_t i;

    for (i = 0; i < st.nopen && !o; i++)
        if (st.open[i].tid == e->tid)
            o = &st.open[i];
    if (!o)
        return;
    struct run *run = o->run;
    double seconds = (double)(e->until_ns - o->since_ns) / 1e9;
    int64_t until = wall_of(e->until_ns);

    keep_profile(run, run->started_us, until);
    run->finished_us = until;
    run->ok = true;
    json_object_object_add(run->summary, "duration", run_json_decimal(seconds, 3));
    json_object_object_add(run->summary, "gone", json_object_new_boolean(e->gone));
    agent_store_run(run, "ok");
    run_record(run, "Stall ended: thread %s (tid %d) of %s (pid %d) %s after %.1f s; run %lld",
               o->name, (int)o->tid, run->target_spec, (int)st.target.pid,
               e->gone ? "is gone" : "is back in its wait", seconds, (long long)run->id);

    struct json_object *ev = event_new("stall_ended", o);
    add_iso(ev, "until", until);
    json_object_object_add(ev, "duration", run_json_decimal(seconds, 1));
    json_object_object_add(ev, "gone", json_object_new_boolean(e->gone));
    json_object_object_add(ev, "files", json_object_get(run->files));
    publish(ev);
    log_info("stall: thread %s (tid %d) of %s ended after %.1f s (run %lld)", o->name, (int)o->tid,
             run->target_spec, seconds, (long long)run->id);
    free_run(run);
    pthread_mutex_lock(&st.lock);
    *o = st.open[--st.nopen];
    pthread_mutex_unlock(&st.lock);
}

/* A new watch of the target, if it runs. */
static int watch_target(void)
{
    const struct config *c = st.host->config;
    struct pyframes *py = NULL;
    struct stallwatch *w = NULL;
    uint64_t lo = 0, hi = 0;
    char version[PYFRAMES_VERSION_MAX];
    struct target t;
    struct error e;
    int r = target_resolve(PROCFS_ROOT, c->target, &t, &e);

    if (r < 0)
        return r;
    /* A Python target's GIL: a thread waiting for it runs Python, it does not wait. */
    if (pyframes_attach(t.pid, version, sizeof(version), &py, &e) == 0) {
        pyframes_gil_range(py, &lo, &hi);
        pyframes_free(py);
    }
    r = stallwatch_new(PROCFS_ROOT, t.pid, c->stall_thread,
                       (uint64_t)c->stall_seconds * 1000000000u, lo, hi, &w, &e);
    if (r < 0)
        return r;
    pthread_mutex_lock(&st.lock);
    st.target = t;
    st.watch = w;
    pthread_mutex_unlock(&st.lock);
    log_info("stall watch: thread %s of %s (pid %d), %d s", c->stall_thread, c->target, (int)t.pid,
             c->stall_seconds);
    return 0;
}

static void *stall_main(void *arg)
{
    struct stallwatch_event ev[EVENTS_MAX];

    (void)arg;
    for (;;) {
        size_t n = 0;
        int r;

        if (!st.watch && watch_target() < 0) {
            if (!pause_ms(WAIT_TARGET_S * 1000))
                break;
            continue;
        }
        uint64_t now = (uint64_t)clock_monotonic_us() * 1000u;
        r = stallwatch_check(st.watch, now, ev, EVENTS_MAX, &n);
        for (size_t i = 0; i < n; i++) {
            if (ev[i].kind == STALLWATCH_BEGUN)
                begun(&ev[i], now);
            else
                ended(&ev[i]);
        }
        if (n)
            state_changed();
        if (r < 0 && n < EVENTS_MAX) {
            pthread_mutex_lock(&st.lock);
            stallwatch_free(st.watch);
            st.watch = NULL;
            pthread_mutex_unlock(&st.lock);
        }
        if (!pause_ms(LOOK_MS))
            break;
    }
    /* Stalls the stop cut short: their runs end interrupted. */
    for (size_t i = 0; i < st.nopen; i++) {
        struct run *run = st.open[i].run;

        run->finished_us = clock_realtime_us();
        run_warn(run, "the agent stopped during the stall");
        agent_store_run(run, "interrupted");
        free_run(run);
    }
    st.nopen = 0;
    stallwatch_free(st.watch);
    st.watch = NULL;
    return NULL;
}

int stall_start(struct run_host *host, struct agent *a, char *err, size_t errlen)
{
    int r;

    if (host->config->stall_seconds <= 0)
        return 0;
    if (!host->config->stall_thread[0]) {
        snprintf(err, errlen, "stall_thread: name a thread, MainThread or all");
        return -EINVAL;
    }
    pthread_mutex_lock(&st.lock);
    st.host = host;
    st.agent = a;
    st.stop = false;
    r = st.on ? 0 : -pthread_create(&st.thread, NULL, stall_main, NULL);
    if (r < 0)
        snprintf(err, errlen, "cannot start the stall watch: %s", strerror(-r));
    else
        st.on = true;
    pthread_mutex_unlock(&st.lock);
    return r;
}

void stall_stop(void)
{
    pthread_mutex_lock(&st.lock);
    if (!st.on) {
        pthread_mutex_unlock(&st.lock);
        return;
    }
    st.stop = true;
    pthread_cond_broadcast(&st.wake);
    pthread_mutex_unlock(&st.lock);
    pthread_join(st.thread, NULL);
    pthread_mutex_lock(&st.lock);
    st.on = false;
    pthread_mutex_unlock(&st.lock);
}

void stall_describe(struct json_object *o)
{
    struct json_object *d = json_object_new_object(), *list = json_object_new_array();

    pthread_mutex_lock(&st.lock);
    json_object_object_add(d, "seconds",
                           json_object_new_int(st.on ? st.host->config->stall_seconds : 0));
    if (st.on)
        json_object_object_add(d, "thread", json_object_new_string(st.host->config->stall_thread));
    json_object_object_add(d, "pid", st.watch ? json_object_new_int(st.target.pid) : NULL);
    for (size_t i = 0; i < st.nopen; i++) {
        struct json_object *s = json_object_new_object();

        json_object_object_add(s, "thread", json_object_new_string(st.open[i].name));
        json_object_object_add(s, "tid", json_object_new_int(st.open[i].tid));
        add_iso(s, "since", wall_of(st.open[i].since_ns));
        json_object_array_add(list, s);
    }
    pthread_mutex_unlock(&st.lock);
    json_object_object_add(d, "stalled", list);
    json_object_object_add(o, "stall", d);
}
