/* Tests of remote calls into real processes: build/workloads/parked (threads blocked in read,
 * nanosleep, a condition variable, and one spinning) and build/workloads/work_rate (one thread
 * always computing). After every injection the workload must still answer correctly, which
 * proves the interrupted system calls were restarted and the registers put back. */
#include <dlfcn.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "os/inject.h"
#include "os/procfs.h"
#include "testutil.h"

#define LIBZ "/usr/lib/x86_64-linux-gnu/libz.so.1"

/* The path of the first mapping of pid whose file name starts with prefix, as maps names it. */
static int mapped(pid_t pid, const char *prefix, char *buf, size_t len)
{
    struct procfs_map *maps;
    size_t n;
    int found = -1;

    assert_int_equal(procfs_read_maps(PROCFS_ROOT, pid, &maps, &n), 0);
    for (size_t i = 0; i < n && found < 0; i++) {
        const char *base = strrchr(maps[i].path, '/');
        if (base && !strncmp(base + 1, prefix, strlen(prefix))) {
            snprintf(buf, len, "%s", maps[i].path);
            found = 0;
        }
    }
    procfs_maps_free(maps, n);
    return found;
}

static uint64_t libc_symbol(pid_t pid, const char *name)
{
    char libc[512];
    uint64_t addr = 0;

    assert_int_equal(mapped(pid, "libc.so", libc, sizeof(libc)), 0);
    assert_int_equal(inject_symbol(pid, libc, name, &addr), 0);
    assert_true(addr != 0);
    return addr;
}

static void spawn_parked(struct testutil_child *c)
{
    char line[64];

    assert_int_equal(testutil_spawn(c, "parked", "2", line, sizeof(line)), 0);
    assert_string_equal(line, "ready");
}

static void test_call_restores_thread(void **state)
{
    (void)state;
    struct testutil_child c;
    struct inject *in;
    long s0, r0, s1, r1;
    uint64_t ret = 0;
    struct error e;

    spawn_parked(&c);
    assert_int_equal(testutil_parked_query(&c, &s0, &r0), 0);
    for (int round = 0; round < 20; round++) {
        assert_int_equal(inject_attach(c.pid, &in, &e), 0);
        assert_int_equal(inject_call(in, libc_symbol(c.pid, "getpid"), NULL, 0, &ret), 0);
        assert_int_equal((pid_t)ret, c.pid);
        assert_int_equal(inject_detach(in), 0);
    }
    /* main was in read(stdin), the others in read, nanosleep, a condvar: all still answer. */
    usleep(300000);
    assert_int_equal(testutil_parked_query(&c, &s1, &r1), 0);
    assert_true(s1 > s0);
    assert_true(r1 > r0);
    testutil_reap(&c);
}

static void test_dlopen_dlsym(void **state)
{
    (void)state;
    struct testutil_child c;
    struct inject *in;
    uint64_t path_addr, name_addr, handle = 0, fn = 0, str = 0;
    char buf[512];
    struct error e;
    long s0, r0;

    if (access(LIBZ, R_OK))
        skip();
    spawn_parked(&c);
    assert_int_not_equal(mapped(c.pid, "libz.so", buf, sizeof(buf)), 0);
    assert_int_equal(inject_attach(c.pid, &in, &e), 0);
    assert_int_equal(inject_push(in, LIBZ, sizeof(LIBZ), &path_addr), 0);
    assert_int_equal(inject_push(in, "zlibVersion", sizeof("zlibVersion"), &name_addr), 0);
    uint64_t a[2] = {path_addr, RTLD_NOW};
    assert_int_equal(inject_call(in, libc_symbol(c.pid, "dlopen"), a, 2, &handle), 0);
    assert_true(handle != 0);
    uint64_t b[2] = {handle, name_addr};
    assert_int_equal(inject_call(in, libc_symbol(c.pid, "dlsym"), b, 2, &fn), 0);
    assert_true(fn != 0);
    assert_int_equal(inject_call(in, fn, NULL, 0, &str), 0);
    assert_int_equal(inject_read_string(c.pid, str, buf, sizeof(buf)), 0);
    assert_int_equal(strncmp(buf, "1.", 2), 0); /* zlib's version string */
    assert_int_equal(inject_detach(in), 0);
    assert_int_equal(mapped(c.pid, "libz.so", buf, sizeof(buf)), 0);
    /* The module is found by path now (maps names the file the symlink points to). */
    uint64_t direct = 0;
    assert_int_equal(inject_symbol(c.pid, buf, "zlibVersion", &direct), 0);
    assert_true(direct == fn);
    assert_int_equal(testutil_parked_query(&c, &s0, &r0), 0);
    testutil_reap(&c);
}

/* A call that crashes is caught and the thread is put back, not killed. */
static void test_crashing_call(void **state)
{
    (void)state;
    struct testutil_child c;
    struct inject *in;
    uint64_t ret;
    long s0, r0, s1, r1;
    struct error e;

    spawn_parked(&c);
    assert_int_equal(testutil_parked_query(&c, &s0, &r0), 0);
    assert_int_equal(inject_attach(c.pid, &in, &e), 0);
    assert_int_equal(inject_call(in, 16, NULL, 0, &ret), -EFAULT);
    assert_int_equal(inject_detach(in), 0);
    usleep(200000);
    assert_int_equal(testutil_parked_query(&c, &s1, &r1), 0);
    assert_true(s1 > s0 && r1 > r0);
    testutil_reap(&c);
}

/* A thread that never blocks is caught outside the C library and keeps computing after. */
static void test_busy_target(void **state)
{
    (void)state;
    struct testutil_child c;
    struct inject *in;
    char line[128];
    struct error e;
    uint64_t ret;
    double t;
    unsigned long u0, u1;

    assert_int_equal(testutil_spawn(&c, "work_rate", NULL, line, sizeof(line)), 0);
    assert_int_equal(testutil_read_line(c.out, line, sizeof(line), 2000), 0);
    assert_int_equal(sscanf(line, "%lf %lu", &t, &u0), 2);
    for (int round = 0; round < 10; round++) {
        assert_int_equal(inject_attach(c.pid, &in, &e), 0);
        assert_int_equal(inject_call(in, libc_symbol(c.pid, "getpid"), NULL, 0, &ret), 0);
        assert_int_equal((pid_t)ret, c.pid);
        assert_int_equal(inject_detach(in), 0);
    }
    for (int i = 0; i < 3; i++)
        assert_int_equal(testutil_read_line(c.out, line, sizeof(line), 2000), 0);
    assert_int_equal(sscanf(line, "%lf %lu", &t, &u1), 2);
    assert_true(u1 > u0);
    testutil_reap(&c);
}

static void test_refusals(void **state)
{
    (void)state;
    struct inject *in;
    uint64_t addr;
    struct error e;
    pid_t gone = fork();

    assert_int_equal(inject_attach(getpid(), &in, NULL), -EINVAL);
    if (gone == 0)
        _exit(0);
    waitpid(gone, NULL, 0);
    assert_int_equal(inject_attach(gone, &in, &e), -ESRCH);
    assert_int_equal(e.code, -ESRCH);
    assert_int_equal(inject_symbol(getpid(), "/no/such/module.so", "x", &addr), -ENOENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_call_restores_thread),
        cmocka_unit_test(test_dlopen_dlsym),
        cmocka_unit_test(test_crashing_call),
        cmocka_unit_test(test_busy_target),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
