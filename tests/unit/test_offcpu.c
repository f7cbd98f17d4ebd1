/* Tests of the off-CPU stretches of a wall-clock profile: switches read out of order (one CPU's
 * ring after another's) are put back in each thread's order, a stretch weighs from its switch
 * away to the first time back, a lost switch back does not swallow time on the CPU, and what
 * /proc/PID/task/TID/syscall says is parsed, corrupt lines refused. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <cmocka.h>
#include "cpu/offcpu.h"

#define ADDS_MAX 16

struct got {
    size_t n;
    struct {
        pid_t tid;
        char func[32];
        enum cpuprof_state st;
        uint64_t weight;
    } v[ADDS_MAX];
};

static int add(void *ctx, pid_t tid, const struct stacks_frame *frames, size_t n, int truncated,
               enum cpuprof_state st, uint64_t weight_ns)
{
    struct got *g = ctx;
    (void)truncated;
    if (g->n == ADDS_MAX)
        return -E2BIG;
    g->v[g->n].tid = tid;
    snprintf(g->v[g->n].func, sizeof(g->v[g->n].func), "%s", n ? frames[0].func : "");
    g->v[g->n].st = st;
    g->v[g->n].weight = weight_ns;
    g->n++;
    return 0;
}

/* A fresh off-CPU tracker and the sink that records what it hands out: each test's state. */
struct rig {
    struct offcpu *o;
    struct got g;
    struct offcpu_sink sink;
};

static int rig_up(void **state)
{
    struct rig *r = calloc(1, sizeof(*r));

    assert_non_null(r);
    r->sink = (struct offcpu_sink){add, &r->g};
    assert_int_equal(offcpu_new(getpid(), 0, 0, &r->o), 0);
    *state = r;
    return 0;
}

static int rig_down(void **state)
{
    struct rig *r = *state;

    offcpu_free(r->o);
    free(r);
    return 0;
}

static void away(struct offcpu *o, pid_t tid, uint64_t t, const char *func, enum cpuprof_state st)
{
    /* A stack-owned name: the stretch must keep its own copy. */
    char name[32];
    snprintf(name, sizeof(name), "%s", func);
    struct stacks_frame f = {.func = name, .module = "m"};
    assert_int_equal(offcpu_begin(o, tid, t, st, &f, 1, 0), 0);
    memset(name, 'x', sizeof(name) - 1);
}

/* Settled before anything happened (a recorder in wall mode on an idle target): nothing handed
 * out, and no sort of an array that does not exist yet. */
static void test_settle_nothing(void **state)
{
    struct rig *r = *state;

    assert_int_equal(offcpu_settle(r->o, 1000, &r->sink), 0);
    assert_int_equal(offcpu_end_all(r->o, 2000, &r->sink), 0);
    assert_int_equal(r->g.n, 0);
}

static void test_out_of_order(void **state)
{
    struct rig *r = *state;
    struct offcpu *o = r->o;
    struct got *g = &r->g;
    /* CPU 1's ring read first: the thread is back at 150 and 350... */
    assert_int_equal(offcpu_back(o, 7, 150), 0);
    assert_int_equal(offcpu_back(o, 7, 350), 0);
    /* ...then CPU 0's: it left at 100 and 300. */
    away(o, 7, 100, "sleep_a", CPUPROF_SYSCALL);
    away(o, 7, 300, "sleep_b", CPUPROF_GIL);
    /* Beyond the horizon: kept for later. */
    away(o, 7, 500, "late", CPUPROF_SYSCALL);
    assert_int_equal(offcpu_settle(o, 400, &r->sink), 0);
    assert_int_equal(g->n, 2);
    assert_string_equal(g->v[0].func, "sleep_a");
    assert_int_equal(g->v[0].weight, 50);
    assert_int_equal(g->v[0].st, CPUPROF_SYSCALL);
    assert_string_equal(g->v[1].func, "sleep_b");
    assert_int_equal(g->v[1].weight, 50);
    assert_int_equal(g->v[1].st, CPUPROF_GIL);
    /* Still off at the end of the run: up to the end. */
    assert_int_equal(offcpu_end_all(o, 800, &r->sink), 0);
    assert_int_equal(g->n, 3);
    assert_string_equal(g->v[2].func, "late");
    assert_int_equal(g->v[2].weight, 300);
}

/* Away, then away again with the switch back between lost: the first stretch is not weighed
 * across the time the thread spent on a CPU. Threads do not mix. */
static void test_lost_switch_back(void **state)
{
    struct rig *r = *state;
    struct offcpu *o = r->o;
    struct got *g = &r->g;
    away(o, 7, 100, "first", CPUPROF_SYSCALL);
    away(o, 8, 120, "other", CPUPROF_SYSCALL);
    away(o, 7, 1000, "second", CPUPROF_SYSCALL);
    assert_int_equal(offcpu_back(o, 7, 1010), 0);
    assert_int_equal(offcpu_back(o, 8, 130), 0);
    assert_int_equal(offcpu_settle(o, 2000, &r->sink), 0);
    assert_int_equal(g->n, 2);
    for (size_t i = 0; i < g->n; i++) {
        if (g->v[i].tid == 7) {
            assert_string_equal(g->v[i].func, "second");
            assert_int_equal(g->v[i].weight, 10);
        } else {
            assert_string_equal(g->v[i].func, "other");
            assert_int_equal(g->v[i].weight, 10);
        }
    }
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_read_syscall(void **state)
{
    (void)state;
    char root[] = "/tmp/test_offcpu.XXXXXX", dir[128], path[160];
    struct offcpu_syscall sc;
    struct offcpu *o;
    assert_non_null(mkdtemp(root));
    snprintf(dir, sizeof(dir), "%s/10", root);
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(dir, sizeof(dir), "%s/10/task", root);
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(dir, sizeof(dir), "%s/10/task/11", root);
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(path, sizeof(path), "%s/syscall", dir);

    write_file(path, "202 0x7f0000001040 0x189 0x0 0x0 0x0 0xffffffff 0x7ffd1000 0x7f12345\n");
    assert_int_equal(offcpu_read_syscall(root, 10, 11, &sc), 0);
    assert_int_equal(sc.nr, SYS_futex);
    assert_int_equal(sc.args[0], 0x7f0000001040ull);
    assert_int_equal(sc.sp, 0x7ffd1000ull);
    assert_int_equal(sc.pc, 0x7f12345ull);
    assert_int_equal(offcpu_new(getpid(), 0x7f0000001000ull, 0x7f00000010d0ull, &o), 0);
    assert_int_equal(offcpu_syscall_state(o, &sc), CPUPROF_GIL);
    sc.args[0] = 0x7f0000002000ull; /* another futex: a lock, not the GIL */
    assert_int_equal(offcpu_syscall_state(o, &sc), CPUPROF_SYSCALL);
    sc.nr = 0; /* read(), even with an argument in the GIL's range */
    sc.args[0] = 0x7f0000001040ull;
    assert_int_equal(offcpu_syscall_state(o, &sc), CPUPROF_SYSCALL);
    offcpu_free(o);

    /* Not in a system call; then corrupt: too few fields, garbage, a number that does not fit,
     * nothing. */
    static const struct {
        const char *text;
        int r;
    } cases[] = {
        {"running\n", -EAGAIN},
        {"-1 0x7ffd1000 0x7f12345\n", -EAGAIN},
        {"202 0x1 0x2\n", -EBADMSG},
        {"202 zz 0x189 0x0 0x0 0x0 0x0 0x1 0x2\n", -EBADMSG},
        {"202 0x1ffffffffffffffff 0 0 0 0 0 1 2\n", -EBADMSG},
        {"", -EBADMSG},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        write_file(path, cases[i].text);
        assert_int_equal(offcpu_read_syscall(root, 10, 11, &sc), cases[i].r);
    }
    assert_int_equal(offcpu_read_syscall(root, 10, 12, &sc), -ESRCH);

    unlink(path);
    rmdir(dir);
    snprintf(dir, sizeof(dir), "%s/10/task", root);
    rmdir(dir);
    snprintf(dir, sizeof(dir), "%s/10", root);
    rmdir(dir);
    rmdir(root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_settle_nothing, rig_up, rig_down),
        cmocka_unit_test_setup_teardown(test_out_of_order, rig_up, rig_down),
        cmocka_unit_test_setup_teardown(test_lost_switch_back, rig_up, rig_down),
        cmocka_unit_test(test_read_syscall),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
