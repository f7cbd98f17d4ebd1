/* libFuzzer target over what a profiled process puts in the perf_event ring: its registers, its
 * stack bytes, its thread names, pids and tids, framed by the kernel into records. One input is
 * a ring's state (size, tail, bytes available) and its bytes, read through perfring.c's framing
 * (perfring_cpus_drain) into sampler_perf.c's own record decoder (on_record, static: this file
 * includes sampler_perf.c, and the Makefile links fuzz_perf without its object), and each decoded
 * sample's registers and stack copy are unwound by stacks_unwind_regs against this process's own
 * modules, as the agent unwinds a target's. Not a test of the kernel side: no event is opened.
 *
 * Input: byte 0 picks the ring size (64 << (b % 11) bytes), bytes 1-8 are data_tail, 9-10 the
 * bytes the kernel has committed past it (data_head - data_tail), the rest the ring's bytes from
 * the tail on, wrapping at its end. A sample's RIP below 16 MiB is taken as an offset from
 * LLVMFuzzerInitialize, so that inputs reach real unwind tables whatever the address layout. */
#include "cpu/sampler_perf.c"

#include <stdlib.h>
#include <string.h>

#include "unwind/stacks.h"
#include "fuzzcheck.h"

#define HEADER_BYTES 11
#define RING_MAX (64u << 10)
#define COPY_BYTES 65536 /* perfring.c's RECORD_MAX: header.size is 16 bits */
#define TARGET_PID 4242  /* the pid the samples must carry */
#define REBASE_BELOW (16u << 20)
#define FRAMES_MAX 64

/* The events of the fake sampler: ids the input's samples name, two chains, one per thread. */
static const struct {
    uint64_t id;
    uint32_t chain;
} events[] = {{100, 0}, {101, 0}, {200, 1}};

static struct stacks *stacks;
static uint64_t text_base;

/* What one input's records must be, and what they did. */
struct expect {
    const unsigned char *linear; /* the committed bytes from the tail, unwrapped */
    uint64_t avail;
    uint64_t framed; /* bytes handed out so far */
    const unsigned char *rec;
    size_t rec_size;
    uint64_t samples;
    struct poll_ctx ctx;
};

static struct expect ex;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    CHECK(stacks_new(getpid(), &stacks) == 0, "stacks_new");
    text_base = (uint64_t)(uintptr_t)LLVMFuzzerInitialize;
    return 0;
}

static int on_sample_cb(const struct sampler_sample *smp, void *userdata)
{
    struct stacks_frame frames[FRAMES_MAX];
    uint64_t regs[SAMPLER_NREGS];
    size_t n = 0;
    int truncated = 0, r;

    (void)userdata;
    /* The stack copy lies inside the record it came from. */
    if (smp->stack_len) {
        CHECK(smp->stack && smp->stack >= ex.rec && smp->stack_len <= ex.rec_size &&
                  (size_t)(smp->stack - ex.rec) <= ex.rec_size - smp->stack_len,
              "stack copy of %zu bytes outside its record of %zu", smp->stack_len, ex.rec_size);
    }
    ex.samples++;
    memcpy(regs, smp->regs, sizeof(regs));
    if (regs[UNW_X86_64_RIP] < REBASE_BELOW)
        regs[UNW_X86_64_RIP] += text_base;
    r = stacks_unwind_regs(stacks, regs, smp->stack_addr, smp->stack, smp->stack_len, frames,
                           FRAMES_MAX, &n, &truncated);
    CHECK(r == 0, "stacks_unwind_regs: %d", r);
    /* A sample that cannot be unwound still gives its ip. */
    CHECK(n >= 1 && n <= FRAMES_MAX && frames[0].ip == regs[UNW_X86_64_RIP],
          "%zu frames, first at %llx for rip %llx", n, (unsigned long long)frames[0].ip,
          (unsigned long long)regs[UNW_X86_64_RIP]);
    for (size_t i = 0; i < n; i++) {
        CHECK(!frames[i].func || strlen(frames[i].func) < (1u << 20), "frame name");
        CHECK(frames[i].line >= 0 && frames[i].func_line >= 0, "frame %zu line %d/%d", i,
              frames[i].line, frames[i].func_line);
    }
    return 0;
}

static void on_name_cb(pid_t tid, const char *name, void *userdata)
{
    (void)tid;
    (void)userdata;
    CHECK(strlen(name) < PROCFS_COMM_MAX, "thread name of %zu bytes", strlen(name));
}

static void on_maps_cb(void *userdata)
{
    (void)userdata;
}

static const struct sampler_callbacks callbacks = {
    .sample = on_sample_cb,
    .maps_changed = on_maps_cb,
    .thread_name = on_name_cb,
};

/* perfring.c's framing, checked, then sampler_perf.c's decoder. */
static int on_framed(void *arg, size_t ci, const unsigned char *rec, size_t size)
{
    struct perf_event_header h;

    CHECK(size >= sizeof(h) && size % 8 == 0 && size <= ex.avail - ex.framed,
          "record of %zu bytes with %llu left", size, (unsigned long long)(ex.avail - ex.framed));
    memcpy(&h, rec, sizeof(h));
    CHECK(h.size == size, "record of %zu bytes says %u", size, h.size);
    CHECK(memcmp(rec, ex.linear + ex.framed, size) == 0, "record bytes are not the ring's");
    ex.framed += size;
    ex.rec = rec;
    ex.rec_size = size;
    return on_record(arg, ci, rec, size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct perf_event_mmap_page *meta;
    struct sampler s = {.pid = TARGET_PID, .freq = 99, .ops = &sampler_perf_ops};
    struct perf p = {.exited = true};
    int cpu = 0;
    uint64_t ring_size, tail, lost = 0;
    uint16_t avail;
    unsigned char *ring, *linear;
    int r;

    if (size < HEADER_BYTES)
        return 0;
    ring_size = 64u << (data[0] % 11);
    memcpy(&tail, data + 1, 8);
    memcpy(&avail, data + 9, 2);
    data += HEADER_BYTES;
    size -= HEADER_BYTES;
    /* Exactly the ring's size, so ASan sees any read past its end. */
    meta = calloc(1, sizeof(*meta));
    ring = calloc(1, ring_size);
    linear = calloc(1, ring_size);
    p.rc.copy = malloc(COPY_BYTES);
    p.rc.rings = calloc(1, sizeof(*p.rc.rings));
    CHECK(meta && ring && linear && p.rc.copy && p.rc.rings, "out of memory");
    for (uint64_t i = 0; i < ring_size && i < size; i++) {
        ring[(tail + i) & (ring_size - 1)] = data[i];
        linear[i] = data[i];
    }
    meta->data_tail = tail;
    meta->data_head = tail + avail;
    p.rc.cpus = &cpu;
    p.rc.n = 1;
    p.rc.rings[0] = (struct perfring){.fd = -1, .meta = meta, .data = ring, .size = ring_size};
    for (size_t i = 0; i < sizeof(events) / sizeof(events[0]); i++) {
        CHECK(perfring_evs_add(&p.evs, events[i].id, -1, events[i].chain, 0) == 0, "evs");
        if (events[i].chain == p.evs.nchains) {
            CHECK(perfring_evs_chain_reserve(&p.evs) == 0, "chains");
            p.evs.chains[p.evs.nchains++] =
                (struct perfring_chain){.tid = TARGET_PID + (pid_t)events[i].chain};
        }
    }
    ex = (struct expect){.linear = linear, .avail = avail};
    ex.ctx = (struct poll_ctx){&s, &p, &callbacks, NULL};
    r = perfring_cpus_drain(&p.rc, on_framed, &ex.ctx, &lost);
    CHECK(r == 0, "drain: %d", r);
    /* Everything committed is consumed, framed or dropped as one loss. */
    CHECK(meta->data_tail == meta->data_head, "tail %llx, head %llx",
          (unsigned long long)meta->data_tail, (unsigned long long)meta->data_head);
    CHECK(lost <= 1 && (ex.framed == avail) == (lost == 0), "%llu framed of %u, %llu lost",
          (unsigned long long)ex.framed, avail, (unsigned long long)lost);
    CHECK(s.stats.samples == ex.samples, "%llu samples counted, %llu handed out",
          (unsigned long long)s.stats.samples, (unsigned long long)ex.samples);
    CHECK(s.nthreads <= SAMPLER_THREADS_MAX, "threads");
    free(s.threads);
    perfring_evs_destroy(&p.evs);
    free(p.rc.rings);
    free(p.rc.copy);
    free(linear);
    free(ring);
    free(meta);
    return 0;
}
