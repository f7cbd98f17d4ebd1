/* Tests of the flight recorder against real processes sampled with perf_event: the profile of
 * a window holds what the target did then (tests/workloads/phases: phase_a, then phase_b on
 * command), recording survives the target's exit and goes on with the next process, the byte
 * cap drops the oldest samples (cpu_split with four busy threads at a high rate), and in wall
 * mode the time threads spend blocked is kept by where they blocked (sleep_split: 75% asleep in
 * sleep_long, 25% in sleep_short), cut to the window asked, counted while still blocked
 * (loop_stall stuck in read for 5 s). */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include "cpu/recorder.h"
#include "formats/profile_priv.h"
#include "profileutil.h"
#include "testutil.h"

static uint64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* recorder_run on its own thread, as the agent runs it. */
struct recording {
    struct recorder *rec;
    pid_t pid;
    unsigned freq;
    atomic_int cancel;
    pthread_t thread;
    struct cpuprof_result res;
    int r;
};

static void *record_main(void *arg)
{
    struct recording *g = arg;
    struct stacks *s;

    g->r = stacks_new(g->pid, &s);
    if (g->r == 0) {
        g->r = recorder_run(g->rec, g->pid, s, g->freq, &g->cancel, &g->res, NULL);
        stacks_free(s);
    }
    return NULL;
}

static void record_start(struct recording *g, struct recorder *rec, pid_t pid, unsigned freq)
{
    memset(g, 0, sizeof(*g));
    g->rec = rec;
    g->pid = pid;
    g->freq = freq;
    assert_int_equal(pthread_create(&g->thread, NULL, record_main, g), 0);
}

static void record_join(struct recording *g, bool cancel)
{
    if (cancel)
        atomic_store(&g->cancel, 1);
    assert_int_equal(pthread_join(g->thread, NULL), 0);
    assert_int_equal(g->r, 0);
    assert_null(g->res.profile);
}

/* The time under func (in it or what it called) over all the profile's time, and that time
 * (ns): what pstats calls cumulative, read from the profile's own tables. */
static double time_share(const struct profile *p, const char *func, uint64_t *total_ns)
{
    uint64_t under = 0;

    for (size_t i = 0; i < p->nfunc; i++)
        if (p->str[p->func[i].name] && strcmp(p->str[p->func[i].name], func) == 0)
            under += p->func[i].total_ns;
    if (total_ns)
        *total_ns = p->total_ns;
    return p->total_ns ? (double)under / (double)p->total_ns : 0;
}

static struct recorder *new_recorder(unsigned minutes, size_t max_bytes)
{
    struct recorder_limits l = {minutes, max_bytes, RECORDER_CPU};
    struct recorder *r;

    assert_int_equal(recorder_new(&l, &r, NULL), 0);
    return r;
}

static void test_windows(void **state)
{
    struct recorder *rec = new_recorder(10, 16u << 20);
    struct testutil_child c;
    struct recording g;
    struct recorder_stats st;
    struct profile *a, *b, *main_only;
    char line[64];

    (void)state;
    assert_int_equal(testutil_spawn_args(&c, "phases", "--threads", "1", NULL, line, sizeof(line)),
                     0);
    assert_string_equal(line, "ready");
    uint64_t t0 = mono_ns();
    record_start(&g, rec, c.pid, 499);
    sleep_s(2);
    assert_int_equal(write(c.in, "b", 1), 1);
    assert_int_equal(testutil_read_line(c.out, line, sizeof(line), 5000), 0);
    assert_string_equal(line, "phase b");
    uint64_t tb = mono_ns();
    sleep_s(2);
    uint64_t t1 = mono_ns();

    /* Read while it records. */
    recorder_get_stats(rec, t1, &st);
    assert_true(st.recording);
    assert_true(st.covered_from_ns >= t0 && st.covered_from_ns <= t0 + 1000000000u);
    assert_true(st.samples > 0 && st.stacks > 0 && st.bytes > 0 && st.bytes <= 16u << 20);
    assert_int_equal(recorder_profile(rec, 0, tb, 0, RECORDER_CPU, &a, NULL, NULL), 0);
    assert_int_equal(recorder_profile(rec, tb, t1, 0, RECORDER_CPU, &b, NULL, NULL), 0);
    assert_int_equal(recorder_profile(rec, tb, t1, c.pid, RECORDER_CPU, &main_only, NULL, NULL), 0);
    record_join(&g, true);
    testutil_reap(&c);

    /* Two threads at 499 Hz for about 2 s each side, on a machine that may be busy. */
    assert_true(profile_samples(a) > 20 && profile_samples(b) > 20);
    assert_true(profileutil_self_share(a, "phase_a") > 0.9);
    assert_true(profileutil_self_share(b, "phase_b") > 0.9);
    assert_true(profile_samples(main_only) > 5);
    assert_true(profile_samples(main_only) < profile_samples(b));
    assert_true(profile_samples(a) + profile_samples(b) <= st.samples + 2000);
    profile_free(a);
    profile_free(b);
    profile_free(main_only);
    recorder_free(rec);
}

/* One recorder, two processes one after the other: the first's samples stay. */
static void test_target_restarts(void **state)
{
    struct recorder *rec = new_recorder(10, 16u << 20);
    struct testutil_child c;
    struct recording g;
    struct recorder_stats first, second;
    struct profile *p;
    char line[64];

    (void)state;
    uint64_t t0 = mono_ns();
    for (int i = 0; i < 2; i++) {
        assert_int_equal(
            testutil_spawn_args(&c, "cpu_split", "--exit-after", "1", NULL, line, sizeof(line)), 0);
        record_start(&g, rec, c.pid, 199);
        record_join(&g, false); /* ends by itself when the target exits */
        assert_true(g.res.stats.target_exited);
        testutil_reap(&c);
        recorder_get_stats(rec, mono_ns(), i ? &second : &first);
    }
    assert_false(second.recording);
    assert_true(first.samples > 10);
    assert_true(second.samples > first.samples + 10);
    assert_true(second.covered_from_ns == first.covered_from_ns && first.covered_from_ns >= t0);
    assert_int_equal(second.dropped, 0);
    assert_int_equal(recorder_profile(rec, 0, UINT64_MAX, 0, RECORDER_CPU, &p, NULL, NULL), 0);
    assert_int_equal(profile_samples(p), second.samples);
    assert_true(profileutil_self_share(p, "work_a") > 0.6);
    profile_free(p);
    recorder_free(rec);
}

/* Four busy threads at a high rate fill the smallest cap in seconds: the oldest go. */
static void test_byte_cap(void **state)
{
    struct recorder *rec = new_recorder(10, RECORDER_MIN_BYTES);
    struct testutil_child c;
    struct recording g;
    struct recorder_stats st;
    struct profile *p;
    char line[64];

    (void)state;
    assert_int_equal(
        testutil_spawn_args(&c, "cpu_split", "--threads", "3", NULL, line, sizeof(line)), 0);
    uint64_t t0 = mono_ns();
    record_start(&g, rec, c.pid, 4999);
    sleep_s(8);
    record_join(&g, true);
    testutil_reap(&c);
    recorder_get_stats(rec, mono_ns(), &st);
    assert_true(st.dropped > 0);
    assert_true(st.bytes <= RECORDER_MIN_BYTES);
    assert_true(st.covered_from_ns > t0);
    assert_int_equal(recorder_profile(rec, 0, UINT64_MAX, 0, RECORDER_CPU, &p, NULL, NULL), 0);
    assert_int_equal(profile_samples(p), st.samples);
    assert_true(profileutil_self_share(p, "work_a") > 0.6);
    profile_free(p);
    recorder_free(rec);
}

/* Wall mode on a thread that only sleeps: the off-CPU time splits 75/25 by where it slept, a
 * window's stretches are cut to its edges (a single thread blocked all the time fills the
 * window), wall is on-CPU plus off-CPU, and a CPU ring has no off-CPU time to give. */
static void test_wall_mode(void **state)
{
    struct recorder_limits l = {10, 16u << 20, RECORDER_WALL};
    struct recorder *rec, *cpu_only = new_recorder(10, 16u << 20);
    struct testutil_child c;
    struct recording g;
    struct recorder_stats st;
    struct profile *off, *cut, *wall, *oncpu, *p;
    uint64_t states[CPUPROF_NSTATES], off_ns, cut_ns, wall_ns, cpu_ns;
    struct error e;
    char line[64];

    (void)state;
    assert_int_equal(recorder_new(&l, &rec, NULL), 0);
    assert_int_equal(testutil_spawn(&c, "sleep_split", NULL, line, sizeof(line)), 0);
    record_start(&g, rec, c.pid, 49);
    sleep_s(1);
    uint64_t t0 = mono_ns();
    sleep_s(3);
    uint64_t t1 = mono_ns();
    sleep_s(0.5); /* the stretches up to t1 are settled */
    record_join(&g, true);
    testutil_reap(&c);

    assert_int_equal(recorder_profile(rec, t0, t1, 0, RECORDER_OFF, &off, states, NULL), 0);
    assert_true(fabs(time_share(off, "sleep_long", &off_ns) - 0.75) <= 0.03);
    assert_true(fabs(time_share(off, "sleep_short", NULL) - 0.25) <= 0.03);
    assert_true(states[CPUPROF_SYSCALL] > states[CPUPROF_RUNNING] * 10);
    assert_int_equal(states[CPUPROF_GIL], 0);
    /* One thread, off the CPU all but a sliver of the time: the window, whose edges fall
     * inside 30 ms and 10 ms naps, is all there. */
    assert_true(off_ns <= t1 - t0 && off_ns >= (t1 - t0) * 95 / 100);
    /* A window of 0.2 s at an odd place: 0.2 s. */
    uint64_t a = t0 + 1234567890u, b = a + 200000000u;
    assert_int_equal(recorder_profile(rec, a, b, 0, RECORDER_OFF, &cut, NULL, NULL), 0);
    time_share(cut, "sleep_long", &cut_ns);
    assert_true(cut_ns <= b - a && cut_ns >= (b - a) * 95 / 100);

    assert_int_equal(recorder_profile(rec, t0, t1, 0, RECORDER_WALL, &wall, NULL, NULL), 0);
    assert_int_equal(recorder_profile(rec, t0, t1, 0, RECORDER_CPU, &oncpu, NULL, NULL), 0);
    time_share(wall, "sleep_long", &wall_ns);
    cpu_ns = 0;
    if (profile_samples(oncpu))
        time_share(oncpu, "main", &cpu_ns);
    assert_true(wall_ns == off_ns + cpu_ns);
    assert_true(profile_samples(wall) == profile_samples(off) + profile_samples(oncpu));

    recorder_get_stats(rec, mono_ns(), &st);
    assert_true(st.stretches > 0 && st.stretches <= st.samples);

    /* A ring of on-CPU samples says so. */
    assert_int_equal(recorder_profile(cpu_only, 0, UINT64_MAX, 0, RECORDER_OFF, &p, NULL, &e),
                     -EOPNOTSUPP);
    assert_non_null(strstr(e.reason, "time on a CPU only"));
    assert_int_equal(recorder_profile(cpu_only, 0, UINT64_MAX, 0, RECORDER_WALL, &p, NULL, &e),
                     -EOPNOTSUPP);
    profile_free(off);
    profile_free(cut);
    profile_free(wall);
    profile_free(oncpu);
    recorder_free(rec);
    recorder_free(cpu_only);
}

/* A thread that blocks 1,300 times a second in one place (switchy: 0.2 ms of work, 0.5 ms in
 * nap) and one blocked all along (its main thread, in pause): the worker's stretches share a
 * sample per sampling period, yet every thread still weighs all of a window's time. */
static void test_merged_stretches(void **state)
{
    struct recorder_limits l = {10, 16u << 20, RECORDER_WALL};
    struct recorder *rec;
    struct testutil_child c;
    struct recording g;
    struct recorder_stats st;
    struct profile *p;
    uint64_t total;
    char line[64];

    (void)state;
    assert_int_equal(recorder_new(&l, &rec, NULL), 0);
    assert_int_equal(testutil_spawn(&c, "switchy", NULL, line, sizeof(line)), 0);
    uint64_t start = mono_ns();
    record_start(&g, rec, c.pid, 49);
    sleep_s(1);
    uint64_t t0 = mono_ns();
    sleep_s(2);
    uint64_t t1 = mono_ns();
    sleep_s(0.5);
    record_join(&g, true);
    uint64_t end = mono_ns();
    testutil_reap(&c);

    recorder_get_stats(rec, end, &st);
    /* Without sharing: some 4,000 stretches of the worker. With it: about one per period (and
     * one more per on-CPU sample between). */
    assert_true(st.stretches > 0);
    assert_true(st.stretches < 3 * 49 * (end - start) / 1000000000u);
    assert_int_equal(recorder_profile(rec, t0, t1, 0, RECORDER_WALL, &p, NULL, NULL), 0);
    double nap = time_share(p, "nap", &total), parked = time_share(p, "main", NULL);
    /* Two threads, all of the 2 s each, the window's edges cut within a period. */
    assert_true(total >= 2 * (t1 - t0) * 95 / 100 && total <= 2 * (t1 - t0) * 105 / 100);
    assert_true(nap > 0.2 && parked > 0.45);
    profile_free(p);
    recorder_free(rec);
}

/* A thread blocked now (loop_stall stuck in read() for 5 s): its stretch is not over, yet a
 * profile of the last second shows it, in read_config_slowly, and only it for that thread. */
static void test_blocked_now(void **state)
{
    struct recorder_limits l = {10, 16u << 20, RECORDER_WALL};
    struct recorder *rec;
    struct testutil_child c;
    struct recording g;
    struct profile *p;
    uint64_t total;
    char line[64];

    (void)state;
    assert_int_equal(recorder_new(&l, &rec, NULL), 0);
    assert_int_equal(testutil_spawn(&c, "loop_stall", NULL, line, sizeof(line)), 0);
    record_start(&g, rec, c.pid, 49);
    sleep_s(1);
    assert_int_equal(write(c.in, "r", 1), 1);
    sleep_s(2.5);
    uint64_t now = mono_ns();
    assert_int_equal(
        recorder_profile(rec, now - 1000000000u, now, c.pid, RECORDER_OFF, &p, NULL, NULL), 0);
    assert_true(time_share(p, "read_config_slowly", &total) > 0.99);
    assert_true(total >= 990000000u && total <= 1000000000u);
    profile_free(p);
    assert_int_equal(testutil_read_line(c.out, line, sizeof(line), 10000), 0);
    assert_string_equal(line, "done");
    record_join(&g, true);
    testutil_reap(&c);
    recorder_free(rec);
}

static void test_bad_limits(void **state)
{
    struct recorder_limits l = {0, 16u << 20, RECORDER_CPU};
    struct recorder *r = NULL;
    struct error e;

    (void)state;
    assert_int_equal(recorder_new(&l, &r, &e), -EINVAL);
    assert_non_null(strstr(e.reason, "minutes"));
    l.minutes = 10;
    l.max_bytes = 1000;
    assert_int_equal(recorder_new(&l, &r, &e), -EINVAL);
    assert_non_null(strstr(e.reason, "KiB"));
    l.max_bytes = 16u << 20;
    l.mode = RECORDER_OFF; /* a profile's choice, not a recording's */
    assert_int_equal(recorder_new(&l, &r, &e), -EINVAL);
    assert_non_null(strstr(e.reason, "wall-clock"));
    assert_null(r);
    recorder_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_windows),          cmocka_unit_test(test_target_restarts),
        cmocka_unit_test(test_byte_cap),         cmocka_unit_test(test_wall_mode),
        cmocka_unit_test(test_merged_stretches), cmocka_unit_test(test_blocked_now),
        cmocka_unit_test(test_bad_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
