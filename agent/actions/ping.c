/* The `ping` action: what this agent is (version, node, uptime, the broker it is on), the target
 * it would act on, and which kernel facilities work here and why not: perf_event, uprobes, ptrace,
 * with the capabilities it lacks. For fleets: one broadcast ping answers for every agent. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/perf_event.h>
#include <sys/syscall.h>
#include "actions.h"
#include "clock.h"
#include "privs.h"
#include "run.h"

#define UPROBE_TYPE_FILE "/sys/bus/event_source/devices/uprobe/type"
#define PTRACE_SCOPE_FILE "/proc/sys/kernel/yama/ptrace_scope"
#define PARANOID_FILE "/proc/sys/kernel/perf_event_paranoid"
#define REASON_MAX 256

/* A small integer sysctl or sysfs file. */
static int read_long_file(const char *path, long *ret)
{
    char buf[32], *end;
    FILE *f = fopen(path, "re");
    long v;
    int r = 0;

    if (!f)
        return -errno;
    if (!fgets(buf, sizeof(buf), f)) {
        r = -EIO;
        goto out;
    }
    errno = 0;
    v = strtol(buf, &end, 10);
    if (errno || end == buf || (*end != '\n' && *end != '\0')) {
        r = -EBADMSG;
        goto out;
    }
    *ret = v;
out:
    fclose(f);
    return r;
}

static void add_capability(struct json_object *caps, const char *name, bool available,
                           const char *reason)
{
    struct json_object *o = json_object_new_object();

    json_object_object_add(o, "available", json_object_new_boolean(available));
    if (reason && reason[0])
        json_object_object_add(o, available ? "note" : "reason", json_object_new_string(reason));
    json_object_object_add(caps, name, o);
}

/* What the CPU profiler opens, in its cheapest form: a software clock on the agent itself. */
static bool perf_event_works(uint64_t caps, char *why, size_t len)
{
    struct perf_event_attr attr = {
        .type = PERF_TYPE_SOFTWARE,
        .size = sizeof(attr),
        .config = PERF_COUNT_SW_CPU_CLOCK,
        .disabled = 1,
        .exclude_kernel = 1,
        .exclude_hv = 1,
    };
    long fd = syscall(SYS_perf_event_open, &attr, 0, -1, -1, PERF_FLAG_FD_CLOEXEC);
    long paranoid;
    int err;

    if (fd >= 0) {
        close((int)fd);
        return true;
    }
    err = errno;
    if (err == EACCES || err == EPERM) {
        bool capable = caps & ((1ull << PRIVS_CAP_PERFMON) | (1ull << PRIVS_CAP_SYS_ADMIN));

        if (read_long_file(PARANOID_FILE, &paranoid) == 0)
            snprintf(why, len,
                     "perf_event_open refused: kernel.perf_event_paranoid is %ld%s; "
                     "start samples with ptrace at up to 49 Hz instead",
                     paranoid, capable ? "" : " and the agent lacks CAP_PERFMON");
        else
            snprintf(why, len,
                     "perf_event_open refused (%s); start samples with ptrace at up "
                     "to 49 Hz instead",
                     strerror(err));
    } else {
        snprintf(why, len, "perf_event_open is not available on this kernel (%s)", strerror(err));
    }
    return false;
}

static bool uprobes_works(uint64_t caps, bool perf_ok, char *why, size_t len)
{
    long type;
    int r;

    if (!perf_ok) {
        snprintf(why, len, "uprobes are opened through perf_event_open, which is refused here");
        return false;
    }
    r = read_long_file(UPROBE_TYPE_FILE, &type);
    if (r < 0) {
        snprintf(why, len,
                 "cannot read %s (%s): the kernel has no uprobe PMU "
                 "(CONFIG_UPROBE_EVENTS)",
                 UPROBE_TYPE_FILE, strerror(-r));
        return false;
    }
    if (!(caps & ((1ull << PRIVS_CAP_PERFMON) | (1ull << PRIVS_CAP_SYS_ADMIN)))) {
        snprintf(why, len,
                 "uprobes through perf_event_open need CAP_PERFMON or CAP_SYS_ADMIN, "
                 "which the agent lacks");
        return false;
    }
    return true;
}

static bool ptrace_works(uint64_t caps, char *why, size_t len)
{
    bool capable = caps & (1ull << PRIVS_CAP_SYS_PTRACE);
    long scope = -1;

    if (read_long_file(PTRACE_SCOPE_FILE, &scope) < 0)
        scope = -1; /* no Yama: the classic rules */
    if (scope >= 3) {
        snprintf(why, len,
                 "kernel.yama.ptrace_scope is %ld: ptrace is disabled for everyone "
                 "until reboot",
                 scope);
        return false;
    }
    if (capable)
        return true;
    if (scope == 1 || scope == 2) {
        snprintf(why, len,
                 "kernel.yama.ptrace_scope is %ld and the agent lacks CAP_SYS_PTRACE: "
                 "it can trace %s",
                 scope, scope == 1 ? "only its own children" : "nothing");
        return false;
    }
    snprintf(why, len, "without CAP_SYS_PTRACE, only processes of the agent's own user");
    return true;
}

static void add_missing(const char *name, void *userdata)
{
    json_object_array_add(userdata, json_object_new_string(name));
}

int action_ping(struct run *run)
{
    struct run_host *h = run->host;
    struct json_object *t = json_object_new_object(), *caps = json_object_new_object();
    char why[REASON_MAX], buf[RUN_ERROR_MAX];
    struct json_object *missing = json_object_new_array();
    uint64_t cap_bits = privs_capabilities();
    struct error e;
    bool ok;

    json_object_object_add(run->summary, "version", json_object_new_string(PROFILER_AGENT_VERSION));
    json_object_object_add(run->summary, "node", json_object_new_string(h->config->node_id));
    json_object_object_add(t, "spec", json_object_new_string(run->target_spec));
    if (target_resolve(PROCFS_ROOT, run->target_spec, &run->target, &e) == 0) {
        run->has_target = true;
        json_object_object_add(t, "pid", json_object_new_int(run->target.pid));
        json_object_object_add(t, "name", json_object_new_string(run->target.name));
    } else {
        json_object_object_add(t, "error",
                               json_object_new_string(run_target_error(&e, buf, sizeof(buf))));
    }
    json_object_object_add(run->summary, "target", t);
    json_object_object_add(run->summary, "pid", json_object_new_int(getpid()));
    json_object_object_add(
        run->summary, "uptime",
        run_json_decimal((double)(clock_monotonic_us() - h->started_mono_us) / 1e6, 3));
    why[0] = '\0';
    ok = perf_event_works(cap_bits, why, sizeof(why));
    add_capability(caps, "perf_event", ok, why);
    why[0] = '\0';
    add_capability(caps, "uprobes", uprobes_works(cap_bits, ok, why, sizeof(why)), why);
    why[0] = '\0';
    ok = ptrace_works(cap_bits, why, sizeof(why));
    add_capability(caps, "ptrace", ok, why);
    json_object_object_add(run->summary, "capabilities", caps);
    privs_missing(cap_bits, add_missing, missing);
    json_object_object_add(run->summary, "missing_capabilities", missing);
    json_object_object_add(run->summary, "uid", json_object_new_int((int)geteuid()));
    if (h->out.connection)
        h->out.connection(run->summary, h->out.userdata);
    return 0;
}
