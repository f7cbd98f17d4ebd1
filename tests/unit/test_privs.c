/* Tests of privs_tracer: who traces a process, as warnings name it. A process traced by one of
 * our own threads (an agent's job thread injecting its hooks) has no tracer to blame; one traced
 * from a helper thread of another process is named by that process's pid and name, not by the
 * thread's. Needs the right to trace its own children (root, or ptrace_scope 0 or 1). */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include "privs.h"

/* A child that waits to be killed, at the latest when its parent ends (a failed check leaves
 * it behind otherwise). */
static pid_t spawn_idle(void)
{
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (;;)
            pause();
    }
    return pid;
}

static void reap(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

/* A thread that seizes a process and stays its tracer until told to end (a tracer's tracees are
 * let go when it exits): it writes 1 to seized[1] once the seize is done, 0 on failure, and ends
 * at a byte on release[0]. */
struct holder {
    pid_t pid;
    int seized[2], release[2];
    pthread_t thread;
};

static void *hold_main(void *arg)
{
    struct holder *h = arg;
    char ok, byte;

    prctl(PR_SET_NAME, "mosquitto loop");
    ok = ptrace(PTRACE_SEIZE, h->pid, NULL, NULL) == 0;
    if (write(h->seized[1], &ok, 1) != 1 || read(h->release[0], &byte, 1) != 1)
        return NULL;
    return NULL;
}

/* Returns once a thread of this process traces pid; 0, or -1 when it could not. */
static int hold(struct holder *h, pid_t pid)
{
    char ok = 0;

    h->pid = pid;
    if (pipe(h->seized) < 0 || pipe(h->release) < 0 ||
        pthread_create(&h->thread, NULL, hold_main, h) != 0)
        return -1;
    if (read(h->seized[0], &ok, 1) != 1)
        return -1;
    return ok ? 0 : -1;
}

static void release(struct holder *h)
{
    if (write(h->release[1], "x", 1) != 1)
        return;
    pthread_join(h->thread, NULL);
    close(h->seized[0]);
    close(h->seized[1]);
    close(h->release[0]);
    close(h->release[1]);
}

static void test_own_thread_is_no_tracer(void **state)
{
    struct holder h;
    pid_t pid = spawn_idle();
    char name[64] = "";

    (void)state;
    assert_int_equal(hold(&h, pid), 0);
    assert_int_equal(privs_tracer(pid, name, sizeof(name)), 0);
    release(&h);
    reap(pid);
}

static void test_other_process_is_named_by_its_process(void **state)
{
    int ready[2], done[2];
    pid_t tracer, tracee, got;
    char name[64] = "", byte;

    (void)state;
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(done), 0);
    tracer = fork();
    assert_true(tracer >= 0);
    if (tracer == 0) {
        /* A process named "debugger" whose helper thread holds its child; it ends when the test
         * says so or is gone (the pipe's end). */
        struct holder h;
        pid_t child;

        close(ready[0]);
        close(done[1]);
        prctl(PR_SET_NAME, "debugger");
        child = spawn_idle();
        if (hold(&h, child) < 0 || write(ready[1], &child, sizeof(child)) != sizeof(child))
            _exit(1);
        if (read(done[0], &byte, 1) < 0)
            byte = 0;
        release(&h);
        reap(child);
        _exit(0);
    }
    close(ready[1]);
    close(done[0]);
    assert_int_equal(read(ready[0], &tracee, sizeof(tracee)), sizeof(tracee));
    close(ready[0]);
    got = privs_tracer(tracee, name, sizeof(name));
    close(done[1]);
    waitpid(tracer, NULL, 0);
    assert_int_equal(got, tracer);
    assert_string_equal(name, "debugger");
}

static void test_untraced_process_has_no_tracer(void **state)
{
    pid_t pid = spawn_idle();
    char name[64] = "";

    (void)state;
    assert_int_equal(privs_tracer(pid, name, sizeof(name)), 0);
    reap(pid);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_own_thread_is_no_tracer),
        cmocka_unit_test(test_other_process_is_named_by_its_process),
        cmocka_unit_test(test_untraced_process_has_no_tracer),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
