/* Tests of target specs and their resolution: spec syntax, pid:/self/pidfile:, and comm:/exe:
 * against copies of sleep(1) started under unique names, plus the fixture /proc tree and the
 * "targets" cache counters. Run from the top of the tree. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include "os/cachestat.h"
#include "os/target.h"

#define FIX "tests/unit/fixtures/proc"

static char dir[] = "/tmp/test_target.XXXXXX";

static void copy_file(const char *from, const char *to)
{
    char buf[65536];
    ssize_t n;
    int in, out;

    in = open(from, O_RDONLY);
    assert_true(in >= 0);
    out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    assert_true(out >= 0);
    while ((n = read(in, buf, sizeof(buf))) > 0)
        assert_int_equal(write(out, buf, (size_t)n), n);
    assert_int_equal(n, 0);
    close(in);
    close(out);
}

/* A copy of sleep(1) named NAME in the test directory; its path in path. */
static void make_sleeper(const char *name, char *path, size_t len)
{
    snprintf(path, len, "%s/%s", dir, name);
    copy_file("/bin/sleep", path);
}

/* Starts path and returns once the exec is done: its exe link, its comm and its argv[0] all
 * name path (the kernel sets the exe link a little before the name and the arguments, and a
 * loaded machine showed the window). */
static pid_t spawn(const char *path)
{
    char exe[PATH_MAX], comm[PROCFS_COMM_MAX], argv0[PATH_MAX];
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        /* Dies with the test, even one that fails half way. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execl(path, path, "1000", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 2000; i++) {
        if (procfs_read_exe(PROCFS_ROOT, pid, exe, sizeof(exe)) == 0 && strcmp(exe, path) == 0 &&
            procfs_read_comm(PROCFS_ROOT, pid, 0, comm) == 0 &&
            strncmp(comm, base, PROCFS_COMM_MAX - 1) == 0 &&
            procfs_read_argv0(PROCFS_ROOT, pid, argv0, sizeof(argv0)) == 0 &&
            strcmp(argv0, path) == 0)
            return pid;
        usleep(1000);
    }
    fail_msg("%s did not start", path);
    return -1;
}

static void stop(pid_t pid)
{
    kill(pid, SIGKILL);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
}

/* Start times count clock ticks: wait for the next one so that two children differ. */
static void next_tick(void)
{
    long hz = sysconf(_SC_CLK_TCK);
    struct timespec ts = {0, 2 * 1000000000L / hz};

    nanosleep(&ts, NULL);
}

struct counts {
    unsigned long hits, misses, currsize;
    int found;
};

static void count_one(const struct cachestat *c, void *userdata)
{
    struct counts *k = userdata;

    if (strcmp(c->name, "targets") == 0) {
        k->hits = atomic_load(&c->hits);
        k->misses = atomic_load(&c->misses);
        k->currsize = atomic_load(&c->currsize);
        k->found++;
    }
}

static struct counts counts(void)
{
    struct counts k = {0};

    cachestat_foreach(count_one, &k);
    assert_int_equal(k.found, 1);
    return k;
}

static void test_spec_check(void **state)
{
    static const char *good[] = {"self",
                                 "pid:1",
                                 "pid:2147483647",
                                 "comm:x",
                                 "comm:a b",
                                 "comm:kworker/0:1",
                                 "exe:/usr/bin/python3",
                                 "pidfile:/run/x.pid",
                                 "pidfile:rel.pid",
                                 "comm:0123456789abcdefghij"};
    static const char *bad[] = {
        "",       "self ",     "Self",     "pid:",         "pid:0",          "pid:01",
        "pid:-1", "pid:+1",    "pid: 1",   "pid:1 ",       "pid:2147483648", "pid:99999999999",
        "pid:1x", "comm:",     "exe:",     "exe:rel/path", "pidfile:",       "foo:bar",
        "comm",   "comm:a\nb", "exe:/a\tb"};
    char longspec[TARGET_SPEC_MAX + 1];

    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_int_equal(target_spec_check(good[i]), 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct target t;
        assert_int_equal(target_spec_check(bad[i]), -EINVAL);
        assert_int_equal(target_resolve(PROCFS_ROOT, bad[i], &t, NULL), -EINVAL);
    }
    assert_int_equal(target_spec_check(NULL), -EINVAL);
    memcpy(longspec, "comm:", 5);
    memset(longspec + 5, 'a', sizeof(longspec) - 6);
    longspec[TARGET_SPEC_MAX - 1] = '\0';
    assert_int_equal(target_spec_check(longspec), 0);
    longspec[TARGET_SPEC_MAX - 1] = 'a';
    longspec[TARGET_SPEC_MAX] = '\0';
    assert_int_equal(target_spec_check(longspec), -EINVAL);
}

static void expect_self(const struct target *t)
{
    char comm[PROCFS_COMM_MAX];
    uint64_t st;

    assert_int_equal(procfs_read_starttime(PROCFS_ROOT, getpid(), &st), 0);
    assert_int_equal(procfs_read_comm(PROCFS_ROOT, getpid(), 0, comm), 0);
    assert_int_equal(t->pid, getpid());
    assert_int_equal(t->starttime, st);
    assert_string_equal(t->name, comm);
    assert_int_equal(t->matches, 1);
}

static void *idle_thread(void *arg)
{
    int *fd = arg;
    char c;

    while (read(*fd, &c, 1) < 0 && errno == EINTR)
        ;
    return NULL;
}

static void test_self_and_pid(void **state)
{
    char spec[32];
    struct target t;
    pthread_t th;
    pid_t child, tids_pid;
    pid_t *tids;
    size_t n;
    int p[2];

    (void)state;
    assert_int_equal(target_resolve(PROCFS_ROOT, "self", &t, NULL), 0);
    expect_self(&t);
    snprintf(spec, sizeof(spec), "pid:%d", (int)getpid());
    memset(&t, 0, sizeof(t));
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), 0);
    expect_self(&t);

    /* A thread id opens in /proc but is not a process. */
    assert_int_equal(pipe(p), 0);
    assert_int_equal(pthread_create(&th, NULL, idle_thread, &p[0]), 0);
    assert_int_equal(procfs_list_tasks(PROCFS_ROOT, getpid(), &tids, &n), 0);
    tids_pid = 0;
    for (size_t i = 0; i < n; i++)
        if (tids[i] != getpid())
            tids_pid = tids[i];
    free(tids);
    assert_true(tids_pid > 0);
    snprintf(spec, sizeof(spec), "pid:%d", (int)tids_pid);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), -ESRCH);
    assert_int_equal(write(p[1], "x", 1), 1);
    assert_int_equal(pthread_join(th, NULL), 0);
    close(p[0]);
    close(p[1]);

    /* A zombie and then a reaped child have both gone. */
    child = fork();
    assert_true(child >= 0);
    if (child == 0)
        _exit(0);
    snprintf(spec, sizeof(spec), "pid:%d", (int)child);
    for (int i = 0; i < 1000; i++) {
        char st = 0;
        if (procfs_read_state(PROCFS_ROOT, child, 0, &st) == 0 && st == 'Z')
            break;
        usleep(1000);
    }
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), -ESRCH);
    assert_int_equal(waitpid(child, NULL, 0), child);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), -ESRCH);
}

static void test_comm_exe(void **state)
{
    char name[32], path[PATH_MAX], spec[PATH_MAX + 16];
    struct target t;
    pid_t a, b;

    (void)state;
    snprintf(name, sizeof(name), "tgs%d", (int)getpid());
    make_sleeper(name, path, sizeof(path));
    snprintf(spec, sizeof(spec), "comm:%s", name);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), -ESRCH);
    a = spawn(path);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), 0);
    assert_int_equal(t.pid, a);
    assert_int_equal(t.matches, 1);
    assert_string_equal(t.name, name);

    /* Two of them: the older is chosen, and the count says two matched. */
    next_tick();
    b = spawn(path);
    snprintf(spec, sizeof(spec), "exe:%s", path);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), 0);
    assert_int_equal(t.pid, a);
    assert_int_equal(t.matches, 2);
    assert_string_equal(t.name, name);

    /* Both still match once the binary is deleted, and a kill of the older moves to the other. */
    assert_int_equal(unlink(path), 0);
    stop(a);
    snprintf(spec, sizeof(spec), "exe:%s", path);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), 0);
    assert_int_equal(t.pid, b);
    snprintf(spec, sizeof(spec), "comm:%s", name);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), 0);
    assert_int_equal(t.pid, b);
    /* A prefix of the path is not the path. */
    path[strlen(path) - 1] = '\0';
    snprintf(spec, sizeof(spec), "exe:%s", path);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), -ESRCH);
    stop(b);
    snprintf(spec, sizeof(spec), "comm:%s", name);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), -ESRCH);
}

static void test_comm_long_name(void **state)
{
    char name[64], path[PATH_MAX], spec[128];
    struct target t;
    pid_t a;

    (void)state;
    snprintf(name, sizeof(name), "long-sleeper-name-%d", (int)getpid());
    make_sleeper(name, path, sizeof(path));
    a = spawn(path);
    snprintf(spec, sizeof(spec), "comm:%s", name);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), 0);
    assert_int_equal(t.pid, a);
    assert_int_equal(strlen(t.name), PROCFS_COMM_MAX - 1);
    assert_memory_equal(t.name, name, PROCFS_COMM_MAX - 1);
    /* The comm itself, 15 characters, matches exactly. */
    snprintf(spec, sizeof(spec), "comm:%.15s", name);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), 0);
    assert_int_equal(t.pid, a);
    /* Same first 15, different rest: argv[0] says no. */
    snprintf(spec, sizeof(spec), "comm:%sx", name);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), -ESRCH);
    stop(a);
    unlink(path);
}

static void test_never_self(void **state)
{
    char exe[PATH_MAX], spec[PATH_MAX + 16], comm[PROCFS_COMM_MAX];
    struct target t;
    int r;

    (void)state;
    /* Another copy of this test may run at once: whatever is found, it is not this process. */
    assert_int_equal(procfs_read_exe(PROCFS_ROOT, getpid(), exe, sizeof(exe)), 0);
    snprintf(spec, sizeof(spec), "exe:%s", exe);
    r = target_resolve(PROCFS_ROOT, spec, &t, NULL);
    assert_true(r == -ESRCH || (r == 0 && t.pid != getpid()));
    assert_int_equal(procfs_read_comm(PROCFS_ROOT, getpid(), 0, comm), 0);
    snprintf(spec, sizeof(spec), "comm:%s", comm);
    r = target_resolve(PROCFS_ROOT, spec, &t, NULL);
    assert_true(r == -ESRCH || (r == 0 && t.pid != getpid()));
}

static void write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static void test_pidfile(void **state)
{
    char name[32], path[PATH_MAX], pidfile[PATH_MAX], spec[PATH_MAX + 16], text[64];
    struct target t;
    pid_t a;

    (void)state;
    snprintf(name, sizeof(name), "tgp%d", (int)getpid());
    make_sleeper(name, path, sizeof(path));
    a = spawn(path);
    snprintf(pidfile, sizeof(pidfile), "%s/x.pid", dir);
    snprintf(spec, sizeof(spec), "pidfile:%s", pidfile);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), -ENOENT);
    snprintf(text, sizeof(text), "%d\n", (int)a);
    write_file(pidfile, text);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), 0);
    assert_int_equal(t.pid, a);
    assert_string_equal(t.name, name);
    snprintf(text, sizeof(text), "%d\nsecond line ignored\n", (int)a);
    write_file(pidfile, text);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), 0);
    assert_int_equal(t.pid, a);
    snprintf(text, sizeof(text), "%d", (int)a); /* no newline */
    write_file(pidfile, text);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), 0);
    assert_int_equal(t.pid, a);
    static const char *garbage[] = {"",
                                    "\n",
                                    "12x\n",
                                    " 12\n",
                                    "0\n",
                                    "-5\n",
                                    "99999999999\n",
                                    "0000000000000000000000000000000000000000000000000000000000001"
                                    "2345678\n"};
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        write_file(pidfile, garbage[i]);
        assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), -EBADMSG);
    }
    stop(a);
    snprintf(text, sizeof(text), "%d\n", (int)a);
    write_file(pidfile, text);
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), -ESRCH);
    unlink(pidfile);
    unlink(path);
}

static void test_cache(void **state)
{
    char name[32], path[PATH_MAX], spec[64];
    struct counts before, after;
    struct target t, t2;
    pid_t a, b;

    (void)state;
    snprintf(name, sizeof(name), "tgc%d", (int)getpid());
    make_sleeper(name, path, sizeof(path));
    a = spawn(path);
    snprintf(spec, sizeof(spec), "comm:%s", name);

    before = counts();
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t, NULL), 0);
    after = counts();
    assert_int_equal(after.misses, before.misses + 1);
    assert_int_equal(after.hits, before.hits);
    assert_true(after.currsize >= 1 && after.currsize <= 64);

    before = after;
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t2, NULL), 0);
    after = counts();
    assert_int_equal(after.hits, before.hits + 1);
    assert_int_equal(after.misses, before.misses);
    assert_int_equal(t.pid, t2.pid);
    assert_int_equal(t.starttime, t2.starttime);
    assert_string_equal(t.name, t2.name);
    assert_int_equal(t.matches, t2.matches);

    /* Restarted: the cached pid is gone, a scan finds the new one. */
    stop(a);
    b = spawn(path);
    before = after;
    assert_int_equal(target_resolve(PROCFS_ROOT, spec, &t2, NULL), 0);
    after = counts();
    assert_int_equal(after.misses, before.misses + 1);
    assert_int_equal(after.hits, before.hits);
    assert_int_equal(t2.pid, b);
    assert_int_equal(t.pid, a);

    /* pid:, self and pidfile: never touch the cache. */
    before = after;
    assert_int_equal(target_resolve(PROCFS_ROOT, "self", &t2, NULL), 0);
    after = counts();
    assert_int_equal(after.hits + after.misses, before.hits + before.misses);
    stop(b);
    unlink(path);
}

/* More specs than cache slots, from several threads: every answer still right. */
struct churn {
    pid_t want;
    const char *name;
    int errors;
};

static void *churn_main(void *arg)
{
    struct churn *c = arg;
    char spec[64];
    struct target t;

    for (int i = 0; i < 200; i++) {
        /* 80 spellings of /proc: the root is part of the cache key. */
        char root[128];
        snprintf(root, sizeof(root), "/proc/%.*s", i % 80,
                 "./././././././././././././././"
                 "./././././././././././././././"
                 "./././././././././././");
        snprintf(spec, sizeof(spec), "comm:%s", c->name);
        if (target_resolve(root, spec, &t, NULL) < 0 || t.pid != c->want)
            c->errors++;
    }
    return NULL;
}

static void test_cache_threads(void **state)
{
    char name[32], path[PATH_MAX];
    struct churn c = {0};
    pthread_t th[4];
    pid_t a;

    (void)state;
    snprintf(name, sizeof(name), "tgt%d", (int)getpid());
    make_sleeper(name, path, sizeof(path));
    a = spawn(path);
    c.want = a;
    c.name = name;
    struct churn cs[4] = {c, c, c, c};
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, churn_main, &cs[i]), 0);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(cs[i].errors, 0);
    }
    assert_true(counts().currsize == 64);
    stop(a);
    unlink(path);
}

static void test_fixture(void **state)
{
    struct target t;
    struct error e;

    (void)state;
    assert_int_equal(target_resolve(FIX, "comm:a) b (c", &t, NULL), 0);
    assert_int_equal(t.pid, 100);
    assert_int_equal(t.starttime, 41604);
    assert_string_equal(t.name, "a) b (c");
    assert_int_equal(t.matches, 1);
    /* The exe link says " (deleted)". */
    memset(&t, 0, sizeof(t));
    assert_int_equal(target_resolve(FIX, "exe:/usr/bin/my prog", &t, NULL), 0);
    assert_int_equal(t.pid, 100);
    assert_string_equal(t.name, "a) b (c");
    assert_int_equal(target_resolve(FIX, "exe:/usr/bin/my", &t, NULL), -ESRCH);
    assert_int_equal(target_resolve(FIX, "exe:/usr/bin/my prog (deleted) x", &t, NULL), -ESRCH);
    /* 300 is a zombie, 200's files are corrupt. */
    assert_int_equal(target_resolve(FIX, "comm:z", &t, NULL), -ESRCH);
    assert_int_equal(target_resolve(FIX, "pid:300", &t, NULL), -ESRCH);
    /* err says why, where the errno does not. */
    assert_int_equal(target_resolve(FIX, "comm:z", &t, &e), -ESRCH);
    assert_int_equal(e.code, -ESRCH);
    assert_string_equal(e.reason, "no process has comm z");
    assert_int_equal(target_resolve(FIX, "pid:300", &t, &e), -ESRCH);
    assert_non_null(strstr(e.reason, "not yet reaped"));
    assert_int_equal(target_resolve(FIX, "exe:bin/x", &t, &e), -EINVAL);
    assert_string_equal(e.reason, "exe: takes an absolute path");
    assert_int_equal(target_resolve(FIX, "pid:200", &t, NULL), -EBADMSG);
    assert_int_equal(target_resolve(FIX, "pid:100", &t, NULL), 0);
    assert_int_equal(t.pid, 100);
    assert_int_equal(target_resolve(FIX, "pid:999", &t, NULL), -ESRCH);
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_check), cmocka_unit_test(test_self_and_pid),
        cmocka_unit_test(test_comm_exe),   cmocka_unit_test(test_comm_long_name),
        cmocka_unit_test(test_never_self), cmocka_unit_test(test_pidfile),
        cmocka_unit_test(test_cache),      cmocka_unit_test(test_cache_threads),
        cmocka_unit_test(test_fixture),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
