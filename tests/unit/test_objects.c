/* Tests of the object census against real processes: build/workloads/leaky (pipes leaked at 10 a
 * second, a timerfd and an eventfd in an epoll set, an unlinked log file), whose fds are read
 * back independently with readlink; objects of this process itself (a pipe, a file, an eventfd,
 * a signalfd, an inotify, a POSIX timer); and the cost of a count over 10,000 fds. Run from the
 * top of the tree. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <regex.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include "objects/objects.h"
#include "os/procfs.h"
#include "testutil.h"

struct leaky {
    pid_t pid;
    int timerfd, eventfd, epoll, file;
};

/* Checks that a dump of pid's objects of type t has a line starting with the formatted text. */
static void expect_dumped(pid_t pid, enum objects_type t, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void expect_dumped(pid_t pid, enum objects_type t, const char *fmt, ...)
{
    struct testutil_lines l = {0};
    char want[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(want, sizeof(want), fmt, ap);
    va_end(ap);
    assert_int_equal(objects_dump(PROCFS_ROOT, pid, t, testutil_collect, &l, NULL), 0);
    assert_non_null(testutil_find_prefix(&l, want));
    testutil_lines_clear(&l);
}

static void leaky_start(struct leaky *lk)
{
    char path[PATH_MAX], line[256];
    int out[2];
    FILE *f;

    testutil_workload_path("leaky", path, sizeof(path));
    assert_int_equal(pipe(out), 0);
    lk->pid = fork();
    assert_true(lk->pid >= 0);
    if (lk->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(out[1], 1);
        close(out[0]);
        close(out[1]);
        execl(path, path, (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    f = fdopen(out[0], "r");
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof(line), f));
    fclose(f);
    assert_int_equal(sscanf(line, "ready timerfd=%d eventfd=%d epoll=%d file=%d", &lk->timerfd,
                            &lk->eventfd, &lk->epoll, &lk->file),
                     4);
}

static void leaky_stop(struct leaky *lk)
{
    kill(lk->pid, SIGKILL);
    assert_int_equal(waitpid(lk->pid, NULL, 0), lk->pid);
}

/* The kind of pid's fd, read here with readlink, not through objects.c. */
static void fd_link(pid_t pid, int fd, char *buf, size_t len)
{
    char path[64];
    ssize_t n;

    snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)pid, fd);
    n = readlink(path, buf, len - 1);
    assert_true(n > 0);
    buf[n] = '\0';
}

static void test_type_names(void **state)
{
    enum objects_type t;

    (void)state;
    for (int i = 0; i < OBJECTS_NTYPES; i++) {
        const char *name = objects_type_name((enum objects_type)i);
        assert_non_null(name);
        assert_int_equal(objects_type_parse(name, &t), 0);
        assert_int_equal(t, i);
    }
    assert_string_equal(objects_type_name(OBJECTS_OTHER_FD), "other");
    t = OBJECTS_PIPE;
    assert_int_equal(objects_type_parse("widget", &t), -EINVAL);
    assert_int_equal(objects_type_parse("", &t), -EINVAL);
    assert_int_equal(objects_type_parse("Pipe", &t), -EINVAL);
    assert_int_equal(t, OBJECTS_PIPE);
    assert_null(objects_type_name(OBJECTS_NTYPES));
}

/* Pipes are counted by fd: 10 pipes a second are 20 fds. */
static void test_count_growth(void **state)
{
    struct objects_count a, b;
    struct leaky lk;
    struct error e;
    uint64_t grew;

    (void)state;
    leaky_start(&lk);
    assert_int_equal(objects_count(PROCFS_ROOT, lk.pid, &a, NULL), 0);
    sleep(1);
    assert_int_equal(objects_count(PROCFS_ROOT, lk.pid, &b, NULL), 0);
    grew = b.n[OBJECTS_PIPE] - a.n[OBJECTS_PIPE];
    printf("pipe fds %llu -> %llu in 1 s\n", (unsigned long long)a.n[OBJECTS_PIPE],
           (unsigned long long)b.n[OBJECTS_PIPE]);
    assert_true(grew >= 14 && grew <= 26);
    assert_int_equal(b.n[OBJECTS_PIPE] % 2, a.n[OBJECTS_PIPE] % 2);
    assert_int_equal(b.n[OBJECTS_THREAD], 3);
    assert_int_equal(b.n[OBJECTS_TIMERFD], 1);
    assert_int_equal(b.n[OBJECTS_EVENTFD], 1);
    assert_int_equal(b.n[OBJECTS_EPOLL], 1);
    assert_int_equal(b.n[OBJECTS_SIGNALFD], 0);
    assert_true(b.n[OBJECTS_FILE] >= 1);
    assert_true(b.n[OBJECTS_MAPPING] > 5);
    leaky_stop(&lk);
    assert_int_equal(objects_count(PROCFS_ROOT, lk.pid, &a, &e), -ESRCH);
    assert_int_equal(e.code, -ESRCH);
    /* A file that cannot be read is named: the fixture's pid 300 has no fd directory. */
    assert_int_equal(objects_count("tests/unit/fixtures/proc", 300, &a, &e), -ENOENT);
    assert_non_null(strstr(e.reason, "tests/unit/fixtures/proc/300/fd"));
    assert_int_equal(objects_dump(PROCFS_ROOT, lk.pid, OBJECTS_PIPE, testutil_collect, NULL, NULL),
                     -ESRCH);
    assert_int_equal(objects_scheduled(PROCFS_ROOT, lk.pid, testutil_collect, NULL, NULL), -ESRCH);
}

static void test_leaky_reprs(void **state)
{
    struct testutil_lines l = {0};
    char want[512], link[PATH_MAX];
    struct leaky lk;
    regex_t re;
    regmatch_t m[2];
    double next;
    size_t pairs = 0;

    (void)state;
    leaky_start(&lk);
    usleep(300 * 1000);

    fd_link(lk.pid, lk.timerfd, link, sizeof(link));
    assert_string_equal(link, "anon_inode:[timerfd]");
    assert_int_equal(objects_dump(PROCFS_ROOT, lk.pid, OBJECTS_TIMERFD, testutil_collect, &l, NULL),
                     0);
    assert_int_equal(l.n, 1);
    snprintf(want, sizeof(want),
             "^<timerfd fd=%d clock=monotonic next=([0-9]+\\.[0-9]{3})s "
             "interval=7s>$",
             lk.timerfd);
    assert_int_equal(regcomp(&re, want, REG_EXTENDED), 0);
    assert_int_equal(regexec(&re, l.v[0], 2, m, 0), 0);
    regfree(&re);
    next = strtod(l.v[0] + m[1].rm_so, NULL);
    assert_true(next > 0 && next <= 7.0);
    testutil_lines_clear(&l);

    assert_int_equal(objects_scheduled(PROCFS_ROOT, lk.pid, testutil_collect, &l, NULL), 0);
    snprintf(want, sizeof(want), "<timerfd fd=%d clock=monotonic next=", lk.timerfd);
    assert_non_null(testutil_find_prefix(&l, want));
    snprintf(want, sizeof(want),
             "<epoll fd=%d watches fd=%d (timerfd) events=EPOLLIN, fd=%d "
             "(eventfd) events=EPOLLIN|EPOLLET>",
             lk.epoll, lk.timerfd, lk.eventfd);
    assert_non_null(testutil_find_prefix(&l, want));
    testutil_lines_clear(&l);

    expect_dumped(lk.pid, OBJECTS_FILE,
                  "<file fd=%d path=/tmp/leaky.%d.log (deleted) pos=4096 flags=O_WRONLY|", lk.file,
                  (int)lk.pid);

    /* Each leaked pipe: read end fd R, write end R+1, each naming the other. */
    assert_int_equal(objects_dump(PROCFS_ROOT, lk.pid, OBJECTS_PIPE, testutil_collect, &l, NULL),
                     0);
    assert_true(l.n >= 2);
    for (size_t i = 0; i < l.n; i++) {
        int fd, other;
        unsigned long ino;
        char peer[256];
        if (sscanf(l.v[i], "<pipe fd=%d inode=%lu read end, other end: pid %*d fd %d>", &fd, &ino,
                   &other) != 3)
            continue;
        fd_link(lk.pid, fd, link, sizeof(link));
        snprintf(want, sizeof(want), "pipe:[%lu]", ino);
        assert_string_equal(link, want);
        snprintf(peer, sizeof(peer), "<pipe fd=%d inode=%lu write end, other end: pid %d fd %d>",
                 other, ino, (int)lk.pid, fd);
        assert_non_null(testutil_find_prefix(&l, peer));
        pairs++;
    }
    assert_true(pairs >= 2 && pairs * 2 <= l.n);
    testutil_lines_clear(&l);

    assert_int_equal(objects_dump(PROCFS_ROOT, lk.pid, OBJECTS_THREAD, testutil_collect, &l, NULL),
                     0);
    assert_int_equal(l.n, 3);
    snprintf(want, sizeof(want), "<thread tid=%d name=leaky state=", (int)lk.pid);
    assert_non_null(testutil_find_prefix(&l, want));
    testutil_lines_clear(&l);
    leaky_stop(&lk);
}

static void test_own_objects(void **state)
{
    struct testutil_lines l = {0};
    char want[512], path[] = "/tmp/test_objects.XXXXXX";
    struct sigevent sev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR2};
    struct stat st;
    sigset_t mask;
    timer_t timer;
    int p[2], q[2], fd, efd, sfd, ifd;

    (void)state;
    assert_int_equal(pipe(p), 0);
    assert_int_equal(pipe(q), 0);
    close(q[1]);
    fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    fd = open(path, O_RDWR | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "0123456789", 10), 10);
    efd = eventfd(5, 0);
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGTERM);
    sfd = signalfd(-1, &mask, 0);
    ifd = inotify_init();
    assert_true(efd >= 0 && sfd >= 0 && ifd >= 0);
    assert_true(inotify_add_watch(ifd, "/tmp", IN_CREATE) >= 0);
    assert_true(inotify_add_watch(ifd, "/", IN_CREATE) >= 0);
    assert_int_equal(timer_create(CLOCK_MONOTONIC, &sev, &timer), 0);

    assert_int_equal(objects_dump(PROCFS_ROOT, getpid(), OBJECTS_PIPE, testutil_collect, &l, NULL),
                     0);
    assert_int_equal(fstat(p[0], &st), 0);
    snprintf(want, sizeof(want), "<pipe fd=%d inode=%lu read end, other end: pid %d fd %d>", p[0],
             (unsigned long)st.st_ino, (int)getpid(), p[1]);
    assert_non_null(testutil_find_prefix(&l, want));
    assert_int_equal(fstat(q[0], &st), 0);
    snprintf(want, sizeof(want),
             "<pipe fd=%d inode=%lu read end, other end: not in this "
             "process>",
             q[0], (unsigned long)st.st_ino);
    assert_non_null(testutil_find_prefix(&l, want));
    testutil_lines_clear(&l);

    expect_dumped(getpid(), OBJECTS_FILE, "<file fd=%d path=%s pos=10 flags=O_RDWR|O_APPEND", fd,
                  path);
    expect_dumped(getpid(), OBJECTS_EVENTFD, "<eventfd fd=%d count=5>", efd);
    expect_dumped(getpid(), OBJECTS_SIGNALFD, "<signalfd fd=%d sigmask=SIGUSR1|SIGTERM>", sfd);
    expect_dumped(getpid(), OBJECTS_INOTIFY, "<inotify fd=%d watches=2>", ifd);

    assert_int_equal(
        objects_dump(PROCFS_ROOT, getpid(), OBJECTS_MAPPING, testutil_collect, &l, NULL), 0);
    assert_true(l.n > 5);
    assert_non_null(testutil_find_prefix(&l, "<mapping "));
    testutil_lines_clear(&l);

    assert_int_equal(objects_scheduled(PROCFS_ROOT, getpid(), testutil_collect, &l, NULL), 0);
    snprintf(want, sizeof(want),
             "<posix timer id=%ld clock=monotonic notify=signal/%d "
             "target=pid.%d>",
             (long)(intptr_t)timer, SIGUSR2, (int)getpid());
    assert_non_null(testutil_find_prefix(&l, want));
    testutil_lines_clear(&l);

    /* emit's negative value stops the dump and is returned. */
    l.stop_after = 1;
    assert_int_equal(
        objects_dump(PROCFS_ROOT, getpid(), OBJECTS_MAPPING, testutil_collect, &l, NULL),
        -ECANCELED);
    assert_int_equal(l.n, 1);
    testutil_lines_clear(&l);

    timer_delete(timer);
    unlink(path);
    close(p[0]);
    close(p[1]);
    close(q[0]);
    close(fd);
    close(efd);
    close(sfd);
    close(ifd);
}

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* asyncio's self-pipe, here in this process: a socketpair whose read end an epoll set watches.
 * Its write end is found; a pair neither end of which is watched, and a pair whose both ends are,
 * give nothing. */
static void test_selfpipes(void **state)
{
    (void)state;
    struct objects_selfpipe found[4];
    struct epoll_event ev = {.events = EPOLLIN};
    struct stat st;
    size_t n = 99;
    int loop[2], idle[2], both[2];
    int ep = epoll_create1(EPOLL_CLOEXEC);

    assert_true(ep >= 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, loop), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, idle), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, both), 0);
    assert_int_equal(epoll_ctl(ep, EPOLL_CTL_ADD, loop[0], &ev), 0);
    assert_int_equal(epoll_ctl(ep, EPOLL_CTL_ADD, both[0], &ev), 0);
    assert_int_equal(epoll_ctl(ep, EPOLL_CTL_ADD, both[1], &ev), 0);
    assert_int_equal(objects_selfpipes(PROCFS_ROOT, getpid(), found, 4, &n, NULL), 0);
    assert_int_equal(n, 1);
    assert_int_equal(found[0].fd, loop[1]);
    assert_int_equal(fstat(loop[1], &st), 0);
    assert_int_equal(found[0].ino, st.st_ino);
    for (int i = 0; i < 2; i++) {
        close(loop[i]);
        close(idle[i]);
        close(both[i]);
    }
    close(ep);
}

/* A child holding 5000 pipes (10,000 fds): the count is meant to run every second. */
static void test_count_cost(void **state)
{
    struct objects_count c;
    int ready[2];
    double best = 1e9, total = 0;
    char ch;
    pid_t pid;

    (void)state;
    assert_int_equal(pipe(ready), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit rl = {11000, 11000};
        int p[2];
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            _exit(1);
        for (int i = 0; i < 5000; i++)
            if (pipe(p) < 0)
                _exit(1);
        if (write(ready[1], "r", 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    close(ready[1]);
    assert_int_equal(read(ready[0], &ch, 1), 1);
    close(ready[0]);
    for (int i = 0; i < 5; i++) {
        double t0 = now_ms(), t;
        assert_int_equal(objects_count(PROCFS_ROOT, pid, &c, NULL), 0);
        t = now_ms() - t0;
        total += t;
        if (t < best)
            best = t;
    }
    printf("objects_count over %llu pipe fds: best %.1f ms, mean %.1f ms\n",
           (unsigned long long)c.n[OBJECTS_PIPE], best, total / 5);
    /* What it costs is a figure of bench/object_sources.py (agent CPU per scan, 10,000 fds). */
    assert_true(c.n[OBJECTS_PIPE] >= 10000);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_names),  cmocka_unit_test(test_count_growth),
        cmocka_unit_test(test_leaky_reprs), cmocka_unit_test(test_own_objects),
        cmocka_unit_test(test_count_cost),  cmocka_unit_test(test_selfpipes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
