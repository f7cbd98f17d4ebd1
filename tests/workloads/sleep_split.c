/* Test target for off-CPU profiles: a single thread that only sleeps, 75% of its time in
 * sleep_long and 25% in sleep_short (rounds of 30 ms + 10 ms of nanosleep), so an off-CPU
 * profile must split its time 75/25 between them. Prints "ready" first. */
#define _GNU_SOURCE
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noipa))
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

static NOINLINE void nap(long ms)
{
    struct timespec ts = {0, ms * 1000000L};

    while (nanosleep(&ts, &ts) != 0)
        ;
    KEEP_FRAME();
}

static NOINLINE void sleep_long(void)
{
    nap(30);
    KEEP_FRAME();
}

static NOINLINE void sleep_short(void)
{
    nap(10);
    KEEP_FRAME();
}

int main(void)
{
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        sleep_long();
        sleep_short();
    }
}
