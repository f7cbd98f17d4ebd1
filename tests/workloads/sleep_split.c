/* Test target for off-CPU profiles: a single thread that only sleeps, 75% of its time in
 * sleep_long and 25% in sleep_short (rounds of 30 ms + 10 ms of nanosleep), so an off-CPU
 * profile must split its time about 75/25 between them. On a loaded machine each sleep
 * overshoots and the split moves, so the program measures it: on SIGUSR1 it prints
 * "split LONG_NS SHORT_NS", the time spent in each since it started. Prints "ready" first. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noipa))
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

static volatile sig_atomic_t asked;

static void on_usr1(int sig)
{
    (void)sig;
    asked = 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Returns the time it slept. */
static NOINLINE uint64_t nap(long ms)
{
    struct timespec ts = {0, ms * 1000000L};
    uint64_t t0 = now_ns();

    while (nanosleep(&ts, &ts) != 0)
        ;
    KEEP_FRAME();
    return now_ns() - t0;
}

static NOINLINE uint64_t sleep_long(void)
{
    uint64_t t = nap(30);

    KEEP_FRAME();
    return t;
}

static NOINLINE uint64_t sleep_short(void)
{
    uint64_t t = nap(10);

    KEEP_FRAME();
    return t;
}

int main(void)
{
    uint64_t long_ns = 0, short_ns = 0;

    signal(SIGUSR1, on_usr1);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        long_ns += sleep_long();
        short_ns += sleep_short();
        if (asked) {
            asked = 0;
            printf("split %llu %llu\n", (unsigned long long)long_ns, (unsigned long long)short_ns);
            fflush(stdout);
        }
    }
}
