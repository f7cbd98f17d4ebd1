/* Tests of the flight recorder against real processes sampled with perf_event: the profile of
 * a window holds what the target did then (tests/workloads/phases: phase_a, then phase_b on
 * command), recording survives the target's exit and goes on with the next process, and the
 * byte cap drops the oldest samples (cpu_split with four busy threads at a high rate). */
#include <errno.h>
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
#include "testutil.h"

#define TOP_MAX 32

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

static double self_share(const struct profile *p, const char *func)
{
    struct profile_top top[TOP_MAX];
    size_t n;
    uint64_t total = profile_samples(p);

    assert_int_equal(profile_top(p, TOP_MAX, top, &n), 0);
    assert_true(total > 0);
    for (size_t i = 0; i < n; i++)
        if (strcmp(top[i].func, func) == 0)
            return (double)top[i].self_samples / (double)total;
    return 0;
}

static struct recorder *new_recorder(unsigned minutes, size_t max_bytes)
{
    struct recorder_limits l = {minutes, max_bytes};
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
    assert_int_equal(recorder_profile(rec, 0, tb, 0, &a, NULL), 0);
    assert_int_equal(recorder_profile(rec, tb, t1, 0, &b, NULL), 0);
    assert_int_equal(recorder_profile(rec, tb, t1, c.pid, &main_only, NULL), 0);
    record_join(&g, true);
    testutil_reap(&c);

    /* Two threads at 499 Hz for about 2 s each side, on a machine that may be busy. */
    assert_true(profile_samples(a) > 20 && profile_samples(b) > 20);
    assert_true(self_share(a, "phase_a") > 0.9);
    assert_true(self_share(b, "phase_b") > 0.9);
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
    assert_int_equal(recorder_profile(rec, 0, UINT64_MAX, 0, &p, NULL), 0);
    assert_int_equal(profile_samples(p), second.samples);
    assert_true(self_share(p, "work_a") > 0.6);
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
    assert_int_equal(recorder_profile(rec, 0, UINT64_MAX, 0, &p, NULL), 0);
    assert_int_equal(profile_samples(p), st.samples);
    assert_true(self_share(p, "work_a") > 0.6);
    profile_free(p);
    recorder_free(rec);
}

static void test_bad_limits(void **state)
{
    struct recorder_limits l = {0, 16u << 20};
    struct recorder *r = NULL;
    struct error e;

    (void)state;
    assert_int_equal(recorder_new(&l, &r, &e), -EINVAL);
    assert_non_null(strstr(e.reason, "minutes"));
    l.minutes = 10;
    l.max_bytes = 1000;
    assert_int_equal(recorder_new(&l, &r, &e), -EINVAL);
    assert_non_null(strstr(e.reason, "KiB"));
    assert_null(r);
    recorder_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_windows),
        cmocka_unit_test(test_target_restarts),
        cmocka_unit_test(test_byte_cap),
        cmocka_unit_test(test_bad_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
