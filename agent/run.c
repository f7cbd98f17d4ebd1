/* The calls an action makes on its run (see run.h). Engine errors are worded here and nowhere
 * else: the engine returns codes and reasons, the agent says them once. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
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

const char *run_target_error(const struct error *e, char *buf, size_t len)
{
    const char *words;
    char errno_words[128];

    switch (e->code) {
    case -ESRCH:
        words = "no such process is running";
        break;
    case -EINVAL:
        words = "not a valid target spec";
        break;
    case -ENOENT:
    case -EACCES:
        snprintf(errno_words, sizeof(errno_words), "cannot read the pid file: %s",
                 strerror(-e->code));
        words = errno_words;
        break;
    default:
        snprintf(errno_words, sizeof(errno_words), "cannot be resolved: %s", strerror(-e->code));
        words = errno_words;
        break;
    }
    if (e->reason[0])
        snprintf(buf, len, "%s: %s", words, e->reason);
    else
        snprintf(buf, len, "%s", words);
    return buf;
}

int run_engine_fail_error(struct run *run, const char *what, const struct error *e)
{
    pid_t pid = run->target.pid;
    bool has_reason = e->reason[0] != '\0';
    char why[RUN_ERROR_MAX / 2];

    /* Before a target is resolved there is no pid to speak of: the words are about the spec. */
    if (!run->has_target) {
        char words[RUN_ERROR_MAX];

        return run_fail(run, "%s: %s", what, run_target_error(e, words, sizeof(words)));
    }
    switch (e->code) {
    case -ESRCH:
        if (has_reason)
            return run_fail(run, "%s: target process %d has exited: %s", what, (int)pid, e->reason);
        return run_fail(run, "%s: target process %d has exited", what, (int)pid);
    case -EPERM:
    case -EACCES:
        /* The engine's reason says what was refused; the agent's privileges say why. */
        privs_ptrace_denied(pid, why, sizeof(why));
        if (has_reason)
            return run_fail(run, "%s: not permitted to trace process %d: %s; %s", what, (int)pid,
                            e->reason, why);
        return run_fail(run, "%s: not permitted to trace process %d: %s", what, (int)pid, why);
    case -EBUSY:
        if (has_reason)
            return run_fail(run, "%s: %s", what, e->reason);
        return run_fail(run,
                        "%s: the agent is already inspecting too many processes at once; "
                        "try again when a job finishes",
                        what);
    default:
        return run_fail(run, "%s of process %d failed: %s", what, (int)pid,
                        has_reason ? e->reason : strerror(-e->code));
    }
}

int run_engine_fail(struct run *run, const char *what, int r)
{
    struct error e;

    error_set(&e, r, NULL);
    return run_engine_fail_error(run, what, &e);
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

int run_shipped_file(const char *name, const char *const *rel, size_t nrel, const char *installed,
                     char *buf, size_t len)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    char *slash;

    if (n > 0) {
        exe[n] = '\0';
        slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            for (size_t i = 0; i < nrel; i++)
                if ((size_t)snprintf(buf, len, "%s%s/%s", exe, rel[i], name) < len &&
                    access(buf, R_OK) == 0)
                    return 0;
        }
    }
    if ((size_t)snprintf(buf, len, "%s/%s", installed, name) >= len)
        return -ENAMETOOLONG;
    return access(buf, R_OK) == 0 ? 0 : -ENOENT;
}
