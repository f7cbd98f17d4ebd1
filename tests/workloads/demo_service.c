/* A small multi-threaded service for the demo and the integration tests: a TCP listener with one
 * connected client, a UDP socket and a bound unix socket, two worker threads burning CPU in known
 * functions, and two threads blocked (one in poll on its listener, one in a condition wait), so
 * thread frames and sockets have something real to show. Built without frame pointers, as
 * Debian's own binaries are. Prints "ready PORT" when set up; runs until killed. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static volatile unsigned long sink;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;

__attribute__((noinline)) static unsigned long checksum_block(unsigned long seed)
{
    unsigned long h = seed;

    for (int i = 0; i < 200000; i++)
        h = h * 6364136223846793005UL + 1442695040888963407UL;
    return h;
}

__attribute__((noinline)) static void *worker_main(void *arg)
{
    (void)arg;
    for (;;) {
        sink += checksum_block(sink);
        usleep(2000);
    }
    return NULL;
}

__attribute__((noinline)) static void wait_for_work(void)
{
    pthread_mutex_lock(&lock);
    for (;;)
        pthread_cond_wait(&never, &lock);
}

static void *idle_main(void *arg)
{
    (void)arg;
    wait_for_work();
    return NULL;
}

__attribute__((noinline)) static void serve_connections(int listener)
{
    struct pollfd p = {.fd = listener, .events = POLLIN};

    for (;;) {
        if (poll(&p, 1, -1) > 0) {
            int c = accept(listener, NULL, NULL);

            if (c >= 0)
                sink += (unsigned long)c;
        }
    }
}

static void *acceptor_main(void *arg)
{
    serve_connections(*(int *)arg);
    return NULL;
}

int main(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    socklen_t len = sizeof(addr);
    static int listener;
    pthread_t t;
    int client, udp, unx;

    listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
        listen(listener, 16) < 0 || getsockname(listener, (struct sockaddr *)&addr, &len) < 0) {
        perror("listener");
        return 1;
    }
    client = socket(AF_INET, SOCK_STREAM, 0);
    if (client < 0 || connect(client, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror("client");
        return 1;
    }
    udp = socket(AF_INET, SOCK_DGRAM, 0);
    snprintf(un.sun_path, sizeof(un.sun_path), "/tmp/demo_service.%d.sock", (int)getpid());
    unlink(un.sun_path);
    unx = socket(AF_UNIX, SOCK_STREAM, 0);
    if (udp < 0 || unx < 0 || bind(unx, (struct sockaddr *)&un, sizeof(un)) < 0 ||
        listen(unx, 4) < 0) {
        perror("sockets");
        return 1;
    }
    /* The bound name stays in /proc/net/unix; the file need not outlive us in /tmp. */
    unlink(un.sun_path);
    for (int i = 0; i < 2; i++) {
        pthread_create(&t, NULL, worker_main, NULL);
        pthread_setname_np(t, "worker");
    }
    pthread_create(&t, NULL, idle_main, NULL);
    pthread_setname_np(t, "idle");
    pthread_create(&t, NULL, acceptor_main, &listener);
    pthread_setname_np(t, "acceptor");
    printf("ready %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    for (;;)
        pause();
}
