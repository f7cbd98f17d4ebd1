/* Tests of the injected allocation hooks (engine/memory/hook/): loads the built library into this
 * process as the agent's injection would, drains its ring as the agent does, and checks events,
 * stacks, sampling, the GOT after stop, the heartbeat timeout, fork and the ring's release. Then
 * through the engine (memprof.c injecting into another process), in both shapes of executable: a
 * PIE one and build/workloads/canonical_plt, not PIE and taking malloc's address (a canonical PLT
 * entry, as Debian's python3.11): every allocation is counted, the address the program sees as
 * &malloc stays what it was, and the GOTs are byte for byte as before once the hooks are gone;
 * and the ring unmapped from outside (memprof_release) only when that is safe. */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "os/inject.h"
#include "memory/memprof.h"
#include "memory/memring.h"
#include "os/procfs.h"
#include "testutil.h"
#include "unwind/stacks.h"

#define ITERATIONS 3000
#define DRAIN_CAP (1u << 20)
#define LIVE_BITS 20
#define MARK_RBX 0x1111222233334444ull
#define MARK_R12 0x5555666677778888ull
#define MARK_STACK 0x0123456789abcdefull

struct ring {
    struct memring_header *h;
    size_t size;
    char path[256];
};

/* Events as drained, in ring order; mmap'd so that draining allocates nothing. */
struct drained {
    struct memring_event *ev;
    size_t n;
};

struct live_entry {
    uint64_t ptr, size;
};

static int (*hook_start)(const char *path);
static int (*hook_stop)(void);
static int (*hook_release)(void);
static char tmpdir[] = "/tmp/test_memhook.XXXXXX";
static struct drained drained;
static struct live_entry *live;
static volatile int consumer_done;

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *volatile sink;

/* GCC drops a malloc whose block is only freed: go through a volatile. */
static void alloc_free(size_t n)
{
    sink = malloc(n);
    free(sink);
}

/* What this executable's own GOT says malloc is: patched, it is the hook's address. */
static __attribute__((noinline)) uintptr_t malloc_address(void)
{
    void *(*volatile fp)(size_t) = malloc;

    return (uintptr_t)fp;
}

static void ring_create(struct ring *r, const char *name, uint64_t nevents, uint64_t nstacks,
                        uint64_t sample_bytes)
{
    int fd;

    snprintf(r->path, sizeof(r->path), "%s/%s", tmpdir, name);
    r->size = memring_size(nevents, nstacks);
    fd = open(r->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)r->size), 0);
    r->h = mmap(NULL, r->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(r->h != MAP_FAILED);
    close(fd);
    r->h->magic = MEMRING_MAGIC;
    r->h->version = MEMRING_VERSION;
    r->h->header_size = sizeof(*r->h);
    r->h->nevents = nevents;
    r->h->nstacks = nstacks;
    r->h->sample_bytes = sample_bytes;
    r->h->events_offset = memring_events_offset();
    r->h->stacks_offset = memring_stacks_offset(nevents);
    r->h->heartbeat_ns = now_ns();
}

static void ring_destroy(struct ring *r)
{
    munmap(r->h, r->size);
    unlink(r->path);
}

static struct memring_event *ring_event(struct ring *r, uint64_t idx)
{
    struct memring_event *ev = (void *)((char *)r->h + r->h->events_offset);

    return &ev[idx & (r->h->nevents - 1)];
}

static struct memring_stack *ring_stack(struct ring *r, uint32_t slot)
{
    struct memring_stack *s = (void *)((char *)r->h + r->h->stacks_offset);

    return slot < r->h->nstacks ? &s[slot] : NULL;
}

/* The agent's side: consume complete events in order, then free their slots. */
static size_t ring_drain(struct ring *r)
{
    uint64_t tail = __atomic_load_n(&r->h->tail, __ATOMIC_RELAXED);
    size_t n = 0;

    for (;;) {
        struct memring_event *ev = ring_event(r, tail);

        if (__atomic_load_n(&ev->seq, __ATOMIC_ACQUIRE) != tail + 1)
            break;
        if (drained.n < DRAIN_CAP)
            drained.ev[drained.n++] = *ev;
        tail++;
        n++;
    }
    __atomic_store_n(&r->h->tail, tail, __ATOMIC_RELEASE);
    __atomic_store_n(&r->h->heartbeat_ns, now_ns(), __ATOMIC_RELAXED);
    return n;
}

static void *consumer_main(void *arg)
{
    while (!consumer_done)
        if (ring_drain(arg) == 0)
            sched_yield();
    ring_drain(arg);
    return NULL;
}

/* All producers are done: every reserved event must be complete, no hole anywhere. */
static void drain_all(struct ring *r)
{
    uint64_t head = __atomic_load_n(&r->h->head, __ATOMIC_RELAXED);

    ring_drain(r);
    assert_int_equal(r->h->tail, head);
}

static struct live_entry *live_find(uint64_t ptr, int insert)
{
    uint64_t mask = (1u << LIVE_BITS) - 1, i = (ptr * 0x9e3779b97f4a7c15ull) >> (64 - LIVE_BITS);

    for (;; i = (i + 1) & mask) {
        if (live[i].ptr == ptr)
            return &live[i];
        if (live[i].ptr == 0)
            return insert ? &live[i] : NULL;
    }
}

/* Replays the drained events the way the agent builds its live set. A block allocated while
 * recorded as live means a FREE came after the reuse of its address. Returns the FREE events
 * of blocks never recorded as allocated. */
static size_t replay(int (*ours)(uint64_t size), size_t *ret_live_ours)
{
    size_t unknown_frees = 0, live_ours = 0;

    memset(live, 0, sizeof(*live) << LIVE_BITS);
    for (size_t i = 0; i < drained.n; i++) {
        struct memring_event *ev = &drained.ev[i];
        struct live_entry *e = live_find(ev->ptr, ev->kind == MEMRING_ALLOC);

        if (ev->kind == MEMRING_ALLOC) {
            assert_int_equal(e->ptr, 0);
            e->ptr = ev->ptr;
            e->size = ev->size;
        } else {
            assert_int_equal(ev->kind, MEMRING_FREE);
            if (!e)
                unknown_frees++;
            else
                e->ptr = 1; /* a tombstone: keeps probe chains intact */
        }
    }
    for (size_t i = 0; i < (1u << LIVE_BITS); i++)
        if (live[i].ptr > 1 && ours(live[i].size))
            live_ours++;
    *ret_live_ours = live_ours;
    return unknown_frees;
}

static size_t count_allocs(uint64_t size)
{
    size_t n = 0;

    for (size_t i = 0; i < drained.n; i++)
        n += drained.ev[i].kind == MEMRING_ALLOC && drained.ev[i].size == size;
    return n;
}

/* Calls malloc with known callee-saved registers and a known word on the stack. */
static __attribute__((noinline)) void *alloc_marked(size_t n, uint64_t *ret_sp)
{
    void *p;
    uint64_t sp;

    __asm__ volatile("sub $128, %%rsp\n\t" /* step over the red zone */
                     "movabs $0x0123456789abcdef, %%rax\n\t"
                     "push %%rax\n\t"
                     "push %%rbx\n\t"
                     "push %%r12\n\t"
                     "push %%rbp\n\t"
                     "mov %%rsp, %%rbp\n\t"
                     "and $-16, %%rsp\n\t"
                     "movabs $0x1111222233334444, %%rbx\n\t"
                     "movabs $0x5555666677778888, %%r12\n\t"
                     "call malloc@PLT\n\t"
                     "mov %%rsp, %%rdx\n\t"
                     "mov %%rbp, %%rsp\n\t"
                     "pop %%rbp\n\t"
                     "pop %%r12\n\t"
                     "pop %%rbx\n\t"
                     "add $136, %%rsp\n\t"
                     : "=a"(p), "=d"(sp), "+D"(n)
                     :
                     : "rcx", "rsi", "r8", "r9", "r10", "r11", "memory", "cc", "xmm0", "xmm1",
                       "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
                       "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    *ret_sp = sp;
    return p;
}

/* A worker runs on a stack of its own with an inaccessible page right above it, so a stack
 * copy that starts near the top must stop exactly there. */
#define WORKER_STACK (64 * 1024)

struct worker {
    pthread_t thread;
    unsigned id;
    unsigned char *stack; /* WORKER_STACK bytes, then the guard page */
};

/* Sizes no other code in this process allocates: 4000 + 100 * thread + call. */
static uint64_t work_size(unsigned id, unsigned call)
{
    return 4000 + 100 * id + call;
}

static int is_work_size(uint64_t size)
{
    return size >= 4000 && size < 4200 && size % 100 < 8;
}

/* strdup's block: too small a size to be unique, so only counted with its libc stack. */
static uint64_t strdup_size(unsigned id)
{
    return 6 + id;
}

/* Under ASan strdup is the sanitizer's own and never reaches libc's GOT. */
static int strdup_in_libc(void)
{
    Dl_info info;

    return dladdr((void *)strdup, &info) && info.dli_fname && strstr(info.dli_fname, "libc.so");
}

static __attribute__((noinline)) void work(unsigned id)
{
    char text[64];

    memset(text, 'x', sizeof(text));
    text[strdup_size(id) - 1] = '\0';
    for (unsigned i = 0; i < ITERATIONS; i++) {
        void *a = malloc(work_size(id, 0));
        void *b = calloc(1, work_size(id, 1));
        void *c = realloc(NULL, work_size(id, 3));
        void *d = NULL, *e;
        char *s;

        a = realloc(a, work_size(id, 2));
        assert_int_equal(posix_memalign(&d, 64, work_size(id, 4)), 0);
        e = aligned_alloc(64, 4096 + 64 * id);
        s = strdup(text);
        assert_non_null(a);
        assert_non_null(b);
        assert_non_null(c);
        assert_non_null(e);
        assert_non_null(s);
        free(s);
        free(e);
        free(d);
        free(c);
        free(b);
        free(a);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    work(w->id);
    return NULL;
}

static void worker_start(struct worker *w)
{
    pthread_attr_t attr;

    w->stack =
        mmap(NULL, WORKER_STACK + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(w->stack != MAP_FAILED);
    assert_int_equal(mprotect(w->stack + WORKER_STACK, 4096, PROT_NONE), 0);
    assert_int_equal(pthread_attr_init(&attr), 0);
    assert_int_equal(pthread_attr_setstack(&attr, w->stack, WORKER_STACK), 0);
    assert_int_equal(pthread_create(&w->thread, &attr, worker_main, w), 0);
    pthread_attr_destroy(&attr);
}

/* The worker whose stack holds sp, or NULL. */
static struct worker *worker_of(struct worker *w, size_t n, uint64_t sp)
{
    for (size_t i = 0; i < n; i++)
        if (sp >= (uintptr_t)w[i].stack && sp < (uintptr_t)w[i].stack + WORKER_STACK)
            return &w[i];
    return NULL;
}

static int lib_setup(void **state)
{
    char path[512];
    const char *b = getenv("BUILD");
    void *lib;

    (void)state;
    snprintf(path, sizeof(path), "%s/libprofiler-agent-memhook.so", b && *b ? b : "build");
    lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "%s\n", dlerror());
        return -1;
    }
    hook_start = (int (*)(const char *))dlsym(lib, "memhook_start");
    hook_stop = (int (*)(void))dlsym(lib, "memhook_stop");
    hook_release = (int (*)(void))dlsym(lib, "memhook_release");
    if (!hook_start || !hook_stop || !hook_release || !mkdtemp(tmpdir))
        return -1;
    drained.ev = mmap(NULL, DRAIN_CAP * sizeof(*drained.ev), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    live = mmap(NULL, sizeof(*live) << LIVE_BITS, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return drained.ev == MAP_FAILED || live == MAP_FAILED ? -1 : 0;
}

/* Also removes the rings of tests that failed before cleaning up. */
static int lib_teardown(void **state)
{
    DIR *d = opendir(tmpdir);
    struct dirent *e;

    (void)state;
    while (d && (e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            unlinkat(dirfd(d), e->d_name, 0);
    if (d)
        closedir(d);
    rmdir(tmpdir);
    return 0;
}

/* A failed test must not leave the hooks on for the next one. */
static int unhook_teardown(void **state)
{
    (void)state;
    hook_stop();
    return 0;
}

static void test_stop_before_start(void **state)
{
    (void)state;
    assert_int_equal(hook_stop(), -ENXIO);
    assert_int_equal(hook_release(), -ENXIO);
}

static void test_rejects_bad_rings(void **state)
{
    uintptr_t before = malloc_address();
    struct ring r;

    (void)state;
    ring_create(&r, "bad", 1u << 10, 4, 0);
    r.h->magic = 0;
    assert_int_equal(hook_start(r.path), -EINVAL);
    r.h->magic = MEMRING_MAGIC;
    r.h->nevents = 1000; /* not a power of two */
    assert_int_equal(hook_start(r.path), -EINVAL);
    assert_int_equal(r.h->hook_error, -EINVAL);
    r.h->nevents = 1u << 10;
    r.h->hook_error = 0;
    r.h->heartbeat_ns = now_ns() - 3 * MEMRING_HEARTBEAT_TIMEOUT_NS;
    assert_int_equal(hook_start(r.path), -ETIMEDOUT);
    assert_int_equal(r.h->hook_error, -ETIMEDOUT);
    assert_int_equal(r.h->state, MEMRING_STATE_NEW);
    assert_int_equal(r.h->slots_patched, 0);
    assert_int_equal(hook_start("/nonexistent/ring"), -ENOENT);
    assert_true(malloc_address() == before);
    ring_destroy(&r);
}

/* A worker's call: sp in its stack, and the copy stopped at the guard page or was full. */
static void check_stack_regs(struct ring *r, uint32_t slot, const struct worker *w)
{
    struct memring_stack *s = ring_stack(r, slot);
    uint64_t top = (uintptr_t)w->stack + WORKER_STACK;

    assert_non_null(s);
    assert_int_equal(__atomic_load_n(&s->ready, __ATOMIC_ACQUIRE), 1);
    assert_int_equal(s->regs[7], s->sp);
    assert_true(s->sp >= (uintptr_t)w->stack && s->sp < top);
    assert_true(s->len == MEMRING_STACK_BYTES || s->sp + s->len == top);
    assert_true(s->sp + s->len <= top);
}

static void test_records_two_threads(void **state)
{
    uintptr_t before = malloc_address(), base = (uintptr_t)work, marked_sp;
    struct worker w[2] = {{.id = 0}, {.id = 1}};
    size_t stacks_checked = 0, libc_stacks = 0, truncated = 0, live_ours;
    pthread_t consumer;
    struct memring_stack *s;
    uint64_t head;
    struct ring r;
    Dl_info info;
    void *marked;

    (void)state;
    ring_create(&r, "two_threads", 1u << 12, 256, 0);
    drained.n = 0;
    consumer_done = 0;
    assert_int_equal(pthread_create(&consumer, NULL, consumer_main, &r), 0);
    assert_int_equal(hook_start(r.path), 0);
    assert_int_equal(r.h->state, MEMRING_STATE_HOOKED);
    assert_int_equal(hook_start(r.path), -EBUSY);
    assert_true(r.h->modules_patched >= 2); /* this program and libc */
    assert_true(r.h->slots_patched >= 4);
    assert_true(malloc_address() != before);

    marked = alloc_marked(4321, &marked_sp);
    /* One arena for all threads, and blocks too big for the per-thread caches: an address one
     * worker frees is soon another's, which is what a FREE recorded late would get wrong.
     * (ASan's allocator ignores the setting.) */
    mallopt(M_ARENA_MAX, 1);
    for (unsigned i = 0; i < 2; i++)
        worker_start(&w[i]);
    for (unsigned i = 0; i < 2; i++)
        assert_int_equal(pthread_join(w[i].thread, NULL), 0);
    free(marked);

    assert_int_equal(hook_stop(), 0);
    assert_int_equal(r.h->state, MEMRING_STATE_STOPPED);
    assert_true(malloc_address() == before);
    consumer_done = 1;
    assert_int_equal(pthread_join(consumer, NULL), 0);
    drain_all(&r);
    assert_true(drained.n < DRAIN_CAP);
    assert_int_equal(r.h->lost, 0);

    /* Nothing is recorded once stopped. */
    head = r.h->head;
    alloc_free(4321);
    assert_int_equal(r.h->head, head);

    /* Each call of each thread, each iteration; strdup's comes through libc's own GOT. */
    for (unsigned id = 0; id < 2; id++) {
        for (unsigned call = 0; call <= 4; call++)
            assert_int_equal(count_allocs(work_size(id, call)), ITERATIONS);
        assert_int_equal(count_allocs(4096 + 64 * id), ITERATIONS);
        if (strdup_in_libc())
            assert_true(count_allocs(strdup_size(id)) >= ITERATIONS);
    }
    replay(is_work_size, &live_ours);
    assert_int_equal(live_ours, 0);

    for (size_t i = 0; i < drained.n; i++) {
        struct memring_event *ev = &drained.ev[i];

        if (ev->kind != MEMRING_ALLOC)
            continue;
        if (ev->size == 4321) {
            s = ring_stack(&r, ev->stack);
            assert_non_null(s);
            assert_true(s->regs[16] > (uintptr_t)alloc_marked &&
                        s->regs[16] < (uintptr_t)alloc_marked + 256);
            assert_int_equal(s->sp, marked_sp);
            assert_int_equal(s->regs[3], MARK_RBX);
            assert_int_equal(s->regs[12], MARK_R12);
            assert_true(s->regs[6] >= s->sp && s->regs[6] - s->sp < 16);
            assert_true(s->len >= s->regs[6] - s->sp + 32);
            assert_memory_equal(&s->data[s->regs[6] - s->sp + 24], &(uint64_t){MARK_STACK}, 8);
        }
        for (unsigned id = 0; id < 2; id++) {
            if (ev->size == work_size(id, 0)) {
                s = ring_stack(&r, ev->stack);
                assert_non_null(s);
                assert_true(worker_of(w, 2, s->sp) == &w[id]);
                check_stack_regs(&r, ev->stack, &w[id]);
                assert_true(s->regs[16] > base && s->regs[16] < base + 4096);
                truncated += s->len < MEMRING_STACK_BYTES;
                stacks_checked++;
            } else if (ev->size == strdup_size(id) && ev->stack != MEMRING_STACK_NONE) {
                s = ring_stack(&r, ev->stack);
                if (!worker_of(w, 2, s->sp))
                    continue;
                assert_true(dladdr((void *)(uintptr_t)s->regs[16], &info) != 0);
                assert_non_null(strstr(info.dli_fname, "libc.so"));
                check_stack_regs(&r, ev->stack, worker_of(w, 2, s->sp));
                libc_stacks++;
            }
        }
    }
    assert_int_equal(stacks_checked, 2 * ITERATIONS);
    assert_int_equal(truncated, stacks_checked); /* work() runs near the top of its stack */
    assert_true(libc_stacks > 0 || !strdup_in_libc());
    for (unsigned i = 0; i < 2; i++)
        munmap(w[i].stack, WORKER_STACK + 4096);
    ring_destroy(&r);
}

static int is_sampled_size(uint64_t size)
{
    return size == 1000;
}

static void test_sampling(void **state)
{
    enum { N = 20000, SAMPLE = 65536 };
    static void *blocks[N];
    size_t sampled, unknown, live_ours;
    struct ring r;

    (void)state;
    ring_create(&r, "sampling", 1u << 14, 64, SAMPLE);
    drained.n = 0;
    assert_int_equal(hook_start(r.path), 0);
    for (unsigned i = 0; i < N; i++)
        blocks[i] = malloc(1000);
    for (unsigned i = 0; i < N; i++)
        free(blocks[i]);
    assert_int_equal(hook_stop(), 0);
    drain_all(&r);

    /* N * 1000 / SAMPLE = 305 expected; the bounds are over 8 standard deviations wide. */
    sampled = count_allocs(1000);
    assert_true(sampled >= 150 && sampled <= 600);
    unknown = replay(is_sampled_size, &live_ours);
    assert_int_equal(unknown, 0);   /* only sampled blocks are recorded freed */
    assert_int_equal(live_ours, 0); /* and every sampled block was */
    assert_int_equal(r.h->sampled_full, 0);
    ring_destroy(&r);
}

static void test_stop_flag(void **state)
{
    uintptr_t before = malloc_address();
    struct ring r;

    (void)state;
    ring_create(&r, "stop_flag", 1u << 10, 4, 0);
    assert_int_equal(hook_start(r.path), 0);
    assert_true(malloc_address() != before);
    r.h->stop = 1;
    alloc_free(16);
    assert_int_equal(r.h->state, MEMRING_STATE_STOPPED);
    assert_true(malloc_address() == before);
    assert_int_equal(hook_stop(), 0);
    ring_destroy(&r);
}

static void test_heartbeat_timeout(void **state)
{
    uintptr_t before = malloc_address();
    uint64_t head;
    struct ring r;

    (void)state;
    ring_create(&r, "heartbeat", 1u << 16, 4, 0);
    assert_int_equal(hook_start(r.path), 0);
    r.h->heartbeat_ns = now_ns() - 2 * MEMRING_HEARTBEAT_TIMEOUT_NS;
    for (unsigned i = 0; i < 3 * 4096; i++)
        alloc_free(32);
    assert_int_equal(r.h->state, MEMRING_STATE_ABANDONED);
    assert_true(malloc_address() == before);
    head = r.h->head;
    alloc_free(32);
    assert_int_equal(r.h->head, head);
    assert_int_equal(hook_stop(), 0);
    assert_int_equal(r.h->state, MEMRING_STATE_ABANDONED);
    ring_destroy(&r);
}

/* This process's mappings of path: the hooks' view of a ring, and the test's own. */
static size_t mappings_of(const char *path)
{
    struct procfs_map *maps;
    size_t n, found = 0;

    assert_int_equal(procfs_read_maps(PROCFS_ROOT, getpid(), &maps, &n), 0);
    for (size_t i = 0; i < n; i++)
        found += strcmp(maps[i].path, path) == 0;
    procfs_maps_free(maps, n);
    return found;
}

/* The ring is unmapped only once the hooks have been off MEMRING_RELEASE_QUIET_NS, never while
 * they are on; allocations after the release touch nothing of it, and a later start maps a new
 * ring and records as before. */
static void test_release(void **state)
{
    uintptr_t before = malloc_address();
    struct timespec quiet = {(time_t)(MEMRING_RELEASE_QUIET_NS / 1000000000ull), 100000000};
    struct ring r, r2;

    (void)state;
    ring_create(&r, "release", 1u << 10, 4, 0);
    assert_int_equal(hook_start(r.path), 0);
    assert_int_equal(hook_release(), -EBUSY);
    /* Off through the stop flag, as a hook sees it, not through memhook_stop. */
    r.h->stop = 1;
    alloc_free(16);
    assert_int_equal(r.h->state, MEMRING_STATE_STOPPED);
    assert_int_equal(mappings_of(r.path), 2);
    assert_int_equal(hook_release(), -EAGAIN);
    assert_int_equal(mappings_of(r.path), 2);
    nanosleep(&quiet, NULL);
    assert_int_equal(hook_release(), 0);
    assert_int_equal(mappings_of(r.path), 1);
    assert_int_equal(hook_release(), -ENXIO);
    assert_int_equal(hook_stop(), 0);
    alloc_free(16);
    assert_true(malloc_address() == before);
    ring_destroy(&r);

    ring_create(&r2, "release2", 1u << 10, 4, 0);
    drained.n = 0;
    assert_int_equal(hook_start(r2.path), 0);
    alloc_free(4243);
    assert_int_equal(hook_stop(), 0);
    drain_all(&r2);
    assert_int_equal(count_allocs(4243), 1);
    assert_true(malloc_address() == before);
    ring_destroy(&r2);
}

/* A full ring and a dead agent: a waiting thread gives up and restores the hooks. */
static void test_full_ring_dead_agent(void **state)
{
    uintptr_t before = malloc_address();
    struct ring r;

    (void)state;
    ring_create(&r, "full", 1u << 4, 4, 0);
    assert_int_equal(hook_start(r.path), 0);
    r.h->heartbeat_ns = now_ns() - MEMRING_HEARTBEAT_TIMEOUT_NS / 2;
    for (unsigned i = 0; i < 64; i++)
        alloc_free(48);
    assert_int_equal(r.h->state, MEMRING_STATE_ABANDONED);
    assert_true(r.h->lost > 0);
    assert_true(malloc_address() == before);
    assert_int_equal(hook_stop(), 0);
    ring_destroy(&r);
}

static void test_fork_child_unhooked(void **state)
{
    uintptr_t before = malloc_address();
    struct ring r;
    int status;
    pid_t pid;

    (void)state;
    ring_create(&r, "fork", 1u << 12, 16, 0);
    drained.n = 0;
    assert_int_equal(hook_start(r.path), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        for (unsigned i = 0; i < 100; i++)
            alloc_free(7777);
        _exit(malloc_address() == before ? 0 : 1);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    alloc_free(7778);
    assert_int_equal(hook_stop(), 0);
    drain_all(&r);
    assert_int_equal(count_allocs(7777), 0);
    assert_int_equal(count_allocs(7778), 1);
    ring_destroy(&r);
}

/* ---- through the engine, into another process ---- */

#define RUN_N 2000   /* blocks per kind of call */
#define RUN_KEEP 100 /* of them kept live */
#define RUN_SIZE 777 /* bytes each */
#define RUN_CALLS 3  /* malloc, through a pointer, strdup */
#define ENGINE_WAIT_NS 5000000000ull

/* The .got and .got.plt of one module as a target maps them, and a copy of their bytes. */
struct got_image {
    uint64_t addr[2], len[2];
    size_t size;
    unsigned char *data;
};

static uint64_t module_base(pid_t pid, const char *path)
{
    struct procfs_map *maps;
    uint64_t base = 0;
    size_t n;

    assert_int_equal(procfs_read_maps(PROCFS_ROOT, pid, &maps, &n), 0);
    for (size_t i = 0; i < n && !base; i++)
        if (strcmp(maps[i].path, path) == 0 && maps[i].offset == 0)
            base = maps[i].start;
    procfs_maps_free(maps, n);
    assert_true(base != 0);
    return base;
}

static void libc_path(pid_t pid, char *buf, size_t len)
{
    struct procfs_map *maps;
    size_t n;

    buf[0] = '\0';
    assert_int_equal(procfs_read_maps(PROCFS_ROOT, pid, &maps, &n), 0);
    for (size_t i = 0; i < n && !buf[0]; i++)
        if (strstr(maps[i].path, "/libc.so"))
            snprintf(buf, len, "%s", maps[i].path);
    procfs_maps_free(maps, n);
    assert_true(buf[0] != '\0');
}

/* Finds the GOT sections of path as pid maps it, and the canonical PLT entry of malloc and free
 * (an undefined dynamic symbol with a value: ret_canonical[0], [1]; 0 when there is none). */
static void got_find(pid_t pid, const char *path, struct got_image *g, uint64_t ret_canonical[2])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t shstrndx, k = 0;
    Elf_Scn *scn = NULL;
    uint64_t bias;
    GElf_Ehdr eh;
    Elf *e;

    assert_true(fd >= 0);
    assert_true(elf_version(EV_CURRENT) != EV_NONE);
    e = elf_begin(fd, ELF_C_READ, NULL);
    assert_non_null(e);
    assert_non_null(gelf_getehdr(e, &eh));
    assert_int_equal(elf_getshdrstrndx(e, &shstrndx), 0);
    bias = eh.e_type == ET_DYN ? module_base(pid, path) : 0;
    memset(g, 0, sizeof(*g));
    if (ret_canonical)
        ret_canonical[0] = ret_canonical[1] = 0;
    while ((scn = elf_nextscn(e, scn)) != NULL) {
        const char *name;
        GElf_Shdr sh;

        assert_non_null(gelf_getshdr(scn, &sh));
        name = elf_strptr(e, shstrndx, sh.sh_name);
        if (name && (strcmp(name, ".got") == 0 || strcmp(name, ".got.plt") == 0) && k < 2) {
            g->addr[k] = bias + sh.sh_addr;
            g->len[k] = sh.sh_size;
            g->size += sh.sh_size;
            k++;
        }
        if (sh.sh_type == SHT_DYNSYM && ret_canonical) {
            Elf_Data *d = elf_getdata(scn, NULL);

            for (size_t i = 0; d && i < sh.sh_size / sh.sh_entsize; i++) {
                const char *sname;
                GElf_Sym sym;

                if (!gelf_getsym(d, (int)i, &sym) || sym.st_shndx != SHN_UNDEF || !sym.st_value)
                    continue;
                sname = elf_strptr(e, sh.sh_link, sym.st_name);
                if (sname && strcmp(sname, "malloc") == 0)
                    ret_canonical[0] = bias + sym.st_value;
                if (sname && strcmp(sname, "free") == 0)
                    ret_canonical[1] = bias + sym.st_value;
            }
        }
    }
    elf_end(e);
    close(fd);
    assert_true(g->size > 0);
    g->data = malloc(g->size);
    assert_non_null(g->data);
}

static void got_read(pid_t pid, struct got_image *g)
{
    char path[64];
    size_t at = 0;
    int fd;

    snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    for (unsigned k = 0; k < 2 && g->len[k]; k++) {
        assert_int_equal(pread(fd, g->data + at, g->len[k], (off_t)g->addr[k]), (ssize_t)g->len[k]);
        at += g->len[k];
    }
    close(fd);
}

static size_t count_words(const unsigned char *data, size_t size, uint64_t value)
{
    size_t n = 0;

    for (size_t i = 0; i + 8 <= size; i += 8)
        n += memcmp(data + i, &value, 8) == 0;
    return n;
}

static struct testutil_child child; /* the engine tests' target */

static void command(const struct testutil_child *c, const char *cmd, char *reply, size_t len)
{
    assert_int_equal(write(c->in, cmd, strlen(cmd)), (ssize_t)strlen(cmd));
    assert_int_equal(testutil_read_line(c->out, reply, len, 10000), 0);
}

/* The PIE shape: this program, forked, answering canonical_plt's "run N K SIZE" with the same
 * calls (N, K and SIZE fixed) and no allocation of its own. Here &malloc is read from a GOT slot,
 * hooked during the run: the pointers are taken anew each run, as a pointer taken before the
 * hooks were installed is libc's malloc itself, and calls through it are not seen. */

static __attribute__((noreturn)) void pie_child(int in, int out)
{
    static void *blocks[RUN_CALLS * RUN_N];
    static char text[RUN_SIZE];
    char c, line[96];

    memset(text, 'x', sizeof(text) - 1);
    while (read(in, &c, 1) == 1) {
        void *(*volatile child_alloc)(size_t) = malloc;
        void (*volatile child_free)(void *) = free;
        long allocs = 0, frees = 0;
        int len;

        if (c != '\n')
            continue;
        for (long i = 0; i < RUN_CALLS * RUN_N; i++) {
            blocks[i] = i < RUN_N       ? malloc(RUN_SIZE)
                        : i < 2 * RUN_N ? child_alloc(RUN_SIZE)
                                        : strdup(text);
            allocs += blocks[i] != NULL;
        }
        for (long i = RUN_KEEP; i < RUN_CALLS * RUN_N; i++, frees++)
            if (i % 2)
                free(blocks[i]);
            else
                child_free(blocks[i]);
        len = snprintf(line, sizeof(line), "allocs=%ld frees=%ld same=%d errors=0\n", allocs, frees,
                       child_alloc == malloc && child_free == free);
        if (write(out, line, (size_t)len) != len)
            break;
    }
    _exit(0);
}

static void spawn_pie_child(struct testutil_child *c)
{
    int in[2], out[2];

    assert_int_equal(pipe2(in, O_CLOEXEC), 0);
    assert_int_equal(pipe2(out, O_CLOEXEC), 0);
    c->pid = fork();
    assert_true(c->pid >= 0);
    if (c->pid == 0)
        pie_child(in[0], out[1]);
    close(in[0]);
    close(out[1]);
    c->in = in[1];
    c->out = out[0];
}

static void engine_open(pid_t pid, struct stacks **ret_stacks, struct memprof **ret)
{
    char lib[512], abs[PATH_MAX];
    const char *b = getenv("BUILD");
    struct memprof_options o = {.seconds = 2, .hook_path = abs};
    struct error e;
    int r;

    snprintf(lib, sizeof(lib), "%s/libprofiler-agent-memhook.so", b && *b ? b : "build");
    assert_non_null(realpath(lib, abs));
    assert_int_equal(stacks_new(pid, ret_stacks), 0);
    r = memprof_open(pid, *ret_stacks, &o, ret, &e);
    if (r < 0)
        fail_msg("memprof_open: %s (%s)", strerror(-r), e.reason);
}

/* Polls until the engine has seen allocs allocations and frees frees, or a while passed. */
static void engine_wait(struct memprof *m, uint64_t allocs, uint64_t frees)
{
    uint64_t t0 = now_ns();
    struct memprof_stats st;

    do {
        assert_int_equal(memprof_poll(m, 50, NULL), 0);
        memprof_get_stats(m, &st);
    } while ((st.allocs < allocs || st.frees < frees) && now_ns() - t0 < ENGINE_WAIT_NS);
}

static void check_engine_run(struct testutil_child *c, bool canonical)
{
    char exe[PATH_MAX], libc[PATH_MAX], link[64], reply[128], run[64];
    uint64_t canon[2], real_malloc = 0, real_free = 0;
    struct got_image g[2]; /* the executable, libc */
    unsigned char *before[2];
    long allocs, frees, errors;
    const struct memprof_site *sites;
    struct memprof_stats st;
    struct stacks *stacks;
    struct memprof *m;
    uint64_t live = 0;
    size_t nsites;
    ssize_t n;
    int same;

    snprintf(run, sizeof(run), "run %d %d %d\n", RUN_N, RUN_KEEP, RUN_SIZE);
    /* Once before, so that every lazily bound slot is bound and stays as it is. */
    command(c, run, reply, sizeof(reply));
    snprintf(link, sizeof(link), "/proc/%d/exe", (int)c->pid);
    n = readlink(link, exe, sizeof(exe) - 1);
    assert_true(n > 0);
    exe[n] = '\0';
    libc_path(c->pid, libc, sizeof(libc));
    got_find(c->pid, exe, &g[0], canon);
    got_find(c->pid, libc, &g[1], NULL);
    assert_int_equal(inject_symbol(c->pid, libc, "malloc", &real_malloc), 0);
    assert_int_equal(inject_symbol(c->pid, libc, "free", &real_free), 0);
    assert_true(canonical ? canon[0] && canon[1] : !canon[0] && !canon[1]);
    for (unsigned k = 0; k < 2; k++) {
        got_read(c->pid, &g[k]);
        before[k] = malloc(g[k].size);
        assert_non_null(before[k]);
        memcpy(before[k], g[k].data, g[k].size);
    }
    /* libc's own references to malloc and free name the canonical entry, when there is one. */
    if (canonical)
        assert_true(count_words(g[1].data, g[1].size, canon[0]) > 0 &&
                    count_words(g[1].data, g[1].size, canon[1]) > 0);
    assert_true(count_words(g[0].data, g[0].size, real_malloc) > 0);

    engine_open(c->pid, &stacks, &m);
    memprof_get_stats(m, &st);
    assert_string_equal(st.method, "inject");
    assert_int_equal(st.fallback.code, 0);
    for (unsigned k = 0; k < 2; k++) {
        got_read(c->pid, &g[k]);
        /* Every slot bound to libc's definitions is hooked; those holding the canonical entry,
         * what the program compares against, are not. */
        assert_int_equal(count_words(g[k].data, g[k].size, real_malloc), 0);
        assert_int_equal(count_words(g[k].data, g[k].size, real_free), 0);
        for (unsigned f = 0; f < 2 && canonical; f++)
            assert_int_equal(count_words(g[k].data, g[k].size, canon[f]),
                             count_words(before[k], g[k].size, canon[f]));
    }

    command(c, run, reply, sizeof(reply));
    assert_int_equal(
        sscanf(reply, "allocs=%ld frees=%ld same=%d errors=%ld", &allocs, &frees, &same, &errors),
        4);
    assert_int_equal(allocs, RUN_CALLS * RUN_N);
    assert_int_equal(frees, RUN_CALLS * RUN_N - RUN_KEEP);
    assert_int_equal(errors, 0);
    assert_int_equal(same, 1);
    engine_wait(m, (uint64_t)allocs, (uint64_t)frees);
    assert_int_equal(memprof_finish(m, NULL), 0);
    memprof_get_stats(m, &st);
    print_message("%s: %" PRIu64 " allocs, %" PRIu64 " frees, %" PRIu64 " live blocks\n",
                  canonical ? "canonical PLT" : "PIE", st.allocs, st.frees, st.live_blocks);
    assert_int_equal(st.allocs, (uint64_t)allocs);
    assert_int_equal(st.frees, (uint64_t)frees);
    assert_int_equal(st.alloc_bytes, (uint64_t)allocs * RUN_SIZE);
    assert_int_equal(st.live_blocks, RUN_KEEP);
    assert_int_equal(st.lost, 0);
    assert_string_equal(st.silent_hooks, "");
    assert_int_equal(memprof_sites(m, &sites, &nsites), 0);
    for (size_t i = 0; i < nsites; i++)
        live += sites[i].live_bytes;
    assert_int_equal(live, RUN_KEEP * RUN_SIZE);

    /* Gone without a trace, and the program runs on as before. */
    for (unsigned k = 0; k < 2; k++) {
        got_read(c->pid, &g[k]);
        assert_memory_equal(g[k].data, before[k], g[k].size);
        free(before[k]);
        free(g[k].data);
    }
    command(c, run, reply, sizeof(reply));
    assert_int_equal(
        sscanf(reply, "allocs=%ld frees=%ld same=%d errors=%ld", &allocs, &frees, &same, &errors),
        4);
    assert_int_equal(same, 1);
    assert_int_equal(errors, 0);
    memprof_free(m);
    stacks_free(stacks);
}

/* A failed test must not leave its target running: a forked one holds our stdout. */
static int reap_teardown(void **state)
{
    (void)state;
    if (child.pid > 0)
        testutil_reap(&child);
    child.pid = 0;
    return 0;
}

static void test_engine_pie(void **state)
{
    (void)state;
#ifdef __SANITIZE_ADDRESS__
    /* The target is a fork of this test program, whose malloc under ASan is the sanitizer's,
     * not the C library's this test counts slots of; the plain build runs it. */
    print_message("skipped: the forked target's malloc is ASan's under this build\n");
    skip();
#endif
    spawn_pie_child(&child);
    check_engine_run(&child, false);
}

static void test_engine_canonical_plt(void **state)
{
    char line[64];

    (void)state;
    assert_int_equal(testutil_spawn(&child, "canonical_plt", NULL, line, sizeof(line)), 0);
    check_engine_run(&child, true);
}

/* Frees with no allocation: the run says its hooks saw none. */
static void test_engine_silent_hooks(void **state)
{
    struct memprof_stats st;
    struct stacks *stacks;
    struct memprof *m;
    char line[128];

    (void)state;
    assert_int_equal(testutil_spawn(&child, "canonical_plt", NULL, line, sizeof(line)), 0);
    command(&child, "run 1000 3000 64\n", line, sizeof(line));
    engine_open(child.pid, &stacks, &m);
    command(&child, "free\n", line, sizeof(line));
    assert_string_equal(line, "frees=3000");
    engine_wait(m, 0, 3000);
    assert_int_equal(memprof_finish(m, NULL), 0);
    memprof_get_stats(m, &st);
    assert_int_equal(st.allocs, 0);
    assert_int_equal(st.frees, 3000);
    print_message("%s\n", st.silent_hooks);
    assert_non_null(strstr(st.silent_hooks, "no allocations"));
    assert_non_null(strstr(st.silent_hooks, "3000 frees"));
    memprof_free(m);
    stacks_free(stacks);
}

/* Refusals say why: the agent itself, and a process that is gone. */
/* The ring a run left in the target goes only when the hooks have been off long enough and no
 * thread of the target is stopped, and only from the process the run profiled. */
static void test_engine_release(void **state)
{
    struct timespec quiet = {(time_t)(MEMRING_RELEASE_QUIET_NS / 1000000000ull), 100000000};
    struct stacks *stacks;
    struct memprof *m;
    uint64_t starttime, bytes = 0;
    char line[128], st = 0;
    struct error e;

    (void)state;
    assert_int_equal(testutil_spawn(&child, "canonical_plt", NULL, line, sizeof(line)), 0);
    assert_int_equal(procfs_read_starttime(PROCFS_ROOT, child.pid, &starttime), 0);
    assert_int_equal(memprof_release(child.pid, starttime, &bytes, &e), -ENXIO);
    engine_open(child.pid, &stacks, &m);
    assert_int_equal(memprof_release(child.pid, starttime, &bytes, &e), -EBUSY);
    assert_non_null(strstr(e.reason, "under way"));
    command(&child, "run 1000 10 64\n", line, sizeof(line));
    assert_int_equal(memprof_finish(m, NULL), 0);
    memprof_free(m);
    stacks_free(stacks);
    assert_int_equal(memprof_release(child.pid, starttime, &bytes, &e), -EAGAIN);
    assert_non_null(strstr(e.reason, "went off less than"));
    assert_int_equal(memprof_release(child.pid, starttime + 1, &bytes, &e), -ESRCH);
    nanosleep(&quiet, NULL);
    assert_int_equal(kill(child.pid, SIGSTOP), 0);
    /* The signal takes effect when the child next runs. */
    for (uint64_t t0 = now_ns(); procfs_read_state(PROCFS_ROOT, child.pid, 0, &st) == 0 &&
                                 st != 'T' && now_ns() - t0 < ENGINE_WAIT_NS;)
        sched_yield();
    assert_int_equal(st, 'T');
    assert_int_equal(memprof_release(child.pid, starttime, &bytes, &e), -EAGAIN);
    print_message("%s\n", e.reason);
    assert_non_null(strstr(e.reason, "is stopped"));
    assert_int_equal(kill(child.pid, SIGCONT), 0);
    assert_int_equal(memprof_release(child.pid, starttime, &bytes, &e), 0);
    /* The whole mapping: the ring rounded up to pages. */
    assert_int_equal(bytes, (memring_size(MEMPROF_RING_EVENTS, MEMPROF_RING_STACKS) + 4095) &
                                ~(uint64_t)4095);
    assert_int_equal(memprof_release(child.pid, starttime, &bytes, &e), -ENXIO);
    command(&child, "run 1000 10 64\n", line, sizeof(line));
    assert_non_null(strstr(line, "errors=0"));
}

static void test_engine_refusals(void **state)
{
    struct memprof_options o = {.seconds = 1, .hook_path = "/nonexistent"};
    struct memprof *m = NULL;
    struct error e;
    int st;

    (void)state;
    assert_int_equal(memprof_open(getpid(), NULL, &o, &m, &e), -EINVAL);
    assert_null(m);
    assert_int_equal(e.code, -EINVAL);
    assert_non_null(strstr(e.reason, "its own allocations"));
    pid_t gone = fork();
    assert_true(gone >= 0);
    if (gone == 0)
        _exit(0);
    assert_int_equal(waitpid(gone, &st, 0), gone);
    assert_true(memprof_open(gone, NULL, &o, &m, &e) < 0);
    assert_null(m);
    assert_true(e.code < 0);
    assert_true(e.reason[0] != '\0');
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_before_start),
        cmocka_unit_test_teardown(test_rejects_bad_rings, unhook_teardown),
        cmocka_unit_test_teardown(test_records_two_threads, unhook_teardown),
        cmocka_unit_test_teardown(test_sampling, unhook_teardown),
        cmocka_unit_test_teardown(test_stop_flag, unhook_teardown),
        cmocka_unit_test_teardown(test_heartbeat_timeout, unhook_teardown),
        cmocka_unit_test_teardown(test_full_ring_dead_agent, unhook_teardown),
        cmocka_unit_test_teardown(test_fork_child_unhooked, unhook_teardown),
        cmocka_unit_test_teardown(test_release, unhook_teardown),
        cmocka_unit_test_teardown(test_engine_pie, reap_teardown),
        cmocka_unit_test_teardown(test_engine_canonical_plt, reap_teardown),
        cmocka_unit_test_teardown(test_engine_silent_hooks, reap_teardown),
        cmocka_unit_test_teardown(test_engine_release, reap_teardown),
        cmocka_unit_test(test_engine_refusals),
    };

    return cmocka_run_group_tests(tests, lib_setup, lib_teardown);
}
