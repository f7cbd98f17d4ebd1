/* Tests of the memory action's two files (formats/hpy.c, formats/massif.c), read back by their
 * real readers: the massif file by valgrind's ms_print (and by a parser here that checks every
 * node's bytes against its children's), the hpy by tests/integration/hpy.py, which parses it as
 * guppy's _load_stat does. The frames are made up: they are the writer's input, not what is
 * under test. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <cmocka.h>
#include "formats/hpy.h"
#include "formats/massif.h"

#define OUT_MAX (4 << 20)
#define PYTHON "/usr/bin/python3"
#define HPY_PY "tests/integration/hpy.py"
#define DEEP 40
#define TINY 150
/* A frame and a snapshot by the fields these tests set; the rest are 0. */
#define FR(ip_, module_, offset_, func_, file_, line_, func_line_)                                 \
    {                                                                                              \
        .ip = (ip_), .module = (module_), .offset = (offset_), .func = (func_), .file = (file_),   \
        .line = (line_), .func_line = (func_line_)                                                 \
    }
#define SNAP(time_, heap_, extra_, tree_, site_bytes_)                                             \
    {                                                                                              \
        .time = (time_), .heap_bytes = (heap_), .heap_extra_bytes = (extra_), .tree = (tree_),     \
        .site_bytes = (site_bytes_)                                                                \
    }

static const char DEMO[] = "/usr/bin/demo";
static const struct stacks_frame MAKE_BUF_12 =
    FR(0x401010, DEMO, 0x1010, "make_buf", "/src/demo/buf.c", 12, 10);
static const struct stacks_frame MAKE_BUF_14 =
    FR(0x401020, DEMO, 0x1020, "make_buf", "/src/demo/buf.c", 14, 10);
static const struct stacks_frame HANDLE =
    FR(0x402000, DEMO, 0x2000, "handle(struct request *)", "/src/demo/server.c", 40, 30);
static const struct stacks_frame NEW =
    FR(0x7f0000403000, "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", 0x9a000,
       "operator new(unsigned long)", NULL, 0, 0);
static const struct stacks_frame PUSH =
    FR(0x404000, DEMO, 0x4000, "std::vector<int, std::allocator<int> >::push_back(int const&)",
       "/usr/include/c++/12/bits/stl_vector.h", 1287, 1280);
static const struct stacks_frame MAIN_A =
    FR(0x405000, DEMO, 0x5000, "main", "/src/demo/main.c", 20, 5);
static const struct stacks_frame MAIN_B =
    FR(0x405010, DEMO, 0x5010, "main", "/src/demo/main.c", 22, 5);
static const struct stacks_frame NOSYM =
    FR(0x7f0000001a2b, "/usr/lib/libfoo.so.1", 0x1a2b, NULL, NULL, 0, 0);
static const struct stacks_frame NOTHING = FR(0xdead0000, NULL, 0, NULL, NULL, 0, 0);

enum { S_BUF12, S_BUF14, S_NEW, S_NOSYM, S_DEEP, S_SHORT, S_NOFRAMES, S_ZERO, NSITES };

struct fixture {
    char dir[64];
    struct stacks_frame deep[DEEP];
    char deep_names[DEEP][16];
    struct stacks_frame s0[3], s1[3], s2[3], s3[2], s5[2], s7[1];
    struct heap_site sites[NSITES];
};

/* Sites sharing callers, two that differ only in the line of make_buf (one hpy KIND, two massif
 * nodes), a deep one, one without symbols, one whose stack is a prefix of another's (an unwind
 * that stopped early), one with no frames and one with no bytes left. */
static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    const struct stacks_frame *const a[] = {&MAKE_BUF_12, &HANDLE, &MAIN_A};
    const struct stacks_frame *const b[] = {&MAKE_BUF_14, &HANDLE, &MAIN_A};
    const struct stacks_frame *const c[] = {&NEW, &PUSH, &MAIN_B};
    size_t i;

    assert_non_null(fx);
    snprintf(fx->dir, sizeof(fx->dir), "/tmp/test_hpy_massif.XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    for (i = 0; i < 3; i++) {
        fx->s0[i] = *a[i];
        fx->s1[i] = *b[i];
        fx->s2[i] = *c[i];
    }
    fx->s3[0] = NOSYM;
    fx->s3[1] = NOTHING;
    fx->s5[0] = MAKE_BUF_12;
    fx->s5[1] = HANDLE;
    fx->s7[0] = MAIN_B;
    for (i = 0; i < DEEP; i++) {
        snprintf(fx->deep_names[i], sizeof(fx->deep_names[i]), "level_%zu", i);
        fx->deep[i] = (struct stacks_frame)FR(0x500000 + 16 * i, DEMO, 0x100000 + 16 * i,
                                              fx->deep_names[i], "/src/demo/deep.c", (int)i + 1, 1);
    }
    fx->sites[S_BUF12] = (struct heap_site){fx->s0, 3, 4000, 4};
    fx->sites[S_BUF14] = (struct heap_site){fx->s1, 3, 2000, 2};
    fx->sites[S_NEW] = (struct heap_site){fx->s2, 3, 3000, 30};
    fx->sites[S_NOSYM] = (struct heap_site){fx->s3, 2, 500, 1};
    fx->sites[S_DEEP] = (struct heap_site){fx->deep, DEEP, 1000, 1};
    fx->sites[S_SHORT] = (struct heap_site){fx->s5, 2, 700, 7};
    fx->sites[S_NOFRAMES] = (struct heap_site){NULL, 0, 300, 3};
    fx->sites[S_ZERO] = (struct heap_site){fx->s7, 1, 0, 5};
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx->dir);
    assert_int_equal(system(cmd), 0);
    free(fx);
    return 0;
}

static void path_in(const struct fixture *fx, const char *name, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s", fx->dir, name);
}

/* Runs cmd with a shell; its stdout+stderr go to out (NUL-terminated). Returns the exit code. */
static int run(const char *cmd, char *out, size_t cap)
{
    char full[1024];
    size_t n = 0, r;
    FILE *p;
    int st;

    snprintf(full, sizeof(full), "%s 2>&1", cmd);
    p = popen(full, "r");
    assert_non_null(p);
    while ((r = fread(out + n, 1, cap - 1 - n, p)) > 0)
        n += r;
    out[n] = '\0';
    st = pclose(p);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static char *slurp(const char *path)
{
    char *buf = malloc(OUT_MAX);
    FILE *f = fopen(path, "r");
    size_t n;

    assert_non_null(buf);
    assert_non_null(f);
    n = fread(buf, 1, OUT_MAX - 1, f);
    assert_true(n < OUT_MAX - 1);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* No file and no temporary left behind. */
static void assert_dir_empty(const struct fixture *fx)
{
    char cmd[128], out[256];

    snprintf(cmd, sizeof(cmd), "ls -A '%s'", fx->dir);
    assert_int_equal(run(cmd, out, sizeof(out)), 0);
    assert_string_equal(out, "");
}

static void assert_hpy_ok(const char *path, uint64_t rows, uint64_t count, uint64_t size)
{
    char cmd[512], want[128], *out = malloc(OUT_MAX);

    assert_non_null(out);
    snprintf(cmd, sizeof(cmd), PYTHON " " HPY_PY " '%s'", path);
    assert_int_equal(run(cmd, out, OUT_MAX), 0);
    snprintf(want, sizeof(want), "rows=%" PRIu64 " count=%" PRIu64 " size=%" PRIu64 " ", rows,
             count, size);
    if (strncmp(out, want, strlen(want)))
        fail_msg("hpy.py said: %s", out);
    free(out);
}

/* The rows of an hpy file, in order, as "COUNT SIZE KIND" strings into rows[]. */
static size_t hpy_rows(char *text, char **rows, size_t max)
{
    size_t n = 0;
    char *line, *save = NULL;

    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        if (!strncmp(line, ".r: ", 4)) {
            assert_true(n < max);
            rows[n++] = line + 4;
        }
    return n;
}

static void test_hpy_rows(void **state)
{
    struct fixture *fx = *state;
    char path[128], *text, *rows[16], want[256];
    uint64_t count = 0, size = 0;
    size_t i;

    path_in(fx, "heap_profile.1.hpy", path, sizeof(path));
    assert_int_equal(hpy_write(path, fx->sites, NSITES, 1732485600.25, NULL), 0);
    for (i = 0; i < NSITES; i++)
        if (fx->sites[i].bytes) {
            count += fx->sites[i].blocks;
            size += fx->sites[i].bytes;
        }
    /* Seven sites with bytes, two of them one KIND. */
    assert_hpy_ok(path, 6, count, size);
    text = slurp(path);
    assert_non_null(strstr(text, ".timemade: 1732485600.250000\n"));
    assert_int_equal(hpy_rows(text, rows, 16), 6);
    snprintf(want, sizeof(want), "%" PRIu64 " %" PRIu64 " make_buf <- %s <- main",
             fx->sites[S_BUF12].blocks + fx->sites[S_BUF14].blocks,
             fx->sites[S_BUF12].bytes + fx->sites[S_BUF14].bytes, HANDLE.func);
    assert_string_equal(rows[0], want);
    snprintf(want, sizeof(want), "30 3000 %s <- %s <- main", NEW.func, PUSH.func);
    assert_string_equal(rows[1], want);
    assert_string_equal(rows[2], "1 1000 level_0 <- level_1 <- level_2 <- level_3 <- level_4 "
                                 "<- level_5 <- level_6 <- level_7 <- ...");
    snprintf(want, sizeof(want), "7 700 make_buf <- %s", HANDLE.func);
    assert_string_equal(rows[3], want);
    /* The call site, one byte before the return address. */
    assert_string_equal(rows[4], "1 500 libfoo.so.1+0x1a2a <- ??");
    assert_string_equal(rows[5], "3 300 ??");
    free(text);
}

static void test_hpy_empty(void **state)
{
    struct fixture *fx = *state;
    char path[128];

    path_in(fx, "empty.hpy", path, sizeof(path));
    assert_int_equal(hpy_write(path, NULL, 0, 0, NULL), 0);
    assert_hpy_ok(path, 0, 0, 0);
    /* Only zero-byte sites: the same. */
    assert_int_equal(hpy_write(path, &fx->sites[S_ZERO], 1, 5, NULL), 0);
    assert_hpy_ok(path, 0, 0, 0);
}

static void test_hpy_huge_and_dirty(void **state)
{
    struct fixture *fx = *state;
    char path[128], name[2000], *text, *rows[4];
    struct stacks_frame fr[2] = {FR(0x1, DEMO, 1, name, NULL, 0, 0),
                                 FR(0x2, DEMO, 2, "tmpl<#1> (x)\n\tnext", NULL, 0, 0)};
    struct heap_site s[2] = {{fr, 2, UINT64_MAX - 10, UINT64_MAX - 1}, {&fr[1], 1, 10, 1}};

    memset(name, 'x', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    name[100] = '\xff';                /* invalid UTF-8 */
    memcpy(name + 200, "\xc3\xa9", 2); /* valid: e acute */
    path_in(fx, "huge.hpy", path, sizeof(path));
    assert_int_equal(hpy_write(path, s, 2, 1e9, NULL), 0);
    assert_hpy_ok(path, 2, UINT64_MAX, UINT64_MAX);
    text = slurp(path);
    assert_int_equal(hpy_rows(text, rows, 4), 2);
    assert_non_null(strstr(rows[0], "xx?xx"));
    assert_non_null(strstr(rows[0], "x\xc3\xa9x"));
    assert_non_null(strstr(rows[0], "xxx... <- tmpl<#1> (x)??next"));
    assert_true(strlen(rows[0]) < HEAP_NAME_MAX + 100);
    assert_string_equal(rows[1], "1 10 tmpl<#1> (x)??next");
    free(text);
}

static void test_hpy_errors(void **state)
{
    struct fixture *fx = *state;
    char path[128];
    struct heap_site big[2] = {{NULL, 0, UINT64_MAX / 2 + 1, 1}, {NULL, 0, UINT64_MAX / 2 + 1, 1}};
    struct heap_site bad = {NULL, 3, 1, 1};
    struct error e;

    path_in(fx, "bad.hpy", path, sizeof(path));
    assert_int_equal(hpy_write(path, big, 2, 0, &e), -EOVERFLOW);
    assert_int_equal(e.code, -EOVERFLOW);
    assert_true(e.reason[0] != '\0');
    assert_int_equal(hpy_write(path, fx->sites, NSITES, NAN, NULL), -EINVAL);
    assert_int_equal(hpy_write(path, fx->sites, NSITES, -1, NULL), -EINVAL);
    assert_int_equal(hpy_write(path, &bad, 1, 0, NULL), -EINVAL);
    assert_int_equal(hpy_write(path, NULL, 1, 0, NULL), -EINVAL);
    assert_int_equal(hpy_write(NULL, fx->sites, NSITES, 0, NULL), -EINVAL);
    assert_int_equal(hpy_write(path, fx->sites, HEAP_MAX_SITES + 1, 0, &e), -E2BIG);
    assert_int_equal(e.code, -E2BIG);
    assert_non_null(strstr(e.reason, "allocation sites"));
    assert_dir_empty(fx);
    /* The errno says it all: no reason, and nothing left of the E2BIG before. */
    assert_int_equal(hpy_write("/nonexistent/dir/x.hpy", fx->sites, NSITES, 0, &e), -ENOENT);
    assert_int_equal(e.code, -ENOENT);
    assert_string_equal(e.reason, "");
}

/* Kinds as the memory action gets them from a Python target: merged, cleaned, 0-size ones left
 * out, guppy's order and header, read back as guppy does. */
static void test_hpy_kinds(void **state)
{
    struct fixture *fx = *state;
    char path[128], name[2000], *text, *rows[8];
    const struct hpy_kind_row k[] = {
        {"str", 300, 9000},
        {"dict of __main__.Widget", 5000, 920000},
        {"__main__.Widget", 5000, 280000},
        {"str", 2, 100},          /* merged with the first */
        {"bad\nname\x01", 1, 10}, /* no forged line */
        {"", 1, 5},
        {"int", 7, 0}, /* no bytes: left out, as guppy has no such row */
        {name, 1, 1},
    };
    struct error e;

    memset(name, 'y', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    path_in(fx, "heap_profile.2.hpy", path, sizeof(path));
    assert_int_equal(hpy_write_kinds(path, k, sizeof(k) / sizeof(k[0]), HPY_KINDHEADER_CLASS,
                                     1732485600.5, NULL),
                     0);
    assert_hpy_ok(path, 6, 10305, 1209116);
    text = slurp(path);
    assert_non_null(strstr(text, ".kindname: \n.kindheader: Kind (class / dict of class)\n"));
    assert_int_equal(hpy_rows(text, rows, 8), 6);
    assert_string_equal(rows[0], "5000 920000 dict of __main__.Widget");
    assert_string_equal(rows[1], "5000 280000 __main__.Widget");
    assert_string_equal(rows[2], "302 9100 str");
    assert_string_equal(rows[3], "1 10 bad?name?");
    assert_string_equal(rows[4], "1 5 ?");
    assert_non_null(strstr(rows[5], "yyy..."));
    assert_true(strlen(rows[5]) < HEAP_NAME_MAX + 20);
    free(text);

    assert_int_equal(hpy_write_kinds(path, NULL, 0, "Kind", 0, NULL), 0);
    assert_hpy_ok(path, 0, 0, 0);
    const struct hpy_kind_row big[] = {{"a", 1, UINT64_MAX}, {"b", 1, 1}}, null[] = {{NULL, 1, 1}};
    assert_int_equal(hpy_write_kinds(path, big, 2, "Kind", 0, &e), -EOVERFLOW);
    assert_true(e.reason[0] != '\0');
    assert_int_equal(hpy_write_kinds(path, null, 1, "Kind", 0, NULL), -EINVAL);
    assert_int_equal(hpy_write_kinds(path, NULL, 1, "Kind", 0, NULL), -EINVAL);
    assert_int_equal(hpy_write_kinds(path, k, 1, NULL, 0, NULL), -EINVAL);
    assert_int_equal(hpy_write_kinds(NULL, k, 1, "Kind", 0, NULL), -EINVAL);
    assert_int_equal(hpy_write_kinds(path, k, 1, "Kind", NAN, NULL), -EINVAL);
    assert_int_equal(hpy_write_kinds(path, k, HPY_MAX_KINDS + 1, "Kind", 0, &e), -E2BIG);
    assert_non_null(strstr(e.reason, "kinds"));
}

/* Allocation functions and their wrappers, told by name; other functions, whatever words their
 * scopes or template arguments hold, are not. */
static void test_alloc_path(void **state)
{
    static const char *const alloc[] = {
        "malloc",
        "calloc",
        "__libc_realloc",
        "xmalloc",
        "g_malloc0",
        "g_slice_alloc",
        "sqlite3Malloc",
        "sqlite3DbMallocRawNN",
        "sqlite3DbStrNDup",
        "PyMem_Malloc",
        "pymalloc_alloc",
        "PyType_GenericAlloc",
        "__strdup",
        "vasprintf",
        "operator new(unsigned long)",
        "operator new[](unsigned long, std::nothrow_t const&)",
        "__gnu_cxx::new_allocator<int>::allocate(unsigned long, void const*)",
        "std::_Vector_base<int, std::allocator<int> >::_M_allocate(unsigned long)"};
    static const char *const other[] = {
        "main",
        "allocateBtreePage",
        "object_dealloc",
        "free",
        "sqlite3VdbeMemGrow",
        "std::vector<int, std::allocator<int> >::push_back(int const&)",
        "operator<<(int)",
        "libfoo.so.1+0x12zz",
        "liballoc.so+0x10"};
    const char *lib = "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0";
    struct stacks_frame f[HEAP_ALLOC_PATH_MAX + 4] = {
        FR(0x7f00000a7504, lib, 0xa7504, NULL, NULL, 0, 0),
        FR(0x7f00000a7600, lib, 0xa7600, "sqlite3Malloc", NULL, 0, 0),
        FR(0x7f00000a70f1, lib, 0xa70f1, "libsqlite3.so.0+0xa70e0", NULL, 0, 0),
        FR(0x7f00000a8000, lib, 0xa8000, "sqlite3DbStrNDup", NULL, 0, 0),
        FR(0x7f00000b0000, lib, 0xb0000, "sqlite3NameFromToken", NULL, 0, 0),
        FR(0x7f00000b1000, lib, 0xb1000, "sqlite3DbMallocRaw", NULL, 0, 0)};
    struct stacks_frame two[2] = {FR(0x1, DEMO, 1, NULL, NULL, 0, 0),
                                  FR(0x2, "/usr/lib/liballoc.so", 2, NULL, NULL, 0, 0)};
    size_t i;
    (void)state;

    for (i = 0; i < sizeof(alloc) / sizeof(alloc[0]); i++) {
        two[0].func = alloc[i];
        two[1].func = "caller";
        if (heap_alloc_path(two, 2) != 1)
            fail_msg("%s is not taken for an allocation function", alloc[i]);
    }
    for (i = 0; i < sizeof(other) / sizeof(other[0]); i++) {
        two[0].func = other[i];
        two[0].module = strstr(other[i], "liballoc") ? "/usr/lib/liballoc.so" : "/lib/libfoo.so.1";
        two[1].func = "caller";
        if (heap_alloc_path(two, 2) != 0)
            fail_msg("%s is taken for an allocation function", other[i]);
    }
    /* Frames without a symbol count in the path only when an allocation function is above
     * them; the first other function ends it, whatever comes after. */
    assert_int_equal(heap_alloc_path(f, 6), 4);
    assert_int_equal(heap_alloc_path(f, 1), 0);
    assert_int_equal(heap_alloc_path(f, 3), 2);
    assert_int_equal(heap_alloc_path(NULL, 0), 0);
    for (i = 0; i < HEAP_ALLOC_PATH_MAX + 4; i++)
        f[i] = (struct stacks_frame)FR(0x1000 + i, lib, i, "sqlite3Malloc", NULL, 0, 0);
    assert_int_equal(heap_alloc_path(f, HEAP_ALLOC_PATH_MAX + 4), HEAP_ALLOC_PATH_MAX);
}

#define CALLERS 12

/* Sites as sqlite3's allocate (its static allocator without a symbol, sqlite3Malloc, a
 * stripped function, sqlite3DbStrNDup, then callers): the allocator's path does not use up a
 * KIND's frames, and sites that read the same past HPY_KIND_FRAMES read on to the frame that
 * tells them apart. The hpy rows are the ones hpy_rows_new gives (the summary's top). */
static void test_hpy_labels(void **state)
{
    static const char *const callers[CALLERS] = {"sqlite3NameFromToken", "sqlite3SrcListAppend",
                                                 "sqlite3Select",        "sqlite3BtreeInsert",
                                                 "sqlite3VdbeExec",      "sqlite3_step",
                                                 "sqlite3_exec",         "process_input",
                                                 "do_meta_command",      "main_loop",
                                                 "shell_main",           "main"};
    struct fixture *fx = *state;
    const char *lib = "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0";
    struct stacks_frame a[4 + CALLERS], b[4 + CALLERS], c[4 + CALLERS], d[4 + 3];
    struct heap_site sites[4] = {{a, 4 + CALLERS, 4000, 4},
                                 {b, 4 + CALLERS, 3000, 3},
                                 {c, 4 + CALLERS, 1000, 1},
                                 {d, 4 + 3, 500, 5}};
    struct hpy_row *rows;
    char path[128], *text, *file_rows[8], want[1024], tail[512];
    size_t n, i, len;

    a[0] = (struct stacks_frame)FR(0x7f00000a7504, lib, 0xa7504, NULL, NULL, 0, 0);
    a[1] = (struct stacks_frame)FR(0x7f00000a7600, lib, 0xa7600, "sqlite3Malloc", NULL, 0, 0);
    a[2] = (struct stacks_frame)FR(0x7f00000a70f1, lib, 0xa70f1, "libsqlite3.so.0+0xa70e0", NULL, 0,
                                   0);
    a[3] = (struct stacks_frame)FR(0x7f00000a8000, lib, 0xa8000, "sqlite3DbStrNDup", NULL, 0, 0);
    for (i = 0; i < CALLERS; i++)
        a[4 + i] = (struct stacks_frame)FR(0x7f0000100000 + 0x1000 * i, lib, 0x100000 + 0x1000 * i,
                                           callers[i], NULL, 0, 0);
    memcpy(b, a, sizeof(a));
    memcpy(c, a, sizeof(a));
    memcpy(d, a, sizeof(d));
    b[4 + 10].func = "other_shell_main"; /* b differs from a only at its 15th frame */
    for (i = 0; i < 4 + CALLERS; i++)    /* c: the same functions, other call sites */
        c[i].ip += 8, c[i].offset += 8;
    c[0].offset = a[0].offset;

    assert_int_equal(hpy_rows_new(sites, 4, &rows, &n, NULL), 0);
    assert_int_equal(n, 3);
    /* The path, then frames up to the first that differs: past HPY_KIND_FRAMES, as a and b
     * read the same for 10 frames past the path. */
    len = (size_t)snprintf(want, sizeof(want),
                           "libsqlite3.so.0+0xa7503 <- sqlite3Malloc <- libsqlite3.so.0+0xa70e0 "
                           "<- sqlite3DbStrNDup");
    for (i = 0; i < 11; i++)
        len += (size_t)snprintf(want + len, sizeof(want) - len, " <- %s", callers[i]);
    snprintf(want + len, sizeof(want) - len, " <- ...");
    assert_string_equal(rows[0].kind, want);
    assert_int_equal(rows[0].size, 5000);
    assert_int_equal(rows[0].count, 5);
    assert_non_null(strstr(rows[0].kind, "sqlite3BtreeInsert <- sqlite3VdbeExec"));
    snprintf(tail, sizeof(tail), "%s <- other_shell_main <- ...", callers[9]);
    assert_non_null(strstr(rows[1].kind, tail));
    assert_int_equal(rows[1].size, 3000);
    /* d's stack is a part of a's: all of it, and no "...". */
    assert_non_null(strstr(rows[2].kind, "sqlite3DbStrNDup <- sqlite3NameFromToken <- "
                                         "sqlite3SrcListAppend <- sqlite3Select"));
    assert_null(strstr(rows[2].kind, "..."));

    path_in(fx, "heap_profile.labels.hpy", path, sizeof(path));
    assert_int_equal(hpy_write(path, sites, 4, 1, NULL), 0);
    assert_hpy_ok(path, 3, 13, 8500);
    text = slurp(path);
    assert_int_equal(hpy_rows(text, file_rows, 8), 3);
    for (i = 0; i < n; i++) {
        snprintf(want, sizeof(want), "%" PRIu64 " %" PRIu64 " %s", rows[i].count, rows[i].size,
                 rows[i].kind);
        assert_string_equal(file_rows[i], want);
    }
    free(text);
    hpy_rows_free(rows, n);
    hpy_rows_free(NULL, 0);
}

/* ---- massif ---- */

struct tree_check {
    char **line;
    size_t n, i;
    size_t max_depth, nodes, folded;
    unsigned __int128 total; /* heap + extra: what the 1% threshold is of */
};

static uint64_t number_after(const char *s, const char *key)
{
    char *end;
    uint64_t v;

    assert_int_equal(strncmp(s, key, strlen(key)), 0);
    errno = 0;
    v = strtoull(s + strlen(key), &end, 10);
    assert_int_equal(errno, 0);
    assert_true(end != s + strlen(key) && *end == '\0');
    return v;
}

/* One node and its subtree: indentation is the depth, bytes are the children's sum, children
 * go largest first with at most one folded node, last, and only significant ones unfolded. */
static uint64_t check_node(struct tree_check *t, size_t depth)
{
    const char *s;
    char *end;
    uint64_t nkids, bytes, sum = 0, prev = UINT64_MAX, b;
    size_t k;

    assert_true(t->i < t->n);
    s = t->line[t->i++];
    assert_int_equal(strspn(s, " "), depth);
    s += depth;
    assert_int_equal(*s, 'n');
    nkids = strtoull(s + 1, &end, 10);
    assert_true(end[0] == ':' && end[1] == ' ');
    bytes = strtoull(end + 2, &end, 10);
    assert_true(*end == ' ');
    t->nodes++;
    if (depth > t->max_depth)
        t->max_depth = depth;
    if (depth && !strstr(end, "below massif's threshold"))
        assert_true((unsigned __int128)bytes * 100 >= t->total);
    for (k = 0; k < nkids; k++) {
        int folded;

        assert_true(t->i < t->n);
        folded = strstr(t->line[t->i], "below massif's threshold") != NULL;
        if (folded) {
            assert_int_equal(k, nkids - 1);
            t->folded++;
        }
        b = check_node(t, depth + 1);
        if (!folded) {
            assert_true(b <= prev);
            prev = b;
        }
        assert_false(__builtin_add_overflow(sum, b, &sum));
    }
    if (nkids)
        assert_true(sum == bytes);
    return bytes;
}

/* Checks every detailed tree of a massif file; returns the number of snapshots. */
static size_t check_massif(const char *path, struct tree_check *t)
{
    char *text = slurp(path), *line, *save = NULL;
    uint64_t heap = 0, extra = 0, want_snap = 0;
    size_t nsnap = 0;

    memset(t, 0, sizeof(*t));
    t->line = calloc(OUT_MAX / 8, sizeof(*t->line));
    assert_non_null(t->line);
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        if (line[0] != '#') {
            assert_true(t->n < OUT_MAX / 8);
            t->line[t->n++] = line;
        }
    assert_true(t->n >= 3);
    assert_int_equal(strncmp(t->line[0], "desc: ", 6), 0);
    assert_int_equal(strncmp(t->line[1], "cmd: ", 5), 0);
    assert_string_equal(t->line[2], "time_unit: ms");
    t->i = 3;
    while (t->i < t->n) {
        const char *s = t->line[t->i++];

        if (!strncmp(s, "snapshot=", 9)) {
            assert_int_equal(number_after(s, "snapshot="), want_snap++);
            nsnap++;
            assert_true(t->i + 5 <= t->n);
            number_after(t->line[t->i++], "time=");
            heap = number_after(t->line[t->i++], "mem_heap_B=");
            extra = number_after(t->line[t->i++], "mem_heap_extra_B=");
            assert_int_equal(number_after(t->line[t->i++], "mem_stacks_B="), 0);
            continue;
        }
        if (!strcmp(s, "heap_tree=empty"))
            continue;
        assert_true(!strcmp(s, "heap_tree=detailed") || !strcmp(s, "heap_tree=peak"));
        t->total = (unsigned __int128)heap + extra;
        assert_true(check_node(t, 0) == heap);
    }
    free(text);
    free(t->line);
    t->line = NULL;
    return nsnap;
}

static void commify(uint64_t v, char *buf, size_t len)
{
    char digits[32];
    size_t n, i, o = 0;

    n = (size_t)snprintf(digits, sizeof(digits), "%" PRIu64, v);
    for (i = 0; i < n && o + 2 < len; i++) {
        if (i && (n - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
}

/* ms_print's line for a node: "->PP.PP% (N,NNNB) DETAILS" (prefix left out). */
static void ms_line(uint64_t bytes, uint64_t total, const char *details, char *buf, size_t len)
{
    char b[40];

    commify(bytes, b, sizeof(b));
    snprintf(buf, len, "%05.2f%% (%sB) %s\n", 100.0 * (double)bytes / (double)total, b, details);
}

static void assert_contains(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("missing \"%s\" in:\n%s", needle, hay);
}

/* Runs ms_print on the massif file at path, which it must read; its report goes to out
 * (OUT_MAX bytes). */
static void ms_print(const char *path, char *out)
{
    char cmd[256];

    snprintf(cmd, sizeof(cmd), "ms_print '%s'", path);
    assert_int_equal(run(cmd, out, OUT_MAX), 0);
}

static void test_massif_snapshots(void **state)
{
    struct fixture *fx = *state;
    uint64_t half[NSITES], full[NSITES], late[NSITES] = {0};
    struct heap_snapshot snaps[5];
    struct tree_check t;
    char path[128], want[256], *out = malloc(OUT_MAX), *text;
    uint64_t sum_half = 0, sum_full = 0;
    size_t i;

    assert_non_null(out);
    for (i = 0; i < NSITES; i++) {
        full[i] = fx->sites[i].bytes;
        half[i] = fx->sites[i].bytes / 2;
        sum_full += full[i];
        sum_half += half[i];
    }
    late[S_NEW] = fx->sites[S_NEW].bytes;
    snaps[0] = (struct heap_snapshot)SNAP(0, 0, 0, HEAP_TREE_EMPTY, NULL);
    snaps[1] = (struct heap_snapshot)SNAP(100, sum_half, 96, HEAP_TREE_DETAILED, half);
    snaps[2] = (struct heap_snapshot)SNAP(250, sum_full, 0, HEAP_TREE_PEAK, full);
    snaps[3] = (struct heap_snapshot)SNAP(300, 9000, 80, HEAP_TREE_EMPTY, NULL);
    snaps[4] = (struct heap_snapshot)SNAP(400, late[S_NEW], 8, HEAP_TREE_DETAILED, late);
    path_in(fx, "massif.out.1", path, sizeof(path));
    assert_int_equal(massif_write(path, "demo --serve 'x y' #1", fx->sites, NSITES, snaps, 5, NULL),
                     0);
    assert_int_equal(check_massif(path, &t), 5);
    assert_int_equal(t.folded, 0);
    /* Root, then at most MASSIF_DEPTH frames. */
    assert_int_equal(t.max_depth, MASSIF_DEPTH);

    text = slurp(path);
    assert_non_null(strstr(text, "\ncmd: demo --serve 'x y' ?1\n"));
    /* The truncated stack's bytes hang under handle, beside main's; the frameless site's under
     * the root. Addresses are call sites: each frame's return address - 1. */
    assert_non_null(strstr(text, "\n  n2: 4700 0x401FFF: handle(struct request *) (server.c:40)\n"
                                 "   n0: 4000 0x404FFF: main (main.c:20)\n"
                                 "   n0: 700 0x0: ??? (no caller recorded)\n"));
    assert_non_null(strstr(text, "\n n0: 300 0x0: ??? (no caller recorded)\n"));
    assert_non_null(strstr(text, "\n n1: 500 0x7F0000001A2A: ??? (in /usr/lib/libfoo.so.1)\n"
                                 "  n0: 500 0xDEACFFFF: ???\n"));
    free(text);

    ms_print(path, out);
    assert_contains(out, "Command:            demo --serve 'x y' ?1\n");
    assert_contains(out, " Detailed snapshots: [1, 2 (peak), 4]\n");
    ms_line(sum_full, sum_full, "(heap allocation functions) malloc/new/new[], --alloc-fns, etc.",
            want, sizeof(want));
    assert_contains(out, want);
    ms_line(full[S_BUF12] + full[S_SHORT], sum_full, "0x40100F: make_buf (buf.c:12)", want,
            sizeof(want));
    assert_contains(out, want);
    ms_line(full[S_NEW], sum_full,
            "0x7F0000402FFF: operator new(unsigned long) "
            "(in /usr/lib/x86_64-linux-gnu/libstdc++.so.6)",
            want, sizeof(want));
    assert_contains(out, want);
    ms_line(full[S_NEW], sum_full,
            "0x403FFF: std::vector<int, std::allocator<int> >::push_back"
            "(int const&) (stl_vector.h:1287)",
            want, sizeof(want));
    assert_contains(out, want);
    ms_line(full[S_DEEP], sum_full, "0x4FFFFF: level_0 (deep.c:1)", want, sizeof(want));
    assert_contains(out, want);
    /* The last snapshot's tree holds one site, against heap plus extra. */
    ms_line(late[S_NEW], late[S_NEW] + 8,
            "0x403FFF: std::vector<int, std::allocator<int> >::"
            "push_back(int const&) (stl_vector.h:1287)",
            want, sizeof(want));
    assert_contains(out, want);
    free(out);
}

/* One large site, many tiny ones, one just at massif's 1% threshold and one just under it: the
 * tiny ones and the one under fold into one node, as massif folds them. */
static void test_massif_folds_small_children(void **state)
{
    struct fixture *fx = *state;
    struct stacks_frame tiny[TINY + 2];
    struct heap_site sites[TINY + 3];
    uint64_t bytes[TINY + 3];
    struct heap_snapshot snap = SNAP(5, 0, 0, HEAP_TREE_PEAK, bytes);
    struct tree_check t;
    char path[128], *out = malloc(OUT_MAX), *text;
    size_t i;

    assert_non_null(out);
    for (i = 0; i < TINY + 2; i++) {
        tiny[i] = (struct stacks_frame)FR(0x600000 + i, DEMO, i, "tiny", "/src/t.c", (int)i + 1, 1);
        sites[i] = (struct heap_site){&tiny[i], 1, 3, 1};
        bytes[i] = 3;
    }
    /* 10000 + 150 * 3 + 106 + 44 = 10600: 106 is exactly 1% of it, 44 is 0.42%. */
    tiny[TINY].func = "edge_in";
    bytes[TINY] = 106;
    tiny[TINY + 1].func = "edge_out";
    bytes[TINY + 1] = 44;
    sites[TINY + 2] = (struct heap_site){fx->s0, 3, 10000, 1};
    bytes[TINY + 2] = 10000;
    snap.heap_bytes = 10600;
    path_in(fx, "massif.fold", path, sizeof(path));
    assert_int_equal(massif_write(path, "fold", sites, TINY + 3, &snap, 1, NULL), 0);
    assert_int_equal(check_massif(path, &t), 1);
    assert_int_equal(t.folded, 1);
    text = slurp(path);
    assert_non_null(strstr(text, "\nn3: 10600 (heap allocation functions)"));
    assert_non_null(strstr(text, "\n n0: 106 0x600095: edge_in (t.c:151)\n"));
    assert_null(strstr(text, "edge_out"));
    assert_non_null(strstr(text, "\n n0: 494 in 151 places, all below massif's threshold "
                                 "(1.00%)\n"));
    free(text);
    ms_print(path, out);
    assert_contains(out, "->01.00% (106B) 0x600095: edge_in (t.c:151)\n");
    assert_contains(out, "->04.66% (494B) in 151 places, all below massif's threshold (1.00%)");

    /* The threshold is of heap plus extra bytes, as ms_print's: now edge_in is under it. */
    snap.heap_extra_bytes = 100;
    assert_int_equal(massif_write(path, "fold", sites, TINY + 3, &snap, 1, NULL), 0);
    assert_int_equal(check_massif(path, &t), 1);
    text = slurp(path);
    assert_null(strstr(text, "edge_in"));
    assert_non_null(strstr(text, "\n n0: 600 in 152 places, all below massif's threshold "
                                 "(1.00%)\n"));
    free(text);
    snap.heap_extra_bytes = 0;

    /* A single small child says "1 place". */
    for (i = 0; i < TINY + 1; i++)
        bytes[i] = 0;
    snap.heap_bytes = 10000 + 44;
    assert_int_equal(massif_write(path, "fold", sites, TINY + 3, &snap, 1, NULL), 0);
    assert_int_equal(check_massif(path, &t), 1);
    text = slurp(path);
    assert_non_null(strstr(text, "\n n0: 44 in 1 place, below massif's threshold (1.00%)\n"));
    free(text);
    free(out);
}

static void test_massif_edges(void **state)
{
    struct fixture *fx = *state;
    uint64_t big[2] = {UINT64_C(1) << 62, UINT64_C(1) << 62}, none = 0;
    struct heap_site sites[2] = {{fx->s0, 3, 0, 0}, {fx->s2, 3, 0, 0}};
    struct heap_snapshot huge = SNAP(UINT64_MAX, UINT64_C(1) << 63, 1000, HEAP_TREE_PEAK, big);
    struct heap_snapshot empty_tree = SNAP(0, 0, 0, HEAP_TREE_DETAILED, &none);
    struct tree_check t;
    char path[128], *out = malloc(OUT_MAX), *text;

    assert_non_null(out);
    path_in(fx, "massif.edge", path, sizeof(path));

    /* No snapshots: one empty one at time 0, which ms_print needs. */
    assert_int_equal(massif_write(path, "none", NULL, 0, NULL, 0, NULL), 0);
    assert_int_equal(check_massif(path, &t), 1);
    text = slurp(path);
    assert_non_null(strstr(text, "snapshot=0\n#-----------\ntime=0\nmem_heap_B=0\n"
                                 "mem_heap_extra_B=0\nmem_stacks_B=0\nheap_tree=empty\n"));
    free(text);
    ms_print(path, out);

    /* No sites, a detailed tree: the root alone. */
    assert_int_equal(massif_write(path, "", NULL, 0, &empty_tree, 1, NULL), 0);
    assert_int_equal(check_massif(path, &t), 1);
    assert_int_equal(t.nodes, 1);
    ms_print(path, out);

    /* A site with no bytes at that moment is left out of the tree. */
    empty_tree.site_bytes = big;
    big[0] = 0;
    big[1] = 64;
    empty_tree.heap_bytes = 64;
    assert_int_equal(massif_write(path, "x", sites, 2, &empty_tree, 1, NULL), 0);
    assert_int_equal(check_massif(path, &t), 1);
    assert_int_equal(t.nodes, 4);

    /* Numbers near the top of uint64. */
    big[0] = big[1] = UINT64_C(1) << 62;
    huge.heap_bytes = UINT64_C(1) << 63;
    assert_int_equal(massif_write(path, "huge", sites, 2, &huge, 1, NULL), 0);
    assert_int_equal(check_massif(path, &t), 1);
    ms_print(path, out);
    assert_contains(out, "50.00% (4,611,686,018,427,387,904B) 0x40100F: make_buf (buf.c:12)");
    free(out);
}

/* The heap in use before the run is one node under the root, counted in every snapshot's
 * bytes; the allocator's path does not use up MASSIF_DEPTH. */
static void test_massif_before_and_path(void **state)
{
    struct fixture *fx = *state;
    struct stacks_frame f[3 + DEEP];
    struct heap_site sites[2] = {{f, 3 + DEEP, 600, 6}, {fx->s0, 3, 400, 4}};
    uint64_t none[2] = {0, 0}, some[2] = {600, 400};
    struct heap_snapshot s[2] = {SNAP(0, 9000, 0, HEAP_TREE_DETAILED, none),
                                 SNAP(10, 10000, 0, HEAP_TREE_PEAK, some)};
    struct tree_check t;
    char path[128], want[256], *out = malloc(OUT_MAX), *text;
    size_t i;

    assert_non_null(out);
    f[0] = (struct stacks_frame)FR(0x7f0000001000, "/lib/libglib-2.0.so.0", 0x1000, "g_malloc",
                                   NULL, 0, 0);
    f[1] =
        (struct stacks_frame)FR(0x7f0000002000, "/lib/libglib-2.0.so.0", 0x2000, NULL, NULL, 0, 0);
    f[2] = (struct stacks_frame)FR(0x7f0000003000, "/lib/libglib-2.0.so.0", 0x3000, "g_strdup",
                                   NULL, 0, 0);
    memcpy(f + 3, fx->deep, sizeof(fx->deep));
    s[0].before_bytes = s[1].before_bytes = 9000;
    path_in(fx, "massif.before", path, sizeof(path));
    assert_int_equal(massif_write(path, "before", sites, 2, s, 2, NULL), 0);
    assert_int_equal(check_massif(path, &t), 2);
    assert_int_equal(t.max_depth, 3 + MASSIF_DEPTH);
    text = slurp(path);
    assert_non_null(
        strstr(text, "\nheap_tree=detailed\nn1: 9000 (heap allocation functions)"
                     " malloc/new/new[], --alloc-fns, etc.\n n0: 9000 0x0: ??? (" MASSIF_BEFORE_WHAT
                     ")\n"));
    free(text);
    ms_print(path, out);
    ms_line(9000, 10000, "0x0: ??? (" MASSIF_BEFORE_WHAT ")", want, sizeof(want));
    assert_contains(out, want);
    ms_line(600, 10000, "0x7F0000000FFF: g_malloc (in /lib/libglib-2.0.so.0)", want, sizeof(want));
    assert_contains(out, want);
    for (i = 0; i < MASSIF_DEPTH; i++) {
        snprintf(want, sizeof(want), ": level_%zu (deep.c:%zu)", i, i + 1);
        assert_contains(out, want);
    }
    snprintf(want, sizeof(want), ": level_%d (", MASSIF_DEPTH);
    assert_null(strstr(out, want));

    s[1].before_bytes = 10001; /* more than the heap */
    assert_int_equal(massif_write(path, "before", sites, 2, s, 2, NULL), -EINVAL);
    s[1].before_bytes = 8999; /* the sites and it do not add up to the heap */
    assert_int_equal(massif_write(path, "before", sites, 2, s, 2, NULL), -EINVAL);
    free(out);
}

static void test_massif_errors(void **state)
{
    struct fixture *fx = *state;
    uint64_t bytes[NSITES] = {0}, over[2] = {UINT64_MAX, 1};
    struct heap_snapshot s[2] = {SNAP(10, 0, 0, HEAP_TREE_PEAK, bytes),
                                 SNAP(20, 0, 0, HEAP_TREE_DETAILED, bytes)};
    char path[128];
    struct error e;

    path_in(fx, "massif.bad", path, sizeof(path));
    assert_int_equal(massif_write(path, "x", fx->sites, NSITES, s, 2, NULL), 0);
    assert_int_equal(unlink(path), 0);

    s[1].time = 9; /* time goes backwards */
    assert_int_equal(massif_write(path, "x", fx->sites, NSITES, s, 2, NULL), -EINVAL);
    s[1].time = 20;
    s[1].tree = HEAP_TREE_PEAK; /* two peaks */
    assert_int_equal(massif_write(path, "x", fx->sites, NSITES, s, 2, NULL), -EINVAL);
    s[1].tree = 7;
    assert_int_equal(massif_write(path, "x", fx->sites, NSITES, s, 2, NULL), -EINVAL);
    s[1].tree = HEAP_TREE_DETAILED;
    s[1].site_bytes = NULL;
    assert_int_equal(massif_write(path, "x", fx->sites, NSITES, s, 2, NULL), -EINVAL);
    s[1].site_bytes = bytes;
    s[1].heap_bytes = 1; /* the sites do not add up to it */
    assert_int_equal(massif_write(path, "x", fx->sites, NSITES, s, 2, NULL), -EINVAL);
    s[1].heap_bytes = 0;
    s[1].site_bytes = over;
    assert_int_equal(massif_write(path, "x", fx->sites, 2, s, 2, &e), -EOVERFLOW);
    assert_int_equal(e.code, -EOVERFLOW);
    assert_true(e.reason[0] != '\0');
    assert_int_equal(massif_write(path, NULL, fx->sites, NSITES, s, 1, NULL), -EINVAL);
    assert_int_equal(massif_write(path, "x", NULL, 1, s, 1, NULL), -EINVAL);
    assert_int_equal(massif_write(path, "x", fx->sites, NSITES, NULL, 1, NULL), -EINVAL);
    assert_int_equal(massif_write(path, "x", fx->sites, NSITES, s, HEAP_MAX_SNAPSHOTS + 1, &e),
                     -E2BIG);
    assert_int_equal(e.code, -E2BIG);
    assert_non_null(strstr(e.reason, "snapshots"));
    assert_dir_empty(fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hpy_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hpy_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hpy_huge_and_dirty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hpy_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hpy_kinds, setup, teardown),
        cmocka_unit_test(test_alloc_path),
        cmocka_unit_test_setup_teardown(test_hpy_labels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_massif_snapshots, setup, teardown),
        cmocka_unit_test_setup_teardown(test_massif_folds_small_children, setup, teardown),
        cmocka_unit_test_setup_teardown(test_massif_edges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_massif_before_and_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_massif_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
