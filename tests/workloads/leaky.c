/* Test target for the object census: leaks pipes at a known rate and runs a timer loop.
 *   piper: leak_pipe() opens one pipe (never closed) every 1/N s (--pipes-per-second N, 10)
 *   loop:  epoll_wait on a timerfd (CLOCK_MONOTONIC, first expiry 7 s, interval 7 s, EPOLLIN)
 *          and an eventfd (EPOLLIN|EPOLLET)
 * plus /tmp/leaky.PID.log, opened O_WRONLY, written with 4096 bytes and unlinked at once (the
 * fd keeps it: its link ends in " (deleted)"). Prints
 * "ready timerfd=T eventfd=E epoll=P file=F" once all exist; runs until killed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static long pipes_per_second = 10;
static int tfd, efd, epfd;
static volatile long leaked;

__attribute__((noinline, noclone)) static int leak_pipe(void)
{
    int p[2];

    if (pipe(p) < 0)
        return -errno;
    leaked++;
    __asm__ volatile("" ::: "memory"); /* keeps the frame: no tail call */
    return 0;
}

static void *piper_main(void *arg)
{
    struct timespec next;
    long step = 1000000000L / pipes_per_second;

    (void)arg;
    pthread_setname_np(pthread_self(), "piper");
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (;;) {
        leak_pipe(); /* past the fd limit it fails: the rate then drops to 0 */
        next.tv_nsec += step;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
            ;
    }
    return NULL;
}

static void *loop_main(void *arg)
{
    struct epoll_event ev[4];
    uint64_t v;

    (void)arg;
    pthread_setname_np(pthread_self(), "loop");
    for (;;) {
        int n = epoll_wait(epfd, ev, 4, -1);
        for (int i = 0; i < n; i++)
            if (read(ev[i].data.fd, &v, sizeof(v)) < 0)
                v = 0;
    }
    return NULL;
}

static int die(const char *what)
{
    fprintf(stderr, "leaky: %s: %s\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    struct itimerspec its = {.it_value = {7, 0}, .it_interval = {7, 0}};
    struct epoll_event ev;
    char path[64], block[4096];
    pthread_t t;
    int fd;

    for (int i = 1; i < argc; i++) {
        char *end;
        if (strcmp(argv[i], "--pipes-per-second") != 0 || i + 1 == argc) {
            fprintf(stderr, "usage: leaky [--pipes-per-second N]\n");
            return 2;
        }
        errno = 0;
        pipes_per_second = strtol(argv[++i], &end, 10);
        if (errno || *end || end == argv[i] || pipes_per_second < 1 || pipes_per_second > 1000) {
            fprintf(stderr, "leaky: --pipes-per-second wants 1..1000\n");
            return 2;
        }
    }
    snprintf(path, sizeof(path), "/tmp/leaky.%d.log", (int)getpid());
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return die("open");
    unlink(path);
    memset(block, 'x', sizeof(block));
    if (write(fd, block, sizeof(block)) != (ssize_t)sizeof(block))
        return die("write");
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    efd = eventfd(0, EFD_CLOEXEC);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (tfd < 0 || efd < 0 || epfd < 0)
        return die("timerfd/eventfd/epoll");
    if (timerfd_settime(tfd, 0, &its, NULL) < 0)
        return die("timerfd_settime");
    ev = (struct epoll_event){.events = EPOLLIN, .data.fd = tfd};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &ev) < 0)
        return die("epoll_ctl");
    ev = (struct epoll_event){.events = EPOLLIN | EPOLLET, .data.fd = efd};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, efd, &ev) < 0)
        return die("epoll_ctl");
    if (pthread_create(&t, NULL, loop_main, NULL) || pthread_create(&t, NULL, piper_main, NULL))
        return die("pthread_create");
    /* Named here too, so "ready" means a reader of /proc finds it by name. */
    pthread_setname_np(t, "piper");
    printf("ready timerfd=%d eventfd=%d epoll=%d file=%d\n", tfd, efd, epfd, fd);
    fflush(stdout);
    for (;;)
        pause();
}
