/* Tests of the /proc readers: fixture trees under tests/unit/fixtures/proc (odd comms, paths with
 * spaces, corrupt and truncated files) and the live /proc of this test process. Run from the top
 * of the tree. */
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
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include "os/procfs.h"

#define FIX "tests/unit/fixtures/proc"

static const char *argv0;

static void test_fixture_comm(void **state)
{
    char comm[PROCFS_COMM_MAX];

    (void)state;
    assert_int_equal(procfs_read_comm(FIX, 100, 0, comm), 0);
    assert_string_equal(comm, "a) b (c");
    assert_int_equal(procfs_read_comm(FIX, 100, 101, comm), 0);
    assert_string_equal(comm, "worker 1");
    /* Too long, no newline, empty: not a kernel comm file. */
    memcpy(comm, "untouched", 10);
    assert_int_equal(procfs_read_comm(FIX, 200, 0, comm), -EBADMSG);
    assert_int_equal(procfs_read_comm(FIX, 200, 200, comm), -EBADMSG);
    assert_int_equal(procfs_read_comm(FIX, 200, 201, comm), -EBADMSG);
    assert_string_equal(comm, "untouched");
    assert_int_equal(procfs_read_comm(FIX, 999, 0, comm), -ESRCH);
    assert_int_equal(procfs_read_comm(FIX, 100, 999, comm), -ESRCH);
    assert_int_equal(procfs_read_comm(FIX, 0, 0, comm), -EINVAL);
    assert_int_equal(procfs_read_comm(FIX, -1, 0, comm), -EINVAL);
}

static void test_fixture_stat(void **state)
{
    uint64_t t = 7;
    char s = '?';

    (void)state;
    /* comm "a) b (c" holds ") ": the fields start after the last ')'. */
    assert_int_equal(procfs_read_starttime(FIX, 100, &t), 0);
    assert_int_equal(t, 41604);
    assert_int_equal(procfs_read_state(FIX, 100, 0, &s), 0);
    assert_int_equal(s, 'S');
    /* Negative nice and -1 tty fields are fine. */
    assert_int_equal(procfs_read_state(FIX, 100, 101, &s), 0);
    assert_int_equal(s, 'D');
    assert_int_equal(procfs_read_state(FIX, 300, 0, &s), 0);
    assert_int_equal(s, 'Z');
    t = 7;
    assert_int_equal(procfs_read_starttime(FIX, 200, &t), -EBADMSG);  /* truncated */
    assert_int_equal(procfs_read_state(FIX, 200, 200, &s), -EBADMSG); /* no ')' */
    assert_int_equal(procfs_read_state(FIX, 200, 201, &s), -EBADMSG); /* overflow */
    assert_int_equal(t, 7);
    assert_int_equal(procfs_read_starttime(FIX, 999, &t), -ESRCH);
}

static void test_fixture_maps(void **state)
{
    struct procfs_map *m = NULL;
    size_t n = 0;

    (void)state;
    assert_int_equal(procfs_read_maps(FIX, 100, &m, &n), 0);
    assert_int_equal(n, 6);
    assert_int_equal(m[0].start, 0x55742cb21000ULL);
    assert_int_equal(m[0].end, 0x55742cb23000ULL);
    assert_string_equal(m[0].perms, "r--p");
    assert_int_equal(m[0].inode, 247134);
    assert_int_equal(m[0].dev_major, 0xfe);
    assert_int_equal(m[0].dev_minor, 0);
    assert_string_equal(m[0].path, "/usr/bin/my prog (deleted)");
    assert_int_equal(m[1].offset, 0x2000);
    assert_string_equal(m[1].perms, "r-xp");
    assert_string_equal(m[2].path, "");
    assert_int_equal(m[2].inode, 0);
    /* Leading spaces of a path cannot be told from the padding; inner ones are kept. */
    assert_string_equal(m[3].path, "/tmp/ lead and  inner spaces");
    assert_string_equal(m[3].perms, "r-xs");
    assert_int_equal(m[3].dev_major, 0x103);
    assert_int_equal(m[3].dev_minor, 0x1f);
    assert_int_equal(m[3].offset, 0xa000);
    assert_int_equal(m[3].inode, UINT64_MAX);
    assert_string_equal(m[4].path, "[stack]");
    assert_int_equal(m[5].start, 0xffffffffff600000ULL);
    assert_string_equal(m[5].path, "[vsyscall]");
    procfs_maps_free(m, n);

    m = NULL;
    assert_int_equal(procfs_read_maps(FIX, 200, &m, &n), -EBADMSG); /* garbage line */
    assert_int_equal(procfs_read_maps(FIX, 300, &m, &n), -EBADMSG); /* cut mid-line */
    assert_null(m);
    assert_int_equal(procfs_read_maps(FIX, 999, &m, &n), -ESRCH);
    procfs_maps_free(NULL, 0);
}

/* The [heap] entry's Rss, not that of a file whose name ends in " [heap]"; none is 0. */
static void test_fixture_heap_rss(void **state)
{
    uint64_t rss = 1;

    (void)state;
    assert_int_equal(procfs_read_heap_rss(FIX, 100, &rss), 0);
    assert_int_equal(rss, 40448ULL * 1024);
    assert_int_equal(procfs_read_heap_rss(FIX, 200, &rss), 0);
    assert_int_equal(rss, 0);
    assert_int_equal(procfs_read_heap_rss(FIX, 300, &rss), -EBADMSG); /* a letter in a number */
    assert_int_equal(procfs_read_heap_rss(FIX, 999, &rss), -ESRCH);
}

/* This process's heap after it touched 1 MiB of blocks small enough for malloc's brk heap. */
static void test_live_heap_rss(void **state)
{
    enum { BLOCKS = 64, BLOCK = 16 << 10 };
    char *b[BLOCKS];
    uint64_t rss = 0;
    size_t i;

    (void)state;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    /* The sanitizers' allocators map their own regions and never grow the brk heap read here. */
    skip();
#endif
    for (i = 0; i < BLOCKS; i++) {
        b[i] = malloc(BLOCK);
        assert_non_null(b[i]);
        memset(b[i], 1, BLOCK);
    }
    assert_int_equal(procfs_read_heap_rss(PROCFS_ROOT, getpid(), &rss), 0);
    assert_true(rss >= (uint64_t)BLOCKS * BLOCK);
    for (i = 0; i < BLOCKS; i++)
        free(b[i]);
}

static void test_fixture_lists(void **state)
{
    pid_t *ids = NULL;
    int *fds = NULL;
    size_t n = 0;

    (void)state;
    /* "0123", "cpuinfo" and "self" are not pids. */
    assert_int_equal(procfs_list_pids(FIX, &ids, &n), 0);
    assert_int_equal(n, 4);
    assert_int_equal(ids[0], 100);
    assert_int_equal(ids[1], 200);
    assert_int_equal(ids[2], 300);
    assert_int_equal(ids[3], 400);
    free(ids);
    assert_int_equal(procfs_list_tasks(FIX, 100, &ids, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 100);
    assert_int_equal(ids[1], 101);
    free(ids);
    assert_int_equal(procfs_list_tasks(FIX, 999, &ids, &n), -ESRCH);
    assert_int_equal(procfs_list_fds(FIX, 100, &fds, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(fds[0], 0);
    assert_int_equal(fds[1], 3);
    assert_int_equal(fds[2], 10);
    free(fds);
    /* 300 exists but has no fd directory (as when it is exiting). */
    assert_int_equal(procfs_list_fds(FIX, 300, &fds, &n), -ENOENT);
    assert_int_equal(procfs_list_fds(FIX, 999, &fds, &n), -ESRCH);
    assert_int_equal(procfs_list_pids(FIX "/nonexistent", &ids, &n), -ENOENT);
}

/* A process on its way out: its task and fd directories are there and empty. The lists are empty
 * too, without an array (the sanitizers' build once stopped on the sort of none). */
static void test_empty_lists(void **state)
{
    static const char *const dirs[] = {"", "/task", "/fd"};
    char root[] = "/tmp/procfs-test-XXXXXX", path[PATH_MAX];
    pid_t *ids = (pid_t *)&ids;
    int *fds = (int *)&fds;
    size_t n = 1;

    (void)state;
    assert_non_null(mkdtemp(root));
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/500%s", root, dirs[i]);
        assert_int_equal(mkdir(path, 0700), 0);
    }
    assert_int_equal(procfs_list_tasks(root, 500, &ids, &n), 0);
    assert_int_equal(n, 0);
    free(ids);
    n = 1;
    assert_int_equal(procfs_list_fds(root, 500, &fds, &n), 0);
    assert_int_equal(n, 0);
    free(fds);
    for (size_t i = 3; i-- > 0;) {
        snprintf(path, sizeof(path), "%s/500%s", root, dirs[i]);
        rmdir(path);
    }
    rmdir(root);
}

static void test_fixture_links(void **state)
{
    char buf[PATH_MAX];
    char small[8];

    (void)state;
    assert_int_equal(procfs_read_exe(FIX, 100, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "/usr/bin/my prog (deleted)");
    assert_int_equal(procfs_read_exe(FIX, 100, small, sizeof(small)), -ENAMETOOLONG);
    assert_int_equal(procfs_read_exe(FIX, 300, buf, sizeof(buf)), -ENOENT);
    assert_int_equal(procfs_read_exe(FIX, 999, buf, sizeof(buf)), -ESRCH);
    assert_int_equal(procfs_read_fd_link(FIX, 100, 3, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "socket:[1234]");
    assert_int_equal(procfs_read_fd_link(FIX, 100, 10, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "pipe:[77]");
    assert_int_equal(procfs_read_fd_link(FIX, 100, 4, buf, sizeof(buf)), -ENOENT);
    assert_int_equal(procfs_read_fd_link(FIX, 100, -1, buf, sizeof(buf)), -EINVAL);
    assert_int_equal(procfs_read_fd_link(FIX, 999, 3, buf, sizeof(buf)), -ESRCH);
}

static void test_fixture_tgid_argv0(void **state)
{
    char buf[PATH_MAX];
    char small[8];
    pid_t tgid = 0;

    (void)state;
    assert_int_equal(procfs_read_tgid(FIX, 100, &tgid), 0);
    assert_int_equal(tgid, 100);
    assert_int_equal(procfs_read_tgid(FIX, 200, &tgid), -EBADMSG);
    assert_int_equal(procfs_read_tgid(FIX, 999, &tgid), -ESRCH);
    assert_int_equal(procfs_read_argv0(FIX, 100, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "/usr/bin/my prog");
    assert_int_equal(procfs_read_argv0(FIX, 100, small, sizeof(small)), -ENAMETOOLONG);
    assert_int_equal(procfs_read_argv0(FIX, 300, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "");
    assert_int_equal(procfs_read_argv0(FIX, 999, buf, sizeof(buf)), -ESRCH);
}

/* A thread that names itself and then sleeps on a pipe, so its state is known. */
struct sleeper {
    int pipefd[2];
    pid_t tid;
    pthread_mutex_t lock;
    pthread_cond_t cond;
};

static void *sleeper_main(void *arg)
{
    struct sleeper *s = arg;
    char c;

    pthread_setname_np(pthread_self(), "procfs sleeper");
    pthread_mutex_lock(&s->lock);
    s->tid = gettid();
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    while (read(s->pipefd[0], &c, 1) < 0 && errno == EINTR)
        ;
    return NULL;
}

static int contains(const int *ids, size_t n, int id)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id)
            return 1;
    return 0;
}

static void test_live_tasks(void **state)
{
    struct sleeper s = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    char comm[PROCFS_COMM_MAX], st = 0;
    pthread_t th;
    pid_t *ids, *pids, tgid = 0;
    size_t n, npids;

    (void)state;
    assert_int_equal(pipe(s.pipefd), 0);
    assert_int_equal(pthread_create(&th, NULL, sleeper_main, &s), 0);
    pthread_mutex_lock(&s.lock);
    while (!s.tid)
        pthread_cond_wait(&s.cond, &s.lock);
    pthread_mutex_unlock(&s.lock);

    assert_int_equal(procfs_list_tasks(PROCFS_ROOT, getpid(), &ids, &n), 0);
    assert_true(n >= 2);
    assert_true(contains(ids, n, getpid()));
    assert_true(contains(ids, n, s.tid));
    for (size_t i = 1; i < n; i++)
        assert_true(ids[i - 1] < ids[i]);
    free(ids);

    /* The name is set before the tid is published; wait for the thread to block. */
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(procfs_read_state(PROCFS_ROOT, getpid(), s.tid, &st), 0);
        if (st == 'S')
            break;
        usleep(1000);
    }
    assert_int_equal(st, 'S');
    assert_int_equal(procfs_read_comm(PROCFS_ROOT, getpid(), s.tid, comm), 0);
    assert_string_equal(comm, "procfs sleeper");
    /* A thread reading its own stat is running. */
    assert_int_equal(procfs_read_state(PROCFS_ROOT, getpid(), gettid(), &st), 0);
    assert_int_equal(st, 'R');

    /* Thread ids resolve in /proc but are not processes: not listed, tgid tells. */
    assert_int_equal(procfs_list_pids(PROCFS_ROOT, &pids, &npids), 0);
    assert_true(contains(pids, npids, getpid()));
    assert_false(contains(pids, npids, s.tid));
    free(pids);
    assert_int_equal(procfs_read_tgid(PROCFS_ROOT, s.tid, &tgid), 0);
    assert_int_equal(tgid, getpid());
    assert_int_equal(procfs_read_tgid(PROCFS_ROOT, getpid(), &tgid), 0);
    assert_int_equal(tgid, getpid());

    assert_int_equal(write(s.pipefd[1], "x", 1), 1);
    assert_int_equal(pthread_join(th, NULL), 0);
    close(s.pipefd[0]);
    close(s.pipefd[1]);
    assert_int_equal(procfs_read_comm(PROCFS_ROOT, getpid(), s.tid, comm), -ESRCH);
}

static void test_live_starttime_and_gone(void **state)
{
    uint64_t mine, again, childs;
    char comm[PROCFS_COMM_MAX], st;
    int p[2];
    pid_t child;

    (void)state;
    assert_int_equal(procfs_read_starttime(PROCFS_ROOT, getpid(), &mine), 0);
    assert_int_equal(procfs_read_starttime(PROCFS_ROOT, getpid(), &again), 0);
    assert_int_equal(mine, again);
    assert_int_equal(pipe(p), 0);
    child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        char c;
        close(p[1]);
        while (read(p[0], &c, 1) < 0 && errno == EINTR)
            ;
        _exit(0);
    }
    close(p[0]);
    assert_int_equal(procfs_read_starttime(PROCFS_ROOT, child, &childs), 0);
    assert_true(childs >= mine);
    assert_int_equal(procfs_read_comm(PROCFS_ROOT, child, 0, comm), 0);
    assert_int_equal(procfs_read_comm(PROCFS_ROOT, getpid(), 0, comm + 0), 0);
    close(p[1]);
    /* Exited but not reaped: a zombie, still there. */
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(procfs_read_state(PROCFS_ROOT, child, 0, &st), 0);
        if (st == 'Z')
            break;
        usleep(1000);
    }
    assert_int_equal(st, 'Z');
    assert_int_equal(waitpid(child, NULL, 0), child);
    assert_int_equal(procfs_read_starttime(PROCFS_ROOT, child, &childs), -ESRCH);
    assert_int_equal(procfs_read_state(PROCFS_ROOT, child, 0, &st), -ESRCH);
}

static int in_map(const struct procfs_map *m, const void *addr)
{
    return (uintptr_t)addr >= m->start && (uintptr_t)addr < m->end;
}

static void test_live_maps(void **state)
{
    char tmpl[] = "/tmp/procfs test (x) XXXXXX";
    char exe[PATH_MAX], expect[PATH_MAX + 16];
    struct procfs_map *m;
    size_t n;
    int fd, seen_code = 0, seen_stack = 0, seen_file = 0, local = 0;
    void *addr;

    (void)state;
    fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 4096), 0);
    addr = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
    assert_true(addr != MAP_FAILED);
    close(fd);
    assert_int_equal(unlink(tmpl), 0);
    snprintf(expect, sizeof(expect), "%s (deleted)", tmpl);
    assert_int_equal(procfs_read_exe(PROCFS_ROOT, getpid(), exe, sizeof(exe)), 0);

    assert_int_equal(procfs_read_maps(PROCFS_ROOT, getpid(), &m, &n), 0);
    assert_true(n > 4);
    for (size_t i = 0; i < n; i++) {
        assert_true(m[i].start < m[i].end);
        if (i)
            assert_true(m[i - 1].end <= m[i].start);
        if (in_map(&m[i], (void *)test_live_maps)) {
            assert_int_equal(m[i].perms[2], 'x');
            assert_string_equal(m[i].path, exe);
            assert_true(m[i].inode != 0);
            seen_code = 1;
        }
        if (in_map(&m[i], &local)) {
            assert_string_equal(m[i].path, "[stack]");
            assert_string_equal(m[i].perms, "rw-p");
            seen_stack = 1;
        }
        if (in_map(&m[i], addr)) {
            assert_string_equal(m[i].path, expect);
            assert_string_equal(m[i].perms, "r--s");
            assert_int_equal(m[i].start, (uintptr_t)addr);
            seen_file = 1;
        }
    }
    procfs_maps_free(m, n);
    munmap(addr, 4096);
    assert_true(seen_code && seen_stack && seen_file);
}

static void test_live_fds(void **state)
{
    char link[64], expect[64];
    struct stat st;
    int p[2], *fds;
    size_t n;

    (void)state;
    /* High numbers, so that the listing's own fd cannot take a closed one's place. */
    assert_int_equal(pipe(p), 0);
    assert_int_equal(dup2(p[0], 900), 900);
    assert_int_equal(dup2(p[1], 901), 901);
    close(p[0]);
    close(p[1]);
    p[0] = 900;
    p[1] = 901;
    assert_int_equal(fstat(p[0], &st), 0);
    assert_int_equal(procfs_list_fds(PROCFS_ROOT, getpid(), &fds, &n), 0);
    assert_true(contains(fds, n, p[0]) && contains(fds, n, p[1]));
    for (size_t i = 1; i < n; i++)
        assert_true(fds[i - 1] < fds[i]);
    free(fds);
    assert_int_equal(procfs_read_fd_link(PROCFS_ROOT, getpid(), p[0], link, sizeof(link)), 0);
    snprintf(expect, sizeof(expect), "pipe:[%llu]", (unsigned long long)st.st_ino);
    assert_string_equal(link, expect);
    close(p[0]);
    close(p[1]);
    assert_int_equal(procfs_list_fds(PROCFS_ROOT, getpid(), &fds, &n), 0);
    assert_false(contains(fds, n, p[0]) || contains(fds, n, p[1]));
    free(fds);
    assert_int_equal(procfs_read_fd_link(PROCFS_ROOT, getpid(), p[0], link, sizeof(link)), -ENOENT);
}

static void test_live_argv0(void **state)
{
    char buf[PATH_MAX];

    (void)state;
    assert_int_equal(procfs_read_argv0(PROCFS_ROOT, getpid(), buf, sizeof(buf)), 0);
    assert_string_equal(buf, argv0);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_comm),
        cmocka_unit_test(test_fixture_stat),
        cmocka_unit_test(test_fixture_maps),
        cmocka_unit_test(test_fixture_lists),
        cmocka_unit_test(test_empty_lists),
        cmocka_unit_test(test_fixture_links),
        cmocka_unit_test(test_fixture_tgid_argv0),
        cmocka_unit_test(test_live_tasks),
        cmocka_unit_test(test_live_starttime_and_gone),
        cmocka_unit_test(test_live_maps),
        cmocka_unit_test(test_live_fds),
        cmocka_unit_test(test_live_argv0),
        cmocka_unit_test(test_fixture_heap_rss),
        cmocka_unit_test(test_live_heap_rss),
    };

    (void)argc;
    argv0 = argv[0];
    return cmocka_run_group_tests(tests, NULL, NULL);
}
