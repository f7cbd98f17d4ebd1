/* Tests of the injected allocation hooks (engine/memory/hook/): loads the built library into this
 * process as the agent's injection would, drains its ring as the agent does, and checks events,
 * stacks, sampling, the GOT after stop, the heartbeat timeout and fork. */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
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

#include "memory/memring.h"

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
    if (!hook_start || !hook_stop || !mkdtemp(tmpdir))
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
    };

    return cmocka_run_group_tests(tests, lib_setup, lib_teardown);
}
