/* A shared library for the tests of stripped code (tests/unit/test_symbols.c,
 * tests/integration/test_stripped.py), which build it and strip a copy: a known call graph of
 * functions that stripping leaves without a symbol (all static but the entry point), and a piece
 * of hand-written assembly with neither a size nor CFI, exported, right before one of them. Not a
 * program, so not built by the Makefile; the tests build it with
 *   gcc -O2 -g -fPIC -shared -fno-toplevel-reorder -fno-optimize-sibling-calls
 * which keeps the functions in source order and every call in its caller's frame.
 * One call of chain_run, and each function's share of self time:
 *   chain_run -> chain_outer -> chain_mid -> chain_leaf   4 units  40%
 *             -> chain_side                               3 units  30%
 *             -> chain_after_asm                          3 units  30%
 * A unit is ~0.2 ms of a dependent multiply-add loop, whatever the CPU's speed. */
#define UNIT_ITERS 200000UL
/* noipa: no inlining, cloning or folding of same-bodied functions, so each stays one function. */
#define SEPARATE __attribute__((noipa))

static volatile unsigned long sink;

static inline unsigned long spin(unsigned long units, unsigned long x)
{
    for (unsigned long i = 0; i < units * UNIT_ITERS; i++) {
        x = x * 6364136223846793005UL + 1442695040888963407UL;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

static SEPARATE unsigned long chain_leaf(unsigned long x)
{
    return spin(4, x);
}

static SEPARATE unsigned long chain_mid(unsigned long x)
{
    return chain_leaf(x) + 1;
}

static SEPARATE unsigned long chain_outer(unsigned long x)
{
    return chain_mid(x) + 1;
}

static SEPARATE unsigned long chain_side(unsigned long x)
{
    return spin(3, x);
}

/* What musl's string functions are: a global function symbol of size 0 and no CFI. The code that
 * follows it is a C function the symbol must not name. */
__asm__(".pushsection .text\n"
        ".globl chain_asm_nosize\n"
        ".type chain_asm_nosize, @function\n"
        "chain_asm_nosize:\n"
        "    xor %eax, %eax\n"
        "    nop; nop; nop; nop; nop; nop; nop; nop\n"
        "    ret\n"
        ".popsection\n");

static SEPARATE unsigned long chain_after_asm(unsigned long x)
{
    return spin(3, x);
}

unsigned long chain_run(unsigned long x)
{
    x = chain_outer(x);
    x = chain_side(x) + 1;
    x = chain_after_asm(x) + 1;
    sink = x;
    return x;
}
