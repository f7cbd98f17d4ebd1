/* Test target for the flight recorder: CPU-bound threads that spend their time in one known
 * noinline function per phase, phase_a until told otherwise, then phase_b. Built without frame
 * pointers. Prints "ready" once every thread runs; on stdin, "b" switches every thread to
 * phase_b and "a" back, each answered "phase a" or "phase b" once every thread has taken it.
 * Usage: phases [--threads N]  (N more threads "worker" doing the same as main) */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SEPARATE __attribute__((noipa)) /* phase_a and phase_b are the same code: keep both */
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")
#define SLICE_ITERS 200000UL /* ~0.2 ms: a phase change is taken within a slice */
#define MAX_THREADS 64

static volatile unsigned long sink;
static atomic_int phase;   /* 0: a, 1: b */
static atomic_int running; /* threads started */
static atomic_int in_phase[2];

static unsigned long spin(unsigned long x)
{
    for (unsigned long i = 0; i < SLICE_ITERS; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

static SEPARATE void phase_a(void)
{
    sink = spin(sink);
    KEEP_FRAME();
}

static SEPARATE void phase_b(void)
{
    sink = spin(sink);
    KEEP_FRAME();
}

/* One slice of the current phase; counts this thread into a phase the first time it runs it. */
static void slice(int *mine)
{
    int p = atomic_load(&phase);

    if (p != *mine) {
        atomic_fetch_add(&in_phase[p], 1);
        *mine = p;
    }
    if (p)
        phase_b();
    else
        phase_a();
}

static void *worker_main(void *arg)
{
    int mine = -1;

    (void)arg;
    pthread_setname_np(pthread_self(), "worker");
    atomic_fetch_add(&running, 1);
    for (;;)
        slice(&mine);
    return NULL;
}

int main(int argc, char **argv)
{
    long nthreads = 0;
    int mine = -1;

    if (argc == 3 && strcmp(argv[1], "--threads") == 0) {
        char *end;

        errno = 0;
        nthreads = strtol(argv[2], &end, 10);
        if (errno || *end || nthreads < 0 || nthreads > MAX_THREADS)
            return 2;
    } else if (argc != 1) {
        fprintf(stderr, "usage: phases [--threads N]\n");
        return 2;
    }
    for (long i = 0; i < nthreads; i++) {
        pthread_t t;

        if (pthread_create(&t, NULL, worker_main, NULL) != 0)
            return 1;
    }
    while (atomic_load(&running) < nthreads)
        slice(&mine);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        struct pollfd p = {0, POLLIN, 0};
        char c;

        slice(&mine);
        if (poll(&p, 1, 0) != 1)
            continue;
        if (read(0, &c, 1) != 1)
            return 0;
        if (c != 'a' && c != 'b')
            continue;
        int want = c == 'b';

        if (atomic_load(&phase) == want)
            continue;
        atomic_store(&in_phase[want], 0);
        atomic_store(&phase, want);
        while (atomic_load(&in_phase[want]) < nthreads + 1)
            slice(&mine);
        printf("phase %c\n", c);
        fflush(stdout);
    }
}
