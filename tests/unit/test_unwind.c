/* Tests of the unwinder's own steps: CFI rows read from .eh_frame (cfi.c) against what the
 * compiler wrote for this test's functions, the walk by rows against eu-stack (libdw's unwinder,
 * another implementation) on build/workloads/parked, the fallback without CFI (framescan.c) on
 * stack copies built here and on build/workloads/musl_parked (musl's libc has no CFI, where
 * eu-stack stops at the first frame), and the mark of a scanned frame in the dump's text. */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "unwind/cfi.h"
#include "unwind/framescan.h"
#include "unwind/modules.h"
#include "unwind/stacks.h"
#include "testutil.h"

#define NOINLINE __attribute__((noinline, noclone))
#define EU_STACK "/usr/bin/eu-stack"

static volatile int sink;
static const char rodata_text[] = "not code";

/* The address this function returns to: right after a call in the caller's code. */
static NOINLINE uintptr_t return_address(void)
{
    sink++;
    return (uintptr_t)__builtin_return_address(0);
}

static NOINLINE uintptr_t caller_of_return_address(void)
{
    uintptr_t ra = return_address();
    sink++;
    return ra;
}

static struct modules *self_modules(void)
{
    struct modules *m;
    int changed;
    assert_int_equal(modules_new(getpid(), &m), 0);
    assert_int_equal(modules_refresh(m, &changed), 0);
    return m;
}

static void test_cfi_rows(void **state)
{
    (void)state;
    struct modules *m = self_modules();
    struct cfi_row row;
    uint64_t fn = (uint64_t)(uintptr_t)&return_address;
    struct module *mod = modules_find(m, fn);
    assert_non_null(mod);

    /* At a function's first byte the call has just pushed the return address. */
    assert_int_equal(cfi_row_at(mod, fn - mod->bias, &row), 0);
    assert_int_equal(row.cfa_reg, CFI_DWARF_RSP);
    assert_int_equal(row.cfa_off, 8);
    assert_int_equal(row.how[CFI_RA], CFI_AT);
    assert_int_equal(row.off[CFI_RA], -8);
    uint64_t start, fde;
    assert_int_equal(cfi_find(mod, fn - mod->bias, &start, &fde), 0);
    assert_true(start == fn - mod->bias);

    /* Built with frame pointers: inside, after push rbp; mov rsp,rbp, the CFA is rbp + 16 and
     * the caller's rbp is saved right below the return address. */
    uint64_t ra = caller_of_return_address();
    mod = modules_find(m, ra);
    assert_non_null(mod);
    assert_int_equal(cfi_row_at(mod, ra - 1 - mod->bias, &row), 0);
    assert_int_equal(row.cfa_reg, CFI_DWARF_RBP);
    assert_int_equal(row.cfa_off, 16);
    assert_int_equal(row.how[CFI_RBP], CFI_AT);
    assert_int_equal(row.off[CFI_RBP], -16);

    /* Data has no FDE. */
    uint64_t data = (uint64_t)(uintptr_t)rodata_text;
    mod = modules_find(m, data);
    assert_non_null(mod);
    assert_int_equal(cfi_row_at(mod, data - mod->bias, &row), -ENOENT);
    modules_free(m);
}

/* A thread snapshot whose "stack" is words, at a made-up address. */
static struct snapshot_thread fake_stack(uint64_t *words, size_t n, uint64_t addr)
{
    return (struct snapshot_thread){
        .stack_addr = addr, .stack_len = n * 8, .stack = (const unsigned char *)words};
}

static void test_framescan(void **state)
{
    (void)state;
    struct modules *m = self_modules();
    struct framescan *fs;
    struct framescan_regs f, caller;
    bool bounded;
    enum { N = 1024 };
    uint64_t *w = calloc(N, sizeof(*w));
    const uint64_t base = 0x7f0000100000ull;
    assert_non_null(w);
    assert_int_equal(framescan_new(m, &fs), 0);

    uint64_t ra = caller_of_return_address();
    assert_true(framescan_is_return_address(fs, ra));
    /* A function's address is a pointer, not where a call returns; data is not code. */
    assert_false(framescan_is_return_address(fs, (uint64_t)(uintptr_t)&return_address));
    assert_false(framescan_is_return_address(fs, (uint64_t)(uintptr_t)rodata_text));
    assert_false(framescan_is_return_address(fs, 0x10));

    /* Scanning: pointers to a function and to data are passed over, the return address taken,
     * the caller's sp just above it, rbp left as it was. */
    w[0] = (uint64_t)(uintptr_t)&return_address;
    w[1] = (uint64_t)(uintptr_t)rodata_text;
    w[2] = 42;
    w[3] = ra;
    struct snapshot_thread t = fake_stack(w, 64, base);
    f = (struct framescan_regs){0x1, base, 0x1234};
    assert_int_equal(framescan_caller(fs, &t, &f, &caller, &bounded), FRAMESCAN_STACK);
    assert_true(caller.ip == ra && caller.sp == base + 4 * 8 && caller.rbp == 0x1234);

    /* A frame record {saved rbp, return address} rbp points at, with nothing like a return
     * address below it: the frame pointer, and the saved rbp for the caller. */
    memset(w, 0, N * 8);
    w[10] = base + 30 * 8;
    w[11] = ra;
    f = (struct framescan_regs){0x1, base, base + 10 * 8};
    assert_int_equal(framescan_caller(fs, &t, &f, &caller, &bounded), FRAMESCAN_FP);
    assert_true(caller.ip == ra && caller.sp == base + 12 * 8 && caller.rbp == base + 30 * 8);

    /* A return address below the record: rbp belongs to an outer frame (code without a frame
     * pointer called from code with one), and following it would skip a caller. */
    w[5] = ra;
    assert_int_equal(framescan_caller(fs, &t, &f, &caller, &bounded), FRAMESCAN_STACK);
    assert_true(caller.sp == base + 6 * 8);

    /* Nothing at all: the end of a copy shorter than the limit is the end; a longer one is a
     * search given up. */
    memset(w, 0, N * 8);
    f = (struct framescan_regs){0x1, base, 0};
    assert_int_equal(framescan_caller(fs, &t, &f, &caller, &bounded), FRAMESCAN_NONE);
    assert_false(bounded);
    t = fake_stack(w, N, base);
    assert_true(N * 8 > FRAMESCAN_BYTES);
    assert_int_equal(framescan_caller(fs, &t, &f, &caller, &bounded), FRAMESCAN_NONE);
    assert_true(bounded);
    /* An sp outside the copy finds nothing. */
    f.sp = base - 8;
    assert_int_equal(framescan_caller(fs, &t, &f, &caller, &bounded), FRAMESCAN_NONE);

    framescan_free(fs);
    modules_free(m);
    free(w);
}

static const struct stacks_frame *find_func(const struct stacks_thread *t, const char *func)
{
    for (size_t i = 0; i < t->nframes; i++)
        if (t->frames[i].func && strcmp(t->frames[i].func, func) == 0)
            return &t->frames[i];
    return NULL;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* musl's libc has no CFI: from pause() the walk scans its way back to musl_park_c, then follows
 * CFI to main, through __libc_start_main (no CFI again) to _start, where it ends. */
static void test_musl_parked(void **state)
{
    (void)state;
    struct testutil_child c;
    struct stacks *s;
    struct stacks_dump *d;
    char line[64];
    assert_int_equal(testutil_spawn(&c, "musl_parked", NULL, line, sizeof(line)), 0);
    assert_string_equal(line, "ready");
    assert_int_equal(stacks_new(c.pid, &s), 0);
    assert_int_equal(stacks_dump_threads(s, NULL, &d, NULL), 0);
    assert_int_equal(d->nthreads, 1);
    const struct stacks_thread *t = d->threads[0];
    char *text;
    assert_int_equal(stacks_format_thread(t, &text), 0);
    print_message("%s\n", text);

    static const char *const chain[] = {"musl_park_c", "musl_park_b", "musl_park_a", "main"};
    const struct stacks_frame *prev = NULL;
    for (size_t i = 0; i < sizeof(chain) / sizeof(chain[0]); i++) {
        const struct stacks_frame *f = find_func(t, chain[i]);
        if (!f)
            fail_msg("%s missing:\n%s", chain[i], text);
        assert_true(!prev || f > prev); /* innermost first */
        prev = f;
    }
    /* Reached from libc by scanning, and said so. */
    assert_true(find_func(t, "musl_park_c")->scanned);
    assert_false(find_func(t, "musl_park_b")->scanned);
    /* The outermost frame is the program's entry code, below main's caller in libc. */
    const struct stacks_frame *outer = &t->frames[t->nframes - 1];
    assert_true(outer > prev + 1);
    assert_non_null(outer->module);
    assert_true(ends_with(outer->module, "/musl_parked"));
    assert_false(t->truncated);
    assert_non_null(strstr(text, " (scanned)"));
    free(text);
    stacks_dump_free(d);
    stacks_free(s);
    testutil_reap(&c);
}

/* eu-stack's frames of thread tid, innermost first, from its "#N 0xADDR ..." lines. */
static size_t eu_frames(const char *out, pid_t tid, uint64_t *ips, size_t max)
{
    char head[32];
    size_t n = 0;
    snprintf(head, sizeof(head), "TID %d:\n", (int)tid);
    const char *p = strstr(out, head);
    if (!p)
        return 0;
    for (p += strlen(head); *p == '#' && n < max; p = strchr(p, '\n') + 1) {
        const char *x = strstr(p, "0x");
        if (!x || !strchr(p, '\n'))
            break;
        ips[n++] = strtoull(x, NULL, 16);
    }
    return n;
}

/* The walk by CFI rows gives the frames libdw's unwinder gives, signal frame included, for the
 * parked threads that stay put between the two captures. */
static void test_rows_match_eu_stack(void **state)
{
    (void)state;
    static const char *const still[] = {"parked", "reader", "waiter", "sigpark", "idle-0"};
    struct testutil_child c;
    struct stacks *s;
    struct stacks_dump *d;
    char line[64], arg[32], *out = malloc(1 << 20);
    uint64_t ips[STACKS_MAX_FRAMES];
    assert_non_null(out);
    assert_int_equal(testutil_spawn(&c, "parked", "1", line, sizeof(line)), 0);
    assert_string_equal(line, "ready");
    assert_int_equal(stacks_new(c.pid, &s), 0);
    assert_int_equal(stacks_dump_threads(s, NULL, &d, NULL), 0);
    snprintf(arg, sizeof(arg), "%d", (int)c.pid);
    char *const argv[] = {EU_STACK, "-p", arg, NULL};
    assert_int_equal(testutil_run(argv, out, 1 << 20), 0);
    for (size_t k = 0; k < sizeof(still) / sizeof(still[0]); k++) {
        const struct stacks_thread *t = NULL;
        for (size_t i = 0; i < d->nthreads; i++)
            if (strcmp(d->threads[i]->name, still[k]) == 0)
                t = d->threads[i];
        assert_non_null(t);
        size_t n = eu_frames(out, t->tid, ips, STACKS_MAX_FRAMES);
        if (n != t->nframes)
            fail_msg("thread %s: %zu frames, eu-stack %zu:\n%s", t->name, t->nframes, n, out);
        for (size_t i = 0; i < n; i++)
            if (ips[i] != t->frames[i].ip)
                fail_msg("thread %s frame %zu: 0x%" PRIx64 ", eu-stack 0x%" PRIx64, t->name, i,
                         t->frames[i].ip, ips[i]);
        assert_false(t->truncated);
    }
    stacks_dump_free(d);
    stacks_free(s);
    testutil_reap(&c);
    free(out);
}

static void test_format_scanned(void **state)
{
    (void)state;
    struct stacks_thread *t = calloc(1, sizeof(*t) + 2 * sizeof(t->frames[0]));
    char *text;
    assert_non_null(t);
    t->tid = 7;
    snprintf(t->name, sizeof(t->name), "m");
    t->nframes = 2;
    t->frames[0] = (struct stacks_frame){.ip = 0x77, .module = "/lib/libc.so", .offset = 0x77};
    t->frames[1] = (struct stacks_frame){
        .ip = 0x1275, .module = "/bin/m", .offset = 0x1275, .func = "c", .scanned = true};
    assert_int_equal(stacks_format_thread(t, &text), 0);
    assert_string_equal(text, "Thread [m]: tid=7\n"
                              "  File \"/bin/m\", line 0, in c [/bin/m+0x1275] (scanned)\n"
                              "  File \"/lib/libc.so\", line 0, in ?? [/lib/libc.so+0x77]");
    free(text);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cfi_rows),       cmocka_unit_test(test_framescan),
        cmocka_unit_test(test_musl_parked),    cmocka_unit_test(test_rows_match_eu_stack),
        cmocka_unit_test(test_format_scanned),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
