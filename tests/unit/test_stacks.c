/* Tests of the snapshot unwinder against real processes: build/workloads/parked (no frame
 * pointers, threads parked in known functions), this test process itself, a process that is
 * gone, and a process someone else already traces; and of unwinding samples (registers and a
 * stack copy, as perf_event gives them) with the same caches. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
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
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <dlfcn.h>
#include <cmocka.h>
#include "os/cachestat.h"
#include "os/snapshot.h"
#include "unwind/stacks.h"
#include "cpu/sampler.h"
#include "testutil.h"

#define PARKED_SRC "tests/workloads/parked.c"
#define REG_SP 7 /* libunwind's x86-64 numbering */
#define REG_IP 16
#define SAMPLE_STACK SAMPLER_STACK_BYTES /* what the perf_event sampler copies */

static void spawn_parked(struct testutil_child *c, const char *extra)
{
    char line[64];

    assert_int_equal(testutil_spawn(c, "parked", extra, line, sizeof(line)), 0);
    assert_string_equal(line, "ready");
}

static void query(struct testutil_child *c, long *sleeps, long *reads)
{
    assert_int_equal(testutil_parked_query(c, sleeps, reads), 0);
}

/* First line of "NAME(" at the start of a line in src: where NAME is defined. */
static int def_line_in(const char *src, const char *name)
{
    FILE *f = fopen(src, "r");
    char buf[512];
    int no = 0, found = 0;
    size_t nl = strlen(name);
    assert_non_null(f);
    while (fgets(buf, sizeof(buf), f)) {
        no++;
        char *p = strstr(buf, name);
        if (p && p[nl] == '(' && (p == buf || p[-1] == ' ' || p[-1] == '*') &&
            (strncmp(buf, "static", 6) == 0 || strncmp(buf, "int ", 4) == 0)) {
            found = no;
            break;
        }
    }
    fclose(f);
    assert_true(found > 0);
    return found;
}

static int def_line(const char *name)
{
    return def_line_in(PARKED_SRC, name);
}

static const struct stacks_thread *find_name(const struct stacks_dump *d, const char *name)
{
    for (size_t i = 0; i < d->nthreads; i++)
        if (strcmp(d->threads[i]->name, name) == 0)
            return d->threads[i];
    return NULL;
}

static const struct stacks_thread *find_tid(const struct stacks_dump *d, pid_t tid)
{
    for (size_t i = 0; i < d->nthreads; i++)
        if (d->threads[i]->tid == tid)
            return d->threads[i];
    return NULL;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* funcs (outermost first) appear in this order among t's frames. When src is set, each has that
 * source file, a line within its function (from the definition to 40 lines on) and a module. */
static void check_chain(const struct stacks_thread *t, const char *const *funcs, const char *src,
                        const char *module_suffix)
{
    assert_non_null(t);
    assert_int_equal(t->err, 0);
    size_t k = 0;
    /* frames are innermost first: walk them backwards. */
    for (size_t i = t->nframes; i > 0 && funcs[k]; i--) {
        const struct stacks_frame *f = &t->frames[i - 1];
        if (!f->func || strcmp(f->func, funcs[k]) != 0)
            continue;
        if (src) {
            assert_non_null(f->file);
            assert_true(ends_with(f->file, src));
            int def = def_line(funcs[k]);
            if (f->line < def || f->line > def + 40)
                fail_msg("%s at line %d, defined at %d", funcs[k], f->line, def);
            assert_non_null(f->module);
            assert_true(ends_with(f->module, module_suffix));
            assert_true(f->offset > 0 && f->offset < f->ip);
        }
        k++;
    }
    if (funcs[k])
        fail_msg("thread %s: %s not found in order", t->name, funcs[k]);
}

static void check_released(pid_t pid)
{
    char path[128], line[256];
    pid_t *tids;
    size_t n;
    FILE *f;
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    assert_int_equal(procfs_list_tasks(PROCFS_ROOT, pid, &tids, &n), 0);
    for (size_t i = 0; i < n; i++) {
        char state = 0;
        int tracer = -1;
        snprintf(path, sizeof(path), "/proc/%d/task/%d/status", (int)pid, (int)tids[i]);
        f = fopen(path, "r");
        assert_non_null(f);
        while (fgets(line, sizeof(line), f)) {
            if (strncmp(line, "State:", 6) == 0)
                sscanf(line + 6, " %c", &state);
            else if (strncmp(line, "TracerPid:", 10) == 0)
                sscanf(line + 10, "%d", &tracer);
        }
        fclose(f);
        assert_int_equal(tracer, 0);
        assert_true(state != 't' && state != 'T');
    }
    free(tids);
}

static void test_parked_threads(void **state)
{
    (void)state;
    struct testutil_child c;
    struct stacks *s;
    struct stacks_dump *d;
    long sleeps0, reads0, sleeps1, reads1;
    spawn_parked(&c, "2");
    query(&c, &sleeps0, &reads0);

    assert_int_equal(stacks_new(c.pid, &s), 0);
    assert_int_equal(stacks_dump_threads(s, NULL, &d, NULL), 0);
    check_released(c.pid);
    assert_int_equal(d->nthreads, 8); /* main, 5 named, 2 idle */
    assert_true(d->stopped_ns > 0 && d->stopped_ns <= d->total_ns);
    assert_true(d->copied_bytes > 0);
    for (size_t i = 1; i < d->nthreads; i++)
        assert_true(d->threads[i - 1]->tid < d->threads[i]->tid);

    static const char *const main_chain[] = {"main", "main_park_a", "main_park_b", NULL};
    static const char *const reader[] = {"reader_main", "park_read_a", "park_read_b", NULL};
    static const char *const sleeper[] = {"sleeper_main", "park_sleep_a", "park_sleep_b", NULL};
    static const char *const waiter[] = {"waiter_main", "park_cond_a", NULL};
    static const char *const spinner[] = {"spinner_main", "park_spin_a", "park_spin_b", NULL};
    static const char *const sig[] = {"sigpark_main", "park_sig_a", "on_usr1", "park_sig_b", NULL};
    static const char *const idle[] = {"idle_main", "park_idle", NULL};
    const struct stacks_thread *mt = find_tid(d, c.pid);
    assert_non_null(mt);
    assert_string_equal(mt->name, "parked");
    check_chain(mt, main_chain, "parked.c", "/parked");
    check_chain(find_name(d, "reader"), reader, "parked.c", "/parked");
    check_chain(find_name(d, "sleeper"), sleeper, "parked.c", "/parked");
    check_chain(find_name(d, "waiter"), waiter, "parked.c", "/parked");
    check_chain(find_name(d, "spinner"), spinner, "parked.c", "/parked");
    check_chain(find_name(d, "sigpark"), sig, "parked.c", "/parked");
    check_chain(find_name(d, "idle-1"), idle, "parked.c", "/parked");
    /* Blocked threads go on through libc into the syscall, and the walk reaches the thread's
     * start in libc (start_thread/clone3 have names only where libc's debug files are
     * installed, so the module is checked, not the name). */
    static const char *const waiter_libc[] = {"park_cond_a", "pthread_cond_wait", NULL};
    const struct stacks_thread *wt = find_name(d, "waiter");
    check_chain(wt, waiter_libc, NULL, NULL);
    assert_false(wt->truncated);
    assert_non_null(wt->frames[wt->nframes - 1].module);
    assert_true(ends_with(wt->frames[wt->nframes - 1].module, "/libc.so.6"));
    assert_false(find_name(d, "reader")->truncated);

    char *text;
    const struct stacks_thread *rt = find_name(d, "reader");
    assert_int_equal(stacks_format_thread(rt, &text), 0);
    char head[64];
    snprintf(head, sizeof(head), "Thread [reader]: tid=%d\n", (int)rt->tid);
    assert_int_equal(strncmp(text, head, strlen(head)), 0);
    char *outer = strstr(text, ", in reader_main [");
    char *inner = strstr(text, ", in park_read_b [");
    assert_non_null(outer);
    assert_non_null(inner);
    assert_true(outer < inner);
    assert_non_null(strstr(inner, "  File \""));
    assert_non_null(strstr(text, "parked.c\", line "));
    assert_true(text[strlen(text) - 1] != '\n');
    free(text);
    stacks_dump_free(d);

    /* The threads that were stopped in read() and nanosleep() carry on. */
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
    query(&c, &sleeps1, &reads1);
    assert_int_equal(reads1, reads0 + 1);
    assert_true(sleeps1 > sleeps0);
    stacks_free(s);
    testutil_reap(&c);
}

struct stat_pick {
    const char *name;
    unsigned long hits, misses, size;
    int found;
};

static void pick(const struct cachestat *c, void *userdata)
{
    struct stat_pick *p = userdata;
    if (strcmp(c->name, p->name) == 0) {
        p->hits = atomic_load(&c->hits);
        p->misses = atomic_load(&c->misses);
        p->size = atomic_load(&c->currsize);
        p->found = 1;
    }
}

static struct stat_pick stat_of(const char *name)
{
    struct stat_pick p = {.name = name};
    cachestat_foreach(pick, &p);
    return p;
}

static void test_caches_reused(void **state)
{
    (void)state;
    struct testutil_child c;
    struct stacks *s;
    struct stacks_dump *d;
    spawn_parked(&c, "0");
    assert_int_equal(stacks_new(c.pid, &s), 0);
    assert_int_equal(stacks_dump_threads(s, NULL, &d, NULL), 0);
    stacks_dump_free(d);
    struct stat_pick sym1 = stat_of("symbols"), unw1 = stat_of("unwind");
    assert_true(sym1.found && unw1.found);
    assert_true(sym1.misses > 0 && sym1.size > 0);
    assert_true(unw1.misses > 0 && unw1.size > 0);

    assert_int_equal(stacks_dump_threads(s, NULL, &d, NULL), 0);
    struct stat_pick sym2 = stat_of("symbols"), unw2 = stat_of("unwind");
    check_released(c.pid);
    /* Same mappings: every module's symbols and tables were already there. */
    assert_true(sym2.hits > sym1.hits);
    assert_int_equal(sym2.misses, sym1.misses);
    assert_true(unw2.hits >= unw1.hits);
    assert_int_equal(unw2.misses, unw1.misses);
    assert_non_null(find_name(d, "reader"));
    stacks_dump_free(d);
    stacks_free(s);
    testutil_reap(&c);
}

static int self_pipe[2];
static pthread_barrier_t self_barrier;

static __attribute__((noinline)) void self_park_b(void)
{
    char ch;
    pthread_barrier_wait(&self_barrier);
    while (read(self_pipe[0], &ch, 1) == 1 && ch != 'x')
        ;
    __asm__ volatile("" ::: "memory");
}

static __attribute__((noinline)) void *self_park_a(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "selfpark");
    self_park_b();
    __asm__ volatile("" ::: "memory");
    return NULL;
}

/* What a hold saw of the target: each thread's state while fn ran. */
struct hold_seen {
    pid_t pid;
    int calls, threads, stopped;
};

static void hold_look(void *ctx)
{
    struct hold_seen *h = ctx;
    pid_t *tids;
    size_t n;
    char st;

    h->calls++;
    assert_int_equal(procfs_list_tasks(PROCFS_ROOT, h->pid, &tids, &n), 0);
    for (size_t i = 0; i < n; i++) {
        h->threads++;
        if (procfs_read_state(PROCFS_ROOT, h->pid, tids[i], &st) == 0 && st == 't')
            h->stopped++;
    }
    free(tids);
}

/* The hold runs once, while every thread of the target is in its tracing stop, and the threads
 * are released after; without a hold nothing is held. */
static void test_hold(void **state)
{
    (void)state;
    struct testutil_child c;
    struct stacks *s;
    struct stacks_dump *d;
    struct hold_seen seen = {0};
    struct snapshot_hold hold = {hold_look, &seen};

    spawn_parked(&c, "2");
    seen.pid = c.pid;
    assert_int_equal(stacks_new(c.pid, &s), 0);
    assert_int_equal(stacks_dump_threads(s, &hold, &d, NULL), 0);
    assert_int_equal(seen.calls, 1);
    assert_int_equal(seen.threads, 8);
    assert_int_equal(seen.stopped, seen.threads);
    assert_true(d->held);
    check_released(c.pid);
    stacks_dump_free(d);
    assert_int_equal(stacks_dump_threads(s, NULL, &d, NULL), 0);
    assert_false(d->held);
    stacks_dump_free(d);
    stacks_free(s);
    testutil_reap(&c);
}

static __attribute__((noinline)) void test_self_dump(void **state)
{
    (void)state;
    pthread_t t;
    struct stacks *s;
    struct stacks_dump *d;
    assert_int_equal(pipe(self_pipe), 0);
    pthread_barrier_init(&self_barrier, NULL, 2);
    assert_int_equal(pthread_create(&t, NULL, self_park_a, NULL), 0);
    pthread_barrier_wait(&self_barrier);
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL); /* from the barrier into read() */

    assert_int_equal(stacks_new(getpid(), &s), 0);
    assert_int_equal(stacks_dump_threads(s, NULL, &d, NULL), 0);
    check_released(getpid());
    static const char *const parked[] = {"self_park_a", "self_park_b", NULL};
    check_chain(find_name(d, "selfpark"), parked, NULL, NULL);
    static const char *const me[] = {"test_self_dump", "stacks_dump_threads", NULL};
    check_chain(find_tid(d, gettid()), me, NULL, NULL);
    const struct stacks_thread *pt = find_name(d, "selfpark");
    int has_line = 0;
    for (size_t i = 0; i < pt->nframes; i++)
        if (pt->frames[i].func && strcmp(pt->frames[i].func, "self_park_b") == 0)
            has_line = pt->frames[i].file && ends_with(pt->frames[i].file, "test_stacks.c") &&
                       pt->frames[i].line > 0;
    assert_true(has_line);
    stacks_dump_free(d);
    stacks_free(s);

    /* The thread stopped in read() carries on and ends when told. */
    assert_int_equal(write(self_pipe[1], "x", 1), 1);
    assert_int_equal(pthread_join(t, NULL), 0);
    close(self_pipe[0]);
    close(self_pipe[1]);
    pthread_barrier_destroy(&self_barrier);
}

static void test_exited_target(void **state)
{
    (void)state;
    struct stacks *s;
    struct stacks_dump *d = NULL;
    struct error e;
    int st;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(0);
    /* Probably still a zombie here: listed in /proc, nothing to capture. */
    int r = stacks_new(pid, &s);
    if (r == 0) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
        r = stacks_dump_threads(s, NULL, &d, &e);
        assert_true(r < 0 || d->nthreads == 0);
        if (r < 0)
            assert_int_equal(e.code, r);
        stacks_dump_free(d);
        stacks_free(s);
    } else {
        assert_int_equal(r, -ESRCH);
    }
    assert_int_equal(waitpid(pid, &st, 0), pid);
    /* Reaped: gone for good. */
    assert_int_equal(stacks_new(pid, &s), -ESRCH);
}

static void test_already_traced(void **state)
{
    (void)state;
    struct testutil_child c;
    struct stacks *s;
    struct stacks_dump *d;
    int sync[2], st;
    char ok = 0;
    spawn_parked(&c, "0");
    assert_int_equal(pipe(sync), 0);
    pid_t tracer = fork();
    assert_true(tracer >= 0);
    if (tracer == 0) {
        char r = ptrace(PTRACE_SEIZE, c.pid, 0, 0) == 0 ? 1 : 2;
        if (write(sync[1], &r, 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    assert_int_equal(read(sync[0], &ok, 1), 1);
    assert_int_equal(ok, 1);

    assert_int_equal(stacks_new(c.pid, &s), 0);
    assert_int_equal(stacks_dump_threads(s, NULL, &d, NULL), 0);
    const struct stacks_thread *mt = find_tid(d, c.pid);
    assert_non_null(mt);
    assert_int_equal(mt->err, -EPERM);
    assert_int_equal(mt->nframes, 0);
    char *text;
    assert_int_equal(stacks_format_thread(mt, &text), 0);
    assert_non_null(strstr(text, "\n  <unavailable: Operation not permitted>"));
    free(text);
    static const char *const reader[] = {"reader_main", "park_read_a", "park_read_b", NULL};
    check_chain(find_name(d, "reader"), reader, "parked.c", "/parked");
    stacks_dump_free(d);
    stacks_free(s);

    kill(tracer, SIGKILL);
    waitpid(tracer, &st, 0);
    close(sync[0]);
    close(sync[1]);
    check_released(c.pid);
    testutil_reap(&c);
}

/* Every thread of pid captured the way the snapshot unwinder does it, for feeding samples. */
static struct snapshot *capture(pid_t pid)
{
    struct snapshot *snap;
    struct procfs_map *maps;
    pid_t *tids;
    size_t nmaps, ntids, nr = 0;
    assert_int_equal(procfs_list_tasks(PROCFS_ROOT, pid, &tids, &ntids), 0);
    assert_int_equal(procfs_read_maps(PROCFS_ROOT, pid, &maps, &nmaps), 0);
    struct snapshot_range *ranges = calloc(nmaps, sizeof(*ranges));
    assert_non_null(ranges);
    for (size_t i = 0; i < nmaps; i++)
        if (maps[i].end > maps[i].start && (nr == 0 || maps[i].start >= ranges[nr - 1].end))
            ranges[nr++] = (struct snapshot_range){maps[i].start, maps[i].end};
    assert_int_equal(snapshot_new(&snap), 0);
    assert_int_equal(snapshot_capture(snap, pid, tids, ntids, ranges, nr), 0);
    for (size_t i = 0; i < snap->nthreads; i++)
        assert_int_equal(snap->threads[i].err, 0);
    free(ranges);
    procfs_maps_free(maps, nmaps);
    free(tids);
    return snap;
}

struct sample_frames {
    size_t n;
    int truncated;
    struct stacks_frame f[STACKS_MAX_FRAMES];
};

/* A sample of st as perf_event would give it: the stack from sp up, at most limit bytes. */
static void unwind_sample(struct stacks *s, const struct snapshot_thread *st, size_t limit,
                          struct sample_frames *out)
{
    uint64_t sp = st->regs[REG_SP];
    assert_true(sp >= st->stack_addr && sp - st->stack_addr <= st->stack_len);
    size_t skip = (size_t)(sp - st->stack_addr), len = st->stack_len - skip;
    if (len > limit)
        len = limit;
    assert_int_equal(stacks_unwind_regs(s, st->regs, sp, st->stack + skip, len, out->f,
                                        STACKS_MAX_FRAMES, &out->n, &out->truncated),
                     0);
    assert_true(out->n > 0);
}

static int same_str(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static int same_frame(const struct stacks_frame *a, const struct stacks_frame *b)
{
    return a->ip == b->ip && a->offset == b->offset && a->line == b->line &&
           a->func_line == b->func_line && same_str(a->module, b->module) &&
           same_str(a->func, b->func) && same_str(a->file, b->file);
}

/* Frames compared outermost first. Threads that run between the two captures (the spinner
 * always, the sleeper between its naps) agree only from their root down to stop_func. */
static void check_same(const struct stacks_thread *t, const struct sample_frames *sf,
                       const char *stop_func)
{
    if (!stop_func) {
        assert_int_equal(sf->n, t->nframes);
        assert_int_equal(sf->truncated, t->truncated);
    }
    for (size_t i = 1; i <= t->nframes && i <= sf->n; i++) {
        const struct stacks_frame *a = &t->frames[t->nframes - i], *b = &sf->f[sf->n - i];
        if (stop_func && a->func && strcmp(a->func, stop_func) == 0) {
            assert_string_equal(b->func, stop_func);
            return;
        }
        if (!same_frame(a, b))
            fail_msg("thread %s frame %zu from the root: %s+0x%llx (%s) vs %s+0x%llx (%s)", t->name,
                     i, a->module, (unsigned long long)a->offset, a->func, b->module,
                     (unsigned long long)b->offset, b->func);
    }
    if (stop_func)
        fail_msg("thread %s: %s not reached", t->name, stop_func);
}

/* Each frame in parked.c names its function's definition line. */
static int check_func_lines(const struct stacks_frame *f, size_t n)
{
    int checked = 0;
    for (size_t i = 0; i < n; i++) {
        if (!f[i].file || !ends_with(f[i].file, "parked.c"))
            continue;
        assert_non_null(f[i].func);
        if (f[i].func_line != def_line(f[i].func))
            fail_msg("%s: func_line %d, defined at %d", f[i].func, f[i].func_line,
                     def_line(f[i].func));
        checked++;
    }
    return checked;
}

static const char *moving_thread(const char *name)
{
    if (strcmp(name, "spinner") == 0)
        return "park_spin_b";
    if (strcmp(name, "sleeper") == 0)
        return "park_sleep_b";
    return NULL;
}

static double elapsed_us(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) * 1e6 + (double)(b->tv_nsec - a->tv_nsec) / 1e3;
}

static void test_unwind_regs(void **state)
{
    (void)state;
    struct testutil_child c;
    struct stacks *s;
    struct stacks_dump *d;
    struct sample_frames *full = malloc(sizeof(*full)), *cut = malloc(sizeof(*cut));
    struct timespec t0, t1;
    assert_non_null(full);
    assert_non_null(cut);
    spawn_parked(&c, "2");

    /* Cold: a new unwinder whose first sample reads the maps, opens the files, loads the
     * unwind tables, symbols and DWARF. */
    struct snapshot *snap = capture(c.pid);
    check_released(c.pid);
    assert_int_equal(stacks_new(c.pid, &s), 0);
    const struct snapshot_thread *reader = NULL;
    for (size_t i = 0; i < snap->nthreads; i++)
        if (snap->threads[i].tid != c.pid && !reader)
            reader = &snap->threads[i];
    clock_gettime(CLOCK_MONOTONIC, &t0);
    unwind_sample(s, reader, SAMPLE_STACK, cut);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double cold_us = elapsed_us(&t0, &t1);

    assert_int_equal(stacks_dump_threads(s, NULL, &d, NULL), 0);
    assert_int_equal(d->nthreads, snap->nthreads);
    int lines = 0;
    for (size_t i = 0; i < snap->nthreads; i++) {
        const struct snapshot_thread *st = &snap->threads[i];
        const struct stacks_thread *t = find_tid(d, st->tid);
        assert_non_null(t);
        const char *stop = moving_thread(t->name);
        /* The whole copy, as the dump had it; then 16 KiB from sp, as perf_event gives it:
         * the parked chains are shallow enough for that to reach their roots too. */
        unwind_sample(s, st, SIZE_MAX, full);
        check_same(t, full, stop);
        unwind_sample(s, st, SAMPLE_STACK, cut);
        assert_int_equal(cut->n, full->n);
        assert_int_equal(cut->truncated, full->truncated);
        for (size_t k = 0; k < cut->n; k++)
            assert_true(same_frame(&cut->f[k], &full->f[k]));
        lines += check_func_lines(t->frames, t->nframes);
        lines += check_func_lines(cut->f, cut->n);
    }
    /* Every named thread's chain: 3 functions each at least, twice. */
    assert_true(lines >= 2 * 3 * 6);
    static const char *const reader_chain[] = {"reader_main", "park_read_a", "park_read_b", NULL};
    check_chain(find_name(d, "reader"), reader_chain, "parked.c", "/parked");
    assert_false(find_name(d, "reader")->truncated);
    stacks_dump_free(d);

    /* Too small a copy: the walk stops early and says so, with the innermost frames intact. */
    const struct snapshot_thread *mt = &snap->threads[0];
    assert_int_equal(mt->tid, c.pid);
    unwind_sample(s, mt, SIZE_MAX, full);
    unwind_sample(s, mt, 16, cut);
    assert_true(cut->truncated);
    assert_true(cut->n >= 1 && cut->n < full->n);
    assert_true(same_frame(&cut->f[0], &full->f[0]));

    /* Warm: every thread's sample again and again, tables and symbols already loaded. */
    struct stat_pick sym0 = stat_of("symbols"), unw0 = stat_of("unwind");
    size_t rounds = 300, samples = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t r = 0; r < rounds; r++) {
        for (size_t i = 0; i < snap->nthreads; i++, samples++)
            unwind_sample(s, &snap->threads[i], SAMPLE_STACK, cut);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double warm_us = elapsed_us(&t0, &t1) / (double)samples;
    struct stat_pick sym1 = stat_of("symbols"), unw1 = stat_of("unwind");
    assert_int_equal(sym1.misses, sym0.misses);
    assert_int_equal(unw1.misses, unw0.misses);

    /* Told the maps changed when they did not: re-read once, nothing reloaded or flushed, the
     * strings of earlier frames still valid (same module string). */
    unwind_sample(s, reader, SAMPLE_STACK, full);
    stacks_maps_changed(s);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    unwind_sample(s, reader, SAMPLE_STACK, cut);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double reread_us = elapsed_us(&t0, &t1);
    assert_true(cut->f[0].module == full->f[0].module);
    assert_int_equal(stat_of("symbols").misses, sym1.misses);
    print_message("unwind per sample: cold %.0f us, warm %.1f us (%zu samples, %zu threads), "
                  "after maps_changed %.0f us\n",
                  cold_us, warm_us, samples, snap->nthreads, reread_us);
    assert_true(warm_us < cold_us);

    stacks_free(s);
    snapshot_free(snap);
    free(full);
    free(cut);
    testutil_reap(&c);
}

/* A frame-0-only sample at ip, with an empty stack. */
static void unwind_ip(struct stacks *s, uint64_t ip, struct sample_frames *out)
{
    uint64_t regs[17] = {0};
    unsigned char stack[64] = {0};
    regs[REG_IP] = ip;
    regs[REG_SP] = (uint64_t)(uintptr_t)stack;
    assert_int_equal(stacks_unwind_regs(s, regs, regs[REG_SP], stack, sizeof(stack), out->f,
                                        STACKS_MAX_FRAMES, &out->n, &out->truncated),
                     0);
    assert_true(out->n >= 1);
}

/* Code mapped after the first unwind is found when told (stacks_maps_changed) and, rate-limited,
 * when an address falls outside every known module; files still mapped keep their symbols. */
static void test_maps_changed(void **state)
{
    (void)state;
    struct stacks *s;
    struct sample_frames *f = malloc(sizeof(*f));
    assert_non_null(f);
    assert_null(dlopen("libanl.so.1", RTLD_NOW | RTLD_NOLOAD));
    assert_null(dlopen("libresolv.so.2", RTLD_NOW | RTLD_NOLOAD));
    assert_int_equal(stacks_new(getpid(), &s), 0);
    unwind_ip(s, (uint64_t)(uintptr_t)&test_maps_changed, f);
    assert_string_equal(f->f[0].func, "test_maps_changed");
    assert_int_equal(f->f[0].func_line, def_line_in(__FILE__, "test_maps_changed"));

    void *h1 = dlopen("libanl.so.1", RTLD_NOW);
    assert_non_null(h1);
    void *anl_fn = dlvsym(h1, "__libanl_version_placeholder", "GLIBC_2.2.5");
    assert_non_null(anl_fn);
    unsigned long misses = stat_of("symbols").misses;
    stacks_maps_changed(s);
    unwind_ip(s, (uint64_t)(uintptr_t)anl_fn, f);
    assert_non_null(f->f[0].module);
    assert_true(ends_with(f->f[0].module, "/libanl.so.1"));
    assert_string_equal(f->f[0].func, "__libanl_version_placeholder");
    unwind_ip(s, (uint64_t)(uintptr_t)&test_maps_changed, f);
    assert_string_equal(f->f[0].func, "test_maps_changed");
    /* Only the new library's symbols were loaded; this binary's were kept. */
    assert_int_equal(stat_of("symbols").misses, misses + 1);

    void *h2 = dlopen("libresolv.so.2", RTLD_NOW);
    assert_non_null(h2);
    void *b64 = dlsym(h2, "__b64_ntop");
    assert_non_null(b64);
    struct timespec ts = {0, 120 * 1000 * 1000};
    nanosleep(&ts, NULL);
    unwind_ip(s, (uint64_t)(uintptr_t)b64, f);
    assert_non_null(f->f[0].module);
    assert_true(ends_with(f->f[0].module, "/libresolv.so.2"));
    assert_string_equal(f->f[0].func, "__b64_ntop");

    /* An address in no file at all: unknown, and at once (no second re-read within 100 ms). */
    unwind_ip(s, 0x10, f);
    assert_null(f->f[0].module);
    assert_null(f->f[0].func);
    assert_true(f->truncated || f->n == 1);
    assert_int_equal(stacks_unwind_regs(s, NULL, 0, NULL, 0, f->f, 1, &f->n, &f->truncated),
                     -EINVAL);
    stacks_free(s);
    dlclose(h2);
    dlclose(h1);
    free(f);
}

static void test_format_marks(void **state)
{
    (void)state;
    struct stacks_thread *t = calloc(1, sizeof(*t) + 2 * sizeof(t->frames[0]));
    char *text;
    assert_non_null(t);
    t->tid = 42;
    snprintf(t->name, sizeof(t->name), "w");
    t->nframes = 2;
    t->frames[0] = (struct stacks_frame){.ip = 0x1234, .func = NULL};
    t->frames[1] = (struct stacks_frame){
        .ip = 0x5678, .module = "/lib/x.so", .offset = 0x78, .func = "f", .file = NULL, .line = 0};
    t->truncated = 1;
    assert_int_equal(stacks_format_thread(t, &text), 0);
    assert_string_equal(text, "Thread [w]: tid=42\n"
                              "  File \"/lib/x.so\", line 0, in f [/lib/x.so+0x78]\n"
                              "  File \"??\", line 0, in ?? [0x1234]\n"
                              "  <truncated: outer frames missing>");
    free(text);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parked_threads), cmocka_unit_test(test_hold),
        cmocka_unit_test(test_caches_reused),  cmocka_unit_test(test_self_dump),
        cmocka_unit_test(test_exited_target),  cmocka_unit_test(test_already_traced),
        cmocka_unit_test(test_format_marks),   cmocka_unit_test(test_unwind_regs),
        cmocka_unit_test(test_maps_changed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
