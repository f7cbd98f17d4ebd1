/* Tests of the whole-stack files (collapsed, pprof, speedscope) against their readers: the
 * collapsed lines split as flamegraph.pl splits them, the pprof file through `go tool pprof`
 * (-raw and -top), the speedscope file through Python's json with the file format's rules. The
 * profile is built from synthetic stacks whose counts and weights are known. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <cmocka.h>
#include "formats/profile.h"
#include "testutil.h"

#define PY "/usr/bin/python3"
#define MS 1000000ULL

#define APP "/usr/bin/app"
#define LIBX "/usr/lib/libx.so.1"
#define ODD_NAME "odd;name\nwith \"quotes\" \xc3\xa9"

static char tmpdir[64];

static struct stacks_frame fr(const char *module, const char *func, const char *file, int func_line)
{
    struct stacks_frame f = {
        .ip = 0x1000, .module = module, .func = func, .file = file, .func_line = func_line};
    return f;
}

#define F_MAIN fr(APP, "main", "/src/main.c", 30)
#define F_COMPUTE fr(APP, "compute", "/src/a.c", 20)
#define F_LEAF fr(APP, "leaf", "/src/a.c", 10)
#define F_DUP_X fr(APP, "dup", "/src/x.c", 5)
#define F_DUP_Y fr(APP, "dup", "/src/y.c", 7)
#define F_WORKER fr(APP, "worker_loop", "/src/w.c", 50)

static void add_n(struct profile *p, const char *thread, const struct stacks_frame *f, size_t n,
                  uint64_t weight, int times)
{
    for (int i = 0; i < times; i++)
        assert_int_equal(profile_add(p, thread, f, n, 0, weight), 0);
}

/* Thread "main": main;compute;leaf 60 x 1 ms, main;compute 30 x 1 ms, main;dup (x.c) 7 x 2 ms,
 * main;dup (y.c) 5 x 2 ms, main;ODD_NAME 2 x 1 ms, main;[libx.so.1] 3 x 1 ms, no frames 4 x 1 ms.
 * Thread "work;er": worker_loop;leaf 20 x 1 ms. 131 samples, 143 ms. */
static struct profile *build(void)
{
    struct profile *p;
    struct stacks_frame a[] = {F_LEAF, F_COMPUTE, F_MAIN};
    struct stacks_frame b[] = {F_COMPUTE, F_MAIN};
    struct stacks_frame c[] = {F_DUP_X, F_MAIN};
    struct stacks_frame d[] = {F_DUP_Y, F_MAIN};
    struct stacks_frame e[] = {fr(APP, ODD_NAME, "/src/o.c", 3), F_MAIN};
    struct stacks_frame g[] = {fr(LIBX, NULL, NULL, 0), F_MAIN};
    struct stacks_frame w[] = {F_LEAF, F_WORKER};

    assert_int_equal(profile_new(&p), 0);
    add_n(p, "main", a, 3, MS, 60);
    add_n(p, "main", b, 2, MS, 30);
    add_n(p, "main", c, 2, 2 * MS, 7);
    add_n(p, "main", d, 2, 2 * MS, 5);
    add_n(p, "main", e, 2, MS, 2);
    add_n(p, "main", g, 2, MS, 3);
    add_n(p, "main", NULL, 0, MS, 4);
    add_n(p, "work;er", w, 2, MS, 20);
    return p;
}

static void python(const char *script, const char *arg)
{
    static char out[1 << 20];
    char *argv[] = {PY, "-c", (char *)script, (char *)arg, NULL};
    int r = testutil_run(argv, out, sizeof(out));
    if (r != 0)
        fail_msg("python exited %d:\n%s", r, out);
}

static void path_in(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
}

static int setup(void **state)
{
    (void)state;
    return testutil_tmpdir(tmpdir, "test_formats_extra");
}

static int teardown(void **state)
{
    (void)state;
    return testutil_tmpdir_remove(tmpdir);
}

/* flamegraph.pl's own reading: the count after the last space, frames split on ';'. */
static const char collapsed_check[] =
    "import re, sys\n"
    "data = open(sys.argv[1], 'rb').read().decode()\n"
    "assert data.endswith('\\n') and '\\r' not in data\n"
    "stacks = {}\n"
    "for line in data.splitlines():\n"
    "    m = re.match(r'^(.*)\\s+?(\\d+(?:\\.\\d*)?)$', line)\n"
    "    assert m, line\n"
    "    assert m.group(1) not in stacks, ('twice', line)\n"
    "    stacks[m.group(1)] = int(m.group(2))\n"
    "want = {\n"
    "    'thread main;main;compute;leaf': 60, 'thread main;main;compute': 30,\n"
    "    'thread main;main;dup (/src/x.c:5)': 7, 'thread main;main;dup (/src/y.c:7)': 5,\n"
    "    'thread main;main;odd:name with \"quotes\" \\xe9': 2,\n"
    "    'thread main;main;[libx.so.1]': 3, 'thread main;[unknown]': 4,\n"
    "    'thread work:er;worker_loop;leaf': 20}\n"
    "assert stacks == want, stacks\n"
    "assert all(len(s.split(';')) >= 2 for s in stacks)\n";

static void test_collapsed(void **state)
{
    struct profile *p = build();
    char path[128];
    struct stat st;
    (void)state;

    path_in(path, sizeof(path), "profile.1.collapsed");
    assert_int_equal(profile_write_collapsed(p, path, NULL), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    python(collapsed_check, path);
    profile_free(p);
}

/* flamegraph.pl reads a stack ending in whitespace and a number as a differential one ("a;b 3 5"
 * is b with counts 3 and 5): an innermost name ending so must not end the line so. */
static const char count_like_check[] =
    "import re, sys\n"
    "lines = open(sys.argv[1]).read().splitlines()\n"
    "assert lines == ['thread t;op 3;x_12.5 2', 'thread t;op 3;y_7 1', 'thread t;z 1.2.3 1'], "
    "lines\n"
    "for line in lines:\n"
    "    stack, n = re.match(r'^(.*)\\s+?(\\d+(?:\\.\\d*)?)$', line).groups()\n"
    "    assert not re.match(r'^(.*)\\s+?(\\d+(?:\\.\\d*)?)$', stack), line\n";

static void test_collapsed_count_like_names(void **state)
{
    struct stacks_frame a[] = {fr(APP, "x 12.5", NULL, 0), fr(APP, "op 3", NULL, 0)};
    struct stacks_frame b[] = {fr(APP, "y\t7", NULL, 0), fr(APP, "op 3", NULL, 0)};
    struct stacks_frame c[] = {fr(APP, "z 1.2.3", NULL, 0)};
    struct profile *p;
    char path[128];
    (void)state;

    assert_int_equal(profile_new(&p), 0);
    add_n(p, "t", a, 2, MS, 2);
    add_n(p, "t", b, 2, MS, 1);
    add_n(p, "t", c, 1, MS, 1);
    path_in(path, sizeof(path), "count_like.collapsed");
    assert_int_equal(profile_write_collapsed(p, path, NULL), 0);
    python(count_like_check, path);
    profile_free(p);
}

/* go tool pprof's -raw listing (its parsed profile) and -top table. */
static const char pprof_check[] =
    "import re, subprocess, sys\n"
    "def pprof(*a):\n"
    "    p = subprocess.run(['go', 'tool', 'pprof', *a, sys.argv[1]], capture_output=True,\n"
    "                       text=True)\n"
    "    assert p.returncode == 0, p.stderr\n"
    "    return p.stdout\n"
    "raw = pprof('-raw')\n"
    "assert 'PeriodType: cpu nanoseconds' in raw, raw\n"
    "assert 'Period: 1091603' in raw, raw\n" /* 143 ms / 131 samples */
    "assert re.search(r'Samples:\\nsamples/count cpu/nanoseconds', raw), raw\n"
    "section = raw[raw.index('\\nLocations\\n'):]\n"
    "locs = dict(re.findall(r'^ +(\\d+): 0x0 (?:M=\\d+ )?(.*?) \\S*:\\d+ s=\\d+', section,\n"
    "                       re.M | re.S))\n"
    "assert len(locs) == 9, (locs, raw)\n"
    "samples = re.findall(r'^ +(\\d+) +(\\d+): ([\\d ]+?) *\\n +thread:\\[(.*)\\]$', raw, re.M)\n"
    "got = {}\n"
    "for n, ns, ids, thread in samples:\n"
    "    stack = ';'.join([thread] + [locs[i] for i in reversed(ids.split())])\n"
    "    got[stack] = (int(n), int(ns))\n"
    "want = {\n"
    "    'main;main;compute;leaf': (60, 60 * 10**6), 'main;main;compute': (30, 30 * 10**6),\n"
    "    'main;main;dup (/src/x.c:5)': (7, 14 * 10**6),\n"
    "    'main;main;dup (/src/y.c:7)': (5, 10 * 10**6),\n"
    "    'main;main;[libx.so.1]': (3, 3 * 10**6), 'main;[unknown]': (4, 4 * 10**6),\n"
    "    'work;er;worker_loop;leaf': (20, 20 * 10**6)}\n"
    "odd = [k for k in got if k.startswith('main;main;odd')]\n"
    "assert len(odd) == 1 and got.pop(odd[0]) == (2, 2 * 10**6), odd\n"
    "assert got == want, got\n"
    "assert re.search(r'^Mappings\\n1: 0x0/0x0/0x0 /usr/bin/app  \\[FN\\]\\[FL\\]\\n'\n"
    "                 r'2: 0x0/0x0/0x0 /usr/lib/libx.so.1  \\[FN\\]', raw, re.M), raw\n"
    "top = pprof('-top', '-nodecount=20')\n"
    "rows = {l.split()[-1]: l.split() for l in top.splitlines() if re.match(r' *\\d', l)}\n"
    "assert rows['leaf'][0] == '80ms' and rows['leaf'][1] == '55.94%', top\n"
    "assert rows['compute'][0] == '30ms' and rows['compute'][3] == '90ms', top\n"
    "assert rows['main'][3] == '119ms' and rows['worker_loop'][3] == '20ms', top\n"
    "top = pprof('-top', '-sample_index=samples', '-tagfocus=thread=main')\n"
    "assert 'leaf' in top and 'worker_loop' not in top, top\n";

static void test_pprof(void **state)
{
    struct profile *p = build();
    char path[128];
    (void)state;

    path_in(path, sizeof(path), "profile.1.pb.gz");
    assert_int_equal(profile_write_pprof(p, path, 1700000000ULL * 1000000000ULL, 3 * MS, NULL), 0);
    python(pprof_check, path);
    profile_free(p);
}

/* speedscope's importer takes frames by index and stacks root first; the weights of a
 * "sampled" profile are its time in the profile's unit. */
static const char speedscope_check[] =
    "import json, sys\n"
    "d = json.load(open(sys.argv[1], encoding='utf-8'))\n"
    "assert d['$schema'] == 'https://www.speedscope.app/file-format-schema.json'\n"
    "assert d['name'] == 'app \"x\"' and d['exporter'] == 'profiler-agent'\n"
    "frames = d['shared']['frames']\n"
    "by = {f['name']: f for f in frames}\n"
    "assert len(by) == len(frames) == 9, frames\n"
    "assert by['leaf'] == {'name': 'leaf', 'file': '/src/a.c', 'line': 10}, by['leaf']\n"
    "assert by['[libx.so.1]'] == {'name': '[libx.so.1]', 'file': '/usr/lib/libx.so.1'}\n"
    "assert by['[unknown]'] == {'name': '[unknown]'}\n"
    "assert 'odd;name\\nwith \"quotes\" \\xe9' in by, by\n"
    "profs = {p['name']: p for p in d['profiles']}\n"
    "assert sorted(profs) == ['main', 'work;er'], profs\n"
    "got = {}\n"
    "for name, p in profs.items():\n"
    "    assert p['type'] == 'sampled' and p['unit'] == 'nanoseconds' and p['startValue'] == 0\n"
    "    assert len(p['samples']) == len(p['weights'])\n"
    "    assert p['endValue'] == sum(p['weights']), p\n"
    "    for s, w in zip(p['samples'], p['weights']):\n"
    "        got[';'.join([name] + [frames[i]['name'] for i in s])] = w\n"
    "want = {'main;main;compute;leaf': 60, 'main;main;compute': 30,\n"
    "        'main;main;dup (/src/x.c:5)': 14, 'main;main;dup (/src/y.c:7)': 10,\n"
    "        'main;main;odd;name\\nwith \"quotes\" \\xe9': 2,\n"
    "        'main;main;[libx.so.1]': 3, 'main;[unknown]': 4, 'work;er;worker_loop;leaf': 20}\n"
    "assert got == {k: v * 10**6 for k, v in want.items()}, got\n";

static void test_speedscope(void **state)
{
    struct profile *p = build();
    char path[128];
    (void)state;

    path_in(path, sizeof(path), "profile.1.speedscope.json");
    assert_int_equal(profile_write_speedscope(p, path, "app \"x\"", NULL), 0);
    python(speedscope_check, path);
    profile_free(p);
}

/* The tree keeps each path's time: three paths to one innermost function, one sample each of
 * different weights (as perf's varying periods and off-CPU stretches give), keep their own. */
static const char shares_check[] = "import json, sys\n"
                                   "d = json.load(open(sys.argv[1]))\n"
                                   "w = d['profiles'][0]['weights']\n"
                                   "assert sorted(w) == [1, 4, 5], w\n";

static void test_time_shares(void **state)
{
    struct stacks_frame x[] = {F_LEAF, fr(APP, "x", NULL, 0)};
    struct stacks_frame y[] = {F_LEAF, fr(APP, "y", NULL, 0)};
    struct stacks_frame z[] = {F_LEAF, fr(APP, "z", NULL, 0)};
    struct profile *p;
    char path[128];
    (void)state;

    assert_int_equal(profile_new(&p), 0);
    add_n(p, "t", x, 2, 1, 1);
    add_n(p, "t", y, 2, 4, 1);
    add_n(p, "t", z, 2, 5, 1);
    path_in(path, sizeof(path), "shares.speedscope.json");
    assert_int_equal(profile_write_speedscope(p, path, NULL, NULL), 0);
    python(shares_check, path);
    profile_free(p);
}

/* What cannot be written is an error naming the cause, and leaves no file behind. */
static void test_write_errors(void **state)
{
    struct profile *p = build();
    struct error e;
    char path[128];
    (void)state;

    path_in(path, sizeof(path), "missing/profile.1.pb.gz");
    assert_int_equal(profile_write_pprof(p, path, 0, 0, &e), -ENOENT);
    assert_int_equal(e.code, -ENOENT);
    assert_int_equal(profile_write_collapsed(p, path, &e), -ENOENT);
    assert_int_equal(profile_write_speedscope(p, path, "t", &e), -ENOENT);
    assert_int_equal(access(path, F_OK), -1);
    profile_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_collapsed),   cmocka_unit_test(test_collapsed_count_like_names),
        cmocka_unit_test(test_pprof),       cmocka_unit_test(test_speedscope),
        cmocka_unit_test(test_time_shares), cmocka_unit_test(test_write_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
