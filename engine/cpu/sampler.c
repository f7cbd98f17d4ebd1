/* The sampler's common part (see sampler.h): argument checks, the choice of backend with the
 * reason for a fallback, and the table of known threads both backends keep. The sampling itself
 * is in sampler_perf.c and sampler_ptrace.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "os/procfs.h"
#include "cpu/sampler_ops.h"

#define CAP_SYS_ADMIN_BIT 21
#define CAP_PERFMON_BIT 38
#define STATUS_MAX 8192

uint64_t sampler_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static size_t thread_index(const struct sampler *s, pid_t tid, bool *found)
{
    size_t lo = 0, hi = s->nthreads;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->threads[mid].tid < tid)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < s->nthreads && s->threads[lo].tid == tid;
    return lo;
}

struct sampler_thread *sampler_thread_find(struct sampler *s, pid_t tid)
{
    bool found;
    size_t i = thread_index(s, tid, &found);
    return found ? &s->threads[i] : NULL;
}

int sampler_thread_add(struct sampler *s, pid_t tid, struct sampler_thread **ret)
{
    bool found;
    size_t i = thread_index(s, tid, &found);
    if (found)
        return -EEXIST;
    if (s->nthreads == s->threads_cap) {
        if (s->threads_cap >= SAMPLER_THREADS_MAX)
            return -E2BIG;
        size_t cap = s->threads_cap ? s->threads_cap * 2 : 64;
        struct sampler_thread *t = realloc(s->threads, cap * sizeof(*t));
        if (!t)
            return -ENOMEM;
        s->threads = t;
        s->threads_cap = cap;
    }
    memmove(&s->threads[i + 1], &s->threads[i], (s->nthreads - i) * sizeof(*s->threads));
    s->nthreads++;
    s->threads[i] = (struct sampler_thread){.tid = tid};
    *ret = &s->threads[i];
    return 0;
}

void sampler_threads_prune(struct sampler *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nthreads; i++)
        if (!s->threads[i].exited)
            s->threads[n++] = s->threads[i];
    s->nthreads = n;
}

void sampler_thread_first_sample(struct sampler *s, struct sampler_thread *t,
                                 const struct sampler_callbacks *cb, void *userdata)
{
    char comm[PROCFS_COMM_MAX];
    if (t->sampled)
        return;
    t->sampled = true;
    s->stats.threads++;
    if (cb->thread_name && procfs_read_comm(PROCFS_ROOT, s->pid, t->tid, comm) == 0)
        cb->thread_name(t->tid, comm, userdata);
}

/* Effective capabilities of this process from /proc/self/status; 0 when unreadable. */
static uint64_t own_caps(void)
{
    char buf[STATUS_MAX];
    uint64_t caps = 0;
    FILE *f = fopen("/proc/self/status", "re");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strstr(buf, "\nCapEff:\t");
    if (p) {
        p += strlen("\nCapEff:\t");
        if (procfs_parse_u64(&p, 16, 16, &caps) < 0)
            caps = 0;
    }
    return caps;
}

static long read_paranoid(void)
{
    char buf[32];
    long v = -100;
    FILE *f = fopen("/proc/sys/kernel/perf_event_paranoid", "re");
    if (!f)
        return v;
    if (fgets(buf, sizeof(buf), f)) {
        char *end;
        errno = 0;
        long x = strtol(buf, &end, 10);
        if (!errno && end != buf && (*end == '\n' || *end == '\0'))
            v = x;
    }
    fclose(f);
    return v;
}

static void explain_fallback(struct sampler *s, int err)
{
    if (err == -EACCES || err == -EPERM) {
        uint64_t caps = own_caps();
        bool capable = caps & ((1ull << CAP_PERFMON_BIT) | (1ull << CAP_SYS_ADMIN_BIT));
        long paranoid = read_paranoid();
        char why[96];
        if (paranoid > -100)
            snprintf(why, sizeof(why), "kernel.perf_event_paranoid is %ld%s", paranoid,
                     capable ? "" : " and the agent lacks CAP_PERFMON");
        else
            snprintf(why, sizeof(why), "%s",
                     capable ? "denied by the kernel or a security module"
                             : "the agent lacks CAP_PERFMON");
        error_set(&s->stats.fallback, err, "perf_event_open refused (%s)", why);
    } else {
        error_set(&s->stats.fallback, err, "perf_event_open is not available on this kernel (%s)",
                  strerror(-err));
    }
}

static int try_backend(struct sampler *s, const struct sampler_ops *ops, unsigned freq)
{
    s->ops = ops;
    s->freq = freq;
    s->stats.method = ops->name;
    s->stats.frequency = freq;
    return ops->open(s);
}

int sampler_open(pid_t pid, unsigned freq_hz, unsigned flags, const struct pylayout *py,
                 struct sampler **ret, struct error *err)
{
    int r;
    pid_t tgid;
    error_clear(err);
    if (pid <= 0)
        return error_set(err, -EINVAL, NULL);
    if (freq_hz == 0 || freq_hz > SAMPLER_MAX_FREQ)
        return error_set(err, -EINVAL, "the sampling rate must be 1 to %d Hz", SAMPLER_MAX_FREQ);
    r = procfs_read_tgid(PROCFS_ROOT, pid, &tgid);
    if (r < 0)
        return error_set(err, r == -ENOENT ? -ESRCH : r, NULL);
    if (tgid != pid)
        return error_set(err, -EINVAL, "%d is a thread of process %d, not a process", (int)pid,
                         (int)tgid);

    struct sampler *s = calloc(1, sizeof(*s));
    if (!s)
        return error_set(err, -ENOMEM, NULL);
    s->pid = pid;
    s->python = py;
    s->wall = flags & SAMPLER_WALL;
    unsigned ptrace_freq = freq_hz < SAMPLER_PTRACE_MAX_FREQ ? freq_hz : SAMPLER_PTRACE_MAX_FREQ;
    if (s->wall && (flags & SAMPLER_FORCE_PTRACE)) {
        r = error_set(err, -EOPNOTSUPP, "a wall-clock profile needs perf_event");
        goto out;
    }
    if (!(flags & SAMPLER_FORCE_PTRACE)) {
        r = try_backend(s, &sampler_perf_ops, freq_hz);
        if (r == 0)
            goto out;
        if (r != -EACCES && r != -EPERM && r != -ENOENT && r != -ENOSYS && r != -EOPNOTSUPP)
            goto out;
        explain_fallback(s, r);
        /* Off-CPU stacks come from the kernel's context switch samples: no snapshot fallback,
         * which would stop the target at every tick. */
        if (s->wall) {
            r = error_set(err, r, "a wall-clock profile needs perf_event: %s",
                          s->stats.fallback.reason);
            goto out;
        }
    }
    r = try_backend(s, &sampler_ptrace_ops, ptrace_freq);
    /* ptrace refused too: why perf_event was, since either would have done. The agent words why
     * ptrace was. */
    if ((r == -EPERM || r == -EACCES) && s->stats.fallback.code)
        error_set(err, r, "%s", s->stats.fallback.reason);
out:
    if (r < 0) {
        free(s->threads);
        free(s);
        return error_fill(err, r);
    }
    *ret = s;
    return 0;
}

int sampler_poll(struct sampler *s, int timeout_ms, const struct sampler_callbacks *cb,
                 void *userdata)
{
    if (!cb || !cb->sample)
        return -EINVAL;
    if (timeout_ms < 0)
        timeout_ms = 0;
    return s->ops->poll(s, timeout_ms, cb, userdata);
}

int sampler_python_thread(struct sampler *s, pid_t tid, uint64_t tstate)
{
    return s->ops->python_thread ? s->ops->python_thread(s, tid, tstate) : -EOPNOTSUPP;
}

void sampler_get_stats(const struct sampler *s, struct sampler_stats *ret)
{
    *ret = s->stats;
}

void sampler_close(struct sampler *s)
{
    if (!s)
        return;
    s->ops->close(s);
    free(s->threads);
    free(s);
}
