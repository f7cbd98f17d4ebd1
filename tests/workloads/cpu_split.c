/* Test target for the CPU profiler: CPU-bound threads with a known split of time between known
 * noinline functions, built without frame pointers. Prints "ready" once every thread runs, and
 * "rounds=N" (main thread's rounds) when it exits.
 * Usage: cpu_split [--threads N] [--churn] [--exit-after SECONDS]
 * One round (about 2.4 ms) of main, of each --threads worker and of each churn child:
 *   round -> dispatch -> work_a    6 half-units   75.0% of samples (self time)
 *         -> dispatch -> work_b    1 half-unit    12.5%
 *         -> second_caller -> work_b  1 half-unit 12.5%
 * so work_a 75%, work_b 25% (half from each caller), dispatch 87.5% inclusive. Every half-unit
 * runs the same dependent multiply-add loop, so the split holds whatever the CPU's speed.
 *   --threads N     N more threads ("worker") doing the same rounds
 *   --churn         a thread "churn" that starts short-lived threads ("churnling", 1 round of
 *                   work each) one after the other, for as long as the program runs
 *   --exit-after S  exit after S seconds (fractions allowed) */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noclone))
/* noipa: work_a and work_b are the same code, which -O2 would fold into one function. */
#define SEPARATE __attribute__((noipa))
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")
#define HALF_UNIT_ITERS 300000UL /* ~0.3 ms; a round (~2.4 ms) is no simple multiple of 1 ms */
#define MAX_THREADS 64
/* A round, ~2.4 ms of CPU: a thread's cpu-clock starts from zero, so one that lives less than a
 * sampling period (1 ms at 999 Hz) is rarely sampled, by perf as by us. */
#define CHURNLING_ROUNDS 1

static volatile unsigned long sink;
static atomic_int running;

/* A chain of dependent multiply-adds the compiler must keep (the asm hides the value). */
static inline unsigned long spin(unsigned long halves, unsigned long x)
{
    for (unsigned long i = 0; i < halves * HALF_UNIT_ITERS; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

static SEPARATE void work_a(unsigned long halves)
{
    sink = spin(halves, sink);
    KEEP_FRAME();
}

static SEPARATE void work_b(unsigned long halves)
{
    sink = spin(halves, sink);
    KEEP_FRAME();
}

static NOINLINE void dispatch(void)
{
    work_a(6);
    work_b(1);
    KEEP_FRAME();
}

static NOINLINE void second_caller(void)
{
    work_b(1);
    KEEP_FRAME();
}

static NOINLINE void round_once(void)
{
    dispatch();
    second_caller();
    KEEP_FRAME();
}

static void *worker_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "worker");
    atomic_fetch_add(&running, 1);
    for (;;)
        round_once();
    return NULL;
}

static void *churnling_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "churnling");
    for (int i = 0; i < CHURNLING_ROUNDS; i++)
        round_once();
    return NULL;
}

static void *churn_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "churn");
    atomic_fetch_add(&running, 1);
    for (;;) {
        pthread_t t;
        if (pthread_create(&t, NULL, churnling_main, NULL) != 0) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
            continue;
        }
        pthread_join(t, NULL);
    }
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage(void)
{
    fprintf(stderr, "usage: cpu_split [--threads N] [--churn] [--exit-after SECONDS]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    long nthreads = 0;
    int churn = 0;
    double exit_after = 0;

    for (int i = 1; i < argc; i++) {
        char *end;
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            errno = 0;
            nthreads = strtol(argv[++i], &end, 10);
            if (errno || *end || nthreads < 0 || nthreads > MAX_THREADS)
                usage();
        } else if (strcmp(argv[i], "--churn") == 0) {
            churn = 1;
        } else if (strcmp(argv[i], "--exit-after") == 0 && i + 1 < argc) {
            errno = 0;
            exit_after = strtod(argv[++i], &end);
            if (errno || *end || !(exit_after > 0))
                usage();
        } else {
            usage();
        }
    }
    int want = (int)nthreads + churn;
    for (long i = 0; i < nthreads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker_main, NULL) != 0)
            return 1;
    }
    if (churn) {
        pthread_t t;
        if (pthread_create(&t, NULL, churn_main, NULL) != 0)
            return 1;
    }
    while (atomic_load(&running) < want)
        round_once();
    printf("ready\n");
    fflush(stdout);

    double start = now_s();
    unsigned long rounds = 0;
    for (;;) {
        round_once();
        rounds++;
        if (exit_after > 0 && now_s() - start >= exit_after)
            break;
    }
    printf("rounds=%lu\n", rounds);
    fflush(stdout);
    return 0;
}
