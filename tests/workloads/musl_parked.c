/* Test target built with musl (musl-gcc, see the Makefile), whose libc has no CFI: the main
 * thread parks three calls deep, main -> musl_park_a -> musl_park_b -> musl_park_c -> pause(),
 * so the unwinder must get out of libc without unwind tables. Prints "ready" once parked.
 * With an argument N > 0 it is busy instead: N threads spin in musl_spin_a -> musl_spin_b,
 * which spends its time in libc (memset, strlen) as real programs do, until killed. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noclone))
/* Code after each call keeps the compiler from turning it into a tail jump (no frame). */
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")
#define MAX_SPINNERS 64

static volatile size_t sink;

static NOINLINE void musl_park_c(void)
{
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        pause();
        KEEP_FRAME();
    }
}

static NOINLINE void musl_park_b(void)
{
    musl_park_c();
    KEEP_FRAME();
}

static NOINLINE void musl_park_a(void)
{
    musl_park_b();
    KEEP_FRAME();
}

static NOINLINE void musl_spin_b(char *buf, size_t len)
{
    for (;;) {
        memset(buf, 'x', len - 1);
        buf[len - 1] = '\0';
        sink += strlen(buf);
        KEEP_FRAME();
    }
}

static NOINLINE void *musl_spin_a(void *arg)
{
    static char bufs[MAX_SPINNERS][4096];
    musl_spin_b(bufs[(long)arg], sizeof(bufs[0]));
    KEEP_FRAME();
    return NULL;
}

int main(int argc, char **argv)
{
    long spinners = argc > 1 ? strtol(argv[1], NULL, 10) : 0;
    pthread_t t;

    if (spinners < 0 || spinners > MAX_SPINNERS)
        return 2;
    if (spinners == 0) {
        musl_park_a();
        return 0;
    }
    for (long i = 1; i < spinners; i++)
        if (pthread_create(&t, NULL, musl_spin_a, (void *)i) != 0)
            return 2;
    printf("ready\n");
    fflush(stdout);
    musl_spin_a(NULL);
    return 0;
}
