/* Helpers the C unit tests share: where the test workloads are built, and reading a workload's
 * "ready" line without waiting forever. Header-only: each test is one translation unit. */
#ifndef TESTUTIL_H
#define TESTUTIL_H

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* BUILD/workloads/NAME, BUILD from the environment as `make unit-check` sets it. */
static inline void testutil_workload_path(const char *name, char *buf, size_t len)
{
    const char *b = getenv("BUILD");

    snprintf(buf, len, "%s/workloads/%s", b && *b ? b : "build", name);
}

/* Reads one line from fd within timeout_ms per byte, newline stripped; 0 on success. */
static inline int testutil_read_line(int fd, char *buf, size_t len, int timeout_ms)
{
    size_t n = 0;

    while (n + 1 < len) {
        struct pollfd p = {fd, POLLIN, 0};

        if (poll(&p, 1, timeout_ms) <= 0 || read(fd, buf + n, 1) != 1)
            return -1;
        if (buf[n] == '\n') {
            buf[n] = '\0';
            return 0;
        }
        n++;
    }
    return -1;
}

#endif
