/* The calls an action makes on its run (see run.h). Engine errors are worded here and nowhere
 * else: the engine returns codes and reasons, the agent says them once. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "privs.h"
#include "run.h"

void run_record(struct run *run, const char *fmt, ...)
{
    char stack_buf[1024], *text = stack_buf;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(stack_buf, sizeof(stack_buf), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(stack_buf)) {
        text = malloc((size_t)n + 1);
        if (!text)
            return;
        va_start(ap, fmt);
        vsnprintf(text, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    run->host->out.record(run, text, run->host->out.userdata);
    if (text != stack_buf)
        free(text);
}

int run_record_line(const char *line, void *userdata)
{
    struct run_lines *l = userdata;

    run_record(l->run, "%s%s", l->prefix, line);
    l->count++;
    return 0;
}

struct json_object *run_json_decimal(double v, int decimals)
{
    char text[64];

    snprintf(text, sizeof(text), "%.*f", decimals, v);
    return json_object_new_double_s(v, text);
}

void run_progress(struct run *run, const char *json)
{
    if (run->host->out.progress)
        run->host->out.progress(run, json, run->host->out.userdata);
}

int run_fail(struct run *run, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(run->error, sizeof(run->error), fmt, ap);
    va_end(ap);
    run->ok = false;
    return -EINVAL;
}

/* reason, when not NULL or empty, says more than the errno r. */
static int engine_fail(struct run *run, const char *what, int r, const char *reason)
{
    pid_t pid = run->target.pid;
    bool has_reason = reason && reason[0];

    switch (r) {
    case -ESRCH:
        return run_fail(run, "%s: target process %d has exited", what, (int)pid);
    case -EPERM:
    case -EACCES: {
        char why[RUN_ERROR_MAX / 2];

        if (has_reason)
            snprintf(why, sizeof(why), "%s", reason);
        else
            privs_ptrace_denied(pid, why, sizeof(why));
        return run_fail(run, "%s: not permitted to trace process %d: %s", what, (int)pid, why);
    }
    case -EBUSY:
        if (has_reason)
            return run_fail(run, "%s: %s", what, reason);
        return run_fail(run,
                        "%s: the agent is already inspecting too many processes at once; "
                        "try again when a job finishes",
                        what);
    default:
        return run_fail(run, "%s of process %d failed: %s", what, (int)pid,
                        has_reason ? reason : strerror(-r));
    }
}

int run_engine_fail(struct run *run, const char *what, int r)
{
    return engine_fail(run, what, r, NULL);
}

int run_engine_fail_error(struct run *run, const char *what, const struct error *e)
{
    return engine_fail(run, what, e->code, e->reason);
}

void run_warn(struct run *run, const char *fmt, ...)
{
    char text[RUN_ERROR_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (!run->warnings)
        run->warnings = json_object_new_array();
    json_object_array_add(run->warnings, json_object_new_string(text));
}

int run_output_dir(struct run *run, char *dir)
{
    const char *want = run->host->config->output_dir;

    if (mkdir(want, 0750) < 0 && errno != EEXIST)
        return run_fail(run, "cannot create output_dir %s: %s", want, strerror(errno));
    if (!realpath(want, dir))
        return run_fail(run, "cannot use output_dir %s: %s", want, strerror(errno));
    return 0;
}
