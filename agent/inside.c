/* Answers from inside a Python target (see inside.h). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "inside.h"
#include "python/pyexec.h"
#include "run.h"

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
    char path[PATH_MAX], file[NAME_MAX];

    *ret = NULL;
    if (!c->python_exec || !run->has_target || run->target.pid == getpid())
        return 0;
    snprintf(file, sizeof(file), "%s.py", script);
    if (script_path(file, path, sizeof(path)) < 0) {
        run_warn(run,
                 "cannot answer from inside the target: %s is not installed (looked beside "
                 "the agent and in %s); %s",
                 file, PROFILER_AGENT_PYSCRIPTDIR, instead);
        return 0;
    }
    struct pyexec_request req = {.input = input,
                                 .script = path,
                                 .timeout_ms = c->python_timeout * 1000,
                                 .cancel = &run->cancel};
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
