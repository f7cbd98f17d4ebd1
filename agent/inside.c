/* Answers from inside a Python target (see inside.h). */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include "inside.h"
#include "objects/objects.h"
#include "os/procfs.h"
#include "python/pyexec.h"
#include "run.h"

#define PRELUDE "_prelude.py" /* the main() every script shares, placed before it */
#define WAKE_PIPES_MAX 8      /* self-pipes written to per wake: one per event loop, in practice */

#ifndef PROFILER_AGENT_PYSCRIPTDIR
#define PROFILER_AGENT_PYSCRIPTDIR "/usr/share/profiler-agent/pyscripts"
#endif

/* Beside the agent's executable (a build tree), in ../share/profiler-agent from it (an installed
 * tree unpacked anywhere), else where it was installed; as the schemas are found. */
static int script_path(const char *file, char *buf, size_t len)
{
    static const char *const rel[] = {"/../pyscripts", "/../share/profiler-agent/pyscripts"};

    return run_shipped_file(file, rel, sizeof(rel) / sizeof(rel[0]), PROFILER_AGENT_PYSCRIPTDIR,
                            buf, len);
}

/* Whether pid has loaded asyncio's C part, lib-dynload's _asyncio.cpython-3XX-*.so, which
 * importing asyncio does. An interpreter with _asyncio linked in says nothing here, and is not
 * woken. */
static bool imported_asyncio(pid_t pid)
{
    struct procfs_map *maps;
    size_t n;
    bool found = false;

    if (procfs_read_maps(PROCFS_ROOT, pid, &maps, &n) < 0)
        return false;
    for (size_t i = 0; i < n && !found; i++) {
        const char *base = strrchr(maps[i].path, '/');
        found = base && strncmp(base + 1, "_asyncio.", 9) == 0;
    }
    procfs_maps_free(maps, n);
    return found;
}

/* pyexec's wake (engine/python reads no fds, so the agent, which may use engine/objects, does
 * it): one byte to each self-pipe of the target's event loops, as asyncio's own
 * call_soon_threadsafe wakes a loop from another thread. The loop's epoll_wait returns, it runs
 * _read_from_self, which reads and drops the bytes, and before going back to sleep its thread
 * passes an eval-breaker check: the safe point the request waits for. Harmless by design: that
 * pipe exists for such wake-ups, asyncio drains whatever it holds, and other programs' self-pipes
 * are there for the same. Still, only a CPython target (pyexec calls this only then) that
 * imported asyncio, only a unix stream socketpair with both ends in the target, one watched by
 * an epoll set and the other by none (objects_selfpipes), and only the socket found: the
 * duplicate must still have its inode. MSG_DONTWAIT: a full buffer means a wake-up is pending
 * already, so EAGAIN is as good as sent. */
static void wake_loops(pid_t pid, void *userdata)
{
    struct objects_selfpipe pipes[WAKE_PIPES_MAX];
    struct error e;
    size_t n = 0;
    int pidfd;

    (void)userdata;
    if (!imported_asyncio(pid) ||
        objects_selfpipes(PROCFS_ROOT, pid, pipes, WAKE_PIPES_MAX, &n, &e) < 0 || n == 0)
        return;
    pidfd = pidfd_open(pid, 0);
    if (pidfd < 0)
        return;
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        int fd = pidfd_getfd(pidfd, pipes[i].fd, 0);

        if (fd < 0)
            continue;
        if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_ino == pipes[i].ino)
            (void)send(fd, "", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        close(fd);
    }
    close(pidfd);
}

/* The answer, or the run's failure: not JSON, or the script's own error (its traceback). */
static int answer(struct run *run, const char *script, const struct pyexec_result *res,
                  struct json_object **ret)
{
    struct json_object *a = json_tokener_parse(res->output), *v;
    struct json_object *s = run->summary;
    char version[16];

    if (!json_object_is_type(a, json_type_object)) {
        json_object_put(a);
        return run_fail(run, "the %s script inside the target gave no valid answer", script);
    }
    snprintf(version, sizeof(version), "3.%u", res->minor);
    json_object_object_add(s, "python", json_object_new_string(version));
    json_object_object_add(s, "method", json_object_new_string(res->method));
    json_object_object_add(s, "thread", json_object_new_int(res->tid));
    json_object_object_add(s, "wait_ms", run_json_decimal(res->wait_ms, 1));
    if (json_object_object_get_ex(a, "held_ms", &v))
        json_object_object_add(s, "held_ms", run_json_decimal(json_object_get_double(v), 3));
    if (json_object_object_get_ex(a, "error", &v)) {
        const char *tb = json_object_get_string(v);

        run_record(run, "%s.py raised inside the target:\n%s", script, tb);
        run_fail(run, "the %s script raised inside the target: %s", script, tb);
        json_object_put(a);
        return -EINVAL;
    }
    *ret = a;
    return 1;
}

int inside_run(struct run *run, const char *script, const char *input, const char *instead,
               struct json_object **ret)
{
    const struct config *c = run->host->config;
    struct pyexec_result res = {0};
    struct error e;
    char path[PATH_MAX], prelude[PATH_MAX], file[NAME_MAX];

    *ret = NULL;
    if (!c->python_exec || !run->has_target || run->target.pid == getpid())
        return 0;
    snprintf(file, sizeof(file), "%s.py", script);
    if (script_path(file, path, sizeof(path)) < 0 ||
        script_path(PRELUDE, prelude, sizeof(prelude)) < 0) {
        run_warn(run,
                 "cannot answer from inside the target: %s or " PRELUDE " is not installed "
                 "(looked beside the agent and in %s); %s",
                 file, PROFILER_AGENT_PYSCRIPTDIR, instead);
        return 0;
    }
    struct pyexec_request req = {.input = input,
                                 .script = path,
                                 .prelude = prelude,
                                 .timeout_ms = c->python_timeout * 1000,
                                 .cancel = &run->cancel,
                                 .wake = wake_loops};
    int r = pyexec_run(run->target.pid, &req, &res, &e);
    if (r == -ENOENT)
        return 0; /* not a Python process */
    if (r == -ESRCH) {
        char what[128];

        snprintf(what, sizeof(what), "%s inside the target", script);
        return run_engine_fail_error(run, what, &e);
    }
    if (r < 0) {
        run_warn(run, "cannot answer from inside the target: %s; %s",
                 e.reason[0] ? e.reason : strerror(-r), instead);
        return 0;
    }
    r = answer(run, script, &res, ret);
    free(res.output);
    return r;
}
