/* Tests of the uprobe fallback of the allocation profile against build/workloads/allocs_static
 * (a static binary: its own malloc is probed): events arrive, their sizes are the workload's,
 * frees match earlier allocations, the 512-byte blocks unwind to leak_here, the probes leave
 * the target's code as it was and its speed recovers; the end of the target is reported; a
 * binary without symbols and a missing process are refused with a reason. Prints the cost of a
 * malloc/free pair with and without the probes. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
#include <cmocka.h>
#include "memory/memprobe.h"
#include "memory/memring.h"
#include "os/procfs.h"
#include "unwind/stacks.h"
#include "testutil.h"

#define LEAK_SIZE 512 /* what leak_here keeps; the loop never asks for it */
#define POOL 64       /* blocks the workload holds from before we attach */
/* The loop's sizes: 24 + 16k up to 4040, the aligned ones rounded up to 32. */
#define LOOP_SIZE_MIN 24
#define LOOP_SIZE_MAX 4064
#define LIVE_BITS 20

struct child {
    pid_t pid;
    int in, out;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void spawn(struct child *c, const char *path, const char *const *argv)
{
    char line[64];
    int in[2], out[2];
    assert_int_equal(access(path, X_OK), 0);
    assert_int_equal(pipe2(in, O_CLOEXEC), 0);
    assert_int_equal(pipe2(out, O_CLOEXEC), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    c->pid = pid;
    c->in = in[1];
    c->out = out[0];
    assert_int_equal(testutil_read_line(c->out, line, sizeof(line), 10000), 0);
    int rpid;
    assert_int_equal(sscanf(line, "ready pid=%d", &rpid), 1);
    assert_int_equal(rpid, pid);
}

static void spawn_workload(struct child *c)
{
    char path[256];
    testutil_workload_path("allocs_static", path, sizeof(path));
    const char *argv[] = {path, "--leak-every", "256", NULL};
    spawn(c, path, argv);
}

static void stop(struct child *c)
{
    int st;
    close(c->in);
    close(c->out);
    kill(c->pid, SIGKILL);
    waitpid(c->pid, &st, 0);
}

static uint64_t pairs_now(struct child *c)
{
    char line[128];
    unsigned long long pairs, leaked;
    assert_int_equal(write(c->in, "q", 1), 1);
    assert_int_equal(testutil_read_line(c->out, line, sizeof(line), 10000), 0);
    assert_int_equal(sscanf(line, "pairs=%llu leaked=%llu", &pairs, &leaked), 2);
    return pairs;
}

/* Nanoseconds per malloc/free pair over about ms milliseconds. */
static double ns_per_pair(struct child *c, int ms)
{
    uint64_t t0 = now_ns(), p0 = pairs_now(c);
    usleep((useconds_t)ms * 1000);
    uint64_t t1 = now_ns(), p1 = pairs_now(c);
    assert_true(p1 > p0);
    return (double)(t1 - t0) / (double)(p1 - p0);
}

/* Bytes of the target's executable mapping of `module` that differ from the file: a uprobe is
 * a breakpoint written into the target's copy of the page. */
static size_t text_changes(pid_t pid, const char *module)
{
    struct procfs_map *maps;
    size_t n, changed = 0, found = 0;
    char path[64];
    assert_int_equal(procfs_read_maps(PROCFS_ROOT, pid, &maps, &n), 0);
    snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
    int mem = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(mem >= 0);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(maps[i].path, module) != 0 || !strchr(maps[i].perms, 'x'))
            continue;
        char file[PATH_MAX];
        snprintf(file, sizeof(file), "/proc/%d/root%s", (int)pid, module);
        int fd = open(file, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        size_t len = (size_t)(maps[i].end - maps[i].start);
        unsigned char *a = malloc(len), *b = malloc(len);
        assert_non_null(a);
        assert_non_null(b);
        ssize_t fl = pread(fd, b, len, (off_t)maps[i].offset);
        assert_true(fl > 0);
        assert_int_equal(pread(mem, a, (size_t)fl, (off_t)maps[i].start), fl);
        for (ssize_t k = 0; k < fl; k++)
            changed += a[k] != b[k];
        found++;
        free(a);
        free(b);
        close(fd);
    }
    close(mem);
    procfs_maps_free(maps, n);
    assert_true(found > 0);
    return changed;
}

struct seen {
    struct stacks *stacks;
    uint64_t *live; /* open addressing set of pointers, 0 empty */
    size_t nlive;
    uint64_t allocs, frees, matched, double_allocs, odd_sizes;
    uint64_t leaks, leaks_named, leaks_main;
    uint64_t last_time;
    uint64_t out_of_order;
};

static size_t live_slot(uint64_t ptr)
{
    return (size_t)((ptr * 0x9e3779b97f4a7c15ull) >> (64 - LIVE_BITS));
}

static bool live_has(struct seen *s, uint64_t ptr, size_t *ret_slot)
{
    size_t i = live_slot(ptr), mask = ((size_t)1 << LIVE_BITS) - 1;
    while (s->live[i] != 0) {
        if (s->live[i] == ptr) {
            *ret_slot = i;
            return true;
        }
        i = (i + 1) & mask;
    }
    *ret_slot = i;
    return false;
}

static void live_del(struct seen *s, size_t i)
{
    size_t mask = ((size_t)1 << LIVE_BITS) - 1;
    s->live[i] = 0;
    s->nlive--;
    for (size_t j = (i + 1) & mask; s->live[j] != 0; j = (j + 1) & mask) {
        size_t home = live_slot(s->live[j]);
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (stays)
            continue;
        s->live[i] = s->live[j];
        s->live[j] = 0;
        i = j;
    }
}

static int on_event(const struct memprobe_event *e, void *userdata)
{
    struct seen *s = userdata;
    size_t slot;
    if (e->time_ns < s->last_time)
        s->out_of_order++;
    s->last_time = e->time_ns;
    if (e->kind == MEMRING_FREE) {
        assert_null(e->regs);
        assert_int_equal(e->size, 0);
        s->frees++;
        if (live_has(s, e->ptr, &slot)) {
            s->matched++;
            live_del(s, slot);
        }
        return 0;
    }
    assert_int_equal(e->kind, MEMRING_ALLOC);
    assert_non_null(e->regs);
    s->allocs++;
    if (e->size != LEAK_SIZE && (e->size < LOOP_SIZE_MIN || e->size > LOOP_SIZE_MAX))
        s->odd_sizes++;
    if (live_has(s, e->ptr, &slot))
        s->double_allocs++;
    else if (s->nlive < ((size_t)1 << (LIVE_BITS - 1))) {
        s->live[slot] = e->ptr;
        s->nlive++;
    }
    if (e->size == LEAK_SIZE) {
        struct stacks_frame f[16];
        size_t n;
        int trunc;
        s->leaks++;
        assert_int_equal(stacks_unwind_regs(s->stacks, e->regs, e->stack_addr, e->stack,
                                            e->stack_len, f, 16, &n, &trunc),
                         0);
        if (n >= 1 && f[0].func && strcmp(f[0].func, "leak_here") == 0)
            s->leaks_named++;
        if (n >= 2 && f[1].func && strcmp(f[1].func, "main") == 0)
            s->leaks_main++;
    }
    return 0;
}

static void test_events_unwind_and_cleanup(void **state)
{
    struct child c;
    struct memprobe *p = NULL;
    struct memprobe_stats st;
    struct seen s = {0};
    struct error e;
    (void)state;

    spawn_workload(&c);
    double before = ns_per_pair(&c, 500);
    int r = memprobe_open(c.pid, &p, &e);
    if (r < 0)
        fail_msg("memprobe_open: %s (%s)", strerror(-r), e.reason);
    memprobe_get_stats(p, &st);
    assert_non_null(st.module);
    assert_true(st.probes >= 2);
    assert_true(st.fds >= st.probes);
    assert_true(text_changes(c.pid, st.module) > 0);
    assert_int_equal(stacks_new(c.pid, &s.stacks), 0);
    s.live = calloc((size_t)1 << LIVE_BITS, sizeof(*s.live));
    assert_non_null(s.live);

    uint64_t t0 = now_ns(), p0 = pairs_now(&c), t1, p1;
    while (now_ns() - t0 < 1000000000ull)
        assert_int_equal(memprobe_poll(p, 100, on_event, &s), 0);
    t1 = now_ns();
    p1 = pairs_now(&c);
    double during = (double)(t1 - t0) / (double)(p1 - p0);
    memprobe_get_stats(p, &st);

    char module[PATH_MAX];
    snprintf(module, sizeof(module), "%s", st.module); /* st.module dies with p */
    memprobe_close(p);
    assert_int_equal(text_changes(c.pid, module), 0);
    double after = ns_per_pair(&c, 500);
    print_message("module %s, %u probes, %zu fds: %llu allocs, %llu frees, %llu lost\n", module,
                  st.probes, st.fds, (unsigned long long)st.allocs, (unsigned long long)st.frees,
                  (unsigned long long)st.lost);
    print_message("ns per malloc/free pair: %.1f before, %.1f with uprobes (%.0fx), "
                  "%.1f after\n",
                  before, during, during / before, after);
    print_message("frees matched %llu of %llu, double allocs %llu, leak_here %llu/%llu "
                  "(main above it %llu)\n",
                  (unsigned long long)s.matched, (unsigned long long)s.frees,
                  (unsigned long long)s.double_allocs, (unsigned long long)s.leaks_named,
                  (unsigned long long)s.leaks, (unsigned long long)s.leaks_main);

    assert_int_equal(st.allocs, s.allocs);
    assert_int_equal(st.frees, s.frees);
    assert_true(s.allocs > 0);
    assert_true(s.frees > 0);
    /* Everything the loop allocates is 24..4064 bytes or leak_here's 512. */
    assert_int_equal(s.odd_sizes, 0);
    /* Every free is of a block allocated during the run, but the pool's from before and those
     * whose allocation went unreported; a block is never handed out twice without a free in
     * between, unless a free went unreported or the order across CPUs were wrong. */
    assert_true(s.frees - s.matched <= POOL + st.lost);
    assert_true(s.double_allocs <= st.lost);
    assert_int_equal(s.out_of_order, 0);
    assert_true(s.leaks > 0);
    assert_int_equal(s.leaks_named, s.leaks);
    /* The caller's registers and stack must carry the unwinder past leak_here. */
    if (s.leaks_main != s.leaks)
        fail_msg("%llu of %llu leak_here blocks do not unwind to main: is the workload linked "
                 "with -Wl,--eh-frame-hdr? (gcc -static leaves .eh_frame_hdr out, and the "
                 "unwinder needs it)",
                 (unsigned long long)(s.leaks - s.leaks_main), (unsigned long long)s.leaks);
    /* The probes cost microseconds per call; once gone, the loop is fast again. */
    assert_true(during > 10 * before);
    assert_true(after < 4 * before);
    assert_int_equal(kill(c.pid, 0), 0);

    stacks_free(s.stacks);
    free(s.live);
    stop(&c);
}

static int count_events(const struct memprobe_event *e, void *userdata)
{
    (void)e;
    ++*(uint64_t *)userdata;
    return 0;
}

/* The workload exits when its stdin closes: every event comes out, then -ESRCH. */
static void test_target_exit(void **state)
{
    struct child c;
    struct memprobe *p;
    uint64_t n = 0;
    int r = 0, st;
    (void)state;

    spawn_workload(&c);
    assert_int_equal(memprobe_open(c.pid, &p, NULL), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(memprobe_poll(p, 100, count_events, &n), 0);
    assert_true(n > 0);
    close(c.in);
    assert_int_equal(waitpid(c.pid, &st, 0), c.pid);
    uint64_t t0 = now_ns();
    while (now_ns() - t0 < 5000000000ull && (r = memprobe_poll(p, 100, count_events, &n)) == 0)
        ;
    assert_int_equal(r, -ESRCH);
    assert_int_equal(memprobe_poll(p, 100, count_events, &n), -ESRCH);
    memprobe_close(p);
    close(c.out);
}

/* A callback's error stops the poll and comes back. */
static int refuse(const struct memprobe_event *e, void *userdata)
{
    (void)e;
    ++*(int *)userdata;
    return -ECANCELED;
}

static void test_callback_error(void **state)
{
    struct child c;
    struct memprobe *p;
    int calls = 0, r = 0;
    (void)state;

    spawn_workload(&c);
    assert_int_equal(memprobe_open(c.pid, &p, NULL), 0);
    for (int i = 0; i < 20 && r == 0; i++)
        r = memprobe_poll(p, 100, refuse, &calls);
    assert_int_equal(r, -ECANCELED);
    assert_int_equal(calls, 1);
    memprobe_close(p);
    stop(&c);
}

/* A static binary without symbols has no malloc to find; a dynamic one has libc's. */
static void test_stripped(void **state)
{
    char src[256], dst[64], cmd[512];
    struct error e;
    struct child c;
    struct memprobe *p = NULL;
    (void)state;

    testutil_workload_path("allocs_static", src, sizeof(src));
    snprintf(dst, sizeof(dst), "/tmp/test_memprobe.%d", (int)getpid());
    snprintf(cmd, sizeof(cmd), "strip -o %s %s 2>/dev/null", dst, src);
    if (system(cmd) != 0)
        skip();
    const char *argv[] = {dst, NULL};
    spawn(&c, dst, argv);
    int r = memprobe_open(c.pid, &p, &e);
    if (r == 0) {
        /* Built dynamically (the Makefile's default): libc's malloc is found instead. */
        struct memprobe_stats st;
        memprobe_get_stats(p, &st);
        assert_true(strcmp(st.module, dst) != 0);
        memprobe_close(p);
    } else {
        assert_int_equal(r, -ENOENT);
        assert_null(p);
        assert_int_equal(e.code, -ENOENT);
        assert_non_null(strstr(e.reason, "no malloc"));
    }
    stop(&c);
    unlink(dst);
}

static void test_no_process(void **state)
{
    struct memprobe *p = NULL;
    struct error e;
    int st;
    (void)state;

    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(0);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_int_equal(memprobe_open(pid, &p, &e), -ESRCH);
    assert_null(p);
    assert_int_equal(e.code, -ESRCH);
    assert_true(e.reason[0] != '\0');
}

/* Without CAP_PERFMON the uprobe PMU refuses, and the reason says what is missing. Run as root,
 * the test drops to nobody in a child that probes itself. */
static void test_refused(void **state)
{
    int st;
    (void)state;

    if (geteuid() != 0)
        skip();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct memprobe *p = NULL;
        struct error e;
        if (setgid(65534) < 0 || setuid(65534) < 0)
            _exit(3);
        int r = memprobe_open(getpid(), &p, &e);
        _exit((r == -EACCES || r == -EPERM) && e.code == r && !p && strstr(e.reason, "CAP_PERFMON")
                  ? 0
                  : 1);
    }
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_events_unwind_and_cleanup),
        cmocka_unit_test(test_target_exit),
        cmocka_unit_test(test_callback_error),
        cmocka_unit_test(test_stripped),
        cmocka_unit_test(test_no_process),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
