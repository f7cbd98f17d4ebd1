/* Tests of object-source tracing against real processes: build/workloads/leaky (a pipe every
 * 100 ms from its thread "piper", in leak_pipe()), build/workloads/objmaker (pipes on command,
 * also from a thread created after tracing started), and this process itself (dup, fcntl,
 * socketpair, eventfd, mmap). What the tracer reports is checked against /proc, read here with
 * readlink, and against what the workloads print; stacks are unwound with stacks_unwind_regs.
 * Needs root (or CAP_PERFMON and tracefs access), as the agent does. Run from the top of the
 * tree. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include "objects/objsrc.h"
#include "os/procfs.h"
#include "unwind/stacks.h"
#include "testutil.h"

#define EVENTS_MAX 256

/* A copy of an event, its stack included, kept past the callback. */
struct kept {
    struct objsrc_event ev;
    unsigned char stack[OBJSRC_STACK_BYTES];
};

struct events {
    size_t n;
    struct kept v[EVENTS_MAX];
};

struct child {
    pid_t pid;
    FILE *out;
    int in;
};

static int keep(const struct objsrc_event *ev, void *userdata)
{
    struct events *e = userdata;
    struct kept *k;

    assert_true(ev->stack_len <= OBJSRC_STACK_BYTES);
    if (e->n == EVENTS_MAX)
        return 0;
    k = &e->v[e->n++];
    k->ev = *ev;
    memcpy(k->stack, ev->stack, ev->stack_len);
    k->ev.stack = k->stack;
    return 0;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Polls until pred finds what it wants among the events, or timeout_ms. */
static const struct kept *poll_for(struct objsrc *s, struct events *e, int timeout_ms,
                                   const struct kept *(*pred)(const struct events *, void *),
                                   void *arg)
{
    uint64_t end = mono_ns() + (uint64_t)timeout_ms * 1000000ull;
    const struct kept *k;

    while (!(k = pred(e, arg)) && mono_ns() < end)
        assert_int_equal(objsrc_poll(s, 100, keep, e, NULL), 0);
    return k;
}

static void child_start(struct child *c, const char *name, const char *arg)
{
    char path[PATH_MAX];
    int out[2], in[2];

    testutil_workload_path(name, path, sizeof(path));
    assert_int_equal(pipe(out), 0);
    assert_int_equal(pipe(in), 0);
    c->pid = fork();
    assert_true(c->pid >= 0);
    if (c->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(out[0]);
        close(out[1]);
        close(in[0]);
        close(in[1]);
        execl(path, path, arg, (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    close(in[0]);
    c->in = in[1];
    c->out = fdopen(out[0], "r");
    assert_non_null(c->out);
}

static void child_stop(struct child *c)
{
    kill(c->pid, SIGKILL);
    assert_int_equal(waitpid(c->pid, NULL, 0), c->pid);
    fclose(c->out);
    close(c->in);
}

static void read_ready(struct child *c, char *line, size_t len)
{
    assert_non_null(fgets(line, (int)len, c->out));
    assert_memory_equal(line, "ready", 5);
}

static pid_t find_thread(pid_t pid, const char *name)
{
    char comm[PROCFS_COMM_MAX];
    pid_t *tids, found = 0;
    size_t n;

    assert_int_equal(procfs_list_tasks(PROCFS_ROOT, pid, &tids, &n), 0);
    for (size_t i = 0; i < n; i++)
        if (procfs_read_comm(PROCFS_ROOT, pid, tids[i], comm) == 0 && strcmp(comm, name) == 0)
            found = tids[i];
    free(tids);
    return found;
}

static uint64_t pipe_inode(pid_t pid, int fd)
{
    char link[128];
    unsigned long long ino;

    assert_int_equal(procfs_read_fd_link(PROCFS_ROOT, pid, fd, link, sizeof(link)), 0);
    assert_int_equal(sscanf(link, "pipe:[%llu]", &ino), 1);
    return ino;
}

/* Frames of one event, innermost first; true when one of them is func. */
static bool unwinds_through(pid_t pid, const struct objsrc_event *ev, const char *func,
                            const char *outer)
{
    struct stacks_frame frames[STACKS_MAX_FRAMES];
    struct stacks *st;
    size_t n = 0;
    int truncated = 0;
    bool seen = false, seen_outer = outer == NULL;

    assert_int_equal(stacks_new(pid, &st), 0);
    assert_int_equal(stacks_unwind_regs(st, ev->regs, ev->stack_addr, ev->stack, ev->stack_len,
                                        frames, STACKS_MAX_FRAMES, &n, &truncated),
                     0);
    for (size_t i = 0; i < n; i++) {
        if (!frames[i].func)
            continue;
        seen |= strcmp(frames[i].func, func) == 0;
        /* The outer function is further out than func. */
        seen_outer |= seen && outer && strcmp(frames[i].func, outer) == 0;
    }
    stacks_free(st);
    return seen && seen_outer;
}

static const struct kept *pipes_at_least(const struct events *e, void *arg)
{
    size_t want = *(size_t *)arg, n = 0;

    for (size_t i = 0; i < e->n; i++)
        if (e->v[i].ev.type == OBJECTS_PIPE && ++n == want)
            return &e->v[i];
    return NULL;
}

static void test_leaky_pipes(void **state)
{
    struct events *e = calloc(1, sizeof(*e));
    struct objsrc_stats stats;
    struct objsrc *s;
    struct child c;
    char line[256];
    size_t want = 3, checked = 0;
    uint64_t opened_ns;
    pid_t piper;

    (void)state;
    assert_non_null(e);
    child_start(&c, "leaky", NULL);
    read_ready(&c, line, sizeof(line));
    piper = find_thread(c.pid, "piper");
    assert_true(piper > 0);
    assert_int_equal(objsrc_open(c.pid, &s, NULL), 0);
    opened_ns = mono_ns();
    assert_non_null(poll_for(s, e, 3000, pipes_at_least, &want));
    for (size_t i = 0; i < e->n; i++) {
        const struct objsrc_event *ev = &e->v[i].ev;

        if (ev->type != OBJECTS_PIPE)
            continue;
        assert_true(strcmp(ev->syscall, "pipe2") == 0 || strcmp(ev->syscall, "pipe") == 0);
        assert_int_equal(ev->tid, piper);
        assert_true(ev->time_ns >= opened_ns && ev->time_ns <= mono_ns());
        /* Two new fds of one pipe, still open: leaky never closes them. */
        assert_true(ev->fds[0] >= 0 && ev->fds[1] >= 0 && ev->fds[0] != ev->fds[1]);
        assert_int_equal(pipe_inode(c.pid, ev->fds[0]), pipe_inode(c.pid, ev->fds[1]));
        assert_true(ev->stack_len > 0 && ev->stack_addr == ev->regs[7]); /* RSP */
        assert_true(unwinds_through(c.pid, ev, "leak_pipe", "piper_main"));
        checked++;
    }
    assert_true(checked >= want);
    objsrc_stats(s, &stats);
    assert_true(stats.events >= checked);
    assert_int_equal(stats.threads, 3); /* main, loop, piper */
    /* An exited target ends the stream. */
    kill(c.pid, SIGKILL);
    assert_int_equal(waitpid(c.pid, NULL, 0), c.pid);
    int r = 0;
    for (int i = 0; i < 50 && r == 0; i++)
        r = objsrc_poll(s, 100, keep, e, NULL);
    assert_int_equal(r, -ESRCH);
    objsrc_close(s);
    fclose(c.out);
    close(c.in);
    free(e);
}

struct spawn {
    pid_t tid;
    int fds[2];
};

static const struct kept *spawned_pipe(const struct events *e, void *arg)
{
    const struct spawn *sp = arg;

    for (size_t i = 0; i < e->n; i++)
        if (e->v[i].ev.type == OBJECTS_PIPE && e->v[i].ev.tid == sp->tid)
            return &e->v[i];
    return NULL;
}

/* A thread created after tracing started is traced through inheritance, and its creation is an
 * event of its own. */
static void test_new_thread(void **state)
{
    struct events *e = calloc(1, sizeof(*e));
    const struct kept *k;
    struct objsrc *s;
    struct spawn sp;
    struct child c;
    unsigned long long t;
    char line[256];
    bool cloned = false;

    (void)state;
    assert_non_null(e);
    child_start(&c, "objmaker", NULL);
    read_ready(&c, line, sizeof(line));
    assert_int_equal(objsrc_open(c.pid, &s, NULL), 0);
    assert_int_equal(write(c.in, "thread\n", 7), 7);
    assert_non_null(fgets(line, sizeof(line), c.out));
    assert_int_equal(
        sscanf(line, "pipe %d %d %llu spawned %d", &sp.fds[0], &sp.fds[1], &t, &sp.tid), 4);
    k = poll_for(s, e, 3000, spawned_pipe, &sp);
    assert_non_null(k);
    assert_int_equal(k->ev.fds[0], sp.fds[0]);
    assert_int_equal(k->ev.fds[1], sp.fds[1]);
    assert_true(k->ev.time_ns >= t);
    assert_true(unwinds_through(c.pid, &k->ev, "make_pipe", "spawned_main"));
    for (size_t i = 0; i < e->n; i++)
        if (e->v[i].ev.type == OBJECTS_THREAD && e->v[i].ev.new_tid == sp.tid) {
            assert_int_equal(e->v[i].ev.tid, c.pid);
            assert_true(strncmp(e->v[i].ev.syscall, "clone", 5) == 0);
            cloned = true;
        }
    assert_true(cloned);
    objsrc_close(s);
    child_stop(&c);
    free(e);
}

struct want_fd {
    const char *syscall;
    int fd;
};

static const struct kept *fd_event(const struct events *e, void *arg)
{
    const struct want_fd *w = arg;

    for (size_t i = 0; i < e->n; i++)
        if (e->v[i].ev.tid == gettid() && strcmp(e->v[i].ev.syscall, w->syscall) == 0 &&
            e->v[i].ev.fds[0] == w->fd)
            return &e->v[i];
    return NULL;
}

static const struct kept *mmap_event(const struct events *e, void *arg)
{
    for (size_t i = 0; i < e->n; i++)
        if (e->v[i].ev.type == OBJECTS_MAPPING && e->v[i].ev.addr == (uintptr_t)arg)
            return &e->v[i];
    return NULL;
}

/* Every kind of result: a returned fd, a dup of any kind, an fd pair written to memory, an
 * address; and what creates nothing (an fcntl that is not a dup, a failed call) is left out. */
static void test_calls_of_this_process(void **state)
{
    struct events *e = calloc(1, sizeof(*e));
    const struct kept *k;
    struct want_fd w;
    struct objsrc *s;
    int efd, dfd, ffd, sv[2];
    void *m;

    (void)state;
    assert_non_null(e);
    assert_int_equal(objsrc_open(getpid(), &s, NULL), 0);
    efd = eventfd(0, EFD_CLOEXEC);
    dfd = dup(efd);
    ffd = fcntl(efd, F_DUPFD_CLOEXEC, 100);
    assert_true(fcntl(efd, F_GETFL) >= 0);
    assert_int_equal(dup(-1), -1);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    m = mmap(NULL, 12345, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(efd >= 0 && dfd >= 0 && ffd >= 100 && m != MAP_FAILED);

    w = (struct want_fd){"eventfd2", efd};
    k = poll_for(s, e, 2000, fd_event, &w);
    assert_non_null(k);
    assert_int_equal(k->ev.type, OBJECTS_EVENTFD);
    assert_false(k->ev.any_fd_type);
    assert_int_equal(k->ev.fds[1], -1);
    assert_true(unwinds_through(getpid(), &k->ev, "test_calls_of_this_process", NULL));
    w = (struct want_fd){"dup", dfd};
    k = poll_for(s, e, 2000, fd_event, &w);
    assert_non_null(k);
    assert_true(k->ev.any_fd_type);
    w = (struct want_fd){"fcntl", ffd};
    assert_non_null(poll_for(s, e, 2000, fd_event, &w));
    w = (struct want_fd){"socketpair", sv[0]};
    k = poll_for(s, e, 2000, fd_event, &w);
    assert_non_null(k);
    assert_int_equal(k->ev.type, OBJECTS_SOCKET);
    assert_int_equal(k->ev.fds[1], sv[1]);
    k = poll_for(s, e, 2000, mmap_event, m);
    assert_non_null(k);
    assert_int_equal(k->ev.len, 12345);
    /* Only the fcntl that made an fd, and no failed dup. */
    for (size_t i = 0; i < e->n; i++) {
        if (e->v[i].ev.tid != gettid())
            continue;
        if (strcmp(e->v[i].ev.syscall, "fcntl") == 0)
            assert_int_equal(e->v[i].ev.fds[0], ffd);
        if (strcmp(e->v[i].ev.syscall, "dup") == 0)
            assert_int_equal(e->v[i].ev.fds[0], dfd);
    }
    objsrc_close(s);
    munmap(m, 12345);
    close(efd);
    close(dfd);
    close(ffd);
    close(sv[0]);
    close(sv[1]);
    free(e);
}

static void test_bad_targets(void **state)
{
    struct objsrc *s = NULL;
    struct error e;
    pid_t pid;

    (void)state;
    assert_int_equal(objsrc_open(0, &s, NULL), -EINVAL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(0);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    /* Gone says it all: no reason. */
    assert_int_equal(objsrc_open(pid, &s, &e), -ESRCH);
    assert_int_equal(e.code, -ESRCH);
    assert_string_equal(e.reason, "");
    assert_null(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_leaky_pipes),
        cmocka_unit_test(test_new_thread),
        cmocka_unit_test(test_calls_of_this_process),
        cmocka_unit_test(test_bad_targets),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
