/* Benchmark target for wall-clock recording: threads that block often, as a service's do. Each
 * round works a fixed amount (in work, about 0.2 ms) and then sleeps (in nap, 0.5 ms by
 * default), so every thread leaves the CPU about 1,400 times a second: the context switches a
 * wall-clock recorder samples with their stacks. Prints "ready" once every thread runs, and
 * "rounds=N" (all threads' rounds) when it exits.
 * Usage: switchy [--threads N] [--sleep-us U] [--exit-after SECONDS] */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noipa))
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")
#define THREADS_MAX 64
#define WORK_LOOPS 100000 /* about 0.2 ms */

static atomic_ulong rounds;
static atomic_int started;
static long sleep_us = 500;

static NOINLINE unsigned long work(unsigned long x)
{
    for (int i = 0; i < WORK_LOOPS; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

static NOINLINE void nap(void)
{
    struct timespec ts = {0, sleep_us * 1000L};

    while (nanosleep(&ts, &ts) != 0)
        ;
    KEEP_FRAME();
}

static void *loop(void *arg)
{
    unsigned long x = (unsigned long)(uintptr_t)arg;

    atomic_fetch_add(&started, 1);
    for (;;) {
        x = work(x);
        nap();
        atomic_fetch_add(&rounds, 1);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = 1;
    double exit_after = 0;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--threads") == 0)
            threads = (int)strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--sleep-us") == 0)
            sleep_us = strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--exit-after") == 0)
            exit_after = strtod(argv[i + 1], NULL);
    }
    if (threads < 1 || threads > THREADS_MAX || sleep_us < 1 || sleep_us >= 1000000)
        return 2;
    for (int i = 0; i < threads; i++) {
        pthread_t t;

        if (pthread_create(&t, NULL, loop, (void *)(uintptr_t)(i + 1)) != 0)
            return 1;
    }
    while (atomic_load(&started) < threads)
        usleep(1000);
    printf("ready\n");
    fflush(stdout);
    if (exit_after <= 0)
        for (;;)
            pause();
    struct timespec ts = {(time_t)exit_after,
                          (long)((exit_after - (double)(time_t)exit_after) * 1e9)};
    while (nanosleep(&ts, &ts) != 0)
        ;
    printf("rounds=%lu\n", atomic_load(&rounds));
    fflush(stdout);
    return 0;
}
