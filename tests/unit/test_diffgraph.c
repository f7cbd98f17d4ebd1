/* Tests of the differential flame graph and the stacks a run keeps for it: the kept text is the
 * collapsed file's, cut to its heaviest stacks with the rest on one line; two runs' stacks of
 * known counts give the shares, colors and lists of what changed, the SVG read back with
 * Python's XML parser and the difffolded file as flamegraph.pl reads it; what is not folded
 * stacks is refused with the line that is not. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "formats/diffgraph.h"
#include "formats/profile.h"
#include "testutil.h"

#define PY "/usr/bin/python3"
#define MS 1000000ULL
#define APP "/usr/bin/app"

static char tmpdir[64];

static struct stacks_frame fr(const char *func, const char *file, int line)
{
    struct stacks_frame f = {
        .ip = 0x1000, .module = APP, .func = func, .file = file, .func_line = line};
    return f;
}

static void add_n(struct profile *p, const char *thread, const struct stacks_frame *f, size_t n,
                  int times)
{
    for (int i = 0; i < times; i++)
        assert_int_equal(profile_add(p, thread, f, n, 0, MS), 0);
}

/* Thread "t": main;a 150, main;b 50, main;d 50 (250 samples). */
static struct profile *build_after(void)
{
    struct stacks_frame a[] = {fr("a", "/src/a.c", 10), fr("main", "/src/m.c", 3)};
    struct stacks_frame b[] = {fr("b", "/src/b.c", 20), fr("main", "/src/m.c", 3)};
    struct stacks_frame d[] = {fr("d", "/src/d.c", 40), fr("main", "/src/m.c", 3)};
    struct profile *p;

    assert_int_equal(profile_new(&p), 0);
    add_n(p, "t", a, 2, 150);
    add_n(p, "t", b, 2, 50);
    add_n(p, "t", d, 2, 50);
    return p;
}

/* 100 samples: a 30%, b 60%, c 10%. */
static const char before[] = "thread t;main;a 30\nthread t;main;b 60\nthread t;main;c 10\n";

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *s = calloc(1, 1 << 16);
    size_t n;

    assert_non_null(f);
    assert_non_null(s);
    n = fread(s, 1, (1 << 16) - 1, f);
    s[n] = '\0';
    fclose(f);
    return s;
}

static void python(const char *script, const char *arg)
{
    static char out[1 << 20];
    char *argv[] = {PY, "-c", (char *)script, (char *)arg, NULL};
    int r = testutil_run(argv, out, sizeof(out));
    if (r != 0)
        fail_msg("python exited %d:\n%s", r, out);
}

static int setup(void **state)
{
    (void)state;
    return testutil_tmpdir(tmpdir, "test_diffgraph");
}

static int teardown(void **state)
{
    (void)state;
    return testutil_tmpdir_remove(tmpdir);
}

/* Uncut, the kept text is the collapsed file byte for byte. */
static void test_text_is_the_collapsed_file(void **state)
{
    struct profile *p = build_after();
    struct profile_folded fo;
    char path[128];
    char *file;
    (void)state;

    snprintf(path, sizeof(path), "%s/profile.1.collapsed", tmpdir);
    assert_int_equal(profile_write_collapsed(p, path, NULL), 0);
    assert_int_equal(profile_collapsed_text(p, 100, 1 << 20, &fo, NULL), 0);
    file = slurp(path);
    assert_string_equal(fo.text, file);
    assert_int_equal(fo.len, strlen(file));
    assert_int_equal(fo.stacks, 3);
    assert_int_equal(fo.kept, 3);
    assert_int_equal(fo.samples, 250);
    assert_int_equal(fo.kept_samples, 250);
    free(file);
    profile_folded_destroy(&fo);
    profile_free(p);
}

/* Past either limit: the heaviest stacks, in the file's order, and the rest on one line. */
static void test_text_keeps_the_heaviest(void **state)
{
    struct profile *p = build_after();
    struct profile_folded fo;
    (void)state;

    assert_int_equal(profile_collapsed_text(p, 2, 1 << 20, &fo, NULL), 0);
    /* b and d weigh the same: the earlier one stays. */
    assert_string_equal(fo.text, "thread t;main;a 150\nthread t;main;b 50\n"
                                 "[stacks not kept] 50\n");
    assert_int_equal(fo.stacks, 3);
    assert_int_equal(fo.kept, 2);
    assert_int_equal(fo.kept_samples, 200);
    profile_folded_destroy(&fo);

    /* Room for one line and the last one's. */
    assert_int_equal(profile_collapsed_text(p, 100, 20 + 42, &fo, NULL), 0);
    assert_string_equal(fo.text, "thread t;main;a 150\n[stacks not kept] 100\n");
    assert_int_equal(fo.kept, 1);
    profile_folded_destroy(&fo);
    profile_free(p);
}

static struct diffgraph *graph(struct profile *p)
{
    struct profile_folded fo;
    struct diffgraph *d;
    struct error e;

    assert_int_equal(profile_collapsed_text(p, 100, 1 << 20, &fo, NULL), 0);
    assert_int_equal(diffgraph_new(before, strlen(before), fo.text, fo.len, p, &d, &e), 0);
    profile_folded_destroy(&fo);
    return d;
}

static void test_what_changed(void **state)
{
    struct profile *p = build_after();
    struct diffgraph *d = graph(p);
    struct diffgraph_func f[4];
    (void)state;

    assert_int_equal(diffgraph_samples(d, DIFFGRAPH_BEFORE), 100);
    assert_int_equal(diffgraph_samples(d, DIFFGRAPH_AFTER), 250);
    /* a 30% -> 60%, d new at 20%; main unchanged (it is never innermost). */
    assert_int_equal(diffgraph_top(d, DIFFGRAPH_GREW, f, 4), 2);
    assert_string_equal(f[0].label, "a");
    assert_string_equal(f[0].module, APP);
    assert_float_equal(f[0].self[DIFFGRAPH_BEFORE], 0.3, 1e-9);
    assert_float_equal(f[0].self[DIFFGRAPH_AFTER], 0.6, 1e-9);
    assert_string_equal(f[1].label, "d");
    assert_float_equal(f[1].total[DIFFGRAPH_BEFORE], 0, 1e-9);
    /* One asked for: the first, and how many in all. */
    assert_int_equal(diffgraph_top(d, DIFFGRAPH_GREW, f, 1), 2);
    assert_string_equal(f[0].label, "a");
    assert_int_equal(diffgraph_top(d, DIFFGRAPH_SHRANK, f, 4), 1);
    assert_string_equal(f[0].label, "b");
    assert_float_equal(f[0].self[DIFFGRAPH_AFTER], 0.2, 1e-9);
    assert_int_equal(diffgraph_top(d, DIFFGRAPH_GONE, f, 4), 1);
    assert_string_equal(f[0].label, "c");
    assert_null(f[0].module);
    assert_float_equal(f[0].total[DIFFGRAPH_BEFORE], 0.1, 1e-9);
    diffgraph_free(d);
    profile_free(p);
}

/* flamegraph.pl's reading of a differential line: the last two numbers are the counts. */
static const char folded_check[] =
    "import re, sys\n"
    "got = {}\n"
    "for line in open(sys.argv[1]).read().splitlines():\n"
    "    stack, after = re.match(r'^(.*)\\s+?(\\d+(?:\\.\\d*)?)$', line).groups()\n"
    "    stack, before = re.match(r'^(.*)\\s+?(\\d+(?:\\.\\d*)?)$', stack).groups()\n"
    "    got[stack] = (int(before), int(after))\n"
    "assert got == {'thread t;main;a': (30, 150), 'thread t;main;b': (60, 50),\n"
    "               'thread t;main;c': (10, 0), 'thread t;main;d': (0, 50)}, got\n";

/* Each frame's hover text and color: white for no change, to full red or blue at the largest
 * change drawn (b, -40 points). */
static const char svg_check[] =
    "import re, sys, xml.etree.ElementTree as ET\n"
    "ns = '{http://www.w3.org/2000/svg}'\n"
    "doc = ET.parse(sys.argv[1]).getroot()\n"
    "frames = {}\n"
    "for g in doc.iter(ns + 'g'):\n"
    "    if g.get('class') == 'f':\n"
    "        rect = g.find(ns + 'rect')\n"
    "        rgb = tuple(map(int, re.fullmatch(r'rgb\\((\\d+),(\\d+),(\\d+)\\)',\n"
    "                                          rect.get('fill')).groups()))\n"
    "        frames[g.get('data-name')] = (g.find(ns + 'title').text, rgb,\n"
    "                                      float(rect.get('width')))\n"
    "titles = {k: v[0] for k, v in frames.items()}\n"
    "assert titles == {\n"
    "    'all': 'all (100.00% -> 100.00%, +0.00 pts)',\n"
    "    'thread t': 'thread t (100.00% -> 100.00%, +0.00 pts)',\n"
    "    'main': 'main in /usr/bin/app at /src/m.c:3 (100.00% -> 100.00%, +0.00 pts)',\n"
    "    'a': 'a in /usr/bin/app at /src/a.c:10 (30.00% -> 60.00%, +30.00 pts)',\n"
    "    'b': 'b in /usr/bin/app at /src/b.c:20 (60.00% -> 20.00%, -40.00 pts)',\n"
    "    'd': 'd in /usr/bin/app at /src/d.c:40 (0.00% -> 20.00%, +20.00 pts)'}, titles\n"
    "for name in ('all', 'thread t', 'main'):\n"
    "    assert frames[name][1] == (255, 255, 255), frames\n"
    "def red(name, fade):\n"
    "    r, g, b = frames[name][1]\n"
    "    assert r == 255 and g == b and abs(g - 210 * fade) <= 1, frames[name]\n"
    "red('a', 1 - 30 / 40)\n"
    "red('d', 1 - 20 / 40)\n"
    "assert frames['b'][1] == (0, 0, 255), frames['b']\n"
    "assert abs(frames['a'][2] - 3 * frames['b'][2]) < 0.2, frames\n"
    "gone = [t.text for g in doc.iter(ns + 'g') if g.get('id') == 'gone'\n"
    "        for t in g.iter(ns + 'text')]\n"
    "assert gone[1:] == ['c (10.00%)'] and 'run 7' in gone[0], gone\n";

static void test_files(void **state)
{
    struct profile *p = build_after();
    struct diffgraph *d = graph(p);
    char path[128];
    (void)state;

    snprintf(path, sizeof(path), "%s/profile.1.diff.folded", tmpdir);
    assert_int_equal(diffgraph_write_folded(d, path, NULL), 0);
    python(folded_check, path);
    snprintf(path, sizeof(path), "%s/flamegraph.1.diff.svg", tmpdir);
    assert_int_equal(diffgraph_write_svg(d, path, "app", "run 7", NULL), 0);
    python(svg_check, path);
    diffgraph_free(d);
    profile_free(p);
}

static void refused(const char *bad, int code, const char *reason)
{
    const char *good = "thread t;x 1\n";
    struct diffgraph *d = NULL;
    struct error e;

    assert_int_equal(diffgraph_new(good, strlen(good), bad, strlen(bad), NULL, &d, &e), code);
    assert_null(d);
    assert_int_equal(e.code, code);
    assert_string_equal(e.reason, reason);
}

/* "f;f;...;f 1": a stack of n frames (malloc'd). */
static char *deep_stack(int n)
{
    size_t len = 2 * (size_t)n + 4, at = 0;
    char *s = malloc(len);

    assert_non_null(s);
    for (int i = 0; i < n; i++)
        at += (size_t)snprintf(s + at, len - at, i ? ";f" : "f");
    snprintf(s + at, len - at, " 1\n");
    return s;
}

static void test_bad_stacks_are_refused(void **state)
{
    const char *good = "f 1\n";
    char *deep = deep_stack(DIFFGRAPH_MAX_FRAMES + 1);
    struct diffgraph *d;
    (void)state;

    refused("thread t;x 1\nx;y\n", -EBADMSG,
            "line 2 of the later run's stacks is not \"FRAME;...;FRAME COUNT\"");
    refused("thread t;x 1\nthread t;y\n", -EBADMSG,
            "line 2 of the later run's stacks does not end in a count");
    refused("thread t;x 1x\n", -EBADMSG,
            "line 1 of the later run's stacks does not end in a count");
    refused("thread t;x 99999999999999999999\n", -EBADMSG,
            "line 1 of the later run's stacks is not \"FRAME;...;FRAME COUNT\"");
    refused("thread t;x 9999999999999999999\nthread t;y 9999999999999999999\n", -EOVERFLOW,
            "the later run's counts add up past 2^64");
    refused("", -ENODATA, "the later run's stacks hold no samples");
    refused("thread t;x 0\n", -ENODATA, "the later run's stacks hold no samples");
    refused(deep, -E2BIG, "line 1 of the later run's stacks has more than 1024 frames");
    free(deep);
    /* One frame fewer is a stack like any other. */
    deep = deep_stack(DIFFGRAPH_MAX_FRAMES);
    assert_int_equal(diffgraph_new(good, strlen(good), deep, strlen(deep), NULL, &d, NULL), 0);
    diffgraph_free(d);
    free(deep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_is_the_collapsed_file),
        cmocka_unit_test(test_text_keeps_the_heaviest),
        cmocka_unit_test(test_what_changed),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_bad_stacks_are_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
