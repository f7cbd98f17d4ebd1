/* Helpers the C unit tests share: where the test workloads are built, reading a workload's
 * "ready" line without waiting forever, and collecting the lines a dump emits. Header-only: each
 * test is one translation unit. */
#ifndef TESTUTIL_H
#define TESTUTIL_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

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

/* A workload started with its stdin and stdout piped to the test. */
struct testutil_child {
    pid_t pid;
    int in, out; /* its stdin (we write), its stdout (we read) */
};

/* Starts path with argv (argv[0] first, NULL-terminated), its stdin and stdout piped to the test,
 * and reads its first line into line within timeout_ms a byte. 0 on success; -1 (with
 * everything started cleaned up) otherwise. */
static inline int testutil_start(struct testutil_child *c, const char *path, char *const argv[],
                                 char *line, size_t len, int timeout_ms)
{
    int in[2], out[2];

    if (pipe2(in, O_CLOEXEC))
        return -1;
    if (pipe2(out, O_CLOEXEC)) {
        close(in[0]);
        close(in[1]);
        return -1;
    }
    c->pid = fork();
    if (c->pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        execv(path, argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    c->in = in[1];
    c->out = out[0];
    if (c->pid < 0 || testutil_read_line(c->out, line, len, timeout_ms)) {
        close(c->in);
        close(c->out);
        if (c->pid > 0) {
            kill(c->pid, SIGKILL);
            waitpid(c->pid, NULL, 0);
        }
        return -1;
    }
    return 0;
}

/* testutil_start for BUILD/workloads/NAME with up to three arguments (a NULL ends them), 10 s a
 * byte of its first line. */
static inline int testutil_spawn_args(struct testutil_child *c, const char *name, const char *a1,
                                      const char *a2, const char *a3, char *line, size_t len)
{
    char path[256];

    testutil_workload_path(name, path, sizeof(path));
    char *const argv[] = {path, (char *)a1, (char *)a2, (char *)a3, NULL};
    return access(path, X_OK) ? -1 : testutil_start(c, path, argv, line, len, 10000);
}

/* Starts BUILD/workloads/NAME with one optional argument and reads its first line into line.
 * 0 on success; -1 (with everything started cleaned up) otherwise. */
static inline int testutil_spawn(struct testutil_child *c, const char *name, const char *arg,
                                 char *line, size_t len)
{
    return testutil_spawn_args(c, name, arg, NULL, NULL, line, len);
}

static inline void testutil_reap(struct testutil_child *c)
{
    close(c->in);
    close(c->out);
    kill(c->pid, SIGKILL);
    waitpid(c->pid, NULL, 0);
}

/* parked's "q" query: "sleeps=N reads=M" grow only while those parked threads still work. */
static inline int testutil_parked_query(struct testutil_child *c, long *sleeps, long *reads)
{
    char line[128];

    if (write(c->in, "q", 1) != 1 || testutil_read_line(c->out, line, sizeof(line), 5000))
        return -1;
    return sscanf(line, "sleeps=%ld reads=%ld", sleeps, reads) == 2 ? 0 : -1;
}

/* Runs argv (argv[0] a path) to its end, its stdin empty; what it prints on stdout and stderr
 * goes to out (NUL-terminated, cut at outlen - 1). Its exit status; 128 when a signal ended it,
 * -1 when it could not be started. */
static inline int testutil_run(char *const argv[], char *out, size_t outlen)
{
    int o[2], status;
    size_t n = 0;
    ssize_t k;
    pid_t pid;

    if (pipe2(o, O_CLOEXEC))
        return -1;
    pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        dup2(null, 0);
        dup2(o[1], 1);
        dup2(o[1], 2);
        execv(argv[0], argv);
        _exit(127);
    }
    close(o[1]);
    while (pid > 0 && n + 1 < outlen && (k = read(o[0], out + n, outlen - 1 - n)) > 0)
        n += (size_t)k;
    out[n] = '\0';
    close(o[0]);
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* A fresh directory /tmp/NAME.XXXXXX for a test's files, its path in buf (64 bytes); 0 on
 * success. */
static inline int testutil_tmpdir(char *buf, const char *name)
{
    snprintf(buf, 64, "/tmp/%s.XXXXXX", name);
    return mkdtemp(buf) ? 0 : -1;
}

/* Removes it with what it holds, unless PROFILE_KEEP is set: then it stays for a person to
 * open the files. 0 on success. */
static inline int testutil_tmpdir_remove(const char *dir)
{
    char cmd[128];

    if (getenv("PROFILE_KEEP")) {
        printf("files kept in %s\n", dir);
        return 0;
    }
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* The lines an emit callback (objects_dump, sockets_dump) was handed, copied; zeroed to start. */
struct testutil_lines {
    char **v;
    size_t n, cap;
    int stop_after; /* testutil_collect returns -ECANCELED after that many; 0: never */
};

/* An emit callback appending to a struct testutil_lines: -ENOMEM, which the dump returns and
 * the test then sees, when a copy cannot be made. */
static inline int testutil_collect(const char *line, void *userdata)
{
    struct testutil_lines *l = userdata;

    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        char **v = realloc(l->v, cap * sizeof(*v));

        if (!v)
            return -ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n] = strdup(line);
    if (!l->v[l->n])
        return -ENOMEM;
    l->n++;
    return l->stop_after && (int)l->n == l->stop_after ? -ECANCELED : 0;
}

/* Frees the copies; l is empty again, stop_after kept. */
static inline void testutil_lines_clear(struct testutil_lines *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

/* The first line starting with prefix, or NULL. */
static inline const char *testutil_find_prefix(const struct testutil_lines *l, const char *prefix)
{
    for (size_t i = 0; i < l->n; i++)
        if (strncmp(l->v[i], prefix, strlen(prefix)) == 0)
            return l->v[i];
    return NULL;
}

#endif
