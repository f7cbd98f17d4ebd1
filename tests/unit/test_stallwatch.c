/* Tests of the stall watch against /proc trees written here (what each thread's syscall file
 * says at each look: epoll_wait, read, futex on or off the GIL, running), and once against a
 * real event loop (tests/workloads/loop_stall) blocked in read and spinning. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <cmocka.h>
#include "cpu/stallwatch.h"
#include "testutil.h"

#define PID 4242
#define S 1000000000ull
#define GIL 0x7000

struct tree {
    char root[64];
};

static void put(const struct tree *t, pid_t tid, const char *file, const char *text)
{
    char path[256];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%d", t->root, PID);
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/%d/task", t->root, PID);
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/%d/task/%d", t->root, PID, (int)tid);
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/%d/task/%d/%s", t->root, PID, (int)tid, file);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Thread tid blocked in call nr with first argument a0. */
static void in_call(const struct tree *t, pid_t tid, long nr, unsigned long a0)
{
    char line[128];

    snprintf(line, sizeof(line), "%ld 0x%lx 0x0 0x0 0x0 0x0 0x0 0x7ffd0000 0x401000\n", nr, a0);
    put(t, tid, "syscall", line);
}

static void running(const struct tree *t, pid_t tid)
{
    put(t, tid, "syscall", "running\n");
}

static void thread(const struct tree *t, pid_t tid, const char *comm)
{
    char line[32];

    snprintf(line, sizeof(line), "%s\n", comm);
    put(t, tid, "comm", line);
    running(t, tid);
}

static void remove_tree(const char *dir)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static int setup(void **state)
{
    struct tree *t = calloc(1, sizeof(*t));

    snprintf(t->root, sizeof(t->root), "/tmp/test_stallwatch.XXXXXX");
    if (!mkdtemp(t->root))
        return -1;
    thread(t, PID, "loop");
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    struct tree *t = *state;

    remove_tree(t->root);
    free(t);
    return 0;
}

static size_t check(struct stallwatch *w, uint64_t now, struct stallwatch_event *ev, int want)
{
    size_t n = 99;

    assert_int_equal(stallwatch_check(w, now, ev, 8, &n), want);
    return n;
}

static void test_main_thread_blocked_in_read(void **state)
{
    struct tree *t = *state;
    struct stallwatch *w;
    struct stallwatch_event ev[8];

    assert_int_equal(stallwatch_new(t->root, PID, STALLWATCH_MAIN, 2 * S, 0, 0, &w, NULL), 0);
    running(t, PID); /* never seen waiting: not armed, never stalled */
    assert_int_equal(check(w, 0, ev, 0), 0);
    assert_int_equal(check(w, 5 * S, ev, 0), 0);
    in_call(t, PID, SYS_epoll_wait, 3);
    assert_int_equal(check(w, 6 * S, ev, 0), 0);
    in_call(t, PID, SYS_read, 7);
    assert_int_equal(check(w, 7 * S, ev, 0), 0);
    assert_int_equal(check(w, 8 * S - 1, ev, 0), 0);
    assert_int_equal(check(w, 8 * S, ev, 0), 1);
    assert_int_equal(ev[0].kind, STALLWATCH_BEGUN);
    assert_int_equal(ev[0].tid, PID);
    assert_string_equal(ev[0].name, "loop");
    assert_int_equal(ev[0].since_ns, 6 * S);
    assert_int_equal(ev[0].syscall, SYS_read);
    assert_string_equal(stallwatch_syscall_name(ev[0].syscall), "read");
    running(t, PID);
    assert_int_equal(check(w, 9 * S, ev, 0), 0); /* told once */
    in_call(t, PID, SYS_epoll_wait, 3);
    assert_int_equal(check(w, 10 * S, ev, 0), 1);
    assert_int_equal(ev[0].kind, STALLWATCH_ENDED);
    assert_int_equal(ev[0].since_ns, 6 * S);
    assert_int_equal(ev[0].until_ns, 10 * S);
    assert_int_equal(ev[0].syscall, -1); /* last seen running */
    assert_false(ev[0].gone);
    stallwatch_free(w);
}

/* An event loop's futex wait is a stall (it waits on another thread); a worker's is its idle
 * wait, but not on the GIL. */
static void test_futex(void **state)
{
    struct tree *t = *state;
    struct stallwatch *w;
    struct stallwatch_event ev[8];

    thread(t, PID + 1, "worker");
    assert_int_equal(
        stallwatch_new(t->root, PID, STALLWATCH_ALL, 2 * S, GIL, GIL + 0x100, &w, NULL), 0);
    in_call(t, PID, SYS_epoll_wait, 3);
    in_call(t, PID + 1, SYS_futex, 0x9000);
    assert_int_equal(check(w, 0, ev, 0), 0);
    in_call(t, PID, SYS_futex, 0x9000);
    assert_int_equal(check(w, 1 * S, ev, 0), 0);
    assert_int_equal(check(w, 3 * S, ev, 0), 1);
    assert_int_equal(ev[0].tid, PID);
    assert_int_equal(ev[0].kind, STALLWATCH_BEGUN);
    /* The worker waits on the GIL: it runs Python, and does not come back to its wait. */
    in_call(t, PID + 1, SYS_futex, GIL + 8);
    assert_int_equal(check(w, 4 * S, ev, 0), 0);
    assert_int_equal(check(w, 5 * S, ev, 0), 1);
    assert_int_equal(ev[0].tid, PID + 1);
    assert_string_equal(ev[0].name, "worker");
    assert_int_equal(ev[0].since_ns, 3 * S);
    /* The worker goes while stalled: its stall ends, gone. */
    remove_tree(t->root);
    assert_int_equal(mkdir(t->root, 0755), 0);
    in_call(t, PID, SYS_futex, 0x9000);
    assert_int_equal(check(w, 7 * S, ev, 0), 1);
    assert_int_equal(ev[0].tid, PID + 1);
    assert_int_equal(ev[0].kind, STALLWATCH_ENDED);
    assert_true(ev[0].gone);
    /* Then the process: every open stall ends. */
    remove_tree(t->root);
    assert_int_equal(mkdir(t->root, 0755), 0);
    assert_int_equal(check(w, 8 * S, ev, -ESRCH), 1);
    assert_int_equal(ev[0].tid, PID);
    assert_true(ev[0].gone);
    stallwatch_free(w);
}

static void test_named(void **state)
{
    struct tree *t = *state;
    struct stallwatch *w;
    struct stallwatch_event ev[8];
    struct error e;

    thread(t, PID + 1, "worker");
    thread(t, PID + 2, "poller");
    assert_int_equal(stallwatch_new(t->root, PID, "poller", S, 0, 0, &w, NULL), 0);
    in_call(t, PID, SYS_epoll_wait, 3);
    in_call(t, PID + 1, SYS_poll, 3);
    in_call(t, PID + 2, SYS_poll, 3);
    assert_int_equal(check(w, 0, ev, 0), 0);
    running(t, PID);
    running(t, PID + 1);
    running(t, PID + 2);
    assert_int_equal(check(w, 2 * S, ev, 0), 1);
    assert_int_equal(ev[0].tid, PID + 2);
    stallwatch_free(w);
    assert_int_equal(stallwatch_new(t->root, PID, "a_name_too_long_for_comm", S, 0, 0, &w, &e),
                     -EINVAL);
    assert_int_equal(stallwatch_new(t->root, PID, STALLWATCH_ALL, 0, 0, 0, &w, &e), -EINVAL);
    assert_null(stallwatch_syscall_name(100000));
}

static uint64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * S + (uint64_t)ts.tv_nsec;
}

/* Looks every 100 ms at loop_stall until a stall begins and ends; how long it lasted. */
static double watch_one(struct stallwatch *w, struct testutil_child *c, char cmd, long *syscall)
{
    struct stallwatch_event ev[8];
    uint64_t begun = 0, deadline = mono_ns() + 15 * S;
    char line[32];

    assert_int_equal(write(c->in, &cmd, 1), 1);
    while (mono_ns() < deadline) {
        size_t n = 0;

        usleep(100000);
        assert_int_equal(stallwatch_check(w, mono_ns(), ev, 8, &n), 0);
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(ev[i].tid, c->pid);
            if (ev[i].kind == STALLWATCH_BEGUN) {
                begun = ev[i].since_ns;
                *syscall = ev[i].syscall;
            } else {
                assert_int_equal(ev[i].since_ns, begun);
                assert_int_equal(testutil_read_line(c->out, line, sizeof(line), 5000), 0);
                assert_string_equal(line, "done");
                return (double)(ev[i].until_ns - ev[i].since_ns) / 1e9;
            }
        }
    }
    fail_msg("no stall seen");
    return 0;
}

static void test_real_loop(void **state)
{
    struct testutil_child c = {0};
    struct stallwatch *w;
    struct stallwatch_event ev[8];
    char line[32];
    size_t n;
    long sc = 0;

    (void)state;
    assert_int_equal(testutil_spawn(&c, "loop_stall", NULL, line, sizeof(line)), 0);
    assert_string_equal(line, "ready");
    assert_int_equal(stallwatch_new("/proc", c.pid, STALLWATCH_MAIN, 2 * S, 0, 0, &w, NULL), 0);
    /* A loop ticking every 20 ms is seen waiting, and never stalls. */
    for (int i = 0; i < 30; i++) {
        usleep(100000);
        assert_int_equal(stallwatch_check(w, mono_ns(), ev, 8, &n), 0);
        assert_int_equal(n, 0);
    }
    double d = watch_one(w, &c, 'r', &sc);
    assert_true(d > 4.5 && d < 6.5);
    assert_int_equal(sc, SYS_read);
    d = watch_one(w, &c, 's', &sc);
    assert_true(d > 4.5 && d < 6.5);
    assert_int_equal(sc, -1);
    testutil_reap(&c);
    assert_int_equal(stallwatch_check(w, mono_ns(), ev, 8, &n), -ESRCH);
    stallwatch_free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_main_thread_blocked_in_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_futex, setup, teardown),
        cmocka_unit_test_setup_teardown(test_named, setup, teardown),
        cmocka_unit_test(test_real_loop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
