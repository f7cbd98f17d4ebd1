/* Test target for the stall watch: an event loop. Its main thread waits in epoll_wait on stdin
 * and a timerfd that fires every 20 ms, as a service's loop does. Built without frame pointers.
 * Prints "ready"; on stdin:
 *   "r"  the loop blocks for 5 s in read() on a pipe (in read_config_slowly), which a helper
 *        thread writes once those 5 s have passed;
 *   "s"  the loop spins on the CPU for 5 s (in checksum_forever);
 * and answers "done" when the loop is back. Ends at the end of stdin. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>

#define NOINLINE __attribute__((noinline, noclone))
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")
#define STALL_SECONDS 5
#define TICK_NS 20000000L

static volatile unsigned long sink;
static int pipefd[2];

static void *late_writer(void *arg)
{
    struct timespec ts = {STALL_SECONDS, 0};

    (void)arg;
    pthread_setname_np(pthread_self(), "late_writer");
    nanosleep(&ts, NULL);
    if (write(pipefd[1], "x", 1) != 1)
        return NULL;
    return NULL;
}

static NOINLINE void read_config_slowly(void)
{
    pthread_t t;
    char c;

    if (pthread_create(&t, NULL, late_writer, NULL) != 0)
        return;
    if (read(pipefd[0], &c, 1) != 1)
        sink++;
    pthread_join(t, NULL);
    KEEP_FRAME();
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static NOINLINE void checksum_forever(void)
{
    double end = now_s() + STALL_SECONDS;
    unsigned long x = sink;

    while (now_s() < end)
        for (int i = 0; i < 100000; i++) {
            x = x * 6364136223846793005UL + 1442695040888963407UL;
            __asm__ volatile("" : "+r"(x));
        }
    sink = x;
    KEEP_FRAME();
}

static NOINLINE void handle_command(char c)
{
    if (c == 'r')
        read_config_slowly();
    else if (c == 's')
        checksum_forever();
    else
        return;
    printf("done\n");
    fflush(stdout);
    KEEP_FRAME();
}

int main(void)
{
    struct itimerspec its = {{0, TICK_NS}, {0, TICK_NS}};
    struct epoll_event ev = {.events = EPOLLIN};
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);

    if (ep < 0 || tfd < 0 || pipe(pipefd) < 0 || timerfd_settime(tfd, 0, &its, NULL) < 0)
        return 1;
    ev.data.fd = 0;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) < 0)
        return 1;
    ev.data.fd = tfd;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev) < 0)
        return 1;
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        struct epoll_event got[4];
        int n = epoll_wait(ep, got, 4, -1);

        for (int i = 0; i < n; i++) {
            if (got[i].data.fd == tfd) {
                uint64_t ticks;

                if (read(tfd, &ticks, sizeof(ticks)) != sizeof(ticks))
                    sink++;
                continue;
            }
            char c;
            if (read(0, &c, 1) != 1)
                return 0;
            handle_command(c);
        }
    }
}
