/* `start` over a window the flight recorder already holds, instead of a new run: "last": S
 * seconds up to now, or "from" (and "to", else now) as ISO 8601 times, of the time on the CPU,
 * off it, or both ("mode", as a live `start`; off and wall need recorder_mode = wall). It
 * answers at once, with the files a live `start` writes, from samples taken before the command
 * came. Not the ring (flight.c, engine/cpu/recorder.c), nor the writers (start.c). */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "actions.h"
#include "clock.h"
#include "flight.h"
#include "formats/profile.h"
#include "run.h"

#define ISO_EXAMPLE "2026-11-24T22:00:00Z"
#define US 1000000

bool action_start_is_window(const struct run *run)
{
    return json_object_object_get_ex(run->params, "last", NULL) ||
           json_object_object_get_ex(run->params, "from", NULL) ||
           json_object_object_get_ex(run->params, "to", NULL);
}

/* n decimal digits at *p into *ret, within [lo, hi]. */
static bool digits(const char **p, int n, int lo, int hi, int *ret)
{
    int v = 0;

    for (int i = 0; i < n; i++, (*p)++) {
        if (**p < '0' || **p > '9')
            return false;
        v = v * 10 + (**p - '0');
    }
    *ret = v;
    return v >= lo && v <= hi;
}

static bool expect(const char **p, char c)
{
    if (**p != c)
        return false;
    (*p)++;
    return true;
}

/* YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM), as results write times, into microseconds
 * since the epoch. */
static int parse_iso(const char *s, int64_t *ret)
{
    struct tm tm = {0};
    int y, mo, d, h, mi, sec, frac_us = 0, oh = 0, om = 0, sign = 0;
    const char *p = s;

    if (!digits(&p, 4, 1970, 9999, &y) || !expect(&p, '-') || !digits(&p, 2, 1, 12, &mo) ||
        !expect(&p, '-') || !digits(&p, 2, 1, 31, &d) || !(expect(&p, 'T') || expect(&p, ' ')) ||
        !digits(&p, 2, 0, 23, &h) || !expect(&p, ':') || !digits(&p, 2, 0, 59, &mi) ||
        !expect(&p, ':') || !digits(&p, 2, 0, 60, &sec))
        return -EINVAL;
    if (expect(&p, '.')) {
        int scale = 100000, n = 0;

        for (; *p >= '0' && *p <= '9'; p++, n++)
            if (scale) {
                frac_us += (*p - '0') * scale;
                scale /= 10;
            }
        if (n == 0)
            return -EINVAL;
    }
    if (expect(&p, '+'))
        sign = 1;
    else if (expect(&p, '-'))
        sign = -1;
    else if (!expect(&p, 'Z'))
        return -EINVAL;
    if (sign && (!digits(&p, 2, 0, 23, &oh) || !expect(&p, ':') || !digits(&p, 2, 0, 59, &om)))
        return -EINVAL;
    if (*p)
        return -EINVAL;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return -EINVAL;
    *ret = ((int64_t)t - sign * (oh * 3600 + om * 60)) * US + frac_us;
    return 0;
}

static int time_param(struct run *run, const char *key, int64_t *ret)
{
    struct json_object *v;

    if (!json_object_object_get_ex(run->params, key, &v))
        return 0;
    if (parse_iso(json_object_get_string(v), ret) < 0)
        return run_fail(run, "%s: '%s' is not an ISO 8601 time such as %s", key,
                        json_object_get_string(v), ISO_EXAMPLE);
    return 1;
}

/* What the window's time went to, as a live wall-clock start says it: samples of its rate. */
static void add_states(struct run *run, const struct flight_window *w)
{
    static const char *const names[CPUPROF_NSTATES] = {
        [CPUPROF_RUNNING] = "running", [CPUPROF_SYSCALL] = "syscall", [CPUPROF_GIL] = "gil"};
    struct json_object *st = json_object_new_object();

    for (int i = 0; i < CPUPROF_NSTATES; i++)
        json_object_object_add(
            st, names[i],
            json_object_new_int64(
                (int64_t)((w->states_ns[i] * w->frequency + 500000000u) / 1000000000u)));
    json_object_object_add(run->summary, "states", st);
}

static void add_time(struct run *run, const char *key, int64_t us)
{
    char stamp[CLOCK_ISO_MAX];

    clock_iso8601(us, stamp, sizeof(stamp));
    json_object_object_add(run->summary, key, json_object_new_string(stamp));
}

int action_start_window(struct run *run)
{
    int keep_s = run->host->config->recorder_minutes * 60;
    int64_t now = clock_realtime_us(), from = 0, to = now;
    struct profile *prof = NULL;
    struct flight_window w;
    struct json_object *v;
    enum recorder_mode mode = RECORDER_CPU;
    char err[RUN_ERROR_MAX], stamp[CLOCK_ISO_MAX];
    int r;

    if (json_object_object_get_ex(run->params, "mode", &v) &&
        flight_mode_parse(json_object_get_string(v), &mode) < 0)
        return run_fail(run, "mode: cpu, off or wall");
    if (json_object_object_get_ex(run->params, "last", &v)) {
        double last = json_object_get_double(v);

        if (json_object_object_get_ex(run->params, "from", NULL) ||
            json_object_object_get_ex(run->params, "to", NULL))
            return run_fail(run, "give either last, or from (and to), not both");
        if (last > keep_s)
            return run_fail(run,
                            "last: the recorder keeps %d s (recorder_minutes = %d); ask for at "
                            "most that",
                            keep_s, run->host->config->recorder_minutes);
        from = now - (int64_t)(last * US);
    } else {
        r = time_param(run, "from", &from);
        if (r == 0)
            return run_fail(run, "to needs from: the window's start");
        if (r < 0 || time_param(run, "to", &to) < 0)
            return -EINVAL;
        if (from >= now)
            return run_fail(run, "from is in the future");
        if (to <= from)
            return run_fail(run, "to must be after from");
    }
    r = flight_profile_mode(run->target_spec, &run->target, from, to, 0, mode, &prof, &w, err,
                            sizeof(err));
    if (r < 0)
        return run_fail(run, "%s", err);
    double seconds = (double)(w.to_us - w.from_us) / US;
    if (w.cut) {
        clock_iso8601(w.from_us, stamp, sizeof(stamp));
        run_warn(run, "the recorder holds samples since %s only: %.1f s of the %.1f s asked", stamp,
                 seconds, (double)(to - from) / US);
    }
    json_object_object_add(run->summary, "samples",
                           json_object_new_int64((int64_t)profile_samples(prof)));
    json_object_object_add(run->summary, "truncated",
                           json_object_new_int64((int64_t)profile_truncated(prof)));
    json_object_object_add(run->summary, "seconds", run_json_decimal(seconds, 3));
    json_object_object_add(run->summary, "frequency", json_object_new_int((int)w.frequency));
    json_object_object_add(run->summary, "method", json_object_new_string("recorder"));
    json_object_object_add(run->summary, "mode", json_object_new_string(flight_mode_name(mode)));
    if (mode != RECORDER_CPU)
        add_states(run, &w);
    add_time(run, "from", w.from_us);
    add_time(run, "to", w.to_us);
    if (profile_samples(prof) == 0)
        r = run_fail(run, "no samples: the target used no CPU time in user space in that window%s",
                     mode == RECORDER_CPU ? "" : ", nor was any thread off the CPU");
    else
        r = action_start_write(run, prof, seconds);
    profile_free(prof);
    return r;
}
