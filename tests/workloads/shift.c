/* Test target for differential profiles: one thread whose time goes to three noinline
 * functions in one of two known mixes, switched on stdin. Built without frame pointers. Prints
 * "ready"; on stdin "b" switches to mix b and "a" back, each answered "mix a" or "mix b" once
 * the next round runs it. One round is six slices of the same loop (~0.2 ms each):
 *   mix a: round -> grows 1 slice, shrinks 4, vanishes 1   (16.7%, 66.7%, 16.7% of samples)
 *   mix b: round -> grows 4 slices, shrinks 2              (66.7%, 33.3%; vanishes is never run)
 * so from a to b grows gains 50 points, shrinks loses 33.3, and vanishes is gone.
 * Usage: shift */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noclone))
#define SEPARATE __attribute__((noipa)) /* the three are the same code: keep them apart */
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")
#define SLICE_ITERS 200000UL

static volatile unsigned long sink;

static unsigned long spin(unsigned long slices, unsigned long x)
{
    for (unsigned long i = 0; i < slices * SLICE_ITERS; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

static SEPARATE void grows(unsigned long slices)
{
    sink = spin(slices, sink);
    KEEP_FRAME();
}

static SEPARATE void shrinks(unsigned long slices)
{
    sink = spin(slices, sink);
    KEEP_FRAME();
}

static SEPARATE void vanishes(unsigned long slices)
{
    sink = spin(slices, sink);
    KEEP_FRAME();
}

static NOINLINE void round_once(int mix_b)
{
    if (mix_b) {
        grows(4);
        shrinks(2);
    } else {
        grows(1);
        shrinks(4);
        vanishes(1);
    }
    KEEP_FRAME();
}

int main(void)
{
    int mix_b = 0;

    round_once(mix_b);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        struct pollfd p = {0, POLLIN, 0};
        char c;

        round_once(mix_b);
        if (poll(&p, 1, 0) != 1)
            continue;
        if (read(0, &c, 1) != 1)
            return 0;
        if (c != 'a' && c != 'b')
            continue;
        mix_b = c == 'b';
        round_once(mix_b);
        printf("mix %c\n", c);
        fflush(stdout);
    }
}
