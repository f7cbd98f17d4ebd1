/* N threads (argument, default 200) parked a few calls deep in noinline functions, blocked in
 * nanosleep, a condition wait or a pipe read, plus a few spinning: the shape of a big service,
 * built without frame pointers, for the thread-dump benchmark. Prints "ready" when all run. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t started;
static int pipefd[2];
static volatile unsigned long sink;
static volatile int running = 1;

__attribute__((noinline)) static void block_here(long kind)
{
    char c;

    switch (kind % 4) {
    case 0: {
        struct timespec ts = {3600, 0};
        while (running)
            nanosleep(&ts, NULL);
        return;
    }
    case 1:
        pthread_mutex_lock(&lock);
        while (running)
            pthread_cond_wait(&cond, &lock);
        pthread_mutex_unlock(&lock);
        return;
    case 2:
        while (running)
            if (read(pipefd[0], &c, 1) < 0)
                sleep(1);
        return;
    default:
        while (running)
            sink++;
    }
}

__attribute__((noinline)) static void descend(long kind, int depth)
{
    if (depth > 0)
        descend(kind, depth - 1);
    else
        block_here(kind);
    sink++;
}

static void *thread_main(void *arg)
{
    long i = (long)arg;

    pthread_barrier_wait(&started);
    /* One spinner (kind 3): a big service is mostly idle, and the machine has two cores. */
    descend(i == 3 ? 3 : i % 3, (int)(i % 7));
    return NULL;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 200;
    pthread_t t;

    if (n < 1 || n > 10000 || pipe(pipefd) < 0)
        return 1;
    pthread_barrier_init(&started, NULL, (unsigned)n + 1);
    for (long i = 0; i < n; i++)
        if (pthread_create(&t, NULL, thread_main, (void *)i) != 0)
            return 1;
    pthread_barrier_wait(&started);
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
