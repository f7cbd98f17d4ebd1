/* A CPU-bound target that measures itself: one thread does fixed units of work through a short
 * chain of calls (no frame pointers, as Debian builds) and prints "T UNITS" every 250 ms, T in
 * CLOCK_MONOTONIC seconds and UNITS the running total, so a benchmark can read its own work rate
 * with and without a profiler attached. Prints "ready" first; runs until killed. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <time.h>

static volatile unsigned long units, sink;

__attribute__((noinline)) static unsigned long mix(unsigned long h, int rounds)
{
    for (int i = 0; i < rounds; i++)
        h = (h ^ (h >> 29)) * 0xbf58476d1ce4e5b9UL + (unsigned long)i;
    return h;
}

__attribute__((noinline)) static unsigned long unit_of_work(unsigned long seed)
{
    return mix(seed, 2000) + mix(seed + 1, 1000);
}

__attribute__((noinline)) static void *worker(void *arg)
{
    (void)arg;
    for (;;) {
        sink += unit_of_work(sink);
        units++;
    }
    return NULL;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(void)
{
    struct timespec quarter = {0, 250 * 1000 * 1000};
    pthread_t t;

    pthread_create(&t, NULL, worker, NULL);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        nanosleep(&quarter, NULL);
        printf("%.6f %lu\n", now(), units);
        fflush(stdout);
    }
}
