/* Tests of pyframes_merge, where each run of Python frames goes in a native stack: at the
 * eval-loop call that runs it, found by name or (stripped interpreters, 3.12 on) by where its
 * shim frame lies on the C stack, whatever C sits between; never under the program's entry
 * point when the native stack is complete. Stacks are made up here: no process is read. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "python/pyframes.h"

#define MAXF 32

struct native {
    struct stacks_thread t;
    struct stacks_frame f[MAXF];
};

/* A native stack of funcs, innermost first (NULL ends). */
static void native_of(struct native *n, const char *const *funcs, int truncated)
{
    memset(n, 0, sizeof(*n));
    n->t.truncated = truncated;
    for (size_t i = 0; funcs[i]; i++) {
        n->f[i] = (struct stacks_frame){.ip = 0x1000 + i, .func = funcs[i], .module = "python"};
        n->t.nframes++;
    }
    /* The flexible array member follows t directly in struct native. */
    assert_ptr_equal((void *)n->t.frames, (void *)n->f);
}

/* Python frames, innermost first; a name ending in '*' is an entry frame. */
static void python_of(struct pyframes_thread *py, struct pyframes_frame *fr, char names[][32],
                      const char *const *funcs, const uint64_t *entry_at)
{
    memset(py, 0, sizeof(*py));
    py->frames = fr;
    for (size_t i = 0; funcs[i]; i++) {
        size_t len = strlen(funcs[i]);
        bool entry = funcs[i][len - 1] == '*';
        snprintf(names[i], 32, "%.*s", (int)(len - entry), funcs[i]);
        fr[i] = (struct pyframes_frame){.filename = "x.py",
                                        .funcname = names[i],
                                        .is_entry = entry,
                                        .entry_at = entry && entry_at ? entry_at[i] : 0};
        py->nframes++;
    }
}

/* The merged stack as "a b c", innermost first. */
static void merged_names(const struct stacks_thread *t, char *buf, size_t len)
{
    size_t pos = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < t->nframes && pos < len; i++)
        pos += (size_t)snprintf(buf + pos, len - pos, "%s%s", i ? " " : "", t->frames[i].func);
}

static void check(const char *const *nat, int truncated, const char *const *pyf,
                  const uint64_t *entry_at, const uint64_t *sp, const char *want)
{
    struct native n;
    struct pyframes_thread py;
    struct pyframes_frame fr[MAXF];
    char names[MAXF][32], got[1024];
    struct stacks_thread *m;

    native_of(&n, nat, truncated);
    for (size_t i = 0; sp && i < n.t.nframes; i++)
        n.f[i].sp = sp[i];
    python_of(&py, fr, names, pyf, entry_at);
    assert_int_equal(pyframes_merge(&n.t, &py, &m), 0);
    merged_names(m, got, sizeof(got));
    free(m);
    if (strcmp(got, want))
        fail_msg("merged \"%s\", want \"%s\"", got, want);
}

/* sum(genexpr): is_prime runs in an eval-loop call made by sum, inside the call running
 * primes. Each run replaces its own eval frame, C between them kept. */
static void test_runs_at_their_eval_calls(void **state)
{
    (void)state;
    const char *nat[] = {
        "_PyEval_EvalFrameDefault", "gen_iternext", "builtin_sum", "_PyEval_EvalFrameDefault",
        "PyEval_EvalCode",          "_start",       NULL};
    const char *py[] = {"is_prime", "genexpr*", "primes", "main", "<module>*", NULL};
    check(nat, 0, py, NULL, NULL,
          "is_prime genexpr gen_iternext builtin_sum primes main <module> PyEval_EvalCode _start");
}

/* GCC's split-off part of the eval loop counts as the eval loop. */
static void test_cold_part_is_the_eval_loop(void **state)
{
    (void)state;
    const char *nat[] = {"_PyEval_EvalFrameDefault.cold", "builtin_sum", "_PyEval_EvalFrameDefault",
                         "_start", NULL};
    const char *py[] = {"genexpr*", "<module>*", NULL};
    check(nat, 0, py, NULL, NULL, "genexpr builtin_sum <module> _start");
    assert_true(pyframes_is_eval("_PyEval_EvalFrameDefault"));
    assert_false(pyframes_is_eval("_PyEval_EvalFrameDefaultX"));
    assert_false(pyframes_is_eval(NULL));
}

/* A stripped interpreter: no eval frame has a name; each run's shim frame lies in the stack of
 * the call that runs it (sp[i] <= entry_at < sp[i + 1]). */
static void test_stripped_found_by_shim_frames(void **state)
{
    (void)state;
    const char *nat[] = {"??", "gen_iternext", "builtin_sum", "??", "PyEval_EvalCode", "_start",
                         NULL};
    const uint64_t sp[] = {0x1000, 0x1100, 0x1200, 0x1300, 0x1400, 0x1500};
    const char *py[] = {"is_prime", "genexpr*", "primes", "<module>*", NULL};
    const uint64_t at[] = {0, 0x1050, 0, 0x1350};
    check(nat, 0, py, at, sp,
          "is_prime genexpr gen_iternext builtin_sum primes <module> "
          "PyEval_EvalCode _start");
}

/* Runs with no eval frame to go to, on a complete native stack: innermost, never under
 * _start; on a stack that ends early: at the outer end, where the missing frames were. */
static void test_leftovers(void **state)
{
    (void)state;
    const char *nat[] = {"??", "PyEval_EvalCode", "main", "_start", NULL};
    const char *py[] = {"f", "<module>*", NULL};
    check(nat, 0, py, NULL, NULL, "f <module> ?? PyEval_EvalCode main _start");
    const char *cut[] = {"??", "helper", NULL};
    check(cut, 1, py, NULL, NULL, "?? helper f <module>");
    /* One run placed by name, the outer one left over: just outside the placed run. */
    const char *one[] = {"_PyEval_EvalFrameDefault", "builtin_sum", "??", "_start", NULL};
    const char *two[] = {"g", "genexpr*", "<module>*", NULL};
    check(one, 0, two, NULL, NULL, "g genexpr <module> builtin_sum ?? _start");
}

/* More eval frames than runs (a call entered, its frame not pushed yet): the extra ones stay. */
static void test_more_eval_frames_than_runs(void **state)
{
    (void)state;
    const char *nat[] = {"_PyEval_EvalFrameDefault", "_PyEval_EvalFrameDefault", "_start", NULL};
    const char *py[] = {"f", "<module>*", NULL};
    check(nat, 0, py, NULL, NULL, "f <module> _PyEval_EvalFrameDefault _start");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_runs_at_their_eval_calls),
        cmocka_unit_test(test_cold_part_is_the_eval_loop),
        cmocka_unit_test(test_stripped_found_by_shim_frames),
        cmocka_unit_test(test_leftovers),
        cmocka_unit_test(test_more_eval_frames_than_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
