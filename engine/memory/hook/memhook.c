/* The allocation hooks injected into a profiled process: memhook_start() maps the agent's ring
 * (memring.h) and points the GOT slots of malloc and friends at hooks that record allocations,
 * frees and the caller's registers and stack; memhook_stop() puts the slots back; a while later
 * memhook_release() unmaps the ring. It allocates nothing through the hooked functions, never
 * unmaps its code, and does no symbolizing. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "memory/memring.h"
#include "memhook.h"

#define MEMHOOK_EXPORT __attribute__((visibility("default")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#define CHECK_EVERY 4096u /* calls per thread between heartbeat checks */
#define MAX_NEVENTS (1ull << 28)
#define MAX_NSTACKS (1ull << 20)
#define MAX_SAMPLE_BYTES (1ull << 40)
#define STACK_TABLE_BITS 16 /* (return address, sp) -> stack slot */
#define STACK_PROBES 32
#define SAMPLED_BITS 16 /* addresses of sampled live blocks */
#define SAMPLED_PROBES 64
#define SAMPLED_TOMB 1u /* a removed entry: never a block address */
#define FILTER_BITS 14  /* counts of sampled blocks per hash of the address */
#define SPIN_BEFORE_YIELD 128
#define WAIT_CHECK_NS 1000000ull
#define LOCK_WAIT_NS 2000000000ull

struct stack_entry {
    uint64_t tag; /* hash | 1, 0: free */
    uint64_t ret, sp;
    uint64_t val; /* stack slot + 1, 0: being filled */
};

struct thread_state {
    int64_t countdown; /* bytes until the next sample */
    uint64_t rng;
    uint32_t calls;
    uint32_t busy; /* inside the hook's own work: don't recurse */
    uint32_t gen;  /* run the countdown was drawn for */
};

enum target_id {
    T_MALLOC,
    T_CALLOC,
    T_REALLOC,
    T_REALLOCARRAY,
    T_FREE,
    T_POSIX_MEMALIGN,
    T_ALIGNED_ALLOC,
    T_MEMALIGN,
    T_VALLOC,
    T_PVALLOC,
    T_COUNT
};

void memhook_hook_free(void *p);

static struct memhook_target targets[T_COUNT] = {
    [T_MALLOC] = {"malloc", (uintptr_t)memhook_entry_malloc, 0},
    [T_CALLOC] = {"calloc", (uintptr_t)memhook_entry_calloc, 0},
    [T_REALLOC] = {"realloc", (uintptr_t)memhook_entry_realloc, 0},
    [T_REALLOCARRAY] = {"reallocarray", (uintptr_t)memhook_entry_reallocarray, 0},
    [T_FREE] = {"free", (uintptr_t)memhook_hook_free, 0},
    [T_POSIX_MEMALIGN] = {"posix_memalign", (uintptr_t)memhook_entry_posix_memalign, 0},
    [T_ALIGNED_ALLOC] = {"aligned_alloc", (uintptr_t)memhook_entry_aligned_alloc, 0},
    [T_MEMALIGN] = {"memalign", (uintptr_t)memhook_entry_memalign, 0},
    [T_VALLOC] = {"valloc", (uintptr_t)memhook_entry_valloc, 0},
    [T_PVALLOC] = {"pvalloc", (uintptr_t)memhook_entry_pvalloc, 0},
};

static struct {
    void *(*malloc)(size_t);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void *(*reallocarray)(void *, size_t, size_t);
    void (*free)(void *);
    int (*posix_memalign)(void **, size_t, size_t);
    void *(*aligned_alloc)(size_t, size_t);
    void *(*memalign)(size_t, size_t);
    void *(*valloc)(size_t);
    void *(*pvalloc)(size_t);
} real;

static struct {
    struct memring_header *ring; /* the last run's ring, or parked.h once released */
    size_t ring_size;            /* 0: ring is not a mapping of ours */
    struct memring_event *events;
    struct memring_stack *stacks;
    uint64_t mask; /* nevents - 1 */
    uint64_t nstacks;
    uint64_t sample_bytes;
    uint64_t loads; /* got_loads() when modules were last patched */
    uintptr_t pagesz;
    pid_t pid;
    uint32_t gen;
    int on;          /* hooks installed and recording */
    uint64_t off_ns; /* CLOCK_MONOTONIC when the hooks last went off */
    int stacks_full;
    int lock_owner; /* tid holding the install lock, 0: free */
    struct stack_entry *stack_table;
    uint64_t *sampled;
    uint8_t *filter;
    size_t tables_size;
} g;

/* What g points at once the ring is unmapped: a header that says stop, no stack slot, one event
 * slot. A thread that reads g again after the release (see memhook_release) is sent back to the
 * real function, or writes here, instead of into pages that are gone. */
static struct {
    struct memring_header h;
    struct memring_event ev;
} parked = {.h = {.stop = 1, .state = MEMRING_STATE_STOPPED}};

/* glibc's __tls_get_addr may allocate, through the hooks, on a thread's first use of a dlopen'ed
 * library's TLS: initial-exec never calls it. musl refuses initial-exec TLS in a dlopen'ed
 * library, and its __tls_get_addr never allocates (dlopen gave every thread its block). */
#ifdef __GLIBC__
#define TLS_MODEL __attribute__((tls_model("initial-exec")))
#else
#define TLS_MODEL
#endif
static __thread struct thread_state tls TLS_MODEL;

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* Install lock. The agent may call memhook_stop() from a thread it interrupted while that very
 * thread held the lock inside a hook: that is -EDEADLK for the agent to retry, not a hang. */
static int lock_take(bool wait)
{
    int self = gettid();
    uint64_t deadline = 0;

    for (;;) {
        int owner = 0;

        if (__atomic_compare_exchange_n(&g.lock_owner, &owner, self, false, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED))
            return 0;
        if (owner == self)
            return -EDEADLK;
        if (!wait)
            return -EBUSY;
        if (!deadline)
            deadline = now_ns() + LOCK_WAIT_NS;
        else if (now_ns() > deadline)
            return -EBUSY;
        sched_yield();
    }
}

static void lock_release(void)
{
    __atomic_store_n(&g.lock_owner, 0, __ATOMIC_RELEASE);
}

static bool heartbeat_stale(const struct memring_header *h, uint64_t now)
{
    uint64_t hb = __atomic_load_n(&h->heartbeat_ns, __ATOMIC_RELAXED);

    return now > hb && now - hb > MEMRING_HEARTBEAT_TIMEOUT_NS;
}

/* The pages stay in the file for the agent to drain; only this process's view goes. */
static void release_ring_pages(void)
{
    if (!g.ring_size)
        return;
    uint64_t start = (memring_events_offset() + g.pagesz - 1) & ~(uint64_t)(g.pagesz - 1);

    if (start < g.ring_size)
        madvise((char *)g.ring + start, g.ring_size - start, MADV_DONTNEED);
}

/* Called from a hook: the stop flag or a dead agent. */
static void unhook(uint32_t state)
{
    if (lock_take(false) < 0)
        return;
    if (__atomic_load_n(&g.on, __ATOMIC_RELAXED)) {
        got_restore_all();
        __atomic_store_n(&g.on, 0, __ATOMIC_RELAXED);
        g.off_ns = now_ns();
        __atomic_store_n(&g.ring->state, state, __ATOMIC_RELEASE);
        release_ring_pages();
    }
    lock_release();
}

static void patch_new_modules(void)
{
    struct got_stats st;
    uint64_t loads = got_loads();

    if (loads == __atomic_load_n(&g.loads, __ATOMIC_RELAXED) || lock_take(false) < 0)
        return;
    if (__atomic_load_n(&g.on, __ATOMIC_RELAXED) && got_patch_all(targets, T_COUNT, &st) == 0) {
        __atomic_fetch_add(&g.ring->modules_patched, st.modules, __ATOMIC_RELAXED);
        __atomic_fetch_add(&g.ring->slots_patched, st.slots, __ATOMIC_RELAXED);
        __atomic_store_n(&g.loads, loads, __ATOMIC_RELAXED);
    }
    lock_release();
}

static bool stop_requested(void)
{
    return __atomic_load_n(&g.ring->stop, __ATOMIC_RELAXED) != 0;
}

/* The checks a hook's slow path makes before recording; false: don't record. */
static bool housekeep(uint32_t calls)
{
    if (!__atomic_load_n(&g.on, __ATOMIC_RELAXED))
        return false;
    if (stop_requested()) {
        unhook(MEMRING_STATE_STOPPED);
        return false;
    }
    if (calls % CHECK_EVERY == 0) {
        if (heartbeat_stale(g.ring, now_ns())) {
            unhook(MEMRING_STATE_ABANDONED);
            return false;
        }
        patch_new_modules();
    }
    return true;
}

/* Waits for the agent to free a slot while it is alive; false: give the event up. */
static bool ring_wait(struct memring_header *h, uint64_t idx)
{
    uint64_t last = 0;

    for (unsigned i = 0;; i++) {
        uint64_t now;

        if (idx - __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE) <= g.mask)
            return true;
        if (__atomic_load_n(&h->state, __ATOMIC_RELAXED) != MEMRING_STATE_HOOKED)
            return false;
        if (i < SPIN_BEFORE_YIELD) {
            __builtin_ia32_pause();
            continue;
        }
        sched_yield();
        now = now_ns();
        if (now - last < WAIT_CHECK_NS)
            continue;
        last = now;
        if (heartbeat_stale(h, now))
            unhook(MEMRING_STATE_ABANDONED);
        else if (stop_requested())
            unhook(MEMRING_STATE_STOPPED);
    }
}

static void ring_push(uint32_t kind, const void *ptr, uint64_t size, uint32_t stack)
{
    struct memring_header *h = g.ring;
    uint64_t idx = __atomic_fetch_add(&h->head, 1, __ATOMIC_RELAXED);
    struct memring_event *ev;

    if (idx - __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE) > g.mask && !ring_wait(h, idx)) {
        __atomic_fetch_add(&h->lost, 1, __ATOMIC_RELAXED);
        return;
    }
    ev = &g.events[idx & g.mask];
    ev->ptr = (uint64_t)(uintptr_t)ptr;
    ev->size = size;
    ev->stack = stack;
    ev->kind = kind;
    __atomic_store_n(&ev->seq, idx + 1, __ATOMIC_RELEASE);
}

/* Copies the stack from sp up, stopping at the first unreadable page: process_vm_readv on
 * ourselves faults nothing and ends a transfer at the first iovec it cannot read. */
static uint32_t stack_copy(unsigned char *dst, uint64_t sp)
{
    struct iovec local = {dst, MEMRING_STACK_BYTES};
    struct iovec remote[MEMRING_STACK_BYTES / 4096 + 1];
    uint64_t a = sp, end = sp + MEMRING_STACK_BYTES;
    unsigned long n = 0;
    ssize_t r;

    while (a < end && n < sizeof(remote) / sizeof(remote[0])) {
        uint64_t next = (a | (g.pagesz - 1)) + 1;

        if (next > end)
            next = end;
        remote[n++] = (struct iovec){(void *)(uintptr_t)a, next - a};
        a = next;
    }
    r = process_vm_readv(g.pid, &local, 1, remote, n, 0);
    if (r >= 0)
        return (uint32_t)r;
    /* A seccomp policy may forbid the call; the page holding sp is certainly mapped. */
    memcpy(dst, (const void *)(uintptr_t)sp, remote[0].iov_len);
    return (uint32_t)remote[0].iov_len;
}

static uint32_t stack_new(const struct memhook_frame *f, uint64_t sp)
{
    struct memring_stack *s;
    uint64_t i;

    if (__atomic_load_n(&g.stacks_full, __ATOMIC_RELAXED))
        return MEMRING_STACK_NONE;
    i = __atomic_fetch_add(&g.ring->stacks_used, 1, __ATOMIC_RELAXED);
    if (i >= g.nstacks) {
        __atomic_store_n(&g.stacks_full, 1, __ATOMIC_RELAXED);
        return MEMRING_STACK_NONE;
    }
    s = &g.stacks[i];
    memset(s->regs, 0, sizeof(s->regs));
    s->regs[3] = f->rbx;
    s->regs[6] = f->rbp;
    s->regs[7] = sp;
    s->regs[12] = f->r12;
    s->regs[13] = f->r13;
    s->regs[14] = f->r14;
    s->regs[15] = f->r15;
    s->regs[16] = f->ret;
    s->sp = sp;
    s->len = stack_copy(s->data, sp);
    __atomic_store_n(&s->ready, 1, __ATOMIC_RELEASE);
    return (uint32_t)i;
}

/* The stack slot of the caller's call path, keyed by (return address, sp): the same path in the
 * same thread has the same sp. A new key copies the stack once. */
static uint32_t stack_slot(const struct memhook_frame *f)
{
    uint64_t ret = f->ret, sp = (uint64_t)(uintptr_t)(&f->ret + 1);
    uint64_t hash = mix64(ret ^ (sp * 0x9e3779b97f4a7c15ull)), tag = hash | 1;

    for (unsigned k = 0; k < STACK_PROBES; k++) {
        struct stack_entry *e = &g.stack_table[(hash + k) & ((1u << STACK_TABLE_BITS) - 1)];
        uint64_t t = __atomic_load_n(&e->tag, __ATOMIC_ACQUIRE);
        uint64_t v;

        if (t == 0 && __atomic_compare_exchange_n(&e->tag, &t, tag, false, __ATOMIC_ACQ_REL,
                                                  __ATOMIC_ACQUIRE)) {
            uint32_t slot;

            e->ret = ret;
            e->sp = sp;
            slot = stack_new(f, sp);
            __atomic_store_n(&e->val, (uint64_t)slot + 1, __ATOMIC_RELEASE);
            return slot;
        }
        if (t != tag)
            continue;
        v = __atomic_load_n(&e->val, __ATOMIC_ACQUIRE);
        if (v && e->ret == ret && e->sp == sp)
            return (uint32_t)(v - 1);
    }
    return MEMRING_STACK_NONE;
}

static uint64_t rng_next(struct thread_state *t)
{
    uint64_t x = t->rng;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    t->rng = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* Natural log without libm: x = m * 2^e, ln m by the atanh series, |s| <= 0.172. */
static double ln(double x)
{
    union {
        double d;
        uint64_t u;
    } v = {.d = x};
    int e = (int)((v.u >> 52) & 0x7ff) - 1023;
    double m, s, s2;

    v.u = (v.u & ((1ull << 52) - 1)) | (1023ull << 52);
    m = v.d;
    if (m > 1.4142135623730951) {
        m /= 2;
        e++;
    }
    s = (m - 1) / (m + 1);
    s2 = s * s;
    return e * 0.6931471805599453 +
           2 * s *
               (1 + s2 * (1.0 / 3 + s2 * (1.0 / 5 + s2 * (1.0 / 7 + s2 * (1.0 / 9 + s2 / 11)))));
}

/* Bytes to the next sample: exponential with mean sample_bytes, as tcmalloc and jemalloc. */
static int64_t sample_draw(struct thread_state *t)
{
    double u = (double)((rng_next(t) >> 11) + 1) * 0x1.0p-53; /* (0, 1] */
    double d = -ln(u) * (double)g.sample_bytes;

    return d < 1 ? 1 : d > 0x1.0p62 ? (int64_t)1 << 62 : (int64_t)d + 1;
}

/* Whether this allocation is sampled; called when the countdown ran out or on a new run. */
static bool sample_take(struct thread_state *t, size_t n)
{
    if (t->gen != g.gen) {
        static uint64_t seeds;

        if (!t->rng)
            t->rng = mix64((uintptr_t)t ^ now_ns() ^
                           __atomic_add_fetch(&seeds, 0x9e3779b97f4a7c15ull, __ATOMIC_RELAXED)) |
                     1;
        t->gen = g.gen;
        t->countdown = sample_draw(t) - (int64_t)n;
    }
    if (t->countdown > 0)
        return false;
    t->countdown = sample_draw(t);
    return true;
}

static uint8_t *filter_at(const void *p)
{
    return &g.filter[((uint64_t)(uintptr_t)p * 0x9e3779b97f4a7c15ull) >> (64 - FILTER_BITS)];
}

/* Saturated counts stay saturated: a false "maybe" only costs a set lookup. */
static void filter_add(const void *p, int delta)
{
    uint8_t *c = filter_at(p), v = __atomic_load_n(c, __ATOMIC_RELAXED);

    while (v != UINT8_MAX && !__atomic_compare_exchange_n(c, &v, (uint8_t)(v + delta), true,
                                                          __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

static bool sampled_insert(const void *p)
{
    uint64_t hash = mix64((uintptr_t)p);

    for (unsigned k = 0; k < SAMPLED_PROBES; k++) {
        uint64_t *e = &g.sampled[(hash + k) & ((1u << SAMPLED_BITS) - 1)];
        uint64_t v = __atomic_load_n(e, __ATOMIC_RELAXED);

        if ((v == 0 || v == SAMPLED_TOMB) &&
            __atomic_compare_exchange_n(e, &v, (uintptr_t)p, false, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
            filter_add(p, 1);
            return true;
        }
    }
    return false;
}

/* Entries only go from free to used to removed, so a probe may stop at the first free one. */
static bool sampled_remove(const void *p)
{
    uint64_t hash = mix64((uintptr_t)p);

    for (unsigned k = 0; k < SAMPLED_PROBES; k++) {
        uint64_t *e = &g.sampled[(hash + k) & ((1u << SAMPLED_BITS) - 1)];
        uint64_t v = __atomic_load_n(e, __ATOMIC_RELAXED);

        if (v == 0)
            return false;
        if (v == (uintptr_t)p) {
            __atomic_store_n(e, SAMPLED_TOMB, __ATOMIC_RELAXED);
            filter_add(p, -1);
            return true;
        }
    }
    return false;
}

static __attribute__((noinline)) void alloc_slow(struct thread_state *t, const void *p, size_t n,
                                                 const struct memhook_frame *f, uint32_t calls)
{
    uint32_t stack;

    if (t->busy)
        return;
    t->busy = 1;
    if (!housekeep(calls) || (g.sample_bytes && !sample_take(t, n)))
        goto out;
    stack = stack_slot(f);
    if (g.sample_bytes && !sampled_insert(p)) {
        __atomic_fetch_add(&g.ring->sampled_full, 1, __ATOMIC_RELAXED);
        goto out;
    }
    ring_push(MEMRING_ALLOC, p, n, stack);
out:
    t->busy = 0;
}

static inline __attribute__((always_inline)) void note_alloc(const void *p, size_t n,
                                                             const struct memhook_frame *f)
{
    struct thread_state *t = &tls;
    uint32_t calls = ++t->calls;

    if (g.sample_bytes) {
        t->countdown -= (int64_t)n;
        if (likely(t->countdown > 0) && likely(calls % CHECK_EVERY != 0) &&
            likely(!stop_requested()))
            return;
    }
    alloc_slow(t, p, n, f, calls);
}

/* true: a FREE was recorded (sampled mode: the block was a sampled one). */
static __attribute__((noinline)) bool free_slow(struct thread_state *t, const void *p,
                                                uint32_t calls)
{
    bool recorded = false;

    if (t->busy)
        return false;
    t->busy = 1;
    if (housekeep(calls) && (!g.sample_bytes || sampled_remove(p))) {
        ring_push(MEMRING_FREE, p, 0, MEMRING_STACK_NONE);
        recorded = true;
    }
    t->busy = 0;
    return recorded;
}

static inline __attribute__((always_inline)) bool note_free(const void *p)
{
    struct thread_state *t = &tls;
    uint32_t calls = ++t->calls;

    if (g.sample_bytes && likely(calls % CHECK_EVERY != 0) && likely(!stop_requested()) &&
        likely(__atomic_load_n(filter_at(p), __ATOMIC_RELAXED) == 0))
        return false;
    return free_slow(t, p, calls);
}

/* realloc failed after its old block was recorded as freed: the block lives on. */
static void note_unfreed(void *old, const struct memhook_frame *f)
{
    struct thread_state *t = &tls;
    size_t n = malloc_usable_size(old);

    if (t->busy)
        return;
    t->busy = 1;
    if (!g.sample_bytes || sampled_insert(old))
        ring_push(MEMRING_ALLOC, old, n, stack_slot(f));
    t->busy = 0;
}

void memhook_hook_free(void *p)
{
    if (p)
        note_free(p);
    real.free(p);
}

void *memhook_c_malloc(size_t n, const struct memhook_frame *f)
{
    void *p = real.malloc(n);

    if (likely(p != NULL))
        note_alloc(p, n, f);
    return p;
}

void *memhook_c_calloc(size_t nmemb, size_t size, const struct memhook_frame *f)
{
    void *p = real.calloc(nmemb, size);

    if (likely(p != NULL))
        note_alloc(p, nmemb * size, f);
    return p;
}

/* The old block is recorded freed before realloc runs: once it returns, another thread may
 * already have been given the same address and recorded it. */
void *memhook_c_realloc(void *old, size_t n, const struct memhook_frame *f)
{
    bool freed = old && note_free(old);
    void *p = real.realloc(old, n);

    if (p)
        note_alloc(p, n, f);
    else if (freed && n)
        note_unfreed(old, f);
    return p;
}

void *memhook_c_reallocarray(void *old, size_t nmemb, size_t size, const struct memhook_frame *f)
{
    size_t n;

    if (__builtin_mul_overflow(nmemb, size, &n))
        return real.reallocarray(old, nmemb, size);
    return memhook_c_realloc(old, n, f);
}

int memhook_c_posix_memalign(void **out, size_t align, size_t n, const struct memhook_frame *f)
{
    int r = real.posix_memalign(out, align, n);

    if (r == 0)
        note_alloc(*out, n, f);
    return r;
}

void *memhook_c_aligned_alloc(size_t align, size_t n, const struct memhook_frame *f)
{
    void *p = real.aligned_alloc(align, n);

    if (p)
        note_alloc(p, n, f);
    return p;
}

void *memhook_c_memalign(size_t align, size_t n, const struct memhook_frame *f)
{
    void *p = real.memalign(align, n);

    if (p)
        note_alloc(p, n, f);
    return p;
}

void *memhook_c_valloc(size_t n, const struct memhook_frame *f)
{
    void *p = real.valloc(n);

    if (p)
        note_alloc(p, n, f);
    return p;
}

void *memhook_c_pvalloc(size_t n, const struct memhook_frame *f)
{
    void *p = real.pvalloc(n);

    if (p)
        note_alloc(p, n, f);
    return p;
}

/* A forked child must not write its allocations into its parent's ring. */
static void atfork_child(void)
{
    __atomic_store_n(&g.lock_owner, 0, __ATOMIC_RELAXED);
    if (!g.on)
        return;
    got_restore_all();
    g.on = 0;
    g.off_ns = now_ns();
}

/* The definition that calls of t->name are bound to. A non-PIE executable that takes a
 * function's address gets a canonical PLT entry for it: an undefined symbol with a value, which
 * dlsym finds first. That is what &name is in the whole process, but not the definition: hooking
 * only slots holding it would miss every call, and calling it from a hook would recurse through
 * the executable's hooked slot. The loader binds the executable's own calls past it, to the
 * definition (the first one in the search order after the executable, an allocator preloaded
 * ahead of libc included); before that first call (lazy binding) it stays unresolved here. */
static void resolve(struct memhook_target *t)
{
    void *p = dlsym(RTLD_DEFAULT, t->name);
    bool canonical;
    uintptr_t bound;

    t->real = (uintptr_t)p;
    if (!p)
        return;
    bound = got_plt_binding((uintptr_t)p, t->name, &canonical);
    if (!canonical)
        return;
    t->canonical = (uintptr_t)p;
    t->real = bound;
}

/* Resolves the real functions, maps the private tables and registers the fork handler, once. */
static int setup_once(void)
{
    static bool done;
    size_t stack_bytes = sizeof(struct stack_entry) << STACK_TABLE_BITS;
    size_t sampled_bytes = sizeof(uint64_t) << SAMPLED_BITS;
    void *tables;

    if (done)
        return 0;
    for (size_t i = 0; i < T_COUNT; i++)
        resolve(&targets[i]);
    if (!targets[T_MALLOC].real || !targets[T_CALLOC].real || !targets[T_REALLOC].real ||
        !targets[T_FREE].real)
        return -ENOENT;
    memcpy(&real.malloc, &targets[T_MALLOC].real, sizeof(real.malloc));
    memcpy(&real.calloc, &targets[T_CALLOC].real, sizeof(real.calloc));
    memcpy(&real.realloc, &targets[T_REALLOC].real, sizeof(real.realloc));
    memcpy(&real.reallocarray, &targets[T_REALLOCARRAY].real, sizeof(real.reallocarray));
    memcpy(&real.free, &targets[T_FREE].real, sizeof(real.free));
    memcpy(&real.posix_memalign, &targets[T_POSIX_MEMALIGN].real, sizeof(real.posix_memalign));
    memcpy(&real.aligned_alloc, &targets[T_ALIGNED_ALLOC].real, sizeof(real.aligned_alloc));
    memcpy(&real.memalign, &targets[T_MEMALIGN].real, sizeof(real.memalign));
    memcpy(&real.valloc, &targets[T_VALLOC].real, sizeof(real.valloc));
    memcpy(&real.pvalloc, &targets[T_PVALLOC].real, sizeof(real.pvalloc));

    g.tables_size = stack_bytes + sampled_bytes + ((size_t)1 << FILTER_BITS);
    tables = mmap(NULL, g.tables_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (tables == MAP_FAILED)
        return -errno;
    if (pthread_atfork(NULL, NULL, atfork_child) != 0) {
        munmap(tables, g.tables_size);
        return -ENOMEM;
    }
    g.stack_table = tables;
    g.sampled = (uint64_t *)((char *)tables + stack_bytes);
    g.filter = (uint8_t *)tables + stack_bytes + sampled_bytes;
    g.pagesz = getauxval(AT_PAGESZ);
    done = true;
    return 0;
}

static bool ring_valid(const struct memring_header *h, size_t size)
{
    uint64_t n = h->nevents;

    return h->version == MEMRING_VERSION && h->header_size == sizeof(*h) && n > 0 &&
           n <= MAX_NEVENTS && (n & (n - 1)) == 0 && h->nstacks <= MAX_NSTACKS &&
           h->sample_bytes <= MAX_SAMPLE_BYTES && h->events_offset == memring_events_offset() &&
           h->stacks_offset == memring_stacks_offset(n) && memring_size(n, h->nstacks) <= size &&
           h->state == MEMRING_STATE_NEW;
}

/* Maps the ring file and checks its header. A file with the right magic but a bad header gets
 * hook_error, so the agent learns why. */
static int ring_map(const char *path, struct memring_header **ret_ring, size_t *ret_size)
{
    struct memring_header *h;
    struct stat st;
    int fd, r = 0;

    fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0) {
        r = -errno;
        goto out;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size < sizeof(*h)) {
        r = -EINVAL;
        goto out;
    }
    h = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (h == MAP_FAILED) {
        r = -errno;
        goto out;
    }
    if (h->magic != MEMRING_MAGIC || !ring_valid(h, (size_t)st.st_size)) {
        if (h->magic == MEMRING_MAGIC)
            __atomic_store_n(&h->hook_error, -EINVAL, __ATOMIC_RELAXED);
        munmap(h, (size_t)st.st_size);
        r = -EINVAL;
        goto out;
    }
    *ret_ring = h;
    *ret_size = (size_t)st.st_size;
out:
    close(fd);
    return r;
}

MEMHOOK_EXPORT int memhook_start(const char *ring_path)
{
    struct memring_header *h = NULL;
    struct got_stats st;
    size_t size = 0;
    int r = lock_take(true);

    if (r < 0)
        return r;
    if (g.on) {
        r = -EBUSY;
        goto out;
    }
    r = ring_map(ring_path, &h, &size);
    if (r < 0)
        goto out;
    r = setup_once();
    if (r == 0 && heartbeat_stale(h, now_ns()))
        r = -ETIMEDOUT;
    if (r < 0) {
        __atomic_store_n(&h->hook_error, r, __ATOMIC_RELAXED);
        munmap(h, size);
        goto out;
    }
    /* A thread could still be inside a hook of the previous run; a whole run later, none is. */
    if (g.ring_size)
        munmap(g.ring, g.ring_size);
    madvise(g.stack_table, g.tables_size, MADV_DONTNEED);
    g.ring = h;
    g.ring_size = size;
    g.events = (struct memring_event *)((char *)h + h->events_offset);
    g.stacks = (struct memring_stack *)((char *)h + h->stacks_offset);
    g.mask = h->nevents - 1;
    g.nstacks = h->nstacks;
    g.sample_bytes = h->sample_bytes;
    g.pid = getpid();
    g.gen++;
    g.stacks_full = 0;
    g.loads = got_loads();
    __atomic_store_n(&h->state, MEMRING_STATE_HOOKED, __ATOMIC_RELEASE);
    __atomic_store_n(&g.on, 1, __ATOMIC_RELEASE);
    r = got_patch_all(targets, T_COUNT, &st);
    if (r == 0 && st.slots == 0)
        r = -ENOENT;
    if (r < 0) {
        got_restore_all();
        __atomic_store_n(&g.on, 0, __ATOMIC_RELAXED);
        g.off_ns = now_ns();
        __atomic_store_n(&h->hook_error, r, __ATOMIC_RELAXED);
        __atomic_store_n(&h->state, MEMRING_STATE_NEW, __ATOMIC_RELEASE);
        goto out;
    }
    __atomic_store_n(&h->modules_patched, st.modules, __ATOMIC_RELAXED);
    __atomic_store_n(&h->slots_patched, st.slots, __ATOMIC_RELAXED);
out:
    lock_release();
    return r;
}

MEMHOOK_EXPORT int memhook_stop(void)
{
    int r = lock_take(true);

    if (r < 0)
        return r;
    if (!g.ring) {
        r = -ENXIO;
        goto out;
    }
    if (g.on) {
        r = got_restore_all();
        __atomic_store_n(&g.on, 0, __ATOMIC_RELAXED);
        g.off_ns = now_ns();
        __atomic_store_n(&g.ring->state, MEMRING_STATE_STOPPED, __ATOMIC_RELEASE);
    }
    release_ring_pages();
out:
    lock_release();
    return r;
}

/* Unmaps the ring memhook_stop() left mapped, when no thread can still be using it. Counting the
 * threads inside a hook would cost every allocation two atomic operations on a line all threads
 * share; time is the cheap proof instead. Once the GOT is restored no call enters a hook, and a
 * call that entered before leaves it within one call of the real function: ring_wait() gives up
 * as soon as the state is not HOOKED, the lock is never waited for in a hook, the rest is
 * straight-line code. So MEMRING_RELEASE_QUIET_NS after the hooks went off, only a thread that
 * did not run all that time (stopped, traced, in uninterruptible sleep) could be inside one: the
 * agent checks that none is before it calls (memprof_release). Should one be there all the same,
 * g points at `parked` from here on, so whatever it reads from g again stops it harmlessly.
 * 0: unmapped; -ENXIO: no ring is mapped; -EBUSY: the hooks are on (a run is under way);
 * -EAGAIN: too early, or the lock is held (by the calling thread itself: -EDEADLK). */
MEMHOOK_EXPORT int memhook_release(void)
{
    struct memring_header *ring;
    int r = lock_take(true);

    if (r < 0)
        return r == -EBUSY ? -EAGAIN : r;
    if (!g.ring_size)
        r = -ENXIO;
    else if (__atomic_load_n(&g.on, __ATOMIC_RELAXED))
        r = -EBUSY;
    else if (now_ns() - g.off_ns < MEMRING_RELEASE_QUIET_NS)
        r = -EAGAIN;
    if (r < 0)
        goto out;
    ring = g.ring;
    /* Bounds first, the header last: a thread that reads parked.h from g also reads the bounds
     * that keep it inside parked. */
    __atomic_store_n(&g.stacks_full, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&g.nstacks, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&g.mask, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&g.events, &parked.ev, __ATOMIC_RELEASE);
    __atomic_store_n(&g.ring, &parked.h, __ATOMIC_RELEASE);
    munmap(ring, g.ring_size);
    g.ring_size = 0;
out:
    lock_release();
    return r;
}
