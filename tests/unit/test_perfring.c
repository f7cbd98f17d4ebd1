/* Tests of perfring's framing and field reading on rings laid out in memory as the kernel lays
 * them out (a control page, then a power-of-two data area), records wrapping the end included,
 * corrupt headers and truncated fields; and of the online CPU list against sysconf. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "os/perfring.h"

#define DATA 64

struct fake {
    struct perf_event_mmap_page meta;
    unsigned char data[DATA];
    struct perfring rg;
};

static void fake_init(struct fake *f, uint64_t tail)
{
    memset(f, 0, sizeof(*f));
    f->rg.fd = -1;
    f->rg.meta = &f->meta;
    f->rg.data = f->data;
    f->rg.size = DATA;
    f->meta.data_tail = tail;
    f->meta.data_head = tail;
}

/* Appends a record of size bytes (header included) whose body bytes count up from first. */
static void put(struct fake *f, uint32_t type, uint16_t size, unsigned char first)
{
    unsigned char rec[256];
    struct perf_event_header h = {.type = type, .misc = 0, .size = size};
    memcpy(rec, &h, sizeof(h));
    for (size_t i = sizeof(h); i < size; i++)
        rec[i] = (unsigned char)(first + i);
    for (size_t i = 0; i < size; i++)
        f->data[(f->meta.data_head + i) % DATA] = rec[i];
    f->meta.data_head += size;
}

static void test_wraps(void **state)
{
    (void)state;
    struct fake f;
    unsigned char copy[256];
    struct perf_event_header h;
    fake_init(&f, 48);
    put(&f, PERF_RECORD_SAMPLE, 24, 10); /* 48..71: wraps the end at 64 */
    put(&f, PERF_RECORD_LOST, 24, 100);
    perfring_begin(&f.rg);
    assert_int_equal(perfring_peek(&f.rg, &h), 0);
    assert_int_equal(h.type, PERF_RECORD_SAMPLE);
    assert_int_equal(h.size, 24);
    const unsigned char *rec = perfring_record(&f.rg, h.size, copy);
    assert_ptr_equal(rec, copy);
    for (size_t i = sizeof(h); i < 24; i++)
        assert_int_equal(rec[i], (unsigned char)(10 + i));
    uint64_t word;
    perfring_read(&f.rg, 12, &word, 8); /* 60..67: across the end too */
    assert_memory_equal(&word, rec + 12, 8);
    perfring_consume(&f.rg, h.size);
    assert_int_equal(f.meta.data_tail, 72);
    assert_int_equal(perfring_peek(&f.rg, &h), 0);
    rec = perfring_record(&f.rg, h.size, copy);
    assert_ptr_equal(rec, f.data + 8); /* in one piece: no copy */
    perfring_consume(&f.rg, h.size);
    assert_int_equal(perfring_peek(&f.rg, &h), -ENODATA);
    assert_int_equal(f.meta.data_tail, f.meta.data_head);
}

static void test_bad_headers(void **state)
{
    (void)state;
    struct fake f;
    struct perf_event_header h;
    fake_init(&f, 0);
    put(&f, PERF_RECORD_SAMPLE, 20, 0); /* not a multiple of 8 */
    perfring_begin(&f.rg);
    assert_int_equal(perfring_peek(&f.rg, &h), -EBADMSG);
    assert_int_equal(f.meta.data_tail, 20);

    fake_init(&f, 0);
    put(&f, PERF_RECORD_SAMPLE, 16, 0);
    f.meta.data_head = 8; /* the header claims more than is there */
    perfring_begin(&f.rg);
    assert_int_equal(perfring_peek(&f.rg, &h), -EBADMSG);
    assert_int_equal(f.meta.data_tail, 8);

    fake_init(&f, 0);
    f.meta.data_head = DATA + 8; /* more than the ring holds */
    perfring_begin(&f.rg);
    assert_int_equal(perfring_peek(&f.rg, &h), -EBADMSG);
    assert_int_equal(f.meta.data_tail, DATA + 8);

    struct perfring unmapped = {.fd = -1};
    perfring_begin(&unmapped);
    assert_int_equal(perfring_peek(&unmapped, &h), -ENODATA);
}

struct seen {
    size_t n;
    uint32_t types[8];
    int fail_at;
};

static int collect(void *arg, size_t ci, const unsigned char *rec, size_t size)
{
    struct seen *s = arg;
    struct perf_event_header h;
    assert_int_equal(ci, 0);
    memcpy(&h, rec, sizeof(h));
    assert_int_equal(h.size, size);
    s->types[s->n++] = h.type;
    return (int)s->n == s->fail_at ? -EIO : 0;
}

static void test_drain(void **state)
{
    (void)state;
    struct fake f;
    unsigned char copy[256];
    struct perfring_cpus c = {.n = 1, .rings = &f.rg, .copy = copy};
    struct seen s = {.fail_at = 2};
    uint64_t lost = 0;
    fake_init(&f, 40);
    put(&f, PERF_RECORD_SAMPLE, 16, 0);
    put(&f, PERF_RECORD_FORK, 16, 0);
    put(&f, PERF_RECORD_EXIT, 16, 0);
    assert_int_equal(perfring_cpus_drain(&c, collect, &s, &lost), -EIO);
    assert_int_equal(s.n, 2);
    assert_int_equal(f.meta.data_tail, 72); /* the failed record is freed all the same */
    s.fail_at = 0;
    assert_int_equal(perfring_cpus_drain(&c, collect, &s, &lost), 0);
    assert_int_equal(s.n, 3);
    assert_int_equal(s.types[2], PERF_RECORD_EXIT);
    assert_int_equal(lost, 0);
    put(&f, PERF_RECORD_SAMPLE, 4, 0);
    assert_int_equal(perfring_cpus_drain(&c, collect, &s, &lost), 0);
    assert_int_equal(lost, 1);
    assert_int_equal(f.meta.data_tail, f.meta.data_head);
}

static void test_fields(void **state)
{
    (void)state;
    unsigned char rec[8 + 8 * PERFRING_NREGS + 8 + 16 + 8];
    uint64_t regs[PERFRING_NREGS], v;
    const unsigned char *stack;
    size_t len;
    struct perfring_rd d;

    for (size_t i = 0; i < PERFRING_NREGS; i++) {
        v = 1000 + i; /* perf's order: AX BX CX DX SI DI BP SP IP R8.. */
        memcpy(rec + 8 + 8 * i, &v, 8);
    }
    size_t at = 8 + 8 * PERFRING_NREGS;
    v = 16;
    memcpy(rec + at, &v, 8);
    memset(rec + at + 8, 0xab, 16);
    v = 12;
    memcpy(rec + at + 24, &v, 8);
    perfring_rd_init(&d, rec, sizeof(rec));
    assert_true(perfring_rd_regs(&d, regs));
    assert_int_equal(regs[0], 1000);  /* RAX */
    assert_int_equal(regs[3], 1001);  /* RBX */
    assert_int_equal(regs[7], 1007);  /* RSP */
    assert_int_equal(regs[16], 1008); /* RIP */
    assert_int_equal(regs[15], 1016); /* R15 */
    assert_true(perfring_rd_stack(&d, &stack, &len));
    assert_ptr_equal(stack, rec + at + 8);
    assert_int_equal(len, 12);
    assert_int_equal(d.left, 0);

    v = 20; /* dyn_size above the copied size */
    memcpy(rec + at + 24, &v, 8);
    perfring_rd_init(&d, rec, sizeof(rec));
    assert_true(perfring_rd_regs(&d, regs));
    assert_false(perfring_rd_stack(&d, &stack, &len));
    v = 32; /* a copy longer than the record */
    memcpy(rec + at, &v, 8);
    perfring_rd_init(&d, rec, sizeof(rec));
    assert_true(perfring_rd_regs(&d, regs));
    assert_false(perfring_rd_stack(&d, &stack, &len));
    v = 0; /* no stack: no dyn_size either */
    memcpy(rec + at, &v, 8);
    perfring_rd_init(&d, rec, at + 8);
    assert_true(perfring_rd_regs(&d, regs));
    assert_true(perfring_rd_stack(&d, &stack, &len));
    assert_null(stack);
    assert_int_equal(len, 0);
    perfring_rd_init(&d, rec, 8 + 8 * (PERFRING_NREGS - 1));
    assert_false(perfring_rd_regs(&d, regs));

    uint64_t body[2] = {7, 42}; /* id, lost */
    unsigned char lost[24];
    memcpy(lost + 8, body, sizeof(body));
    assert_int_equal(perfring_lost(lost, sizeof(lost)), 42);
    assert_int_equal(perfring_lost(lost, 16), 1);
}

static void test_evs(void **state)
{
    (void)state;
    struct perfring_evs e = {0};
    const uint64_t ids[] = {50, 10, 30, 20, 40};
    for (size_t i = 0; i < 100; i++)
        assert_int_equal(perfring_evs_add(&e, ids[i % 5] + 100 * (i / 5), -1, (uint32_t)i, 0), 0);
    for (size_t i = 1; i < e.n; i++)
        assert_true(e.v[i - 1].id < e.v[i].id);
    struct perfring_ev *ev = perfring_evs_find(&e, 1930);
    assert_non_null(ev);
    assert_int_equal(ev->chain, 97);
    assert_null(perfring_evs_find(&e, 35));
    assert_int_equal(perfring_evs_chain_reserve(&e), 0);
    assert_true(e.chains_cap > e.nchains);
    perfring_evs_destroy(&e);
    assert_null(e.v);
}

static void test_online_cpus(void **state)
{
    (void)state;
    struct perfring_cpus c = {0};
    assert_int_equal(perfring_cpus_init(&c), 0);
    assert_int_equal(c.n, (size_t)sysconf(_SC_NPROCESSORS_ONLN));
    for (size_t i = 0; i < c.n; i++) {
        assert_int_equal(c.rings[i].fd, -1);
        assert_null(c.rings[i].meta);
        assert_true(i == 0 || c.cpus[i] > c.cpus[i - 1]);
    }
    assert_false(perfring_cpus_owns(&c, -2));
    perfring_cpus_destroy(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wraps), cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_drain), cmocka_unit_test(test_fields),
        cmocka_unit_test(test_evs),   cmocka_unit_test(test_online_cpus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
