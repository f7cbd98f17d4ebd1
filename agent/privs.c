/* Capabilities and tracers, read from /proc (see privs.h). No libcap: three bits of one line. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "privs.h"

#define STATUS_LINE_MAX 512
#define PTRACE_SCOPE_FILE "/proc/sys/kernel/yama/ptrace_scope"

static const struct {
    int bit;
    const char *name;
} wanted[] = {
    {PRIVS_CAP_PERFMON, "CAP_PERFMON"},
    {PRIVS_CAP_SYS_PTRACE, "CAP_SYS_PTRACE"},
    {PRIVS_CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"},
};

/* The value of one "Key:\tvalue" line of /proc/PID/status (pid 0: self), at most len bytes. */
static int status_field(pid_t pid, const char *key, char *value, size_t len)
{
    char path[64], line[STATUS_LINE_MAX];
    size_t klen = strlen(key);
    FILE *f;
    int r = -ENOENT;

    if (pid > 0)
        snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    else
        snprintf(path, sizeof(path), "/proc/self/status");
    f = fopen(path, "re");
    if (!f)
        return -errno;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, klen) != 0 || line[klen] != ':')
            continue;
        line[strcspn(line, "\n")] = '\0';
        snprintf(value, len, "%s", line + klen + 1 + strspn(line + klen + 1, " \t"));
        r = 0;
        break;
    }
    fclose(f);
    return r;
}

uint64_t privs_capabilities(void)
{
    char text[64], *end;
    unsigned long long v;

    if (status_field(0, "CapEff", text, sizeof(text)) < 0)
        return 0;
    errno = 0;
    v = strtoull(text, &end, 16);
    if (errno || end == text || *end)
        return 0;
    return v;
}

void privs_missing(uint64_t caps, void (*fn)(const char *name, void *userdata), void *userdata)
{
    for (size_t i = 0; i < sizeof(wanted) / sizeof(wanted[0]); i++)
        if (!(caps & (1ull << wanted[i].bit)))
            fn(wanted[i].name, userdata);
}

pid_t privs_tracer(pid_t pid, char *name, size_t len)
{
    char text[64], *end;
    long v;

    if (status_field(pid, "TracerPid", text, sizeof(text)) < 0)
        return 0;
    errno = 0;
    v = strtol(text, &end, 10);
    if (errno || end == text || *end || v <= 0 || v > INT32_MAX)
        return 0;
    /* TracerPid is the tracing thread: the tracer is its process, named by its main thread, and
     * when that is this agent, one of its own runs holds the target, not a debugger. */
    if (status_field((pid_t)v, "Tgid", text, sizeof(text)) == 0) {
        long tgid;

        errno = 0;
        tgid = strtol(text, &end, 10);
        if (!errno && end != text && !*end && tgid > 0 && tgid <= INT32_MAX)
            v = tgid;
    }
    if (v == (long)getpid())
        return 0;
    if (status_field((pid_t)v, "Name", name, len) < 0)
        snprintf(name, len, "another process");
    return (pid_t)v;
}

static long ptrace_scope(void)
{
    char buf[32], *end;
    FILE *f = fopen(PTRACE_SCOPE_FILE, "re");
    long v = -1;

    if (!f)
        return -1;
    if (fgets(buf, sizeof(buf), f)) {
        errno = 0;
        v = strtol(buf, &end, 10);
        if (errno || end == buf)
            v = -1;
    }
    fclose(f);
    return v;
}

static bool same_user(pid_t pid)
{
    char text[128];
    long real, effective, saved;

    if (status_field(pid, "Uid", text, sizeof(text)) < 0 ||
        sscanf(text, "%ld %ld %ld", &real, &effective, &saved) != 3)
        return false;
    return real == (long)geteuid() && effective == (long)geteuid() && saved == (long)geteuid();
}

void privs_ptrace_denied(pid_t pid, char *buf, size_t len)
{
    uint64_t caps = privs_capabilities();
    long scope = ptrace_scope();
    char tracer_name[64];
    pid_t tracer = privs_tracer(pid, tracer_name, sizeof(tracer_name));

    if (tracer > 0)
        snprintf(buf, len,
                 "it is already traced by %s (pid %d), and a process has one tracer "
                 "at a time; detach the debugger and try again",
                 tracer_name, (int)tracer);
    else if (scope >= 3)
        snprintf(buf, len,
                 "kernel.yama.ptrace_scope is %ld, which forbids ptrace to everyone "
                 "until reboot",
                 scope);
    else if (!(caps & (1ull << PRIVS_CAP_SYS_PTRACE)) && !same_user(pid))
        snprintf(buf, len, "it belongs to another user and the agent lacks CAP_SYS_PTRACE");
    else if (!(caps & (1ull << PRIVS_CAP_SYS_PTRACE)) && scope >= 1)
        snprintf(buf, len, "the agent lacks CAP_SYS_PTRACE and kernel.yama.ptrace_scope is %ld",
                 scope);
    else
        snprintf(buf, len,
                 "the kernel refused it (a security module, or a process that "
                 "cannot be traced, such as one that changed its credentials)");
}
