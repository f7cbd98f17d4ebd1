/* Test target for object-source tracing: makes objects when told, on stdin, one command a line,
 * and says when it made them, so a test knows what to expect and a benchmark can time it.
 *   pipe    make_pipe() on the main thread; prints "pipe FD0 FD1 NS"
 *   closed  the same, then closes both ends; the line ends in " closed"
 *   thread  starts a thread named "spawned" that calls make_pipe() once, prints the same line
 *           with "spawned TID" appended, and then waits for ever
 * NS is CLOCK_MONOTONIC in nanoseconds just before the pipe2 call (the clock perf_event samples
 * are stamped with here). --fds N first opens N extra eventfds (raising RLIMIT_NOFILE as far as
 * the hard limit lets it). Prints "ready FDS" once set up, where FDS is how many were opened;
 * exits at the end of stdin. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

__attribute__((noinline, noclone)) static int make_pipe(const char *suffix, bool close_it)
{
    uint64_t t;
    int p[2];

    t = mono_ns();
    if (pipe2(p, 0) < 0)
        return -errno;
    if (close_it) {
        close(p[0]);
        close(p[1]);
    }
    pthread_mutex_lock(&out_lock);
    printf("pipe %d %d %llu%s%s\n", p[0], p[1], (unsigned long long)t, suffix,
           close_it ? " closed" : "");
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
    __asm__ volatile("" ::: "memory"); /* keeps the frame: no tail call */
    return 0;
}

static void *spawned_main(void *arg)
{
    char suffix[48];

    (void)arg;
    pthread_setname_np(pthread_self(), "spawned");
    snprintf(suffix, sizeof(suffix), " spawned %d", (int)gettid());
    make_pipe(suffix, false);
    for (;;)
        pause();
    return NULL;
}

int main(int argc, char **argv)
{
    long want = 0, opened = 0;
    char line[64];

    if (argc == 3 && strcmp(argv[1], "--fds") == 0) {
        char *end;

        errno = 0;
        want = strtol(argv[2], &end, 10);
        if (errno || *end || end == argv[2] || want < 0 || want > 1000000) {
            fprintf(stderr, "objmaker: --fds wants 0..1000000\n");
            return 2;
        }
    } else if (argc != 1) {
        fprintf(stderr, "usage: objmaker [--fds N]\n");
        return 2;
    }
    if (want > 0) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)want + 64) {
            rl.rlim_cur = (rlim_t)want + 64 < rl.rlim_max ? (rlim_t)want + 64 : rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
    }
    while (opened < want && eventfd(0, EFD_CLOEXEC) >= 0)
        opened++;
    printf("ready %ld\n", opened);
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin)) {
        pthread_t t;

        if (strcmp(line, "pipe\n") == 0) {
            make_pipe("", false);
        } else if (strcmp(line, "closed\n") == 0) {
            make_pipe("", true);
        } else if (strcmp(line, "thread\n") == 0) {
            if (pthread_create(&t, NULL, spawned_main, NULL) != 0)
                return 1;
        } else {
            fprintf(stderr, "objmaker: unknown command %s", line);
            return 2;
        }
    }
    return 0;
}
