/* A process with one thread that ptrace cannot stop: it waits inside vfork() for a child that
 * never execs. A thread dump of it has to give up on that thread after a timeout, which makes
 * the dump slow on purpose: the tests use it to show that cheap commands are still answered
 * while a long one runs. Prints "ready" once the thread is in vfork; runs until killed. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static int ready[2];

__attribute__((noinline)) static void *spawn_and_wait(void *arg)
{
    (void)arg;
    /* The child shares our memory and may only make system calls: it says it runs, then waits
     * to die with its parent. */
    if (vfork() == 0) {
        syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
        syscall(SYS_write, ready[1], "x", 1);
        for (;;)
            syscall(SYS_pause);
    }
    return NULL;
}

int main(void)
{
    pthread_t t;
    char c;

    if (pipe(ready) < 0 || pthread_create(&t, NULL, spawn_and_wait, NULL) != 0 ||
        read(ready[0], &c, 1) != 1)
        return 1;
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
