/* Tests of Python-level stacks against real CPython processes (Debian's /usr/bin/python3, or
 * $PYTHON): threads parked in known functions (tests/workloads/py_parked.py), checked against
 * markers in its source and against Python's own view of the same threads; a CPU split between
 * two functions (py_split.py); a libpython embedded in another program (gdb); processes that are
 * not Python or are gone; a target exiting or killed while we read; the time of one read on a
 * 50-thread process. Then the parked threads and Python's own view once per interpreter this
 * machine has, 3.11 to 3.15 (Debian's, pyenv's, and tests/pyroot.sh's Debian unstable root run
 * through chroot), each also inside a PID namespace; one that is missing is skipped with the
 * reason printed. Run from the source tree's top, as `make unit-check` does. */
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
#include <dirent.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <cmocka.h>
#include "python/pydebug.h"
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

/* How a workload is started: which interpreter, seen from which root, in which PID namespace. */
struct interp {
    const char *label;
    const char *python;  /* as the target sees it: under root when root is set */
    const char *root;    /* NULL, or a directory to chroot into */
    const char *version; /* the prefix its version must have */
    bool pidns;          /* inside `unshare --pid` */
};

/* Starts python SCRIPT [ARGS...] as in says with stdin and stdout piped, reads its first line
 * into line. With a PID namespace c->pid is unshare, the target its child (target_of). */
static void spawn_in(const struct interp *in, struct testutil_child *c, const char *script,
                     const char *a1, const char *a2, char *line, size_t len)
{
    int pin[2], pout[2];
    const char *argv[16];
    size_t n = 0;

    if (in->pidns) {
        static const char *const unshare[] = {"unshare", "--pid", "--fork", "--mount-proc",
                                              "--kill-child"};
        for (size_t i = 0; i < 5; i++)
            argv[n++] = unshare[i];
    }
    if (in->root) {
        argv[n++] = "chroot";
        argv[n++] = in->root;
    }
    argv[n++] = in->python;
    argv[n++] = script;
    argv[n++] = a1;
    argv[n++] = a1 ? a2 : NULL;
    argv[n] = NULL;
    assert_int_equal(pipe2(pin, O_CLOEXEC), 0);
    assert_int_equal(pipe2(pout, O_CLOEXEC), 0);
    c->pid = fork();
    assert_true(c->pid >= 0);
    if (c->pid == 0) {
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(pin[0]);
    close(pout[1]);
    c->in = pin[1];
    c->out = pout[0];
    assert_int_equal(testutil_read_line(c->out, line, len, 20000), 0);
}

static void spawn_py(struct testutil_child *c, const char *script, const char *a1, const char *a2,
                     char *line, size_t len)
{
    const struct interp in = {"default", python(), NULL, "", false};

    assert_int_equal(access(script, R_OK), 0);
    spawn_in(&in, c, script, a1, a2, line, len);
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
        const struct pyframes_thread *th = find_tid(t, n, tid_of(tids, named[i][0]));
        want_thread(w, named[i][1], named[i][2], marks[i]);
        if ((e = check_chain(th, w, 5)))
            return e;
        if (strcmp(th->name, named[i][0])) {
            snprintf(why, sizeof(why), "tid %d named \"%s\", want \"%s\"", th->tid, th->name,
                     named[i][0]);
            return why;
        }
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
    const struct pyframes_thread *mt = find_tid(t, n, tid_of(tids, "main"));
    if (!mt || strcmp(mt->name, "MainThread"))
        return "the main thread is not named MainThread";
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
    assert_int_equal(pyframes_attach(c.pid, version, sizeof(version), &p, NULL), 0);
    assert_string_equal(version, pyframes_version(p));
    assert_memory_equal(version, "3.11.", 5);
    read_until(p, tids, 7, check_parked);
    pyframes_free(p);
    testutil_reap(&c);
}

/* Python's own view of its threads ('s'), against ours, frame by frame; main (which prints
 * them) and the spinner's innermost line (which moves) aside. want_n threads in all. */
static void check_oracle(struct testutil_child *c, struct pyframes *p, size_t want_n)
{
    struct pyframes_thread *t;
    size_t n, seen = 0;
    static char line[65536];

    assert_int_equal(write(c->in, "s", 1), 1);
    assert_int_equal(pyframes_read(p, &t, &n), 0);
    assert_int_equal(n, want_n);
    for (;;) {
        unsigned long long ident;
        int off;
        assert_int_equal(testutil_read_line(c->out, line, sizeof(line), 5000), 0);
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
}

static void test_oracle(void **state)
{
    struct testutil_child c;
    struct pyframes *p;
    char tids[256];

    (void)state;
    spawn_parked(&c, "10", NULL, tids, sizeof(tids));
    assert_int_equal(pyframes_attach(c.pid, NULL, 0, &p, NULL), 0);
    read_until(p, tids, 17, check_parked);
    check_oracle(&c, p, 17);
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
    assert_int_equal(pyframes_attach(c.pid, NULL, 0, &p, NULL), 0);
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
        r = pyframes_attach(pid, version, sizeof(version), &p, NULL);
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
    struct pyframes_frame f = {"/srv/app/event.py", "Loop.run_action", 1175, 1170, false, 0};
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
    assert_int_equal(pyframes_attach(getpid(), version, sizeof(version), &p, NULL), -ENOENT);
    assert_string_equal(version, "");
    assert_null(p);
    assert_int_equal(pyframes_attach(0, NULL, 0, &p, NULL), -EINVAL);
    pid_t dead = fork();
    if (dead == 0)
        _exit(0);
    assert_true(dead > 0);
    assert_int_equal(waitpid(dead, NULL, 0), dead);
    assert_int_equal(pyframes_attach(dead, NULL, 0, &p, NULL), -ESRCH);
    assert_null(p);
}

/* A CPython older than 3.11 (pyenv's 3.10): -EOPNOTSUPP, the version from its libpython's
 * name, and a reason that says why. */
static void test_unsupported(void **state)
{
    char exe[PATH_MAX], line[64], version[PYFRAMES_VERSION_MAX];
    const char *home = getenv("HOME");
    struct testutil_child c;
    struct pyframes *p = NULL;
    struct error err = {0};

    (void)state;
    snprintf(exe, sizeof(exe), "%s/.pyenv/versions/3.10.13/bin/python3.10", home ? home : "/root");
    if (access(exe, X_OK)) {
        print_message("skipped: %s is missing\n", exe);
        skip();
    }
    const struct interp in = {"pyenv 3.10", exe, NULL, "", false};
    spawn_in(&in, &c, SPLIT, "1000", NULL, line, sizeof(line));
    assert_int_equal(pyframes_attach(c.pid, version, sizeof(version), &p, &err), -EOPNOTSUPP);
    assert_null(p);
    assert_string_equal(version, "3.10");
    assert_int_equal(err.code, -EOPNOTSUPP);
    assert_non_null(strstr(err.reason, "3.10"));
    assert_non_null(strstr(err.reason, "older than 3.11"));
    testutil_reap(&c);
}

/* The _Py_DebugOffsets of real 3.14 and 3.15 builds (as the fuzzer's seeds carry them, after
 * two header bytes): read as they are; a newer minor with 3.15's shape accepted; one with another
 * shape, a free-threaded build and a wrong cookie refused with a reason. */
static void test_debug_offsets(void **state)
{
    static unsigned char b14[16384], b15[16384];
    struct pylayout l;
    struct error err = {0};
    FILE *f;

    (void)state;
    assert_non_null(f = fopen("tests/fuzz/corpus/pyframes/v3_14_debug", "rb"));
    size_t n14 = fread(b14, 1, sizeof(b14), f) - 2;
    fclose(f);
    assert_non_null(f = fopen("tests/fuzz/corpus/pyframes/v3_15_debug", "rb"));
    size_t n15 = fread(b15, 1, sizeof(b15), f) - 2;
    fclose(f);
    assert_int_equal(pydebug_layout(b14 + 2, n14, &l, &err), 0);
    assert_int_equal(l.minor, 14);
    assert_int_equal(l.code_mask, ~(uint64_t)3);
    assert_int_equal(pydebug_layout(b15 + 2, n15, &l, &err), 0);
    assert_int_equal(l.minor, 15);
    assert_int_equal(l.owner_max, 3);
    b15[2 + 10] = 16; /* version: 3.16 */
    assert_int_equal(pydebug_layout(b15 + 2, n15, &l, &err), 0);
    assert_int_equal(l.minor, 16);
    b14[2 + 10] = 16;
    assert_int_equal(pydebug_layout(b14 + 2, n14, &l, &err), -EOPNOTSUPP);
    assert_non_null(strstr(err.reason, "shape not known"));
    b15[2 + 16] = 1; /* free_threaded */
    assert_int_equal(pydebug_layout(b15 + 2, n15, &l, &err), -EOPNOTSUPP);
    assert_non_null(strstr(err.reason, "free-threaded"));
    b15[2] = 'X';
    assert_int_equal(pydebug_layout(b15 + 2, n15, &l, &err), -EOPNOTSUPP);
    assert_non_null(strstr(err.reason, "cookie"));
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
        assert_int_equal(pyframes_attach(c.pid, NULL, 0, &p, NULL), 0);
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
    assert_int_equal(pyframes_attach(c.pid, NULL, 0, &p, NULL), 0);
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
    assert_int_equal(pyframes_attach(c.pid, NULL, 0, &p, NULL), 0);
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

/* ---- every interpreter ---- */

#define NS_TIDS_MAX 64
static char pyroot[PATH_MAX];   /* tests/pyroot.sh's root, "" when it failed */
static char pyenv[4][PATH_MAX]; /* pyenv's interpreters */
static struct interp interps[16];
static size_t ninterps;

/* The innermost id (NSpid's last) of each thread of pid, and ours. */
static size_t ns_tids(pid_t pid, pid_t inner[NS_TIDS_MAX], pid_t host[NS_TIDS_MAX])
{
    char path[320], buf[4096];
    size_t n = 0;
    DIR *d;
    struct dirent *e;

    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    assert_non_null(d = opendir(path));
    while ((e = readdir(d)) && n < NS_TIDS_MAX) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/%d/task/%s/status", (int)pid, e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        while (fgets(buf, sizeof(buf), f)) {
            if (strncmp(buf, "NSpid:", 6))
                continue;
            char *last = strrchr(buf, '\t');
            host[n] = (pid_t)strtol(e->d_name, NULL, 10);
            inner[n++] = (pid_t)strtol(last ? last + 1 : buf + 6, NULL, 10);
        }
        fclose(f);
    }
    closedir(d);
    return n;
}

/* Rewrites the "tids name=T ..." line of a target in a PID namespace with our ids. */
static void host_tids(pid_t pid, char *tids, size_t len)
{
    pid_t inner[NS_TIDS_MAX], host[NS_TIDS_MAX];
    size_t n = ns_tids(pid, inner, host), pos;
    char out[256];

    pos = (size_t)snprintf(out, sizeof(out), "tids");
    for (char *tok = strchr(tids, ' '); tok; tok = strchr(tok, ' ')) {
        char *eq = strchr(++tok, '=');
        assert_non_null(eq);
        pid_t t = 0, want = (pid_t)strtol(eq + 1, NULL, 10);
        for (size_t i = 0; i < n; i++)
            if (inner[i] == want)
                t = host[i];
        assert_true(t > 0);
        pos += (size_t)snprintf(out + pos, sizeof(out) - pos, " %.*s=%d", (int)(eq - tok), tok,
                                (int)t);
        assert_true(pos < sizeof(out));
    }
    snprintf(tids, len, "%s", out);
}

/* unshare's child: the target inside the namespace. */
static pid_t child_of(pid_t pid)
{
    char path[96];
    long child = 0;

    snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%ld", &child), 1);
    fclose(f);
    return (pid_t)child;
}

/* A copy of the workload the target can see: under its root. */
static void copy_file(const char *from, const char *to)
{
    char buf[8192];
    size_t n;
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");

    assert_non_null(in);
    assert_non_null(out);
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

/* py_parked.py under one interpreter: the parked threads where the source says, and every
 * frame as Python's own sys._current_frames() has it; in a PID namespace, with our tids. */
static void test_interp(void **state)
{
    const struct interp *in = *state;
    struct testutil_child c;
    struct pyframes *p;
    struct error err = {0};
    char tids[256], line[64], version[PYFRAMES_VERSION_MAX], exe[PATH_MAX], dir[64],
        script[PATH_MAX], copy[2 * PATH_MAX];

    if ((in->root || in->pidns) && geteuid() != 0) {
        print_message("skipped %s: chroot and unshare --pid need root\n", in->label);
        skip();
    }
    if (in->root && !in->root[0]) {
        print_message("skipped %s: tests/pyroot.sh gave no root\n", in->label);
        skip();
    }
    snprintf(exe, sizeof(exe), "%s%s", in->root ? in->root : "", in->python);
    if (access(exe, X_OK)) {
        print_message("skipped %s: %s is missing\n", in->label, exe);
        skip();
    }
    if (in->pidns && access("/usr/bin/unshare", X_OK)) {
        print_message("skipped %s: no unshare\n", in->label);
        skip();
    }
    snprintf(script, sizeof(script), "%s", PARKED);
    if (in->root) {
        snprintf(dir, sizeof(dir), "/tmp/pyframes-test-%d", (int)getpid());
        snprintf(copy, sizeof(copy), "%s%s", in->root, dir);
        mkdir(copy, 0755);
        snprintf(script, sizeof(script), "%s/py_parked.py", dir);
        snprintf(copy, sizeof(copy), "%s%s", in->root, script);
        copy_file(PARKED, copy);
    }
    spawn_in(in, &c, script, "10", NULL, line, sizeof(line));
    assert_string_equal(line, "ready");
    assert_int_equal(testutil_read_line(c.out, tids, sizeof(tids), 10000), 0);
    pid_t target = in->pidns ? child_of(c.pid) : c.pid;
    if (in->pidns)
        host_tids(target, tids, sizeof(tids));
    int r = pyframes_attach(target, version, sizeof(version), &p, &err);
    if (r)
        fail_msg("%s: attach: %d %s", in->label, r, err.reason);
    assert_memory_equal(version, in->version, strlen(in->version));
    read_until(p, tids, 17, check_parked);
    check_oracle(&c, p, 17);
    print_message("%s: Python %s, 17 threads match\n", in->label, version);
    pyframes_free(p);
    testutil_reap(&c);
    if (in->root) {
        unlink(copy);
        snprintf(copy, sizeof(copy), "%s%s", in->root, dir);
        rmdir(copy);
    }
}

/* The interpreters test_interp runs, each twice (the second time in a PID namespace). */
static void find_interps(void)
{
    const char *home = getenv("HOME"), *pyenv_root = getenv("PYENV_ROOT");
    static const char *const pyenv_bins[][3] = {
        {"pyenv 3.11.7", "3.11.7/bin/python3.11", "3.11."},
        {"pyenv 3.12.1", "3.12.1/bin/python3.12", "3.12."},
        {"pyenv 3.13.0", "3.13.0/bin/python3.13", "3.13."},
    };
    static const char *const sid[][3] = {
        {"sid 3.13", "/usr/bin/python3.13", "3.13."},
        {"sid 3.14", "/usr/bin/python3.14", "3.14."},
        {"sid 3.15", "/usr/bin/python3.15", "3.15."},
    };
    FILE *f = geteuid() == 0 ? popen("tests/pyroot.sh", "r") : NULL; /* debootstrap: root */

    if (!f || !fgets(pyroot, sizeof(pyroot), f))
        pyroot[0] = '\0';
    if (f && pclose(f) != 0)
        pyroot[0] = '\0';
    pyroot[strcspn(pyroot, "\n")] = '\0';
    for (int ns = 0; ns < 2; ns++) {
        interps[ninterps++] =
            (struct interp){"debian 3.11", "/usr/bin/python3.11", NULL, "3.11.", ns};
        for (size_t i = 0; i < 3; i++) {
            snprintf(pyenv[i], sizeof(pyenv[i]), "%s%s/%s",
                     pyenv_root ? pyenv_root
                     : home     ? home
                                : "/root",
                     pyenv_root ? "/versions" : "/.pyenv/versions", pyenv_bins[i][1]);
            interps[ninterps++] =
                (struct interp){pyenv_bins[i][0], pyenv[i], NULL, pyenv_bins[i][2], ns};
        }
        for (size_t i = 0; i < 3; i++)
            interps[ninterps++] = (struct interp){sid[i][0], sid[i][1], pyroot, sid[i][2], ns};
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format),      cmocka_unit_test(test_not_python),
        cmocka_unit_test(test_unsupported), cmocka_unit_test(test_debug_offsets),
        cmocka_unit_test(test_parked),      cmocka_unit_test(test_libpython),
        cmocka_unit_test(test_oracle),      cmocka_unit_test(test_deep),
        cmocka_unit_test(test_split),       cmocka_unit_test(test_exit_midread),
        cmocka_unit_test(test_time_50),
    };
    struct CMUnitTest each[16];
    char names[16][64];

    find_interps();
    for (size_t i = 0; i < ninterps; i++) {
        snprintf(names[i], sizeof(names[i]), "test_interp %s%s", interps[i].label,
                 interps[i].pidns ? " (PID namespace)" : "");
        each[i] = (struct CMUnitTest)cmocka_unit_test_prestate(test_interp, &interps[i]);
        each[i].name = names[i];
    }
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    return failed + _cmocka_run_group_tests("interpreters", each, ninterps, NULL, NULL);
}
