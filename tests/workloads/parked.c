/* Test target for the stack dumper: threads parked in known chains of noinline functions, built
 * without frame pointers. Prints "ready" once all are parked. Usage: parked [EXTRA_THREADS].
 * On stdin: 'q' makes main ask the reader thread (through a pipe) and print
 * "sleeps=N reads=M" (both grow only if those threads still work); EOF exits.
 *   main     -> main_park_a -> main_park_b -> read(stdin)
 *   reader   -> reader_main -> park_read_a -> park_read_b -> read(pipe)
 *   sleeper  -> sleeper_main -> park_sleep_a -> park_sleep_b -> nanosleep
 *   waiter   -> waiter_main -> park_cond_a -> pthread_cond_wait
 *   spinner  -> spinner_main -> park_spin_a -> park_spin_b (CPU loop)
 *   sigpark  -> sigpark_main -> park_sig_a -> pthread_kill -> [signal] -> on_usr1 -> park_sig_b
 *   idle-N   -> idle_main -> park_idle -> nanosleep */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noclone))
/* Code after each call keeps the compiler from turning it into a tail jump (no frame). */
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

static atomic_int parked;
static atomic_long sleeps, reads;
static volatile long spins;
static int req[2], rep[2];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static NOINLINE void park_read_b(void)
{
    char c;
    atomic_fetch_add(&parked, 1);
    while (read(req[0], &c, 1) == 1) {
        atomic_fetch_add(&reads, 1);
        if (write(rep[1], "r", 1) != 1)
            break;
    }
    KEEP_FRAME();
}

static NOINLINE void park_read_a(void)
{
    park_read_b();
    KEEP_FRAME();
}

static NOINLINE void *reader_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "reader");
    park_read_a();
    KEEP_FRAME();
    return NULL;
}

static NOINLINE void park_sleep_b(void)
{
    struct timespec ts = {0, 20 * 1000 * 1000};
    atomic_fetch_add(&parked, 1);
    for (;;) {
        if (nanosleep(&ts, NULL) == 0 || errno == EINTR)
            atomic_fetch_add(&sleeps, 1);
        KEEP_FRAME();
    }
}

static NOINLINE void park_sleep_a(void)
{
    park_sleep_b();
    KEEP_FRAME();
}

static NOINLINE void *sleeper_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "sleeper");
    park_sleep_a();
    KEEP_FRAME();
    return NULL;
}

static NOINLINE void park_cond_a(void)
{
    pthread_mutex_lock(&mu);
    atomic_fetch_add(&parked, 1);
    for (;;)
        pthread_cond_wait(&cv, &mu);
}

static NOINLINE void *waiter_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "waiter");
    park_cond_a();
    KEEP_FRAME();
    return NULL;
}

static NOINLINE void park_spin_b(void)
{
    atomic_fetch_add(&parked, 1);
    for (;;)
        spins++;
}

static NOINLINE void park_spin_a(void)
{
    park_spin_b();
    KEEP_FRAME();
}

static NOINLINE void *spinner_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "spinner");
    park_spin_a();
    KEEP_FRAME();
    return NULL;
}

static NOINLINE void park_sig_b(void)
{
    struct timespec ts = {1, 0};
    atomic_fetch_add(&parked, 1);
    for (;;) {
        nanosleep(&ts, NULL);
        KEEP_FRAME();
    }
}

static NOINLINE void on_usr1(int sig)
{
    (void)sig;
    park_sig_b();
    KEEP_FRAME();
}

static NOINLINE void park_sig_a(void)
{
    pthread_kill(pthread_self(), SIGUSR1);
    KEEP_FRAME();
}

static NOINLINE void *sigpark_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "sigpark");
    park_sig_a();
    KEEP_FRAME();
    return NULL;
}

static NOINLINE void park_idle(void)
{
    struct timespec ts = {3600, 0};
    atomic_fetch_add(&parked, 1);
    for (;;) {
        nanosleep(&ts, NULL);
        KEEP_FRAME();
    }
}

static NOINLINE void *idle_main(void *arg)
{
    char name[16];
    snprintf(name, sizeof(name), "idle-%d", (int)(long)arg);
    pthread_setname_np(pthread_self(), name);
    park_idle();
    KEEP_FRAME();
    return NULL;
}

static NOINLINE int main_park_b(void)
{
    char c;
    ssize_t n;
    while ((n = read(0, &c, 1)) == 1 || (n < 0 && errno == EINTR)) {
        if (n != 1 || c != 'q')
            continue;
        if (write(req[1], "q", 1) != 1 || read(rep[0], &c, 1) != 1)
            return 1;
        printf("sleeps=%ld reads=%ld\n", atomic_load(&sleeps), atomic_load(&reads));
        fflush(stdout);
    }
    KEEP_FRAME();
    return 0;
}

static NOINLINE int main_park_a(void)
{
    int r = main_park_b();
    KEEP_FRAME();
    return r;
}

int main(int argc, char **argv)
{
    long extra = argc > 1 ? strtol(argv[1], NULL, 10) : 0;
    void *(*fns[])(void *) = {reader_main, sleeper_main, waiter_main, spinner_main, sigpark_main};
    int nfns = (int)(sizeof(fns) / sizeof(fns[0]));
    struct sigaction sa;
    pthread_t t;

    if (extra < 0 || extra > 10000 || pipe(req) < 0 || pipe(rep) < 0)
        return 2;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    for (int i = 0; i < nfns; i++)
        if (pthread_create(&t, NULL, fns[i], NULL) != 0)
            return 2;
    for (long i = 0; i < extra; i++)
        if (pthread_create(&t, NULL, idle_main, (void *)i) != 0)
            return 2;
    while (atomic_load(&parked) < nfns + extra)
        usleep(1000);
    /* The counters are bumped just before each thread enters its blocking call. */
    usleep(20 * 1000);
    printf("ready\n");
    fflush(stdout);
    return main_park_a();
}
