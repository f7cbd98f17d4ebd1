/* Tests of Python-level stacks against real CPython processes (Debian's /usr/bin/python3, or
 * $PYTHON): threads parked in known functions (tests/workloads/py_parked.py), checked against
 * markers in its source and against Python's own view of the same threads; a CPU split between
 * two functions (py_split.py); a libpython embedded in another program (gdb); processes that are
 * not Python or are gone; a target exiting or killed while we read; the time of one read on a
 * 50-thread process. Run from the source tree's top, as `make unit-check` does. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
#include <cmocka.h>
#include "python/pyframes.h"
#include "testutil.h"

#define PARKED "tests/workloads/py_parked.py"
#define SPLIT "tests/workloads/py_split.py"
#define DEPTH 600      /* py_parked.py's DEPTH */
#define SETTLE_MS 5000 /* for threads between marking themselves and blocking */

static const char *python(void)
{
    const char *p = getenv("PYTHON");
    return p && *p ? p : "/usr/bin/python3";
}

/* Starts python SCRIPT [ARGS...] with stdin and stdout piped, reads its first line into line. */
static void spawn_py(struct testutil_child *c, const char *script, const char *a1, const char *a2,
                     char *line, size_t len)
{
    int in[2], out[2];

    assert_int_equal(access(script, R_OK), 0);
    assert_int_equal(pipe2(in, O_CLOEXEC), 0);
    assert_int_equal(pipe2(out, O_CLOEXEC), 0);
    c->pid = fork();
    assert_true(c->pid >= 0);
    if (c->pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        execl(python(), python(), script, a1, a2, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    c->in = in[1];
    c->out = out[0];
    assert_int_equal(testutil_read_line(c->out, line, len, 10000), 0);
}

static void spawn_parked(struct testutil_child *c, const char *extra, const char *deep, char *tids,
                         size_t len)
{
    char line[64];

    spawn_py(c, PARKED, extra, deep, line, sizeof(line));
    assert_string_equal(line, "ready");
    assert_int_equal(testutil_read_line(c->out, tids, len, 10000), 0);
}

/* tid of NAME from the "tids main=T sleeper=T ..." line. */
static pid_t tid_of(const char *tids, const char *name)
{
    char key[32];
    snprintf(key, sizeof(key), " %s=", name);
    const char *s = strstr(tids, key);
    assert_non_null(s);
    return (pid_t)strtol(s + strlen(key), NULL, 10);
}

/* Line number (1-based) of the first line of SRC at or after line `from` containing needle. */
static int line_of(const char *src, int from, const char *needle)
{
    FILE *f = fopen(src, "r");
    char buf[512];
    int n = 0, found = 0;

    assert_non_null(f);
    while (!found && fgets(buf, sizeof(buf), f))
        if (++n >= from && strstr(buf, needle))
            found = n;
    fclose(f);
    assert_true(found > 0);
    return found;
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void sleep_ms(int ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static bool ends_with(const char *s, const char *tail)
{
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && strcmp(s + a - b, tail) == 0;
}

static const struct pyframes_thread *find_tid(const struct pyframes_thread *t, size_t n, pid_t tid)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].tid == tid)
            return &t[i];
    return NULL;
}

/* One expected frame, outermost first: file (a suffix), function, line and first line (0: any
 * line; line_hi: any line in [line, line_hi]). */
struct want {
    const char *file, *func;
    int line, line_hi, first;
};

static char why[512];

/* NULL when the thread's whole stack is exactly want (outermost first), else why not. */
static const char *check_chain(const struct pyframes_thread *t, const struct want *w, size_t n)
{
    if (!t)
        return "thread missing";
    if (t->truncated || t->nframes != n) {
        snprintf(why, sizeof(why), "tid %d: %zu frames%s, want %zu", t->tid, t->nframes,
                 t->truncated ? " (truncated)" : "", n);
        return why;
    }
    for (size_t i = 0; i < n; i++) {
        const struct pyframes_frame *f = &t->frames[n - 1 - i];
        int hi = w[i].line_hi ? w[i].line_hi : w[i].line;
        if (!ends_with(f->filename, w[i].file) || strcmp(f->funcname, w[i].func) ||
            (w[i].line && (f->line < w[i].line || f->line > hi)) ||
            (w[i].first && f->firstlineno != w[i].first)) {
            snprintf(why, sizeof(why), "tid %d frame %zu: %s:%d:%s (first %d), want %s:%d:%s",
                     t->tid, i, f->filename, f->line, f->funcname, f->firstlineno, w[i].file,
                     w[i].line, w[i].func);
            return why;
        }
    }
    return NULL;
}

#define THREADING "/threading.py"
#define BOOT                                                                                       \
    {THREADING, "Thread._bootstrap", 0, 0, 0}, {THREADING, "Thread._bootstrap_inner", 0, 0, 0},    \
    {                                                                                              \
        THREADING, "Thread.run", 0, 0, 0                                                           \
    }

/* The chain of a thread started on OUTER which calls INNER, parked at MARKER. */
static void want_thread(struct want w[5], const char *outer, const char *inner, const char *marker)
{
    static char defs[2][64];
    const struct want boot[3] = {BOOT};
    int outer_def, inner_def;

    snprintf(defs[0], sizeof(defs[0]), "def %s(", outer);
    snprintf(defs[1], sizeof(defs[1]), "def %s(", inner);
    outer_def = line_of(PARKED, 1, defs[0]);
    inner_def = line_of(PARKED, 1, defs[1]);
    memcpy(w, boot, sizeof(boot));
    w[3] = (struct want){"/py_parked.py", outer, 0, 0, outer_def};
    w[4] = (struct want){"/py_parked.py", inner, line_of(PARKED, inner_def, marker), 0, inner_def};
    /* the outer function's line is its call of inner (or, for a generator, its for loop) */
    w[3].line = line_of(PARKED, outer_def, strcmp(outer, "gen_outer") ? inner : "in gen_source");
}

static const char *check_parked(const struct pyframes_thread *t, size_t n, const char *tids)
{
    static const char *const named[][3] = {
        {"sleeper", "sleeper_outer", "sleeper_inner"},
        {"waiter", "waiter_outer", "waiter_inner"},
        {"gen", "gen_outer", "gen_source"},
        {"uni", "uni_outer", "grüße_δ"},
    };
    static const char *const marks[] = {"# @sleep", "# @acquire", "# @gen", "# @uni"};
    struct want w[5];
    const char *e;
    int gil = 0;

    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
        want_thread(w, named[i][1], named[i][2], marks[i]);
        if ((e = check_chain(find_tid(t, n, tid_of(tids, named[i][0])), w, 5)))
            return e;
    }
    /* the spinner is anywhere in its loop */
    want_thread(w, "spinner_outer", "spinner_inner", "# @spin");
    w[4].line_hi = w[4].line;
    w[4].line = w[4].first + 3; /* "while True:" */
    if ((e = check_chain(find_tid(t, n, tid_of(tids, "spinner")), w, 5)))
        return e;
    /* deleter_inner is at a DELETE_FAST (no inline cache), whose next instruction is on the
     * next line: its line must come from the instruction itself */
    struct want d[6];
    want_thread(d, "deleter_outer", "deleter_inner", "# @del");
    int del_def = line_of(PARKED, 1, "def __del__(");
    d[5] = (struct want){"/py_parked.py", "Parker.__del__", line_of(PARKED, del_def, "# @delsleep"),
                         0, del_def};
    if ((e = check_chain(find_tid(t, n, tid_of(tids, "deleter")), d, 6)))
        return e;
    int main_def = line_of(PARKED, 1, "def main(");
    int inner_def = line_of(PARKED, 1, "def main_inner(");
    const struct want m[3] = {
        {"/py_parked.py", "<module>", line_of(PARKED, main_def + 1, "main()"), 0, 1},
        {"/py_parked.py", "main", line_of(PARKED, main_def, "main_inner()"), 0, main_def},
        {"/py_parked.py", "main_inner", line_of(PARKED, inner_def, "# @read"), 0, inner_def},
    };
    if ((e = check_chain(find_tid(t, n, tid_of(tids, "main")), m, 3)))
        return e;
    for (size_t i = 0; i < n; i++)
        gil += t[i].holds_gil;
    return gil <= 1 ? NULL : "more than one thread holds the GIL";
}

/* Reads until check passes or SETTLE_MS pass (threads may still be on their way to where they
 * block); fails with the last reason. */
static void read_until(struct pyframes *p, const char *tids, size_t want_n,
                       const char *(*check)(const struct pyframes_thread *, size_t, const char *))
{
    double end = now_ms() + SETTLE_MS;
    const char *e;

    for (;;) {
        struct pyframes_thread *t;
        size_t n;
        assert_int_equal(pyframes_read(p, &t, &n), 0);
        e = n == want_n ? check(t, n, tids) : "wrong thread count";
        pyframes_threads_free(t, n);
        if (!e || now_ms() > end)
            break;
        sleep_ms(20);
    }
    if (e)
        fail_msg("%s", e);
}

static void test_parked(void **state)
{
    struct testutil_child c;
    struct pyframes *p;
    char tids[256], version[PYFRAMES_VERSION_MAX];

    (void)state;
    spawn_parked(&c, "0", NULL, tids, sizeof(tids));
    assert_int_equal(pyframes_open(c.pid, version, sizeof(version), &p), 0);
    assert_string_equal(version, pyframes_version(p));
    assert_memory_equal(version, "3.11.", 5);
    read_until(p, tids, 7, check_parked);
    pyframes_free(p);
    testutil_reap(&c);
}

/* Python's own view of its threads ('s'), against ours, frame by frame; main (which prints
 * them) and the spinner's innermost line (which moves) aside. */
static void test_oracle(void **state)
{
    struct testutil_child c;
    struct pyframes *p;
    struct pyframes_thread *t;
    size_t n, seen = 0;
    char tids[256], line[65536];

    (void)state;
    spawn_parked(&c, "10", NULL, tids, sizeof(tids));
    assert_int_equal(pyframes_open(c.pid, NULL, 0, &p), 0);
    read_until(p, tids, 17, check_parked);
    assert_int_equal(write(c.in, "s", 1), 1);
    assert_int_equal(pyframes_read(p, &t, &n), 0);
    assert_int_equal(n, 17);
    for (;;) {
        unsigned long long ident;
        int off;
        assert_int_equal(testutil_read_line(c.out, line, sizeof(line), 5000), 0);
        if (strcmp(line, "end") == 0)
            break;
        assert_int_equal(sscanf(line, "stack %llu %n", &ident, &off), 1);
        const struct pyframes_thread *th = NULL;
        for (size_t i = 0; i < n; i++)
            if (t[i].pthread_id == ident)
                th = &t[i];
        assert_non_null(th);
        assert_false(th->truncated);
        size_t k = th->nframes;
        for (char *tok = line + off; tok;) {
            char want[2200], *bar = strchr(tok, '|');
            if (bar)
                *bar = '\0';
            assert_true(k > 0);
            const struct pyframes_frame *f = &th->frames[--k];
            snprintf(want, sizeof(want), "%s:%d:%s", f->filename, f->line, f->funcname);
            if (strcmp(f->funcname, "spinner_inner") != 0)
                assert_string_equal(tok, want);
            tok = bar ? bar + 1 : NULL;
        }
        assert_int_equal(k, 0);
        seen++;
    }
    assert_int_equal(seen, n - 1);
    pyframes_threads_free(t, n);
    pyframes_free(p);
    testutil_reap(&c);
}

/* A stack deeper than the limit: PYFRAMES_MAX_FRAMES innermost frames, marked truncated. */
static void test_deep(void **state)
{
    struct testutil_child c;
    struct pyframes *p;
    struct pyframes_thread *t;
    size_t n;
    char tids[256];
    const struct pyframes_thread *d = NULL;
    double end = now_ms() + SETTLE_MS;

    (void)state;
    spawn_parked(&c, "0", "deep", tids, sizeof(tids));
    assert_int_equal(pyframes_open(c.pid, NULL, 0, &p), 0);
    int def = line_of(PARKED, 1, "def deep(");
    int deeper = line_of(PARKED, def, "# @deeper"), park = line_of(PARKED, def, "# @deep\n");
    for (;;) {
        assert_int_equal(pyframes_read(p, &t, &n), 0);
        d = find_tid(t, n, tid_of(tids, "deep"));
        assert_non_null(d);
        if ((d->nframes && d->frames[0].line == park) || now_ms() > end)
            break;
        pyframes_threads_free(t, n);
        sleep_ms(20);
    }
    assert_true(d->truncated);
    assert_int_equal(d->nframes, PYFRAMES_MAX_FRAMES);
    assert_int_equal(d->frames[0].line, park);
    for (size_t i = 0; i < d->nframes; i++) {
        assert_string_equal(d->frames[i].funcname, "deep");
        assert_int_equal(d->frames[i].firstlineno, def);
        if (i)
            assert_int_equal(d->frames[i].line, deeper);
    }
    pyframes_threads_free(t, n);
    pyframes_free(p);
    testutil_reap(&c);
}

/* An interpreter in a shared libpython, embedded in another program: gdb runs Python code. */
static void test_libpython(void **state)
{
    struct pyframes *p;
    char version[PYFRAMES_VERSION_MAX];
    double end = now_ms() + SETTLE_MS;
    bool found = false;

    (void)state;
    if (access("/usr/bin/gdb", X_OK))
        skip();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        execl("/usr/bin/gdb", "gdb", "-batch", "-nx", "-ex", "python import time; time.sleep(60)",
              (char *)NULL);
        _exit(127);
    }
    int r;
    do {
        sleep_ms(50);
        r = pyframes_open(pid, version, sizeof(version), &p);
    } while (r == -ENOENT && now_ms() < end);
    assert_int_equal(r, 0);
    assert_memory_equal(version, "3.11.", 5);
    while (!found && now_ms() < end) {
        struct pyframes_thread *t;
        size_t n;
        assert_int_equal(pyframes_read(p, &t, &n), 0);
        const struct pyframes_thread *m = find_tid(t, n, pid);
        found = m && m->nframes == 1 && strcmp(m->frames[0].filename, "<string>") == 0 &&
                strcmp(m->frames[0].funcname, "<module>") == 0 && m->frames[0].line == 1;
        pyframes_threads_free(t, n);
        sleep_ms(20);
    }
    assert_true(found);
    pyframes_free(p);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static void test_format(void **state)
{
    struct pyframes_frame f = {"/srv/app/event.py", "Loop.run_action", 1175, 1170, false};
    char buf[128], small[16];

    (void)state;
    assert_int_equal(pyframes_format_frame(&f, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "  File \"/srv/app/event.py\", line 1175, in Loop.run_action");
    assert_int_equal(pyframes_format_frame(&f, small, sizeof(small)), -ENAMETOOLONG);
    assert_int_equal(strlen(small), sizeof(small) - 1);
}

static void test_not_python(void **state)
{
    struct pyframes *p = NULL;
    char version[PYFRAMES_VERSION_MAX] = "x";

    (void)state;
    assert_int_equal(pyframes_open(getpid(), version, sizeof(version), &p), -ENOENT);
    assert_string_equal(version, "");
    assert_null(p);
    assert_int_equal(pyframes_open(0, NULL, 0, &p), -EINVAL);
    pid_t dead = fork();
    if (dead == 0)
        _exit(0);
    assert_true(dead > 0);
    assert_int_equal(waitpid(dead, NULL, 0), dead);
    assert_int_equal(pyframes_open(dead, NULL, 0, &p), -ESRCH);
    assert_null(p);
}

/* Every result of a read on a target that is going away is an error or well-formed. */
static void check_sane(const struct pyframes_thread *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        assert_true(t[i].tid > 0);
        assert_true(t[i].nframes <= PYFRAMES_MAX_FRAMES);
        for (size_t j = 0; j < t[i].nframes; j++) {
            const struct pyframes_frame *f = &t[i].frames[j];
            assert_true(f->filename[0] && f->funcname[0]);
            assert_true(strlen(f->filename) < PYFRAMES_STR_MAX);
            assert_true(f->line >= 0 && f->firstlineno >= 0);
        }
    }
}

/* The target ends while we read in a loop, either killed or finalizing its interpreter (which
 * frees its thread states under us): no crash, and every read an error or well-formed. */
static void test_exit_midread(void **state)
{
    size_t reads = 0, empty = 0, partial = 0, truncated = 0;

    (void)state;
    for (int round = 0; round < 12; round++) {
        struct testutil_child c;
        struct pyframes *p;
        char tids[256];
        int r;

        spawn_parked(&c, "20", round % 3 == 2 ? "deep" : NULL, tids, sizeof(tids));
        assert_int_equal(pyframes_open(c.pid, NULL, 0, &p), 0);
        if (round % 2)
            kill(c.pid, SIGKILL);
        else
            assert_int_equal(write(c.in, "x", 1), 1);
        double end = now_ms() + 10000;
        do {
            struct pyframes_thread *t;
            size_t n;
            r = pyframes_read(p, &t, &n);
            reads++;
            if (r == 0) {
                check_sane(t, n);
                empty += n == 0;
                partial += n > 0 && n < 27;
                for (size_t i = 0; i < n; i++)
                    truncated += t[i].truncated && t[i].nframes < PYFRAMES_MAX_FRAMES;
                pyframes_threads_free(t, n);
            } else {
                assert_true(r == -ESRCH || r == -EFAULT);
            }
        } while (r == 0 && now_ms() < end);
        assert_int_not_equal(r, 0);
        pyframes_free(p);
        close(c.in);
        close(c.out);
        waitpid(c.pid, NULL, 0);
    }
    print_message("exit mid-read: %zu reads over 12 exits: %zu with no threads, %zu with some, "
                  "%zu stacks cut short\n",
                  reads, empty, partial, truncated);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One read of a 50-thread process (43 extra + 7 named), timed. */
static void test_time_50(void **state)
{
    struct testutil_child c;
    struct pyframes *p;
    char tids[256];
    double ms[50];
    size_t frames = 0;

    (void)state;
    spawn_parked(&c, "43", NULL, tids, sizeof(tids));
    assert_int_equal(pyframes_open(c.pid, NULL, 0, &p), 0);
    read_until(p, tids, 50, check_parked);
    for (int i = 0; i < 50; i++) {
        struct pyframes_thread *t;
        size_t n;
        double t0 = now_ms();
        assert_int_equal(pyframes_read(p, &t, &n), 0);
        ms[i] = now_ms() - t0;
        assert_int_equal(n, 50);
        frames = 0;
        for (size_t k = 0; k < n; k++)
            frames += t[k].nframes;
        pyframes_threads_free(t, n);
    }
    qsort(ms, 50, sizeof(ms[0]), cmp_double);
    print_message("pyframes_read, 50 threads, %zu frames: min %.3f ms, median %.3f ms, "
                  "max %.3f ms\n",
                  frames, ms[0], ms[25], ms[49]);
    pyframes_free(p);
    testutil_reap(&c);
}

/* py_split.py spends about 3/4 of its time in heavy and 1/4 in light: reads at irregular
 * intervals must find the main thread in one of them, at one of its loop's lines, in that
 * proportion. */
static void test_split(void **state)
{
    struct testutil_child c;
    struct pyframes *p;
    char line[64];
    int heavy = 0, light = 0, other = 0;
    int hdef = line_of(SPLIT, 1, "def heavy("), ldef = line_of(SPLIT, 1, "def light(");
    int mdef = line_of(SPLIT, 1, "def main(");
    int loop = line_of(SPLIT, mdef, "x = light(heavy(x))");

    (void)state;
    spawn_py(&c, SPLIT, NULL, NULL, line, sizeof(line));
    assert_string_equal(line, "ready");
    assert_int_equal(pyframes_open(c.pid, NULL, 0, &p), 0);
    srand(1);
    for (int i = 0; i < 600; i++) {
        struct pyframes_thread *t;
        size_t n;
        assert_int_equal(pyframes_read(p, &t, &n), 0);
        const struct pyframes_thread *m = find_tid(t, n, c.pid);
        assert_non_null(m);
        if (m->nframes == 3 && !m->truncated) {
            const struct pyframes_frame *f = &m->frames[0];
            int def = strcmp(f->funcname, "heavy") == 0   ? hdef
                      : strcmp(f->funcname, "light") == 0 ? ldef
                                                          : 0;
            assert_string_equal(m->frames[1].funcname, "main");
            assert_int_equal(m->frames[1].line, loop);
            assert_string_equal(m->frames[2].funcname, "<module>");
            if (def) {
                assert_int_equal(f->firstlineno, def);
                assert_true(f->line >= def + 1 && f->line <= def + 3);
                *(def == hdef ? &heavy : &light) += 1;
            } else {
                other++;
            }
        } else {
            other++;
        }
        pyframes_threads_free(t, n);
        sleep_ms(1 + rand() % 5);
    }
    double share = 100.0 * heavy / (heavy + light);
    print_message("split: heavy %d, light %d, other %d: heavy %.1f%% (want 75%%)\n", heavy, light,
                  other, share);
    assert_true(other < 30);
    assert_true(share > 67 && share < 83);
    pyframes_free(p);
    testutil_reap(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format),  cmocka_unit_test(test_not_python),
        cmocka_unit_test(test_parked),  cmocka_unit_test(test_libpython),
        cmocka_unit_test(test_oracle),  cmocka_unit_test(test_deep),
        cmocka_unit_test(test_split),   cmocka_unit_test(test_exit_midread),
        cmocka_unit_test(test_time_50),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
