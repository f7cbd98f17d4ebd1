/* Tests of the sampler against real processes: build/workloads/cpu_split (no frame pointers, a
 * known 75/25 split between work_a and work_b), sampled with perf_event and with the ptrace
 * fallback; threads created during the run, a target that exits, and what is left behind. */
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <dirent.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <libunwind.h>
#include <sys/wait.h>
#include <cmocka.h>
#include "os/procfs.h"
#include "cpu/pybpf.h"
#include "cpu/sampler.h"
#include "testutil.h"

#define MAX_TIDS 4096

struct range {
    uint64_t start, end;
};

/* What the callbacks saw, checked against the target's mappings and symbols. */
struct seen {
    pid_t pid;
    struct range exec[64];
    size_t nexec;
    struct range self; /* the workload's executable mapping */
    struct range work_a, work_b;
    uint64_t t0, t1;
    uint64_t samples, bad_rip, bad_stack, bad_time, empty_stack, in_self, in_a, in_b;
    uint64_t period_sum;
    pid_t tids[MAX_TIDS];
    size_t ntids;
    int names_churnling;
    int fail_after; /* the sample callback fails on that sample (0: never) */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Starts cpu_split with up to three arguments and waits for its "ready". */
static void spawn(struct testutil_child *c, const char *a1, const char *a2, const char *a3)
{
    char line[64];
    assert_int_equal(testutil_spawn_args(c, "cpu_split", a1, a2, a3, line, sizeof(line)), 0);
    assert_string_equal(line, "ready");
}

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* CPU time of the whole process so far, from /proc/PID/stat (utime + stime). */
static uint64_t cpu_ns(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    assert_non_null(p);
    unsigned long long ut, st;
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime */
    assert_int_equal(
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st), 2);
    return (ut + st) * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
}

/* Address range of a function of the workload, from its symbol table, relocated by where the
 * workload is mapped (its file offset 0 mapping). */
static struct range symbol_range(const char *path, const char *name, uint64_t base)
{
    struct range r = {0, 0};
    elf_version(EV_CURRENT);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    Elf *e = elf_begin(fd, ELF_C_READ, NULL);
    assert_non_null(e);
    Elf_Scn *scn = NULL;
    while ((scn = elf_nextscn(e, scn))) {
        GElf_Shdr sh;
        if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_SYMTAB || sh.sh_entsize == 0)
            continue;
        Elf_Data *d = elf_getdata(scn, NULL);
        for (size_t i = 0; d && i < sh.sh_size / sh.sh_entsize; i++) {
            GElf_Sym sym;
            const char *n;
            if (gelf_getsym(d, (int)i, &sym) && (n = elf_strptr(e, sh.sh_link, sym.st_name)) &&
                strcmp(n, name) == 0) {
                r.start = base + sym.st_value;
                r.end = r.start + sym.st_size;
            }
        }
    }
    elf_end(e);
    close(fd);
    return r;
}

static void seen_init(struct seen *v, pid_t pid)
{
    struct procfs_map *maps;
    size_t n;
    char exe[256];
    uint64_t base = 0;
    memset(v, 0, sizeof(*v));
    v->pid = pid;
    assert_int_equal(procfs_read_exe(PROCFS_ROOT, pid, exe, sizeof(exe)), 0);
    assert_int_equal(procfs_read_maps(PROCFS_ROOT, pid, &maps, &n), 0);
    for (size_t i = 0; i < n; i++) {
        bool mine = strcmp(maps[i].path, exe) == 0;
        if (mine && maps[i].offset == 0 && base == 0)
            base = maps[i].start;
        if (maps[i].perms[2] != 'x' || v->nexec == 64)
            continue;
        v->exec[v->nexec++] = (struct range){maps[i].start, maps[i].end};
        if (mine)
            v->self = (struct range){maps[i].start, maps[i].end};
    }
    procfs_maps_free(maps, n);
    assert_true(v->self.end > v->self.start);
    /* PIE (Debian's default) is linked at 0; a fixed executable at its own address. */
    GElf_Ehdr eh;
    int fd = open(exe, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    elf_version(EV_CURRENT);
    Elf *e = elf_begin(fd, ELF_C_READ, NULL);
    assert_non_null(gelf_getehdr(e, &eh));
    if (eh.e_type == ET_EXEC)
        base = 0;
    elf_end(e);
    close(fd);
    v->work_a = symbol_range(exe, "work_a", base);
    v->work_b = symbol_range(exe, "work_b", base);
    assert_true(v->work_a.end > v->work_a.start);
    assert_true(v->work_b.end > v->work_b.start);
}

static bool in(const struct range *r, uint64_t a)
{
    return a >= r->start && a < r->end;
}

static int on_sample(const struct sampler_sample *s, void *userdata)
{
    struct seen *v = userdata;
    uint64_t rip = s->regs[UNW_X86_64_RIP];
    bool exec = false;
    v->samples++;
    if (v->fail_after && v->samples == (uint64_t)v->fail_after)
        return -ECANCELED;
    for (size_t i = 0; i < v->nexec; i++)
        exec |= in(&v->exec[i], rip);
    v->bad_rip += !exec;
    v->in_self += in(&v->self, rip);
    v->in_a += in(&v->work_a, rip);
    v->in_b += in(&v->work_b, rip);
    v->bad_stack += s->stack_addr != s->regs[UNW_X86_64_RSP] ||
                    s->stack_len > SAMPLER_STACK_BYTES || (s->stack_len > 0 && !s->stack);
    v->empty_stack += s->stack_len == 0;
    v->bad_time += s->time_ns < v->t0 || s->time_ns > now_ns();
    v->period_sum += s->period_ns;
    size_t i = 0;
    while (i < v->ntids && v->tids[i] != s->tid)
        i++;
    if (i == v->ntids && v->ntids < MAX_TIDS)
        v->tids[v->ntids++] = s->tid;
    return 0;
}

static void on_name(pid_t tid, const char *name, void *userdata)
{
    struct seen *v = userdata;
    (void)tid;
    v->names_churnling += strcmp(name, "churnling") == 0;
}

static const struct sampler_callbacks callbacks = {.sample = on_sample, .thread_name = on_name};

/* Polls for ms milliseconds or until an error; returns the first non-zero result. */
static int run_for(struct sampler *s, struct seen *v, int ms)
{
    uint64_t end = now_ns() + (uint64_t)ms * 1000000u;
    int r = 0;
    while (r == 0 && now_ns() < end)
        r = sampler_poll(s, 100, &callbacks, v);
    if (r == 0)
        r = sampler_poll(s, 0, &callbacks, v);
    v->t1 = now_ns();
    return r;
}

/* Opens with perf_event or skips the test, saying why, when this machine refuses it. */
static struct sampler *open_perf(pid_t pid, unsigned freq)
{
    struct sampler *s;
    struct sampler_stats st;
    assert_int_equal(sampler_open(pid, freq, 0, NULL, &s, NULL), 0);
    sampler_get_stats(s, &st);
    if (strcmp(st.method, "perf_event") != 0) {
        print_message("perf_event not usable here: %s\n", st.fallback.reason);
        sampler_close(s);
        return NULL;
    }
    return s;
}

static void test_perf_one_thread(void **state)
{
    (void)state;
    struct testutil_child c;
    struct seen v;
    struct sampler_stats st;
    int fds = count_fds();
    spawn(&c, NULL, NULL, NULL);
    seen_init(&v, c.pid);
    struct sampler *s = open_perf(c.pid, 999);
    if (!s) {
        testutil_reap(&c);
        skip();
    }
    v.t0 = now_ns();
    uint64_t cpu0 = cpu_ns(c.pid);
    assert_int_equal(run_for(s, &v, 1000), 0);
    uint64_t cpu = cpu_ns(c.pid) - cpu0;
    sampler_get_stats(s, &st);
    sampler_close(s);
    testutil_reap(&c);
    assert_int_equal(count_fds(), fds);

    print_message("%lu samples in %.2f s, target CPU %.2f s, lost %lu; work_a %lu, work_b %lu\n",
                  (unsigned long)v.samples, (double)(v.t1 - v.t0) / 1e9, (double)cpu / 1e9,
                  (unsigned long)st.lost, (unsigned long)v.in_a, (unsigned long)v.in_b);
    assert_string_equal(st.method, "perf_event");
    assert_int_equal(st.frequency, 999);
    assert_int_equal(st.fallback.code, 0);
    assert_false(st.target_exited);
    assert_int_equal(st.samples, v.samples);
    assert_int_equal(st.threads, 1);
    assert_int_equal(v.ntids, 1);
    assert_int_equal(v.tids[0], c.pid);
    /* One sample per 1/999 s of the target's CPU time (its clock ticks are 10 ms: +-20%), which
     * is less than the 1 s of the run on a busy machine. */
    assert_true(v.samples > 0);
    assert_true(v.period_sum > cpu * 8 / 10 && v.period_sum < cpu * 12 / 10);
    assert_int_equal(v.period_sum, v.samples * (1000000000ull / 999));
    assert_int_equal(v.bad_rip, 0);
    assert_int_equal(v.bad_stack, 0);
    assert_int_equal(v.empty_stack, 0);
    assert_int_equal(v.bad_time, 0);
    assert_true(v.in_self > v.samples * 9 / 10);
    /* The workload's documented split: work_a 75%, work_b 25%. */
    double a = (double)v.in_a / (double)(v.in_a + v.in_b);
    assert_true(v.in_a + v.in_b > v.samples * 8 / 10);
    assert_true(a > 0.67 && a < 0.83);
}

static bool contains(const pid_t *tids, size_t n, pid_t tid)
{
    for (size_t i = 0; i < n; i++)
        if (tids[i] == tid)
            return true;
    return false;
}

static void test_perf_new_threads(void **state)
{
    (void)state;
    struct testutil_child c;
    struct seen v;
    struct sampler_stats st;
    pid_t *before;
    size_t nbefore, fresh = 0;
    int fds = count_fds();
    spawn(&c, "--threads", "1", "--churn");
    seen_init(&v, c.pid);
    struct sampler *s = open_perf(c.pid, 999);
    if (!s) {
        testutil_reap(&c);
        skip();
    }
    assert_int_equal(procfs_list_tasks(PROCFS_ROOT, c.pid, &before, &nbefore), 0);
    v.t0 = now_ns();
    assert_int_equal(run_for(s, &v, 1500), 0);
    sampler_get_stats(s, &st);
    sampler_close(s);
    testutil_reap(&c);
    assert_int_equal(count_fds(), fds);
    for (size_t i = 0; i < v.ntids; i++)
        fresh += !contains(before, nbefore, v.tids[i]);
    free(before);
    print_message("%lu samples from %zu threads, %zu of them created during the run\n",
                  (unsigned long)v.samples, v.ntids, fresh);
    /* main, worker and churnlings (churn itself mostly waits in pthread_join) */
    assert_true(contains(v.tids, v.ntids, c.pid));
    assert_true(fresh >= 5);
    assert_true(v.names_churnling >= 5);
    assert_int_equal(st.threads, v.ntids);
    assert_int_equal(v.bad_rip, 0);
    assert_int_equal(v.bad_stack, 0);
}

static void check_exit(bool force_ptrace)
{
    struct testutil_child c;
    struct seen v;
    struct sampler_stats st;
    int fds = count_fds();
    spawn(&c, "--exit-after", "0.5", NULL);
    seen_init(&v, c.pid);
    struct sampler *s;
    assert_int_equal(
        sampler_open(c.pid, 999, force_ptrace ? SAMPLER_FORCE_PTRACE : 0, NULL, &s, NULL), 0);
    v.t0 = now_ns();
    int r = run_for(s, &v, 5000);
    uint64_t took = v.t1 - v.t0;
    sampler_get_stats(s, &st);
    assert_int_equal(r, -ESRCH);
    assert_true(st.target_exited);
    assert_true(v.samples > 0);
    /* 0.5 s of work, then the exit seen before the 5 s run is over; no hang. */
    assert_true(took < 5000000000ull);
    /* Once exited, a poll says so at once rather than waiting out its timeout. */
    assert_int_equal(sampler_poll(s, 1000, &callbacks, &v), -ESRCH);
    assert_true(now_ns() - v.t1 < 1000000000ull);
    sampler_close(s);
    testutil_reap(&c);
    assert_int_equal(count_fds(), fds);
}

static void test_perf_target_exits(void **state)
{
    (void)state;
    check_exit(false);
}

static void test_ptrace_target_exits(void **state)
{
    (void)state;
    check_exit(true);
}

static int tracer_of(pid_t pid, pid_t tid)
{
    char path[96], line[256];
    int tracer = -1;
    snprintf(path, sizeof(path), "/proc/%d/task/%d/status", (int)pid, (int)tid);
    FILE *f = fopen(path, "re");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "TracerPid:", 10) == 0)
            tracer = (int)strtol(line + 10, NULL, 10);
    fclose(f);
    return tracer;
}

static void test_ptrace_fallback(void **state)
{
    (void)state;
    struct testutil_child c;
    struct seen v;
    struct sampler_stats st;
    struct sampler *s;
    pid_t *tids;
    size_t n;
    spawn(&c, "--threads", "1", NULL);
    int fds = count_fds();
    seen_init(&v, c.pid);
    assert_int_equal(sampler_open(c.pid, 999, SAMPLER_FORCE_PTRACE, NULL, &s, NULL), 0);
    v.t0 = now_ns();
    assert_int_equal(run_for(s, &v, 1000), 0);
    sampler_get_stats(s, &st);
    sampler_close(s);
    assert_int_equal(count_fds(), fds);
    print_message("ptrace: %lu samples from %zu threads in %.2f s, lost %lu\n",
                  (unsigned long)v.samples, v.ntids, (double)(v.t1 - v.t0) / 1e9,
                  (unsigned long)st.lost);
    assert_string_equal(st.method, "ptrace");
    assert_int_equal(st.frequency, SAMPLER_PTRACE_MAX_FREQ);
    assert_true(v.samples > 0);
    assert_int_equal(v.ntids, 2);
    assert_int_equal(st.threads, 2);
    assert_int_equal(v.period_sum, v.samples * (1000000000ull / SAMPLER_PTRACE_MAX_FREQ));
    assert_int_equal(v.bad_rip, 0);
    assert_int_equal(v.bad_stack, 0);
    assert_int_equal(v.empty_stack, 0);
    assert_int_equal(v.bad_time, 0);
    /* Left as found: no tracer, not stopped, still running. */
    assert_int_equal(procfs_list_tasks(PROCFS_ROOT, c.pid, &tids, &n), 0);
    for (size_t i = 0; i < n; i++) {
        char st8;
        assert_int_equal(tracer_of(c.pid, tids[i]), 0);
        assert_int_equal(procfs_read_state(PROCFS_ROOT, c.pid, tids[i], &st8), 0);
        assert_true(st8 == 'R' || st8 == 'S');
    }
    free(tids);
    uint64_t cpu0 = cpu_ns(c.pid);
    struct timespec ts = {0, 100000000};
    nanosleep(&ts, NULL);
    assert_true(cpu_ns(c.pid) > cpu0);
    testutil_reap(&c);
}

/* A failing callback stops the poll with its error; sampling goes on afterwards. */
static void test_callback_error(void **state)
{
    (void)state;
    struct testutil_child c;
    struct seen v;
    spawn(&c, NULL, NULL, NULL);
    seen_init(&v, c.pid);
    v.fail_after = 3;
    struct sampler *s;
    assert_int_equal(sampler_open(c.pid, 999, 0, NULL, &s, NULL), 0);
    v.t0 = now_ns();
    assert_int_equal(run_for(s, &v, 2000), -ECANCELED);
    assert_int_equal(v.samples, 3);
    v.fail_after = 0;
    assert_int_equal(run_for(s, &v, 300), 0);
    assert_true(v.samples > 3);
    sampler_close(s);
    testutil_reap(&c);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    struct sampler *s = NULL;
    struct testutil_child c;
    struct error e;
    pid_t *tids;
    size_t n;
    assert_int_equal(sampler_open(0, 99, 0, NULL, &s, NULL), -EINVAL);
    assert_int_equal(sampler_open(getpid(), 0, 0, NULL, &s, &e), -EINVAL);
    assert_int_equal(e.code, -EINVAL);
    assert_non_null(strstr(e.reason, "sampling rate"));
    assert_int_equal(sampler_open(getpid(), SAMPLER_MAX_FREQ + 1, 0, NULL, &s, NULL), -EINVAL);
    spawn(&c, "--threads", "1", NULL);
    /* A thread id is not a process. */
    assert_int_equal(procfs_list_tasks(PROCFS_ROOT, c.pid, &tids, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(sampler_open(tids[0] == c.pid ? tids[1] : tids[0], 99, 0, NULL, &s, NULL),
                     -EINVAL);
    free(tids);
    testutil_reap(&c);
    /* Reaped: gone. */
    assert_int_equal(sampler_open(c.pid, 99, 0, NULL, &s, NULL), -ESRCH);
    assert_int_equal(sampler_open(c.pid, 99, SAMPLER_FORCE_PTRACE, NULL, &s, NULL), -ESRCH);
    assert_null(s);
    sampler_close(NULL);
}

/* What a wall-clock sampler hands out for a thread that sleeps 1 ms at a time. */
struct wall_seen {
    uint64_t on_cpu, off_cpu, back, back_after_off, bad;
    pid_t tid;
    uint64_t last_off;
};

static int wall_sample(const struct sampler_sample *s, void *userdata)
{
    struct wall_seen *w = userdata;
    w->off_cpu += s->off_cpu;
    w->on_cpu += !s->off_cpu;
    w->bad += s->stack_addr != s->regs[UNW_X86_64_RSP] || s->stack_len > SAMPLER_STACK_BYTES;
    if (s->off_cpu && s->tid == w->tid)
        w->last_off = s->time_ns;
    return 0;
}

static void wall_back(pid_t tid, uint64_t time_ns, void *userdata)
{
    struct wall_seen *w = userdata;
    w->back++;
    w->back_after_off += tid == w->tid && w->last_off && time_ns > w->last_off;
}

static void test_perf_wall(void **state)
{
    (void)state;
    static const struct sampler_callbacks cb = {.sample = wall_sample, .switch_in = wall_back};
    struct wall_seen w = {0};
    struct sampler *s;
    struct sampler_stats st;
    struct testutil_child c;
    char line[64];
    char *const argv[] = {"python3", "tests/workloads/py_alternate.py", "sleep", "1", NULL};
    assert_int_equal(testutil_start(&c, "/usr/bin/python3", argv, line, sizeof(line), 20000), 0);
    assert_string_equal(line, "ready");
    w.tid = c.pid;
    assert_int_equal(sampler_open(c.pid, 499, SAMPLER_WALL, NULL, &s, NULL), 0);
    sampler_get_stats(s, &st);
    assert_string_equal(st.method, "perf_event");
    uint64_t end = now_ns() + 1000000000u;
    while (now_ns() < end)
        assert_int_equal(sampler_poll(s, 100, &cb, &w), 0);
    sampler_close(s);
    testutil_reap(&c);
    print_message("wall: %llu on CPU, %llu switches away, %llu back\n",
                  (unsigned long long)w.on_cpu, (unsigned long long)w.off_cpu,
                  (unsigned long long)w.back);
    /* About 250 sleeps a second (1 ms each after 3 ms of work). */
    assert_true(w.on_cpu > 0 && w.off_cpu > 50 && w.back > 50 && w.back_after_off > 0);
    assert_int_equal(w.bad, 0);
    /* No snapshot fallback for it: that would stop the target at every tick. */
    assert_int_equal(
        sampler_open(getpid(), 99, SAMPLER_WALL | SAMPLER_FORCE_PTRACE, NULL, &s, NULL),
        -EOPNOTSUPP);
}

/* The in-kernel copier's records are checked before use: counts within the record. */
static void test_pybpf_records(void **state)
{
    (void)state;
    static struct pybpf_record rec;
    static struct pyframes_raw_frame out[PYBPF_FRAMES_MAX];
    size_t n;
    bool truncated;
    pid_t tid;
    size_t head = offsetof(struct pybpf_record, frames);

    memset(&rec, 0, sizeof(rec));
    rec.tid = 42;
    rec.nframes = 2;
    rec.frames[0] =
        (struct pybpf_frame){.code = 0x1000, .instr = 0x1010, .addr = 0x7000, .owner = 1};
    rec.frames[1] =
        (struct pybpf_frame){.code = 0x2000, .instr = 0x2020, .addr = 0x7100, .is_entry = 1};
    size_t len = head + 2 * sizeof(rec.frames[0]);
    assert_int_equal(pybpf_parse((const unsigned char *)&rec, len, &tid, out, &n, &truncated), 0);
    assert_int_equal(tid, 42);
    assert_int_equal(n, 2);
    assert_false(truncated);
    assert_int_equal(out[0].code, 0x1000);
    assert_int_equal(out[0].owner, 1);
    assert_int_equal(out[1].addr, 0x7100);
    assert_true(out[1].is_entry);
    /* Shorter than its count says, a count past the limit, no header. */
    assert_int_equal(pybpf_parse((const unsigned char *)&rec, len - 1, &tid, out, &n, &truncated),
                     -EBADMSG);
    rec.nframes = PYBPF_FRAMES_MAX + 1;
    assert_int_equal(
        pybpf_parse((const unsigned char *)&rec, sizeof(rec), &tid, out, &n, &truncated), -EBADMSG);
    assert_int_equal(pybpf_parse((const unsigned char *)&rec, head - 1, &tid, out, &n, &truncated),
                     -EBADMSG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_arguments),    cmocka_unit_test(test_perf_one_thread),
        cmocka_unit_test(test_perf_new_threads), cmocka_unit_test(test_perf_target_exits),
        cmocka_unit_test(test_ptrace_fallback),  cmocka_unit_test(test_ptrace_target_exits),
        cmocka_unit_test(test_callback_error),   cmocka_unit_test(test_perf_wall),
        cmocka_unit_test(test_pybpf_records),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
