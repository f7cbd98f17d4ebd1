/* Test target for the allocation profile: churns malloc/free of mixed sizes (16..4096 bytes,
 * 8 live at a time) like a busy service, and a "leaker" thread keeps a 1 KiB block from
 * leak_slowly() every 10 ms.
 *   --leak-only    no churn, only the leaker
 *   --ops-rate     print "ops_per_sec N" every second (N churn operations = malloc/free pairs)
 *   --ops N        stop after N churn operations
 * Prints "ready pid=P" at start and "checksum=C ops=N errors=E leaked=L" when it ends (SIGTERM,
 * SIGINT or --ops). C is a function of N only and E counts blocks found altered at free: a test
 * can tell the program kept working while hooks came and went. */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LIVE 8
#define LEAK_BYTES 1024
#define LEAK_PERIOD_NS 10000000L

static volatile sig_atomic_t stopping;
static volatile long leaked;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

struct leak {
    struct leak *next;
    unsigned char fill[LEAK_BYTES - sizeof(struct leak *)];
};

__attribute__((noinline, noclone)) static struct leak *leak_slowly(struct leak *head)
{
    struct leak *l = malloc(sizeof(*l));

    if (!l)
        return head;
    memset(l->fill, 0xab, sizeof(l->fill));
    l->next = head;
    leaked++;
    __asm__ volatile("" ::: "memory"); /* keeps the frame: no tail call */
    return l;
}

static void *leaker_main(void *arg)
{
    struct leak *head = NULL;
    struct timespec next;

    (void)arg;
    pthread_setname_np(pthread_self(), "leaker");
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (!stopping) {
        head = leak_slowly(head);
        next.tv_nsec += LEAK_PERIOD_NS;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR && !stopping)
            ;
    }
    return head;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Operation k frees slot (x >> 20) % LIVE after checking its marks, then allocates a block of
 * 16 + (x >> 33) % 4081 bytes marked with k, x being the k-th step of a fixed LCG. */
static void churn(long max_ops, int ops_rate, uint64_t *ret_checksum, long *ret_ops,
                  long *ret_errors)
{
    unsigned char *blocks[LIVE] = {0};
    size_t sizes[LIVE] = {0};
    uint64_t x = 42, checksum = 14695981039346656037ull, last = now_ns();
    long k, errors = 0, at_last = 0;

    for (k = 0; !stopping && (max_ops <= 0 || k < max_ops); k++) {
        unsigned i;
        size_t n;

        x = x * 6364136223846793005ull + 1442695040888963407ull;
        i = (unsigned)(x >> 20) % LIVE;
        n = 16 + (size_t)((x >> 33) % 4081);
        if (blocks[i]) {
            if (blocks[i][0] != (unsigned char)sizes[i] ||
                blocks[i][sizes[i] - 1] != (unsigned char)(sizes[i] >> 8))
                errors++;
            free(blocks[i]);
        }
        blocks[i] = malloc(n);
        if (!blocks[i]) {
            errors++;
            continue;
        }
        sizes[i] = n;
        blocks[i][0] = (unsigned char)n;
        blocks[i][n - 1] = (unsigned char)(n >> 8);
        checksum = (checksum ^ n) * 1099511628211ull;
        if (ops_rate && (k & 4095) == 0) {
            uint64_t t = now_ns();

            if (t - last >= 1000000000ull) {
                printf("ops_per_sec %" PRIu64 "\n",
                       (uint64_t)(k - at_last) * UINT64_C(1000000000) / (t - last));
                fflush(stdout);
                last = t;
                at_last = k;
            }
        }
    }
    for (unsigned i = 0; i < LIVE; i++)
        free(blocks[i]);
    *ret_checksum = checksum;
    *ret_ops = k;
    *ret_errors = errors;
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    sigset_t stop_set, old_set;
    pthread_t leaker;
    int leak_only = 0, ops_rate = 0;
    long max_ops = 0, ops = 0, errors = 0;
    uint64_t checksum = 0;

    for (int i = 1; i < argc; i++) {
        char *end;

        if (strcmp(argv[i], "--leak-only") == 0) {
            leak_only = 1;
        } else if (strcmp(argv[i], "--ops-rate") == 0) {
            ops_rate = 1;
        } else if (strcmp(argv[i], "--ops") == 0 && i + 1 < argc) {
            errno = 0;
            max_ops = strtol(argv[++i], &end, 10);
            if (errno || *end || max_ops <= 0) {
                fprintf(stderr, "allocs: bad --ops\n");
                return 2;
            }
        } else {
            fprintf(stderr, "usage: allocs [--leak-only] [--ops-rate] [--ops N]\n");
            return 2;
        }
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    /* Only the main thread takes the signals, so that sigsuspend() below sees them. */
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGTERM);
    sigaddset(&stop_set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_set, &old_set);
    if (pthread_create(&leaker, NULL, leaker_main, NULL) != 0) {
        fprintf(stderr, "allocs: cannot start the leaker\n");
        return 1;
    }
    printf("ready pid=%d\n", (int)getpid());
    fflush(stdout);
    if (leak_only) {
        while (!stopping)
            sigsuspend(&old_set);
    } else {
        pthread_sigmask(SIG_SETMASK, &old_set, NULL);
        churn(max_ops, ops_rate, &checksum, &ops, &errors);
        stopping = 1;
    }
    pthread_join(leaker, NULL);
    printf("checksum=%" PRIu64 " ops=%ld errors=%ld leaked=%ld\n", checksum, ops, errors,
           (long)leaked);
    return errors ? 1 : 0;
}
