/* Tests of the CPU profile and its three files against their real readers: Python's pstats and
 * marshal (/usr/bin/python3), valgrind's callgrind_annotate, and for the flame graph an XML parser
 * and librsvg's rsvg-convert. Profiles are built from synthetic stacks whose counts are known. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <cmocka.h>
#include "formats/profile.h"
#include "formats/profile_priv.h"

#define PY "/usr/bin/python3"
#define WEIGHT 1000000ULL /* 1 ms a sample */

/* The synthetic profile: how many samples of each stack shape. */
#define N_SPLIT_A 60    /* main -> compute -> leaf_a */
#define N_SPLIT_SELF 30 /* main -> compute */
#define N_REC 10        /* main -> rec -> rec -> rec -> leaf_a */
#define N_WORKER 20     /* thread worker: worker_loop -> leaf_a */
#define N_TRUNC 5       /* worker, truncated: compute -> leaf_a */
#define N_EMPTY 5       /* no frames at all */
#define N_NOSYM 3       /* main -> (no symbol in libx.so) */
#define N_WEIRD 2       /* main -> a function with an awkward name */
#define N_TOTAL                                                                                    \
    (N_SPLIT_A + N_SPLIT_SELF + N_REC + N_WORKER + N_TRUNC + N_EMPTY + N_NOSYM + N_WEIRD)

#define APP "/usr/bin/app"
#define LIBX "/usr/lib/libx.so"
#define WEIRD_NAME "we\"ird\\name\n<tag>&amp; \xc3\xa9\xe6\x97\xa5\xe6\x9c\xac"
#define WEIRD_FILE "/src/q\"uote's.c"

static char tmpdir[64];

static struct stacks_frame fr(const char *module, const char *func, const char *file, int line,
                              int func_line)
{
    struct stacks_frame f = {.ip = 0x1000,
                             .module = module,
                             .offset = 0x100,
                             .func = func,
                             .file = file,
                             .line = line,
                             .func_line = func_line};
    return f;
}

#define F_LEAF_A(line) fr(APP, "leaf_a", "/src/a.c", line, 10)
#define F_COMPUTE(line) fr(APP, "compute", "/src/a.c", line, 20)
#define F_MAIN(line) fr(APP, "main", "/src/main.c", line, 30)
#define F_REC(line) fr(APP, "rec", "/src/a.c", line, 40)
#define F_WORKER(line) fr(APP, "worker_loop", "/src/w.c", line, 50)

static void add_n(struct profile *p, const char *thread, const struct stacks_frame *f, size_t n,
                  int truncated, int times)
{
    for (int i = 0; i < times; i++)
        assert_int_equal(profile_add(p, thread, f, n, truncated, WEIGHT), 0);
}

static struct profile *build(void)
{
    struct profile *p;
    struct stacks_frame a[] = {F_LEAF_A(11), F_COMPUTE(21), F_MAIN(31)};
    struct stacks_frame b[] = {F_COMPUTE(22), F_MAIN(32)};
    struct stacks_frame c[] = {F_LEAF_A(12), F_REC(41), F_REC(42), F_REC(42), F_MAIN(33)};
    struct stacks_frame d[] = {F_LEAF_A(13), F_WORKER(51)};
    struct stacks_frame e[] = {F_LEAF_A(11), F_COMPUTE(23)};
    struct stacks_frame g[] = {fr(LIBX, NULL, "/ignored.c", 5, 3), F_MAIN(34)};
    struct stacks_frame h[] = {fr(APP, WEIRD_NAME, WEIRD_FILE, 61, 60), F_MAIN(35)};

    assert_int_equal(profile_new(&p), 0);
    add_n(p, "main", a, 3, 0, N_SPLIT_A);
    add_n(p, "main", b, 2, 0, N_SPLIT_SELF);
    add_n(p, "main", c, 5, 0, N_REC);
    add_n(p, "worker", d, 2, 0, N_WORKER);
    add_n(p, "worker", e, 2, 1, N_TRUNC);
    add_n(p, "main", NULL, 0, 0, N_EMPTY);
    add_n(p, "main", g, 2, 0, N_NOSYM);
    add_n(p, "main", h, 2, 0, N_WEIRD);
    return p;
}

/* Runs argv with input on stdin; its stdout and stderr go to out. Returns the exit status. */
static int run(char *const argv[], const char *input, char *out, size_t outlen)
{
    int in[2], o[2], status;
    size_t n = 0;
    ssize_t k;
    pid_t pid;

    assert_int_equal(pipe(in), 0);
    assert_int_equal(pipe(o), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(o[1], 1);
        dup2(o[1], 2);
        close(in[0]), close(in[1]), close(o[0]), close(o[1]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(in[0]);
    close(o[1]);
    if (input)
        assert_int_equal(write(in[1], input, strlen(input)), (ssize_t)strlen(input));
    close(in[1]);
    while ((k = read(o[0], out + n, outlen - 1 - n)) > 0)
        n += (size_t)k;
    out[n] = '\0';
    close(o[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* Runs a Python script (argv[1..] after the script); fails the test with its output unless it
 * exits 0. */
static void python(const char *script, const char *a1, const char *a2)
{
    static char out[1 << 20];
    char *argv[] = {PY, "-c", (char *)script, (char *)a1, (char *)a2, NULL};
    int r = run(argv, NULL, out, sizeof(out));
    if (r != 0)
        fail_msg("python exited %d:\n%s", r, out);
}

static void path_in(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
}

static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    assert_non_null(d);
    while ((e = readdir(d)))
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_profile.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[128];
    (void)state;
    /* PROFILE_KEEP=1 leaves the files for a person to open. */
    if (getenv("PROFILE_KEEP")) {
        print_message("files kept in %s\n", tmpdir);
        return 0;
    }
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_counts_and_top(void **state)
{
    struct profile *p = build();
    struct profile_top top[4];
    size_t n;
    (void)state;

    assert_int_equal(profile_samples(p), N_TOTAL);
    assert_int_equal(profile_truncated(p), N_TRUNC);
    assert_int_equal(profile_dropped(p), 0);
    assert_int_equal(profile_top(p, 4, top, &n), 0);
    assert_int_equal(n, 4);
    assert_string_equal(top[0].func, "leaf_a");
    assert_string_equal(top[0].module, APP);
    assert_string_equal(top[0].file, "/src/a.c");
    assert_int_equal(top[0].func_line, 10);
    assert_int_equal(top[0].self_samples, N_SPLIT_A + N_REC + N_WORKER + N_TRUNC);
    assert_int_equal(top[0].total_samples, top[0].self_samples);
    assert_int_equal(top[0].self_ns, top[0].self_samples * WEIGHT);
    assert_string_equal(top[1].func, "compute");
    assert_int_equal(top[1].self_samples, N_SPLIT_SELF);
    assert_int_equal(top[1].total_samples, N_SPLIT_A + N_SPLIT_SELF + N_TRUNC);
    /* Both "[unknown]": the empty stacks' (no module, no file) and libx's. */
    assert_string_equal(top[2].func, "[unknown]");
    assert_int_equal(top[2].self_samples, N_EMPTY);
    assert_string_equal(top[2].module, "[unknown]");
    assert_null(top[2].file);
    assert_string_equal(top[3].func, "[unknown]");
    assert_string_equal(top[3].module, LIBX);
    assert_null(top[3].file);
    assert_int_equal(top[3].func_line, 0);
    profile_free(p);
}

static const char pstats_check[] =
    "import sys, io, pstats\n"
    "s = pstats.Stats(sys.argv[1])\n"
    "n = int(sys.argv[2]); ms = 1e-3\n"
    "st = s.stats\n"
    "def get(name):\n"
    "    k = [k for k in st if k[2] == name]\n"
    "    assert len(k) == 1, (name, k)\n"
    "    return k[0], st[k[0]]\n"
    "assert abs(s.total_tt - n * ms) < 1e-9, s.total_tt\n"
    "total = sum(v[1] for v in st.values())\n"
    "assert s.total_calls == total, (s.total_calls, total)\n"
    "leaf, (cc, nc, tt, ct, callers) = get('leaf_a')\n"
    "assert leaf == ('/src/a.c', 10, 'leaf_a'), leaf\n"
    "assert cc == nc == 95 and abs(tt - 0.095) < 1e-9 and abs(ct - 0.095) < 1e-9, st[leaf]\n"
    "names = sorted(k[2] for k in callers)\n"
    "assert names == ['compute', 'rec', 'worker_loop'], names\n"
    "comp = get('compute')[0]\n"
    "assert callers[comp][:2] == (65, 65) and abs(callers[comp][2] - 0.065) < 1e-9, callers[comp]\n"
    "k, (cc, nc, tt, ct, callers) = get('rec')\n"
    "assert nc == 10 and tt == 0 and abs(ct - 0.010) < 1e-9, st[k]\n"
    "assert callers[k][:2] == (10, 10) and abs(callers[k][3] - 0.010) < 1e-9, callers[k]\n"
    "k, (cc, nc, tt, ct, callers) = get('main')\n"
    "assert callers == {} and nc == 105 and tt == 0 and abs(ct - 0.105) < 1e-9, st[k]\n"
    "unk = sorted(k for k in st if k[2] == '[unknown]')\n"
    "assert unk == [('/usr/lib/libx.so', 0, '[unknown]'), ('[unknown]', 0, '[unknown]')], unk\n"
    "w = [k for k in st if k[0] == '/src/q\"uote\\'s.c']\n"
    "assert w == [('/src/q\"uote\\'s.c', 60,\n"
    "              'we\"ird\\\\name\\n<tag>&amp; \\xe9\\u65e5\\u672c')], w\n"
    "out = io.StringIO()\n"
    "s.stream = out\n"
    "s.print_callers('leaf_a')\n"
    "text = out.getvalue()\n"
    "lines = [l for l in text.splitlines() if 'leaf_a' in l or '<-' in l or l.startswith(' ')]\n"
    "for name in ('compute', 'rec', 'worker_loop'):\n"
    "    assert any(name in l for l in lines), (name, text)\n"
    "assert '(main)' not in text, text\n"
    "print(text)\n";

static void test_pstats(void **state)
{
    struct profile *p = build();
    char path[128], n[32], out[1 << 16];
    char *argv[] = {PY, "-m", "pstats", path, NULL};
    struct stat st;
    (void)state;

    path_in(path, sizeof(path), "profile.1.cprof");
    assert_int_equal(profile_write_pstats(p, path, NULL), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    snprintf(n, sizeof(n), "%d", N_TOTAL);
    python(pstats_check, path, n);
    assert_int_equal(run(argv, "sort cumtime\nstats 5\nquit\n", out, sizeof(out)), 0);
    assert_null(strstr(out, "Traceback"));
    assert_non_null(strstr(out, "function calls in 0.135 seconds"));
    assert_non_null(strstr(out, "main.c:30(main)"));
    assert_non_null(strstr(out, "a.c:20(compute)"));
    profile_free(p);
}

/* callgrind_annotate's per-function table, self and --inclusive=yes, checked by Python. */
static const char callgrind_check[] =
    "import sys, subprocess, re\n"
    "def table(incl):\n"
    "    out = subprocess.run(['callgrind_annotate', '--inclusive=' + incl, '--auto=no',\n"
    "                          '--threshold=100',\n"
    "                          sys.argv[1]], capture_output=True, text=True, check=True)\n"
    "    assert 'WARNING' not in out.stderr and 'malformed' not in out.stdout, out\n"
    "    rows = {}\n"
    "    for l in out.stdout.splitlines():\n"
    "        m = re.match(r'^\\s*([\\d,]+)\\s+\\([^)]*\\)\\s+([\\d,]+)\\s+\\([^)]*\\)\\s+(.*)$',\n"
    "                     l)\n"
    "        if not m or m.group(3).endswith('PROGRAM TOTALS'):\n"
    "            continue\n"
    "        name = m.group(3)\n"
    "        for ob in ('/usr/bin/app', '/usr/lib/libx.so', '[unknown]'):\n"
    "            if name.endswith(' [%s]' % ob):\n"
    "                name = name[:-len(ob) - 3]\n"
    "        fl, fn = name.split(':', 1)\n"
    "        rows[(fl, fn)] = (int(m.group(1).replace(',', '')),\n"
    "                          int(m.group(2).replace(',', '')))\n"
    "    return rows, out.stdout\n"
    "self, text = table('no')\n"
    "incl, itext = table('yes')\n"
    "print(itext)\n"
    "ms = 1000000\n"
    "def check(rows, key, n):\n"
    "    assert rows.get(key) == (n, n * ms), (key, rows.get(key), rows)\n"
    "check(self, ('/src/a.c', 'leaf_a'), 95)\n"
    "check(self, ('/src/a.c', 'compute'), 30)\n"
    "check(incl, ('/src/a.c', 'leaf_a'), 95)\n"
    "check(incl, ('?' * 3, '[truncated]'), 5)\n"
    "check(incl, ('/src/a.c', 'compute'), 95)\n"
    "check(incl, ('/src/main.c', 'main'), 105)\n"
    "check(incl, ('/src/a.c', 'rec'), 10)\n"
    "check(incl, ('/src/w.c', 'worker_loop'), 20)\n"
    "check(incl, ('?' * 3, '[unknown]'), 5)\n"
    "check(incl, ('?' * 3, '[unknown] [/usr/lib/libx.so]'), 3)\n"
    "assert 'Events recorded:  Samples Nanoseconds' in text or 'Samples' in text, text\n"
    "m = re.search(r'([\\d,]+) +\\(100.0%\\) +([\\d,]+) +\\(100.0%\\) +PROGRAM TOTALS', text)\n"
    "assert m and int(m.group(1).replace(',', '')) == int(sys.argv[2]), text\n";

static void test_callgrind(void **state)
{
    struct profile *p = build();
    char path[128], n[32], buf[4096];
    FILE *f;
    size_t k;
    (void)state;

    path_in(path, sizeof(path), "callgrind.out.1");
    assert_int_equal(profile_write_callgrind(p, path, "app --flag\nx", 4242, NULL), 0);
    f = fopen(path, "r");
    assert_non_null(f);
    k = fread(buf, 1, sizeof(buf) - 1, f);
    buf[k] = '\0';
    fclose(f);
    assert_non_null(strstr(buf, "\nversion: 1\ncreator: profiler-agent\npid: 4242\n"
                                "cmd: app --flag?x\n"));
    assert_non_null(strstr(buf, "\npositions: line\n"));
    assert_non_null(strstr(buf, "\nevents: Samples Nanoseconds\n"));
    snprintf(n, sizeof(n), "%d", N_TOTAL);
    python(callgrind_check, path, n);
    profile_free(p);
}

static const char svg_check[] =
    "import sys, re, xml.etree.ElementTree as ET\n"
    "data = open(sys.argv[1], encoding='utf-8').read()\n"
    "root = ET.fromstring(data)\n"
    "ns = '{http://www.w3.org/2000/svg}'\n"
    "titles = [t.text for t in root.iter(ns + 'title')]\n"
    "n = int(sys.argv[2])\n"
    "app = ' in /usr/bin/app at '\n"
    "need = ['all (%d samples, 100.00%%)' % n,\n"
    "        'thread main (%d samples, %.2f%%)' % (110, 100 * 110 / n),\n"
    "        'thread worker (25 samples, %.2f%%)' % (100 * 25 / n),\n"
    "        'compute' + app + '/src/a.c:20 (90 samples, %.2f%%)' % (100 * 90 / n),\n"
    "        'leaf_a' + app + '/src/a.c:10 (60 samples, %.2f%%)' % (100 * 60 / n),\n"
    "        'rec' + app + '/src/a.c:40 (10 samples, %.2f%%)' % (100 * 10 / n),\n"
    "        '[libx.so] in /usr/lib/libx.so (3 samples, %.2f%%)' % (100 * 3 / n),\n"
    "        'we\"ird\\\\name <tag>&amp; \\xe9\\u65e5\\u672c' + app +\n"
    "        '/src/q\"uote\\'s.c:60 (2 samples, %.2f%%)' % (100 * 2 / n)]\n"
    "for t in need:\n"
    "    assert t in titles, (t, titles)\n"
    "assert titles.count('rec' + app + '/src/a.c:40 (10 samples, %.2f%%)' % (100 * 10 / n)) == 3\n"
    "labels = {g.get('data-name') for g in root.iter(ns + 'g') if g.get('class') == 'f'}\n"
    "assert {'all', 'thread main', 'leaf_a', '[libx.so]', '[unknown]'} <= labels, labels\n"
    "for g in root.iter(ns + 'g'):\n"
    "    if g.get('class') == 'f':\n"
    "        t = g.find(ns + 'title').text\n"
    "        assert t.startswith(g.get('data-name') + ' ') or t == g.get('data-name'), t\n"
    "urls = set(re.findall(r'https?://[^\\s\"\\'<>]*', data))\n"
    "assert urls <= {'http://www.w3.org/2000/svg', 'http://www.w3.org/1999/xlink'}, urls\n"
    "assert 'href' not in data and '@import' not in data, 'external reference'\n"
    "assert root.find(ns + 'script') is not None and 'function zoom' in data\n"
    "assert 'function search' in data and 'Matched: ' in data and 'function unzoom' in data\n"
    "print(len(titles), 'frames')\n";

static void test_flamegraph(void **state)
{
    struct profile *p = build();
    char path[128], png[128], n[32], out[4096];
    char *argv[] = {"/usr/bin/rsvg-convert", "-o", png, path, NULL};
    struct stat st;
    (void)state;

    path_in(path, sizeof(path), "flamegraph.1.svg");
    assert_int_equal(profile_write_flamegraph(p, path, "app (pid 4242) <CPU>", NULL), 0);
    snprintf(n, sizeof(n), "%d", N_TOTAL);
    python(svg_check, path, n);
    /* Kept where a person can look at it (the report says what it showed). */
    snprintf(png, sizeof(png), "%s", getenv("PROFILE_PNG") ? getenv("PROFILE_PNG") : "");
    if (!*png)
        path_in(png, sizeof(png), "flamegraph.1.png");
    if (access(argv[0], X_OK) == 0) {
        int r = run(argv, NULL, out, sizeof(out));
        if (r != 0)
            fail_msg("rsvg-convert exited %d: %s", r, out);
        assert_int_equal(stat(png, &st), 0);
        assert_true(st.st_size > 1000);
    } else {
        print_message("rsvg-convert missing: SVG rendering not checked\n");
    }
    profile_free(p);
}

static struct stacks_frame pyfr(const char *func, const char *file, int line, int func_line)
{
    struct stacks_frame f = {
        .func = func, .file = file, .line = line, .func_line = func_line, .python = true};
    return f;
}

#define LIBA "/usr/lib/liba.so.1"
#define LIBB "/opt/b/libb.so.2"
#define PYEXE "/usr/bin/python3.11"

/* What each reader keys a function by, for functions that share a name across modules (stripped
 * ones, two mains, two inits of one source file) and for Python functions: pstats' (file, line,
 * name) tells them all apart, with the module as the file when there is no source file;
 * callgrind puts the module in ob= once and the name alone in fn=, a Python function's object
 * is its .py file, and every compressed name is given once, then used by its id. */
static const char modules_check[] =
    "import sys, re, subprocess, collections, pstats\n"
    "st = pstats.Stats(sys.argv[1]).stats\n"
    "want = {('/usr/lib/liba.so.1', 0, '[unknown]'), ('/opt/b/libb.so.2', 0, '[unknown]'),\n"
    "        ('/usr/lib/liba.so.1', 0, 'main'), ('/opt/b/libb.so.2', 0, 'main'),\n"
    "        ('/app/srv.py', 10, 'handle'), ('/app/main.py', 1, '<module>'),\n"
    "        ('/usr/bin/python3.11', 0, 'main'), ('/src/util.c', 5, 'init'),\n"
    "        ('/src/util.c', 5, 'init [/opt/b/libb.so.2]')}\n"
    "assert set(st) == want, sorted(set(st) ^ want)\n"
    "text = open(sys.argv[2]).read()\n"
    "names, ob = {}, None\n"
    "for line in text.splitlines():\n"
    "    m = re.match(r'^(c?)(ob|fl|fi|fn)=\\((\\d+)\\)(?: (.*))?$', line)\n"
    "    if not m:\n"
    "        continue\n"
    "    kind = 'fl' if m.group(2) == 'fi' else m.group(2)\n"
    "    key = (kind, m.group(3))\n"
    "    if m.group(4) is not None:\n"
    "        assert key not in names, ('named twice', line)\n"
    "        names[key] = m.group(4)\n"
    "    else:\n"
    "        assert key in names, ('used before it is named', line)\n"
    "    if not m.group(1) and kind == 'ob':\n"
    "        ob = names[key]\n"
    "    if not m.group(1) and kind == 'fn':\n"
    "        fn = names[key]\n"
    "        if fn == 'handle':\n"
    "            assert ob == '/app/srv.py', ob\n"
    "        if ' [' in fn:\n"
    "            assert fn.endswith(' [%s]' % ob), (fn, ob)\n"
    "        assert ob != '[unknown]' or fn == '[truncated]', (fn, ob)\n"
    "obs = sorted(v for k, v in names.items() if k[0] == 'ob')\n"
    "assert len(obs) == len(set(obs)), obs\n"
    "fns = sorted(v for k, v in names.items() if k[0] == 'fn')\n"
    "assert fns == ['<module>', '[truncated]', '[unknown]', '[unknown] [/opt/b/libb.so.2]',\n"
    "               'handle', 'init', 'init [/opt/b/libb.so.2]', 'main',\n"
    "               'main [/opt/b/libb.so.2]', 'main [/usr/lib/liba.so.1]'], fns\n"
    "out = subprocess.run(['callgrind_annotate', '--inclusive=yes', sys.argv[2]],\n"
    "                     capture_output=True, text=True, check=True).stdout\n"
    "assert '[[unknown]]' not in out.replace('[truncated] [[unknown]]', ''), out\n"
    "assert 'srv.py:handle [/app/srv.py]' in out, out\n"
    "assert '???:main [/usr/bin/python3.11]' in out, out\n"
    "assert '???:[unknown] [/usr/lib/liba.so.1]' in out, out\n"
    "print(out)\n";

static void test_modules(void **state)
{
    struct profile *p;
    struct stacks_frame py[] = {pyfr("handle", "/app/srv.py", 12, 10),
                                pyfr("<module>", "/app/main.py", 3, 1),
                                fr(PYEXE, "main", NULL, 0, 0)};
    struct stacks_frame a[] = {fr(LIBA, NULL, NULL, 0, 0), fr(LIBA, "main", NULL, 0, 0)};
    struct stacks_frame b[] = {fr(LIBB, NULL, NULL, 0, 0), fr(LIBB, "main", NULL, 0, 0)};
    struct stacks_frame u[] = {fr(LIBA, "init", "/src/util.c", 7, 5), fr(LIBA, "main", NULL, 0, 0)};
    struct stacks_frame v[] = {fr(LIBB, "init", "/src/util.c", 7, 5), fr(LIBB, "main", NULL, 0, 0)};
    struct profile_top top[8];
    char cprof[128], cg[128];
    size_t n, i;
    (void)state;

    assert_int_equal(profile_new(&p), 0);
    add_n(p, "main", py, 3, 0, 4);
    add_n(p, "main", a, 2, 0, 3);
    add_n(p, "main", b, 2, 0, 3);
    add_n(p, "main", u, 2, 0, 2);
    add_n(p, "main", v, 2, 0, 2);
    assert_int_equal(profile_top(p, 8, top, &n), 0);
    for (i = 0; i < n && strcmp(top[i].func, "handle"); i++)
        ;
    assert_true(i < n);
    assert_string_equal(top[i].module, "/app/srv.py");
    path_in(cprof, sizeof(cprof), "modules.cprof");
    path_in(cg, sizeof(cg), "callgrind.out.modules");
    assert_int_equal(profile_write_pstats(p, cprof, NULL), 0);
    assert_int_equal(profile_write_callgrind(p, cg, "modules", 1, NULL), 0);
    python(modules_check, cprof, cg);
    profile_free(p);
}

/* Marshal values as Python reads them back: the int forms around 2^31 and 2^63, floats, 'u'
 * strings with quotes, escapes and non-ASCII, small and large tuples, dicts. */
static const char marshal_check[] =
    "import sys, marshal\n"
    "v = marshal.load(open(sys.argv[1], 'rb'))\n"
    "want = (0, -1, 2**31 - 1, -2**31, 2**31, -2**31 - 1, 2**45 + 12345, -2**62 - 7,\n"
    "        2**63 - 1, -2**63, 0.0, -1.5, 0.1, 1e-300, 1.7976931348623157e308,\n"
    "        '', 'abc', 'q\"\\'\\\\\\n\\xe9\\u65e5\\U0001f600', 'x' * 300,\n"
    "        tuple(range(300)), {('f', 1, 'g'): (1, 2.5, {})})\n"
    "assert v == want, (v, want)\n"
    "assert all(type(a) is type(b) for a, b in zip(v, want)), [type(a) for a in v]\n";

static void test_marshal(void **state)
{
    static const int64_t ints[] = {0,
                                   -1,
                                   INT32_MAX,
                                   INT32_MIN,
                                   2147483648LL,
                                   -2147483649LL,
                                   (1LL << 45) + 12345,
                                   -(1LL << 62) - 7,
                                   INT64_MAX,
                                   INT64_MIN};
    static const double floats[] = {0.0, -1.5, 0.1, 1e-300, 1.7976931348623157e308};
    char path[128], longstr[301];
    struct atomicfile *f;
    size_t i;
    (void)state;

    path_in(path, sizeof(path), "values.marshal");
    memset(longstr, 'x', 300);
    longstr[300] = '\0';
    assert_int_equal(atomicfile_open(path, &f), 0);
    profile_marshal_tuple(f, 21);
    for (i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
        profile_marshal_int(f, ints[i]);
    for (i = 0; i < sizeof(floats) / sizeof(floats[0]); i++)
        profile_marshal_float(f, floats[i]);
    profile_marshal_str(f, "");
    profile_marshal_str(f, "abc");
    profile_marshal_str(f, "q\"'\\\n\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80");
    profile_marshal_str(f, longstr);
    profile_marshal_tuple(f, 300);
    for (i = 0; i < 300; i++)
        profile_marshal_int(f, (int64_t)i);
    profile_marshal_dict_begin(f);
    profile_marshal_tuple(f, 3);
    profile_marshal_str(f, "f");
    profile_marshal_int(f, 1);
    profile_marshal_str(f, "g");
    profile_marshal_tuple(f, 3);
    profile_marshal_int(f, 1);
    profile_marshal_float(f, 2.5);
    profile_marshal_dict_begin(f);
    profile_marshal_dict_end(f);
    profile_marshal_dict_end(f);
    assert_int_equal(atomicfile_commit(f), 0);
    python(marshal_check, path, NULL);
}

/* Invalid UTF-8 in names is repaired before any writer sees it: marshal and XML would reject it. */
static void test_bad_utf8(void **state)
{
    struct profile *p;
    struct stacks_frame f[] = {fr(APP, "bad\xff\xc3(\xed\xa0\x80)", NULL, 1, 1)};
    char path[128];
    (void)state;

    assert_int_equal(profile_new(&p), 0);
    assert_int_equal(profile_add(p, "t\xfe", f, 1, 0, WEIGHT), 0);
    path_in(path, sizeof(path), "bad.cprof");
    assert_int_equal(profile_write_pstats(p, path, NULL), 0);
    python("import sys, pstats\n"
           "k = list(pstats.Stats(sys.argv[1]).stats)\n"
           "assert [x[2] for x in k] == ['bad\\ufffd\\ufffd(\\ufffd\\ufffd\\ufffd)'], k\n",
           path, NULL);
    path_in(path, sizeof(path), "bad.svg");
    assert_int_equal(profile_write_flamegraph(p, path, "\x01\xff", NULL), 0);
    python("import sys, xml.etree.ElementTree as ET\n"
           "ET.parse(sys.argv[1])\n",
           path, NULL);
    profile_free(p);
}

static void test_write_errors(void **state)
{
    struct profile *p = build();
    struct profile *empty;
    struct error e;
    char path[192], dir[128];
    (void)state;

    /* Missing directory; a file where a directory should be. */
    assert_int_equal(profile_write_pstats(p, "/nonexistent-profiler-dir/p.cprof", NULL), -ENOENT);
    path_in(dir, sizeof(dir), "errs");
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(path, sizeof(path), "%s/file", dir);
    assert_int_equal(close(open(path, O_CREAT | O_WRONLY, 0600)), 0);
    snprintf(path, sizeof(path), "%s/file/x.svg", dir);
    assert_int_equal(profile_write_flamegraph(p, path, "t", NULL), -ENOTDIR);
    /* The rename fails (a directory holds the name): the temporary file must go. */
    snprintf(path, sizeof(path), "%s/callgrind.out.2", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    assert_int_equal(profile_write_callgrind(p, path, "x", 1, NULL), -EISDIR);
    assert_int_equal(profile_write_pstats(p, path, NULL), -EISDIR);
    assert_int_equal(dir_entries(dir), 2);
    /* Unwritable directory (only meaningful when not root: root ignores the mode). */
    if (geteuid() != 0) {
        snprintf(path, sizeof(path), "%s/ro", dir);
        assert_int_equal(mkdir(path, 0500), 0);
        snprintf(path, sizeof(path), "%s/ro/p.cprof", dir);
        assert_int_equal(profile_write_pstats(p, path, NULL), -EACCES);
    }
    /* pstats cannot read an empty dict: nothing is written. */
    assert_int_equal(profile_new(&empty), 0);
    snprintf(path, sizeof(path), "%s/empty.cprof", dir);
    assert_int_equal(profile_write_pstats(empty, path, &e), -ENODATA);
    assert_int_equal(e.code, -ENODATA);
    assert_string_equal(e.reason, "the profile holds no samples");
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(profile_add(empty, "t", NULL, 1, 0, 1), -EINVAL);
    profile_free(empty);
    profile_free(p);
}

/* Past the limit on distinct functions, frames become "[dropped]" and samples still count. */
static void test_function_limit(void **state)
{
    struct profile *p;
    struct profile_top top[1];
    char name[32];
    size_t n, i, extra = 10, own;
    (void)state;

    assert_int_equal(profile_new(&p), 0);
    own = p->nfunc; /* the profile's own "[unknown]", "[dropped]", ... */
    for (i = 0; i < PROFILE_MAX_FUNCS + extra; i++) {
        struct stacks_frame f;
        snprintf(name, sizeof(name), "f%zu", i);
        f = fr(APP, name, NULL, 0, 0);
        assert_int_equal(profile_add(p, "t", &f, 1, 0, 1), 0);
    }
    assert_int_equal(profile_samples(p), PROFILE_MAX_FUNCS + extra);
    assert_int_equal(profile_dropped(p), extra + own);
    assert_int_equal(profile_top(p, 1, top, &n), 0);
    assert_string_equal(top[0].func, "[dropped]");
    assert_int_equal(top[0].self_samples, extra + own);
    profile_free(p);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* A large profile written and read back: FIGURE_SAMPLES samples 24 frames deep in 4 threads,
 * walking a random call graph of 2000 functions; outer frames branch rarely, inner ones often,
 * as real stacks do. worst: every frame drawn at random, so nearly every sample is a new tree
 * path. The times are printed, not checked (a unit test asserts behaviour); 20k samples keep
 * it to seconds under the sanitizers, where 100k took 15 s plain. */
#define FIGURE_SAMPLES 20000
static void figures(int worst)
{
    static char names[2000][16];
    static const char *threads[] = {"main", "io", "worker-1", "worker-2"};
    struct stacks_frame f[24];
    struct profile *p;
    char path[128], cprof[128];
    uint64_t seed = 12345;
    double t0, t1, t2, t3, t4;
    struct stat st[3];
    size_t i, k;
    int line;

    for (i = 0; i < 2000; i++)
        snprintf(names[i], sizeof(names[i]), "fn_%zu", i);
    assert_int_equal(profile_new(&p), 0);
    t0 = now();
    for (i = 0; i < FIGURE_SAMPLES; i++) {
        size_t at = i % 4;
        for (k = 24; k-- > 0;) {
            size_t depth = 23 - k, choices = depth < 12 ? 1 + (depth % 4 == 3) : 3;
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            at = worst ? (seed >> 33) % 2000 : (at * 31 + (seed >> 33) % choices + depth) % 2000;
            line = worst ? (int)(seed >> 50) % 100 + 1 : (int)at % 100 + 1;
            f[k] = fr(APP, names[at], "/src/x.c", line, 1);
        }
        assert_int_equal(profile_add(p, threads[i % 4], f, 24, 0, 5025125), 0);
    }
    t1 = now();
    path_in(cprof, sizeof(cprof), "big.cprof");
    assert_int_equal(profile_write_pstats(p, cprof, NULL), 0);
    assert_int_equal(stat(cprof, &st[0]), 0);
    t2 = now();
    path_in(path, sizeof(path), "callgrind.out.big");
    assert_int_equal(profile_write_callgrind(p, path, "big", 1, NULL), 0);
    assert_int_equal(stat(path, &st[1]), 0);
    t3 = now();
    path_in(path, sizeof(path), "big.svg");
    assert_int_equal(profile_write_flamegraph(p, path, "big", NULL), 0);
    assert_int_equal(stat(path, &st[2]), 0);
    t4 = now();
    print_message("%s: %d samples x 24 frames: add %.3f s (%.2f us/sample), %zu funcs, %zu "
                  "tree nodes\n  pstats %.3f s %lld B, callgrind %.3f s %lld B, flamegraph %.3f s "
                  "%lld B\n",
                  worst ? "random stacks" : "call-graph stacks", FIGURE_SAMPLES, t1 - t0,
                  (t1 - t0) * 1e6 / FIGURE_SAMPLES, p->nfunc, p->nnode, t2 - t1,
                  (long long)st[0].st_size, t3 - t2, (long long)st[1].st_size, t4 - t3,
                  (long long)st[2].st_size);
    python("import sys, pstats\n"
           "s = pstats.Stats(sys.argv[1])\n"
           "assert abs(s.total_tt - 20000 * 0.005025125) < 1e-6, s.total_tt\n",
           cprof, NULL);
    profile_free(p);
}

static void test_figures(void **state)
{
    (void)state;
    figures(0);
    figures(1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_and_top), cmocka_unit_test(test_pstats),
        cmocka_unit_test(test_callgrind),      cmocka_unit_test(test_flamegraph),
        cmocka_unit_test(test_marshal),        cmocka_unit_test(test_bad_utf8),
        cmocka_unit_test(test_write_errors),   cmocka_unit_test(test_function_limit),
        cmocka_unit_test(test_modules),        cmocka_unit_test(test_figures),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
