/* Tests of function names in stripped code (symbols.c): a shared library built here from
 * tests/workloads/stripped/libchain.c and stripped, whose functions must each get one name of
 * their own, checked against what nm says of the unstripped copy and what readelf says of the
 * .eh_frame FDEs; the same of Debian's own stripped liblzma; unsized symbols kept to the code
 * they can name; and a debug file found in debuginfod's cache. */
#include <errno.h>
#include <inttypes.h>
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
#include "unwind/symbols.h"

#define LIB_SRC "tests/workloads/stripped/libchain.c"
#define LIB_NAME "libchain.so"
#define LZMA "/lib/x86_64-linux-gnu/liblzma.so.5"
#define MAX_SYMS 64
#define MAX_FDES 4096

struct nm_sym {
    uint64_t addr, size;
    char type;
    char name[64];
};

struct fde {
    uint64_t start, end;
};

static char dir[] = "/tmp/test_symbols.XXXXXX";
static char full[128], stripped[128];
static struct nm_sym syms[MAX_SYMS];
static size_t nsyms;

static void run(const char *cmd)
{
    if (system(cmd) != 0)
        fail_msg("failed: %s", cmd);
}

/* Functions nm lists in path's .symtab, or .dynsym when dynamic is set (sizes where the symbol
 * has one), in address order. */
static size_t read_nm(const char *path, int dynamic, struct nm_sym *out, size_t max)
{
    char cmd[256], line[256];
    size_t n = 0;
    snprintf(cmd, sizeof(cmd), "nm -n -S --defined-only %s %s", dynamic ? "-D" : "", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    while (fgets(line, sizeof(line), p) && n < max) {
        struct nm_sym s = {0};
        unsigned long long a, z;
        char t;
        if (sscanf(line, "%llx %llx %c %63s", &a, &z, &t, s.name) == 4) {
            s.size = z;
        } else if (sscanf(line, "%llx %c %63s", &a, &t, s.name) != 3) {
            continue;
        }
        s.addr = a;
        s.type = t;
        if (t == 't' || t == 'T')
            out[n++] = s;
    }
    assert_int_equal(pclose(p), 0);
    return n;
}

/* The FDEs readelf finds in path's .eh_frame. */
static size_t read_fdes(const char *path, struct fde *out, size_t max)
{
    char cmd[256], line[512];
    size_t n = 0;
    snprintf(cmd, sizeof(cmd), "readelf --debug-dump=frames %s", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    while (fgets(line, sizeof(line), p)) {
        unsigned long long a, b;
        char *pc = strstr(line, " FDE ");
        if (pc && (pc = strstr(pc, "pc=")) && sscanf(pc, "pc=%llx..%llx", &a, &b) == 2 && n < max &&
            b > a)
            out[n++] = (struct fde){a, b};
    }
    assert_int_equal(pclose(p), 0);
    return n;
}

static const struct nm_sym *sym_named(const char *name)
{
    for (size_t i = 0; i < nsyms; i++)
        if (strcmp(syms[i].name, name) == 0)
            return &syms[i];
    fail_msg("nm does not list %s", name);
    return NULL;
}

static int setup(void **state)
{
    char cmd[512];
    (void)state;
    if (!mkdtemp(dir))
        return -1;
    snprintf(full, sizeof(full), "%s/full", dir);
    if (mkdir(full, 0700) < 0)
        return -1;
    snprintf(full, sizeof(full), "%s/full/" LIB_NAME, dir);
    snprintf(stripped, sizeof(stripped), "%s/" LIB_NAME, dir);
    snprintf(cmd, sizeof(cmd),
             "gcc -O2 -g -fPIC -shared -fno-toplevel-reorder -fno-optimize-sibling-calls "
             "-o %s " LIB_SRC " && strip -o %s %s",
             full, stripped, full);
    if (system(cmd) != 0)
        return -1;
    nsyms = read_nm(full, 0, syms, MAX_SYMS);
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];
    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* The name stripped code must get: the module's name and the function's start. */
static void made_name(char *buf, size_t len, const char *module, uint64_t start)
{
    snprintf(buf, len, "%s+0x%" PRIx64, module, start);
}

/* Every function of the library, looked up at its first, middle and last byte in the stripped
 * copy, has one name: its exported symbol, or LIB_NAME+0xSTART with START where nm puts it in
 * the unstripped copy; no two functions share one. */
static void test_each_function_named_by_its_start(void **state)
{
    static const char *const statics[] = {"chain_leaf", "chain_mid", "chain_outer", "chain_side",
                                          "chain_after_asm"};
    const size_t n = sizeof(statics) / sizeof(statics[0]);
    const char *seen[8];
    struct symfile *f, *unstripped;
    (void)state;

    assert_int_equal(symfile_open("", stripped, 0, 0, &f), 0);
    assert_int_equal(symfile_open("", full, 0, 0, &unstripped), 0);
    for (size_t i = 0; i <= n; i++) {
        const struct nm_sym *s = sym_named(i < n ? statics[i] : "chain_run");
        char want[64];
        assert_true(s->size > 2);
        if (i < n) {
            assert_int_equal(s->type, 't');
            made_name(want, sizeof(want), LIB_NAME, s->addr);
        } else {
            assert_int_equal(s->type, 'T'); /* exported: .dynsym names it */
            snprintf(want, sizeof(want), "%s", s->name);
        }
        const char *name = symfile_func(f, s->addr);
        assert_non_null(name);
        assert_string_equal(name, want);
        assert_ptr_equal(symfile_func(f, s->addr + s->size / 2), name);
        assert_ptr_equal(symfile_func(f, s->addr + s->size - 1), name);
        assert_int_equal(symfile_func_line(f, s->addr + 1), 0); /* no DWARF left */
        for (size_t k = 0; k < i; k++)
            assert_string_not_equal(seen[k], name);
        seen[i] = name;
        /* The unstripped copy names the same function by its symbol. */
        assert_string_equal(symfile_func(unstripped, s->addr + s->size / 2), s->name);
    }
    symfile_free(unstripped);
    symfile_free(f);
}

/* Over every FDE readelf lists in path: its first and last byte have one name, no other FDE's,
 * and when nm knows no symbol at its start, the name is module+0xSTART. */
static void check_fdes(const char *path, const char *module, const struct nm_sym *known,
                       size_t nknown)
{
    static struct fde fdes[MAX_FDES];
    static const char *names[MAX_FDES];
    struct symfile *f;
    size_t n = read_fdes(path, fdes, MAX_FDES), made = 0;

    assert_true(n > 0 && n < MAX_FDES);
    assert_int_equal(symfile_open("", path, 0, 0, &f), 0);
    for (size_t i = 0; i < n; i++) {
        char want[128];
        int named = 0;
        names[i] = symfile_func(f, fdes[i].start);
        assert_non_null(names[i]);
        assert_ptr_equal(symfile_func(f, fdes[i].end - 1), names[i]);
        for (size_t k = 0; k < nknown; k++)
            named |=
                known[k].addr <= fdes[i].start && fdes[i].start < known[k].addr + known[k].size;
        if (!named) {
            made_name(want, sizeof(want), module, fdes[i].start);
            assert_string_equal(names[i], want);
            made++;
        }
        for (size_t k = 0; k < i; k++)
            if (strcmp(names[k], names[i]) == 0)
                fail_msg("FDEs at %" PRIx64 " and %" PRIx64 " both named %s", fdes[k].start,
                         fdes[i].start, names[i]);
    }
    assert_true(made > 0);
    symfile_free(f);
}

static void test_fdes_of_the_library(void **state)
{
    struct nm_sym dyn[MAX_SYMS];
    (void)state;
    check_fdes(stripped, LIB_NAME, dyn, read_nm(stripped, 1, dyn, MAX_SYMS));
}

static void build_id_of(const char *path, char *hex, size_t len)
{
    char cmd[256], line[256];
    snprintf(cmd, sizeof(cmd), "readelf -n %s", path);
    FILE *p = popen(cmd, "r");
    hex[0] = '\0';
    assert_non_null(p);
    while (fgets(line, sizeof(line), p)) {
        char *b = strstr(line, "Build ID: ");
        if (b)
            snprintf(hex, len, "%.*s", (int)strcspn(b + 10, "\n"), b + 10);
    }
    assert_int_equal(pclose(p), 0);
    assert_true(strlen(hex) >= 16);
}

/* Debian's liblzma is stripped: what the issue saw as one 99.7% node. */
static void test_fdes_of_debians_liblzma(void **state)
{
    static struct nm_sym dyn[4096];
    char hex[160], debug[256];
    (void)state;
    if (access(LZMA, R_OK) != 0)
        skip();
    build_id_of(LZMA, hex, sizeof(hex));
    snprintf(debug, sizeof(debug), "/usr/lib/debug/.build-id/%.2s/%s.debug", hex, hex + 2);
    if (access(debug, R_OK) == 0)
        skip(); /* its debug file names every function: nothing stripped left */
    check_fdes(LZMA, "liblzma.so.5", dyn, read_nm(LZMA, 1, dyn, 4096));
}

/* chain_asm_nosize (size 0, no CFI) names its own code, and not the function after it, which an
 * FDE covers; below every function there is no name. */
static void test_unsized_symbol_ends_where_a_function_starts(void **state)
{
    struct nm_sym dyn[MAX_SYMS];
    const struct nm_sym *asm_sym = sym_named("chain_asm_nosize");
    const struct nm_sym *after = sym_named("chain_after_asm");
    struct symfile *f;
    char want[64];
    (void)state;

    /* What the case needs of the build: the unsized symbol is in .dynsym, and nothing lies
     * between it and the static function after it. */
    size_t nd = read_nm(stripped, 1, dyn, MAX_SYMS), i;
    for (i = 0; i < nd && strcmp(dyn[i].name, asm_sym->name); i++)
        ;
    assert_true(i < nd);
    assert_int_equal(dyn[i].size, 0);
    assert_true(i + 1 == nd || dyn[i + 1].addr > after->addr);
    assert_true(asm_sym + 1 == after);

    assert_int_equal(symfile_open("", stripped, 0, 0, &f), 0);
    assert_string_equal(symfile_func(f, asm_sym->addr + 3), "chain_asm_nosize");
    made_name(want, sizeof(want), LIB_NAME, after->addr);
    assert_string_equal(symfile_func(f, after->addr + 4), want);
    assert_null(symfile_func(f, 0x10)); /* the ELF header */
    symfile_free(f);
}

static void expect_debug_names(void)
{
    struct symfile *f;
    const struct nm_sym *leaf = sym_named("chain_leaf");
    assert_int_equal(symfile_open("", stripped, 0, 0, &f), 0);
    assert_string_equal(symfile_func(f, leaf->addr + 1), "chain_leaf");
    symfile_free(f);
}

/* A debug file in debuginfod's cache names the stripped functions: under
 * $DEBUGINFOD_CACHE_PATH, and under ~/.cache/debuginfod_client without it. */
static void test_debuginfod_cache(void **state)
{
    char hex[160], cmd[2048], saved_home[256], saved_xdg[256];
    const char *home = getenv("HOME"), *xdg = getenv("XDG_CACHE_HOME");
    (void)state;
    snprintf(saved_home, sizeof(saved_home), "%s", home ? home : "");
    snprintf(saved_xdg, sizeof(saved_xdg), "%s", xdg ? xdg : "");
    build_id_of(stripped, hex, sizeof(hex));
    snprintf(cmd, sizeof(cmd),
             "mkdir -p %s/cache/%s %s/home/.cache/debuginfod_client/%s && "
             "objcopy --only-keep-debug %s %s/cache/%s/debuginfo && "
             "cp %s/cache/%s/debuginfo %s/home/.cache/debuginfod_client/%s/",
             dir, hex, dir, hex, full, dir, hex, dir, hex, dir, hex);
    run(cmd);

    snprintf(cmd, sizeof(cmd), "%s/cache", dir);
    assert_int_equal(setenv("DEBUGINFOD_CACHE_PATH", cmd, 1), 0);
    expect_debug_names();
    assert_int_equal(unsetenv("DEBUGINFOD_CACHE_PATH"), 0);

    snprintf(cmd, sizeof(cmd), "%s/home", dir);
    assert_int_equal(setenv("HOME", cmd, 1), 0);
    assert_int_equal(unsetenv("XDG_CACHE_HOME"), 0);
    expect_debug_names();

    /* Without the cache, the made name again. */
    snprintf(cmd, sizeof(cmd), "rm -r %s/home/.cache", dir);
    run(cmd);
    struct symfile *f;
    assert_int_equal(symfile_open("", stripped, 0, 0, &f), 0);
    const char *name = symfile_func(f, sym_named("chain_leaf")->addr + 1);
    assert_non_null(name);
    assert_string_not_equal(name, "chain_leaf");
    symfile_free(f);
    if (home)
        setenv("HOME", saved_home, 1);
    if (xdg)
        setenv("XDG_CACHE_HOME", saved_xdg, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_function_named_by_its_start),
        cmocka_unit_test(test_fdes_of_the_library),
        cmocka_unit_test(test_fdes_of_debians_liblzma),
        cmocka_unit_test(test_unsized_symbol_ends_where_a_function_starts),
        cmocka_unit_test(test_debuginfod_cache),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
