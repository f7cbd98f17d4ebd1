/* Allocation profiles (see memprof.h). The ring is a file the agent creates in the target's
 * own /dev/shm (through /proc/PID/root when the target lives in another mount namespace, with
 * the hook library copied next to it), maps, and unlinks once the hooks have mapped it too, so
 * nothing is left behind whatever happens. Blocks are tracked in an open-addressing table keyed
 * by address; sites are deduplicated by their chain of return addresses. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <dlfcn.h>
#include "formats/hpy.h"
#include "formats/massif.h"
#include "os/inject.h"
#include "memory/memprobe.h"
#include "memory/memprof.h"
#include "memory/memring.h"
#include "os/targetfile.h"
#include "os/procfs.h"

#define SITE_NONE UINT32_MAX
#define HOOK_NAME_TAG "profiler-agent-memhook"
#define RING_NAME_TAG "profiler-agent-ring"
#define DRAIN_PAUSE_US 1000
#define ALIVE_CHECK_MS 200
#define FINISH_DRAIN_MS 200
#define SETTLE_SAMPLES 5 /* looks at the threads' states before a release */
#define SETTLE_PAUSE_US 10000

struct block {
    uint64_t ptr;   /* 0: empty slot */
    uint64_t bytes; /* estimated bytes this block stands for */
    uint32_t site;
    float blocks; /* estimated blocks it stands for (1 unless sampling) */
};

struct site {
    uint64_t *ips;
    struct stacks_frame *frames; /* strings strdup'd: they outlive the unwinder's caches */
    size_t nframes;
    uint64_t hash;
    uint64_t live_bytes;
    double live_blocks; /* estimates add up fractionally when sampling */
};

struct snap {
    uint64_t ms, bytes, extra;
    uint64_t *site_bytes; /* detailed: live bytes per site then (nsites entries) */
    size_t nsites;
    int tree;
};

struct memprof {
    pid_t pid;
    uint64_t starttime;
    struct stacks *stacks;
    struct memprof_options opt;
    struct memprof_stats stats;
    uint64_t start_ns;

    /* inject */
    struct memring_header *hdr;
    size_t ring_len;
    struct memring_event *events;
    struct memring_stack *slots;
    uint32_t *slot_site;
    uint64_t stop_fn;
    bool hooked;

    /* uprobes */
    struct memprobe *probe;

    struct block *blocks;
    size_t blocks_cap, nblocks;
    struct site *sites;
    size_t nsites, sites_cap;
    uint32_t *site_index; /* hash -> site, SITE_NONE when empty */
    size_t site_index_cap;
    uint64_t live_bytes, live_extra;
    double live_blocks;
    uint64_t start_heap; /* the [heap] Rss when the run started: in every massif snapshot */
    uint64_t *peak_site_bytes;
    size_t peak_nsites;
    uint64_t peak_extra;

    struct snap snaps[MEMPROF_MAX_SNAPSHOTS];
    size_t nsnaps;
    uint64_t snap_every_ms, next_snap_ms, last_alive_ms;

    struct memprof_site *out_sites;
    size_t nout_sites;
    bool finished;
};

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t elapsed_ms(const struct memprof *m)
{
    return (mono_ns() - m->start_ns) / 1000000u;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

/* ---- live blocks ---- */

static int blocks_grow(struct memprof *m)
{
    size_t cap = m->blocks_cap ? m->blocks_cap * 2 : 65536;
    struct block *b = calloc(cap, sizeof(*b));
    if (!b)
        return -ENOMEM;
    for (size_t i = 0; i < m->blocks_cap; i++) {
        if (!m->blocks[i].ptr)
            continue;
        size_t j = mix64(m->blocks[i].ptr) & (cap - 1);
        while (b[j].ptr)
            j = (j + 1) & (cap - 1);
        b[j] = m->blocks[i];
    }
    free(m->blocks);
    m->blocks = b;
    m->blocks_cap = cap;
    return 0;
}

static struct block *block_find(struct memprof *m, uint64_t ptr)
{
    if (!m->blocks_cap)
        return NULL;
    for (size_t j = mix64(ptr) & (m->blocks_cap - 1);; j = (j + 1) & (m->blocks_cap - 1)) {
        if (m->blocks[j].ptr == ptr)
            return &m->blocks[j];
        if (!m->blocks[j].ptr)
            return NULL;
    }
}

/* Linear probing with backward-shift deletion: no tombstones to pile up over a long run. */
static void block_remove(struct memprof *m, struct block *b)
{
    size_t mask = m->blocks_cap - 1, i = (size_t)(b - m->blocks), j = i;

    for (;;) {
        j = (j + 1) & mask;
        if (!m->blocks[j].ptr)
            break;
        size_t home = mix64(m->blocks[j].ptr) & mask;
        /* Move j back to i unless its home lies cyclically in (i, j]. */
        if ((i <= j) ? (home <= i || home > j) : (home <= i && home > j)) {
            m->blocks[i] = m->blocks[j];
            i = j;
        }
    }
    m->blocks[i].ptr = 0;
    m->nblocks--;
}

/* ---- sites ---- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void site_free(struct site *s)
{
    for (size_t i = 0; i < s->nframes; i++) {
        free((char *)s->frames[i].module);
        free((char *)s->frames[i].func);
        free((char *)s->frames[i].file);
    }
    free(s->frames);
    free(s->ips);
}

static int site_index_grow(struct memprof *m)
{
    size_t cap = m->site_index_cap ? m->site_index_cap * 2 : 1024;
    uint32_t *ix = malloc(cap * sizeof(*ix));
    if (!ix)
        return -ENOMEM;
    memset(ix, 0xff, cap * sizeof(*ix));
    for (size_t i = 0; i < m->nsites; i++) {
        size_t j = m->sites[i].hash & (cap - 1);
        while (ix[j] != SITE_NONE)
            j = (j + 1) & (cap - 1);
        ix[j] = (uint32_t)i;
    }
    free(m->site_index);
    m->site_index = ix;
    m->site_index_cap = cap;
    return 0;
}

/* The site of this chain of frames, made when new. SITE_NONE past the limits. */
static uint32_t site_intern(struct memprof *m, const struct stacks_frame *f, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
    for (size_t i = 0; i < n; i++)
        h = mix64(h ^ f[i].ip);
    if ((m->nsites + 1) * 2 > m->site_index_cap && site_index_grow(m) < 0)
        return SITE_NONE;
    size_t mask = m->site_index_cap - 1, j = h & mask;
    for (; m->site_index[j] != SITE_NONE; j = (j + 1) & mask) {
        struct site *s = &m->sites[m->site_index[j]];
        bool same = s->hash == h && s->nframes == n;
        for (size_t i = 0; same && i < n; i++)
            same = s->ips[i] == f[i].ip;
        if (same)
            return m->site_index[j];
    }
    if (m->nsites >= MEMPROF_MAX_SITES)
        return SITE_NONE;
    if (m->nsites == m->sites_cap) {
        size_t cap = m->sites_cap ? m->sites_cap * 2 : 256;
        struct site *ns = realloc(m->sites, cap * sizeof(*ns));
        if (!ns)
            return SITE_NONE;
        m->sites = ns;
        m->sites_cap = cap;
    }
    struct site *s = &m->sites[m->nsites];
    memset(s, 0, sizeof(*s));
    s->hash = h;
    s->ips = calloc(n ? n : 1, sizeof(*s->ips));
    s->frames = calloc(n ? n : 1, sizeof(*s->frames));
    if (!s->ips || !s->frames) {
        site_free(s);
        return SITE_NONE;
    }
    for (size_t i = 0; i < n; i++) {
        s->ips[i] = f[i].ip;
        s->frames[i] = f[i];
        s->frames[i].module = dup_or_null(f[i].module);
        s->frames[i].func = dup_or_null(f[i].func);
        s->frames[i].file = dup_or_null(f[i].file);
        s->nframes = i + 1;
    }
    m->site_index[j] = (uint32_t)m->nsites;
    return (uint32_t)m->nsites++;
}

/* The site of an allocation whose caller's registers and stack are given. */
static uint32_t site_unwind(struct memprof *m, const uint64_t regs[MEMRING_NREGS], uint64_t sp,
                            const unsigned char *stack, size_t len)
{
    struct stacks_frame f[MEMPROF_MAX_FRAMES];
    size_t n = 0;
    int truncated = 0;

    if (stacks_unwind_regs(m->stacks, regs, sp, stack, len, f, MEMPROF_MAX_FRAMES, &n, &truncated) <
            0 ||
        n == 0)
        return SITE_NONE;
    return site_intern(m, f, n);
}

/* Blocks whose stack could not be had still count, under a site with no frames (site 0), so
 * the sites always add up to the heap. */
static uint32_t site_or_unknown(uint32_t site)
{
    return site == SITE_NONE ? 0 : site;
}

static uint32_t site_of_slot(struct memprof *m, uint32_t slot)
{
    if (slot == MEMRING_STACK_NONE || slot >= m->hdr->nstacks)
        return SITE_NONE;
    if (m->slot_site[slot] != SITE_NONE)
        return m->slot_site[slot];
    struct memring_stack *st = &m->slots[slot];
    if (__atomic_load_n(&st->ready, __ATOMIC_ACQUIRE) != 1)
        return SITE_NONE;
    uint64_t regs[MEMRING_NREGS];
    memcpy(regs, st->regs, sizeof(regs));
    uint32_t len = st->len;
    if (len > MEMRING_STACK_BYTES)
        len = MEMRING_STACK_BYTES;
    m->slot_site[slot] = site_unwind(m, regs, st->sp, st->data, len);
    return m->slot_site[slot];
}

/* ---- events ---- */

/* The bytes one sampled block stands for: a block of size s is sampled with probability
 * 1 - exp(-s/N), so weighting it by the inverse is unbiased (tcmalloc's estimator). */
static uint64_t weight(const struct memprof *m, uint64_t size)
{
    double n = (double)m->opt.sample_bytes;
    if (!m->opt.sample_bytes || size == 0)
        return size;
    double p = -expm1(-(double)size / n);
    return p > 0 ? (uint64_t)((double)size / p + 0.5) : size;
}

/* glibc's chunk overhead, the way massif counts "extra" heap: the size word plus rounding to
 * 16 bytes, at least 32 bytes per chunk. */
static uint64_t extra_of(uint64_t size)
{
    uint64_t chunk = (size + 8 + 15) & ~(uint64_t)15;
    if (chunk < 32)
        chunk = 32;
    return chunk - size;
}

static void take_snapshot(struct memprof *m, uint64_t now_ms, bool detailed);

static void on_free(struct memprof *m, uint64_t ptr)
{
    struct block *b = block_find(m, ptr);
    m->stats.frees++;
    if (!b)
        return; /* allocated before the run, or not sampled */
    double blocks = b->blocks;
    if (b->site < m->nsites) {
        struct site *s = &m->sites[b->site];
        s->live_bytes -= s->live_bytes < b->bytes ? s->live_bytes : b->bytes;
        s->live_blocks -= blocks;
    }
    m->live_bytes -= m->live_bytes < b->bytes ? m->live_bytes : b->bytes;
    uint64_t ex = extra_of(b->bytes);
    m->live_extra -= m->live_extra < ex ? m->live_extra : ex;
    m->live_blocks -= blocks;
    block_remove(m, b);
}

static void on_alloc(struct memprof *m, uint64_t ptr, uint64_t size, uint32_t site)
{
    m->stats.allocs++;
    m->stats.alloc_bytes += size;
    if (!ptr)
        return;
    site = site_or_unknown(site);
    struct block *old = block_find(m, ptr);
    if (old)
        on_free(m, ptr); /* a free we did not see (raced, or lost) */
    if (m->nblocks >= MEMPROF_MAX_BLOCKS ||
        ((m->nblocks + 1) * 2 > m->blocks_cap && blocks_grow(m) < 0)) {
        m->stats.untracked++;
        return;
    }
    uint64_t w = weight(m, size);
    /* One sampled block of size s stands for w/s blocks of that size. */
    double blocks = size ? (double)w / (double)size : 1;
    size_t j = mix64(ptr) & (m->blocks_cap - 1);
    while (m->blocks[j].ptr)
        j = (j + 1) & (m->blocks_cap - 1);
    m->blocks[j] = (struct block){.ptr = ptr, .bytes = w, .site = site, .blocks = (float)blocks};
    m->nblocks++;
    m->sites[site].live_bytes += w;
    m->sites[site].live_blocks += blocks;
    m->live_bytes += w;
    m->live_extra += extra_of(w);
    m->live_blocks += blocks;
}

/* A new peak keeps a copy of every site's bytes, for massif's peak snapshot. */
static void note_peak(struct memprof *m)
{
    if (m->live_bytes <= m->stats.peak_bytes)
        return;
    m->stats.peak_bytes = m->live_bytes;
    m->stats.peak_ms = elapsed_ms(m);
    m->peak_extra = m->live_extra;
    uint64_t *p = realloc(m->peak_site_bytes, (m->nsites ? m->nsites : 1) * sizeof(*p));
    if (!p)
        return;
    for (size_t i = 0; i < m->nsites; i++)
        p[i] = m->sites[i].live_bytes;
    m->peak_site_bytes = p;
    m->peak_nsites = m->nsites;
}

static void snap_free(struct snap *s)
{
    free(s->site_bytes);
    s->site_bytes = NULL;
}

/* Like massif, when the snapshots run out every other one goes and the spacing doubles. */
static void thin_snapshots(struct memprof *m)
{
    size_t k = 0;
    for (size_t i = 0; i < m->nsnaps; i++) {
        if (i % 2 == 1 && !m->snaps[i].site_bytes) {
            snap_free(&m->snaps[i]);
            continue;
        }
        if (i % 2 == 1 && m->snaps[i].site_bytes && k > 0 && m->snaps[k - 1].site_bytes) {
            snap_free(&m->snaps[i]);
            continue;
        }
        m->snaps[k++] = m->snaps[i];
    }
    m->nsnaps = k;
    m->snap_every_ms *= 2;
}

static void take_snapshot(struct memprof *m, uint64_t now_ms, bool detailed)
{
    if (m->nsnaps >= MEMPROF_MAX_SNAPSHOTS - 2)
        thin_snapshots(m);
    if (m->nsnaps >= MEMPROF_MAX_SNAPSHOTS - 2)
        return;
    struct snap *s = &m->snaps[m->nsnaps];
    memset(s, 0, sizeof(*s));
    s->ms = now_ms;
    s->bytes = m->live_bytes;
    s->extra = m->live_extra;
    if (detailed && m->nsites) {
        s->site_bytes = malloc(m->nsites * sizeof(*s->site_bytes));
        if (s->site_bytes) {
            for (size_t i = 0; i < m->nsites; i++)
                s->site_bytes[i] = m->sites[i].live_bytes;
            s->nsites = m->nsites;
        }
    }
    s->tree = detailed ? HEAP_TREE_DETAILED : HEAP_TREE_EMPTY;
    m->nsnaps++;
}

static void maybe_snapshot(struct memprof *m)
{
    note_peak(m);
    uint64_t now = elapsed_ms(m);
    if (now < m->next_snap_ms)
        return;
    take_snapshot(m, now, m->nsnaps % MEMPROF_DETAILED_EVERY == 0);
    m->next_snap_ms = now + m->snap_every_ms;
}

/* Hands every complete event of the ring to the tables. Returns how many there were. */
static size_t ring_drain(struct memprof *m)
{
    struct memring_header *h = m->hdr;
    uint64_t mask = h->nevents - 1, tail = __atomic_load_n(&h->tail, __ATOMIC_RELAXED);
    size_t n = 0;

    __atomic_store_n(&h->heartbeat_ns, mono_ns(), __ATOMIC_RELEASE);
    for (;;) {
        struct memring_event *e = &m->events[tail & mask];
        if (__atomic_load_n(&e->seq, __ATOMIC_ACQUIRE) != tail + 1)
            break;
        uint64_t ptr = e->ptr, size = e->size;
        uint32_t kind = e->kind, slot = e->stack;
        if (kind == MEMRING_ALLOC)
            on_alloc(m, ptr, size, site_of_slot(m, slot));
        else if (kind == MEMRING_FREE)
            on_free(m, ptr);
        tail++;
        if (++n % 4096 == 0) {
            __atomic_store_n(&h->tail, tail, __ATOMIC_RELEASE);
            __atomic_store_n(&h->heartbeat_ns, mono_ns(), __ATOMIC_RELEASE);
            note_peak(m);
        }
    }
    __atomic_store_n(&h->tail, tail, __ATOMIC_RELEASE);
    return n;
}

static int probe_event(const struct memprobe_event *e, void *userdata)
{
    struct memprof *m = userdata;
    if (e->kind == MEMRING_FREE) {
        on_free(m, e->ptr);
        return 0;
    }
    uint32_t site = SITE_NONE;
    if (e->regs)
        site = site_unwind(m, e->regs, e->stack_addr, e->stack, e->stack_len);
    on_alloc(m, e->ptr, e->size, site);
    return 0;
}

/* ---- setting up: the ring file and the hooks ---- */

static int ring_create(struct memprof *m, bool same_ns, char *tpath, size_t tlen, char *apath,
                       size_t alen)
{
    static const char *const dirs[] = {"/dev/shm", "/tmp", NULL};
    static unsigned counter;
    char name[96];
    uint64_t nev = MEMPROF_RING_EVENTS, nst = MEMPROF_RING_STACKS;
    int r;

    snprintf(name, sizeof(name), RING_NAME_TAG ".%d.%u", (int)getpid(),
             __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
    r = targetfile_place(m->pid, same_ns, dirs, name, tpath, tlen, apath, alen);
    if (r < 0)
        return r;
    int fd = open(apath, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    m->ring_len = memring_size(nev, nst);
    if (ftruncate(fd, (off_t)m->ring_len) < 0) {
        r = -errno;
        goto fail;
    }
    targetfile_give(fd, m->pid, 0666);
    void *p = mmap(NULL, m->ring_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        r = -errno;
        goto fail;
    }
    close(fd);
    m->hdr = p;
    m->hdr->magic = MEMRING_MAGIC;
    m->hdr->version = MEMRING_VERSION;
    m->hdr->header_size = sizeof(struct memring_header);
    m->hdr->nevents = nev;
    m->hdr->nstacks = nst;
    m->hdr->sample_bytes = m->opt.sample_bytes;
    m->hdr->events_offset = memring_events_offset();
    m->hdr->stacks_offset = memring_stacks_offset(nev);
    m->hdr->heartbeat_ns = mono_ns();
    m->events = (struct memring_event *)((char *)p + m->hdr->events_offset);
    m->slots = (struct memring_stack *)((char *)p + m->hdr->stacks_offset);
    m->slot_site = malloc(nst * sizeof(*m->slot_site));
    if (!m->slot_site)
        return -ENOMEM;
    memset(m->slot_site, 0xff, nst * sizeof(*m->slot_site));
    return 0;
fail:
    close(fd);
    unlink(apath);
    return r;
}

static int copy_file(const char *from, const char *to, pid_t pid)
{
    char buf[65536];
    int in = open(from, O_RDONLY | O_CLOEXEC), out = -1, r = 0;
    if (in < 0)
        return -errno;
    out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0) {
        r = -errno;
        goto out;
    }
    targetfile_give(out, pid, 0644);
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0) {
            r = -errno;
            break;
        }
        if (n == 0)
            break;
        if (write(out, buf, (size_t)n) != n) {
            r = -EIO;
            break;
        }
    }
    if (close(out) < 0 && r == 0)
        r = -errno;
    if (r < 0)
        unlink(to);
out:
    close(in);
    return r;
}

static bool is_hooks(const char *path)
{
    return strstr(path, HOOK_NAME_TAG) != NULL;
}

static bool is_musl(const char *path)
{
    const char *base = strrchr(path, '/');
    /* Alpine maps /lib/ld-musl-ARCH.so.1 (libc.musl-ARCH.so.1 links to it), Debian's musl-gcc
     * programs /usr/lib/ARCH-linux-musl/libc.so: the dynamic loader is the C library. */
    return base && (!strncmp(base + 1, "ld-musl-", 8) || !strncmp(base + 1, "libc.musl-", 10) ||
                    !strcmp(base + 1, "libc.so"));
}

static bool is_libc(const char *path)
{
    const char *base = strrchr(path, '/');
    return base &&
           (!strncmp(base + 1, "libc.so", 7) || !strncmp(base + 1, "libc-2.", 7) || is_musl(path));
}

/* The path of pid's first mapping that match accepts as maps shows it to us (not necessarily
 * the target's name for it: see targetfile_own_path), " (deleted)" cut off (an earlier run's
 * hook library was unlinked once loaded). */
static int mapped_path(pid_t pid, bool (*match)(const char *path), char *buf, size_t len)
{
    struct procfs_map *maps;
    size_t n;
    int r = procfs_read_maps(PROCFS_ROOT, pid, &maps, &n);
    if (r < 0)
        return r;
    r = -ENOENT;
    for (size_t i = 0; i < n && r < 0; i++) {
        if (!match(maps[i].path))
            continue;
        snprintf(buf, len, "%s", maps[i].path);
        char *del = strstr(buf, " (deleted)");
        if (del)
            *del = '\0';
        r = 0;
    }
    procfs_maps_free(maps, n);
    return r;
}

/* dlopen and dlsym in the target's C library (libc, path as maps shows it): public in glibc 2.34
 * and later, private names before; musl's have always been public. */
static int loader_symbols(pid_t pid, const char *libc, uint64_t *dlopen_fn, uint64_t *dlsym_fn,
                          uint64_t *dlerr)
{
    if (inject_symbol(pid, libc, "dlopen", dlopen_fn) < 0 &&
        inject_symbol(pid, libc, "__libc_dlopen_mode", dlopen_fn) < 0)
        return -ENOENT;
    if (inject_symbol(pid, libc, "dlsym", dlsym_fn) < 0 &&
        inject_symbol(pid, libc, "__libc_dlsym", dlsym_fn) < 0)
        return -ENOENT;
    if (inject_symbol(pid, libc, "dlerror", dlerr) < 0)
        *dlerr = 0;
    return 0;
}

/* The hook library built for the target's C library into buf: the glibc build the agent was
 * given, or the musl build beside it. -ENOENT, with why in err, when that is not installed. */
static int hook_library(const struct memprof *m, bool musl, char *buf, size_t len,
                        struct error *err)
{
    const char *path = m->opt.hook_path, *slash = strrchr(path, '/');
    if (!musl) {
        snprintf(buf, len, "%s", path);
        return 0;
    }
    int dir = slash ? (int)(slash - path + 1) : 0;
    if ((size_t)snprintf(buf, len, "%.*s%s", dir, path, MEMPROF_HOOK_LIB_MUSL) >= len)
        return error_set(err, -ENAMETOOLONG, "the hook library's path is too long");
    if (access(buf, R_OK) < 0)
        return error_set(err, -ENOENT,
                         "the target links musl, and the musl build of the hook library (%s) "
                         "is not installed",
                         buf);
    return 0;
}

/* fn(s, arg) when handle_first is false, fn(arg, s) when it is (dlsym's order). */
static int call_str(struct inject *in, uint64_t fn, const char *s, uint64_t arg, bool handle_first,
                    uint64_t *ret)
{
    uint64_t addr;
    int r = inject_push(in, s, strlen(s) + 1, &addr);
    if (r < 0)
        return r;
    uint64_t args[2] = {handle_first ? arg : addr, handle_first ? addr : arg};
    return inject_call(in, fn, args, 2, ret);
}

/* Loads the hooks into the target and starts them on the ring. err (not NULL) gets why not. */
static int hooks_install(struct memprof *m, struct error *err)
{
    char ring_t[PATH_MAX], ring_a[PATH_MAX], lib_t[PATH_MAX], lib_a[PATH_MAX] = "";
    char lib_seen[PATH_MAX]; /* an earlier run's library, as maps shows it to us */
    char libc[PATH_MAX], hooks[PATH_MAX];
    uint64_t dlopen_fn, dlsym_fn, dlerror_fn, handle = 0, start_fn = 0, rc = 0;
    struct inject *in = NULL;
    bool same_ns = targetfile_same_ns(m->pid);
    bool loaded = mapped_path(m->pid, is_hooks, lib_seen, sizeof(lib_seen)) == 0;
    int r;

    error_clear(err);
    r = mapped_path(m->pid, is_libc, libc, sizeof(libc));
    if (r == 0)
        r = loader_symbols(m->pid, libc, &dlopen_fn, &dlsym_fn, &dlerror_fn);
    if (r < 0)
        return error_set(err, r, "the target has no C library with dlopen (a static binary?)");
    if (!loaded) {
        static const char *const dirs[] = {"/tmp", "/dev/shm", "/var/tmp", NULL};
        char name[96];

        r = hook_library(m, is_musl(libc), hooks, sizeof(hooks), err);
        if (r < 0)
            return r;
        if (same_ns && hooks[0] == '/') {
            snprintf(lib_t, sizeof(lib_t), "%s", hooks);
        } else {
            snprintf(name, sizeof(name), HOOK_NAME_TAG ".%d.so", (int)getpid());
            r = targetfile_place(m->pid, same_ns, dirs, name, lib_t, sizeof(lib_t), lib_a,
                                 sizeof(lib_a));
            if (r == 0) {
                unlink(lib_a);
                r = copy_file(hooks, lib_a, m->pid);
            }
            if (r < 0) {
                lib_a[0] = '\0';
                return error_set(err, r,
                                 "could not put the hook library where the target can "
                                 "load it: %s",
                                 strerror(-r));
            }
        }
    }
    r = ring_create(m, same_ns, ring_t, sizeof(ring_t), ring_a, sizeof(ring_a));
    if (r < 0) {
        error_set(err, r,
                  "could not create the shared ring in the target's /dev/shm or "
                  "/tmp: %s",
                  strerror(-r));
        goto out;
    }
    r = inject_attach(m->pid, &in, err);
    if (r < 0)
        goto out;
    if (loaded) {
        /* An earlier run's library: its entry points are read from the mapped file itself, not
         * asked of the loader by name. The name the loader knows it by is whatever that run
         * passed to dlopen in the target's own view (its /tmp under a chroot or in a container),
         * while maps shows the agent's view (ROOT/tmp/..., or a path only the target's mount
         * namespace resolves) of a file that is unlinked by now; no translation of one into the
         * other is sure to give back the exact name. inject_symbol reads the file through
         * /proc/PID/map_files, whatever namespace or root the target has. */
        if (inject_symbol(m->pid, lib_seen, "memhook_start", &start_fn) < 0 ||
            inject_symbol(m->pid, lib_seen, "memhook_stop", &m->stop_fn) < 0)
            start_fn = 0;
    } else {
        r = call_str(in, dlopen_fn, lib_t, RTLD_NOW, false, &handle);
        if (r == 0 && !handle) {
            char dlerr[256] = "no reason given";
            uint64_t msg = 0;
            if (dlerror_fn && inject_call(in, dlerror_fn, NULL, 0, &msg) == 0 && msg)
                inject_read_string(m->pid, msg, dlerr, sizeof(dlerr));
            r = error_set(err, -ENOEXEC, "the target could not load the hook library: %s", dlerr);
            goto out;
        }
        if (r == 0)
            r = call_str(in, dlsym_fn, "memhook_start", handle, true, &start_fn);
        if (r == 0)
            r = call_str(in, dlsym_fn, "memhook_stop", handle, true, &m->stop_fn);
    }
    if (r == 0 && (!start_fn || !m->stop_fn)) {
        r = error_set(err, -ENOEXEC, "the hook library in the target has no memhook_start");
        goto out;
    }
    if (r == 0)
        r = call_str(in, start_fn, ring_t, 0, false, &rc);
    if (r < 0) {
        error_set(err, r, "calling into the target failed: %s", strerror(-r));
        goto out;
    }
    if ((int)rc < 0) {
        r = error_set(err, (int)rc, "the hooks could not be installed in the target: %s%s",
                      strerror(-(int)rc),
                      loaded ? " (a hook library of another agent version may be "
                               "loaded there; restart the target to replace it)"
                             : "");
        goto out;
    }
    m->hooked = true;
out:
    if (in) {
        int d = inject_detach(in);
        if (r == 0 && d < 0)
            r = error_set(err, d, "the target's thread could not be restored: %s", strerror(-d));
    }
    /* Both sides hold what they need open or mapped: no name is left behind. */
    if (ring_a[0] && m->hdr)
        unlink(ring_a);
    if (lib_a[0])
        unlink(lib_a);
    return r;
}

/* Takes the hooks out at once; err gets why that failed. A target that is gone has nothing left
 * to take them out of. */
static int hooks_remove(struct memprof *m, struct error *err)
{
    struct inject *in;
    uint64_t rc;
    int r;

    if (!m->hooked)
        return 0;
    /* The flag alone makes the hooks step aside at their next call; the call below restores
     * the GOT at once even if the target never allocates again. */
    __atomic_store_n(&m->hdr->stop, 1, __ATOMIC_RELEASE);
    r = inject_attach(m->pid, &in, err);
    if (r == 0) {
        r = inject_call(in, m->stop_fn, NULL, 0, &rc);
        int d = inject_detach(in);
        if (r == 0)
            r = d;
    }
    m->hooked = false;
    if (r == -ESRCH) {
        error_clear(err);
        return 0;
    }
    return error_fill(err, r);
}

/* ---- unmapping the ring of a finished run ---- */

/* Gone, or a zombie its parent has not reaped yet: either way nothing will allocate again. */
static bool process_alive(pid_t pid, uint64_t starttime)
{
    uint64_t st;
    char state;
    return procfs_read_starttime(PROCFS_ROOT, pid, &st) == 0 && st == starttime &&
           procfs_read_state(PROCFS_ROOT, pid, 0, &state) == 0 && state != 'Z' && state != 'X';
}

static bool is_ring(const char *path)
{
    return strstr(path, RING_NAME_TAG) != NULL;
}

/* Bytes of pid's rings, and whether addr lies in code of a hook library. */
static int ring_bytes(pid_t pid, uint64_t addr, uint64_t *ret_bytes, bool *ret_in_hooks)
{
    struct procfs_map *maps;
    uint64_t bytes = 0;
    bool in_hooks = false;
    size_t n;
    int r = procfs_read_maps(PROCFS_ROOT, pid, &maps, &n);

    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        if (is_ring(maps[i].path))
            bytes += maps[i].end - maps[i].start;
        if (addr >= maps[i].start && addr < maps[i].end && maps[i].perms[2] == 'x' &&
            is_hooks(maps[i].path))
            in_hooks = true;
    }
    procfs_maps_free(maps, n);
    *ret_bytes = bytes;
    *ret_in_hooks = in_hooks;
    return 0;
}

/* A thread of pid that may not have run for a while, so may still be inside a hook: stopped,
 * traced, or in uninterruptible sleep at each of SETTLE_SAMPLES looks (a thread doing I/O is
 * there now and then, one stuck in a page-in under memory pressure stays). *ret_tid is 0 when
 * there is none. */
static int unsettled_thread(pid_t pid, pid_t *ret_tid, char *ret_state)
{
    struct timespec pause = {0, SETTLE_PAUSE_US * 1000};
    bool *stuck = NULL, any = true;
    pid_t *tids;
    size_t n;
    int r = procfs_list_tasks(PROCFS_ROOT, pid, &tids, &n);

    if (r < 0)
        return r;
    *ret_tid = 0;
    stuck = calloc(n ? n : 1, sizeof(*stuck));
    if (!stuck) {
        r = -ENOMEM;
        goto out;
    }
    for (unsigned k = 0; k < SETTLE_SAMPLES && any && !*ret_tid; k++) {
        if (k)
            nanosleep(&pause, NULL);
        any = false;
        for (size_t i = 0; i < n && !*ret_tid; i++) {
            char st;

            if (procfs_read_state(PROCFS_ROOT, pid, tids[i], &st) < 0)
                st = 'X'; /* gone: not inside anything */
            if (st == 'T' || st == 't') {
                *ret_tid = tids[i];
                *ret_state = st;
            }
            stuck[i] = st == 'D' && (k == 0 || stuck[i]);
            any |= stuck[i];
        }
    }
    for (size_t i = 0; i < n && any && !*ret_tid; i++)
        if (stuck[i]) {
            *ret_tid = tids[i];
            *ret_state = 'D';
        }
out:
    free(stuck);
    free(tids);
    return r;
}

/* What memhook_release's code says, for the agent's log. */
static int release_result(int rc, struct error *err)
{
    switch (rc) {
    case 0:
    case -ENXIO:
        return error_set(err, rc, NULL);
    case -EBUSY:
        return error_set(err, rc,
                         "the hooks are on in the target: another allocation profile is "
                         "under way there");
    case -EAGAIN:
    case -EDEADLK:
        return error_set(err, -EAGAIN,
                         "the hooks went off less than %llu s ago, or a thread of the target "
                         "holds their lock",
                         MEMRING_RELEASE_QUIET_NS / 1000000000ull);
    default:
        return error_set(err, rc, "the hook library in the target failed to unmap it: %s",
                         strerror(-rc));
    }
}

int memprof_release(pid_t pid, uint64_t starttime, uint64_t *ret_bytes, struct error *err)
{
    char lib[PATH_MAX], state = 0;
    uint64_t fn = 0, rc = 0, before = 0, after = 0;
    struct inject *in = NULL;
    bool in_hooks;
    pid_t tid;
    int r, d;

    error_clear(err);
    if (pid == getpid())
        return error_set(err, -EINVAL, NULL);
    if (!process_alive(pid, starttime))
        return error_set(err, -ESRCH, NULL);
    /* Exec'd since (same pid and start time), or never hooked: no library, no ring, nothing. */
    if (mapped_path(pid, is_hooks, lib, sizeof(lib)) < 0 ||
        ring_bytes(pid, 0, &before, &in_hooks) < 0 || !before)
        return error_set(err, -ENXIO, NULL);
    r = inject_symbol(pid, lib, "memhook_release", &fn);
    if (r < 0)
        return error_set(err, r == -ENOENT ? -ENOEXEC : r,
                         "the hook library loaded in the target (%s) cannot unmap it (%s): an "
                         "older agent loaded it",
                         lib, strerror(-r));
    r = unsettled_thread(pid, &tid, &state);
    if (r < 0)
        return error_set(err, r, NULL);
    if (tid)
        return error_set(err, -EAGAIN,
                         "thread %d of the target is %s, so it may still be inside a hook",
                         (int)tid,
                         state == 'D'   ? "in uninterruptible sleep"
                         : state == 't' ? "stopped by a debugger"
                                        : "stopped");
    r = inject_attach(pid, &in, err);
    if (r < 0)
        return r;
    /* With a thread seized the pid cannot go to another process; the same one may have exec'd
     * since the look-up, which leaves no hook library at fn. */
    if (!process_alive(pid, starttime))
        r = error_set(err, -ESRCH, NULL);
    else if (ring_bytes(pid, fn, &before, &in_hooks) < 0 || !in_hooks)
        r = error_set(err, -ENXIO, NULL);
    else if ((r = inject_call(in, fn, NULL, 0, &rc)) < 0)
        error_set(err, r, "calling into the target failed: %s", strerror(-r));
    d = inject_detach(in);
    if (r == 0 && d < 0)
        r = error_set(err, d, "the target's thread could not be restored: %s", strerror(-d));
    if (r == 0)
        r = release_result((int)rc, err);
    if (r < 0)
        return r;
    if (ring_bytes(pid, 0, &after, &in_hooks) < 0 || after > before)
        after = before;
    *ret_bytes = before - after;
    return 0;
}

/* ---- public ---- */

static bool target_alive(struct memprof *m)
{
    return process_alive(m->pid, m->starttime);
}

int memprof_open(pid_t pid, struct stacks *stacks, const struct memprof_options *o,
                 struct memprof **ret, struct error *err)
{
    struct error *fallback, perr;
    int r;

    error_clear(err);
    if (pid == getpid())
        return error_set(err, -EINVAL, "the agent cannot profile its own allocations");
    struct memprof *m = calloc(1, sizeof(*m));
    if (!m)
        return error_set(err, -ENOMEM, NULL);
    m->pid = pid;
    m->stacks = stacks;
    m->opt = *o;
    fallback = &m->stats.fallback;
    r = procfs_read_starttime(PROCFS_ROOT, pid, &m->starttime);
    if (r < 0) {
        error_set(err, r, "process %d is gone", (int)pid);
        goto fail;
    }
    if (site_intern(m, NULL, 0) != 0) {
        r = error_set(err, -ENOMEM, NULL);
        goto fail;
    }
    double every = o->seconds * 1000.0 / (MEMPROF_MAX_SNAPSHOTS - 10);
    m->snap_every_ms = every < 10 ? 10 : (uint64_t)every;
    m->start_ns = mono_ns();
    if (o->force_uprobes)
        r = error_set(fallback, -EOPNOTSUPP, "uprobes were asked for");
    else
        r = hooks_install(m, fallback);
    if (r == 0) {
        m->stats.method = "inject";
    } else {
        if (m->hdr) {
            munmap(m->hdr, m->ring_len);
            m->hdr = NULL;
        }
        r = memprobe_open(pid, &m->probe, &perr);
        if (r < 0) {
            /* A target that exited meanwhile needs no words beyond the errno's. */
            if (r == -ESRCH)
                error_set(err, r, NULL);
            else
                error_set(err, r, "%s; the uprobe fallback failed too: %s", fallback->reason,
                          perr.reason);
            goto fail;
        }
        m->stats.method = "uprobes";
    }
    m->start_ns = mono_ns();
    /* The hooks see only what is allocated from now on: massif states the heap already in use
     * as one node (no [heap], or smaps unreadable: none). */
    if (procfs_read_heap_rss(PROCFS_ROOT, pid, &m->start_heap) < 0)
        m->start_heap = 0;
    take_snapshot(m, 0, true);
    m->next_snap_ms = m->snap_every_ms;
    *ret = m;
    return 0;
fail:
    memprof_free(m);
    return r;
}

int memprof_poll(struct memprof *m, int timeout_ms, struct error *err)
{
    uint64_t deadline = mono_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000u;
    int r = 0;

    error_clear(err);
    do {
        size_t n = 0;
        if (m->probe) {
            r = memprobe_poll(m->probe, 10, probe_event, m);
            if (r == -ESRCH)
                m->stats.target_exited = true;
        } else if (m->hdr) {
            n = ring_drain(m);
        }
        maybe_snapshot(m);
        uint64_t now = elapsed_ms(m);
        if (m->hdr && now - m->last_alive_ms >= ALIVE_CHECK_MS) {
            m->last_alive_ms = now;
            if (!target_alive(m)) {
                ring_drain(m);
                m->stats.target_exited = true;
                m->hooked = false;
            }
        }
        if (m->stats.target_exited)
            r = -ESRCH;
        if (r < 0)
            return error_set(err, r, NULL);
        if (m->hdr && n == 0) {
            struct timespec ts = {0, DRAIN_PAUSE_US * 1000};
            nanosleep(&ts, NULL);
        }
    } while (mono_ns() < deadline);
    return 0;
}

/* Hooks that record frees but no allocation, or nothing for a while, are most likely not on
 * the target's allocation path (as when a canonical PLT entry was taken for malloc): say so
 * rather than hand back an empty profile that looks like a quiet heap. */
static void note_silent_hooks(struct memprof *m)
{
    struct memprof_stats *st = &m->stats;
    unsigned long long slots = __atomic_load_n(&m->hdr->slots_patched, __ATOMIC_RELAXED);
    unsigned long long modules = __atomic_load_n(&m->hdr->modules_patched, __ATOMIC_RELAXED);
    double secs = (double)st->elapsed_ms / 1000.0;

    if (st->allocs || (!st->frees && st->elapsed_ms < MEMPROF_SILENT_MS))
        return;
    if (st->frees)
        snprintf(st->silent_hooks, sizeof(st->silent_hooks),
                 "hooks were installed (%llu GOT slots in %llu modules) but saw no allocations in "
                 "%.1f s while they saw %llu frees: the target's allocations do not seem to go "
                 "through the slots hooked, and the profile is empty",
                 slots, modules, secs, (unsigned long long)st->frees);
    else
        snprintf(st->silent_hooks, sizeof(st->silent_hooks),
                 "hooks were installed (%llu GOT slots in %llu modules) but saw no allocations "
                 "or frees in %.1f s: the target was idle, or its allocator is not reached "
                 "through the slots hooked",
                 slots, modules, secs);
}

int memprof_finish(struct memprof *m, struct error *err)
{
    int r = 0;

    error_clear(err);
    if (m->finished)
        return 0;
    m->finished = true;
    if (m->hdr) {
        r = hooks_remove(m, err);
        /* Threads that were inside a hook when it was removed may still commit an event. */
        uint64_t until = mono_ns() + FINISH_DRAIN_MS * 1000000ull;
        while (mono_ns() < until) {
            if (!ring_drain(m)) {
                uint64_t head = __atomic_load_n(&m->hdr->head, __ATOMIC_ACQUIRE);
                if (head == __atomic_load_n(&m->hdr->tail, __ATOMIC_RELAXED))
                    break;
                struct timespec ts = {0, DRAIN_PAUSE_US * 1000};
                nanosleep(&ts, NULL);
            }
        }
        m->stats.lost += __atomic_load_n(&m->hdr->lost, __ATOMIC_RELAXED) +
                         __atomic_load_n(&m->hdr->sampled_full, __ATOMIC_RELAXED);
        m->stats.hooks_abandoned =
            __atomic_load_n(&m->hdr->state, __ATOMIC_ACQUIRE) == MEMRING_STATE_ABANDONED;
    }
    if (m->probe) {
        struct memprobe_stats ps;
        memprobe_poll(m->probe, 0, probe_event, m);
        memprobe_get_stats(m->probe, &ps);
        m->stats.lost += ps.lost;
        memprobe_close(m->probe);
        m->probe = NULL;
    }
    note_peak(m);
    m->stats.elapsed_ms = elapsed_ms(m);
    if (m->hdr)
        note_silent_hooks(m);
    take_snapshot(m, m->stats.elapsed_ms, true);
    return r;
}

void memprof_get_stats(const struct memprof *m, struct memprof_stats *ret)
{
    *ret = m->stats;
    ret->live_bytes = m->live_bytes;
    ret->live_blocks = (uint64_t)(m->live_blocks + 0.5);
    ret->sites = m->nsites;
    if (!m->finished)
        ret->elapsed_ms = elapsed_ms(m);
}

static int by_live_bytes(const void *a, const void *b)
{
    const struct memprof_site *x = a, *y = b;
    if (x->live_bytes != y->live_bytes)
        return x->live_bytes < y->live_bytes ? 1 : -1;
    return 0;
}

int memprof_sites(struct memprof *m, const struct memprof_site **ret, size_t *ret_n)
{
    free(m->out_sites);
    m->nout_sites = 0;
    m->out_sites = calloc(m->nsites ? m->nsites : 1, sizeof(*m->out_sites));
    if (!m->out_sites)
        return -ENOMEM;
    for (size_t i = 0; i < m->nsites; i++) {
        const struct site *s = &m->sites[i];
        if (!s->live_bytes)
            continue;
        m->out_sites[m->nout_sites++] =
            (struct memprof_site){.frames = s->frames,
                                  .nframes = s->nframes,
                                  .live_bytes = s->live_bytes,
                                  .live_blocks = (uint64_t)(s->live_blocks + 0.5)};
    }
    if (m->nout_sites > 1)
        qsort(m->out_sites, m->nout_sites, sizeof(*m->out_sites), by_live_bytes);
    *ret = m->out_sites;
    *ret_n = m->nout_sites;
    return 0;
}

static struct heap_site *file_sites(struct memprof *m)
{
    struct heap_site *fs = calloc(m->nsites ? m->nsites : 1, sizeof(*fs));
    if (!fs)
        return NULL;
    for (size_t i = 0; i < m->nsites; i++) {
        fs[i].frames = m->sites[i].frames;
        fs[i].nframes = m->sites[i].nframes;
        fs[i].bytes = m->sites[i].live_bytes;
        fs[i].blocks = (uint64_t)(m->sites[i].live_blocks + 0.5);
    }
    return fs;
}

int memprof_rows(struct memprof *m, struct hpy_row **ret, size_t *ret_n, struct error *err)
{
    struct heap_site *fs = file_sites(m);
    if (!fs)
        return error_set(err, -ENOMEM, NULL);
    int r = hpy_rows_new(fs, m->nsites, ret, ret_n, err);
    free(fs);
    return r;
}

int memprof_write_hpy(struct memprof *m, const char *path, double timemade, struct error *err)
{
    struct heap_site *fs = file_sites(m);
    if (!fs)
        return error_set(err, -ENOMEM, NULL);
    int r = hpy_write(path, fs, m->nsites, timemade, err);
    free(fs);
    return r;
}

/* Per-site bytes of a snapshot, widened to every site known now (later ones were 0). */
static uint64_t *widen(const uint64_t *v, size_t n, size_t nsites)
{
    uint64_t *w = calloc(nsites ? nsites : 1, sizeof(*w));
    if (w && v)
        memcpy(w, v, (n < nsites ? n : nsites) * sizeof(*w));
    return w;
}

int memprof_write_massif(struct memprof *m, const char *path, const char *cmd, struct error *err)
{
    struct heap_site *fs = file_sites(m);
    struct heap_snapshot *hs = calloc(m->nsnaps + 1, sizeof(*hs));
    uint64_t **owned = calloc(m->nsnaps + 1, sizeof(*owned));
    size_t k = 0, nowned = 0;
    bool peak_done = m->stats.peak_bytes == 0;
    int r = -ENOMEM;

    error_clear(err);
    if (!fs || !hs || !owned)
        goto out;
    for (size_t i = 0; i <= m->nsnaps; i++) {
        /* The peak goes in its place in time, as massif's own peak snapshot does. */
        if (!peak_done && (i == m->nsnaps || m->snaps[i].ms > m->stats.peak_ms)) {
            uint64_t *w = widen(m->peak_site_bytes, m->peak_nsites, m->nsites);
            if (!w)
                goto out;
            owned[nowned++] = w;
            hs[k++] = (struct heap_snapshot){.time = m->stats.peak_ms,
                                             .heap_bytes = m->stats.peak_bytes + m->start_heap,
                                             .before_bytes = m->start_heap,
                                             .heap_extra_bytes = m->peak_extra,
                                             .tree = HEAP_TREE_PEAK,
                                             .site_bytes = w};
            peak_done = true;
        }
        if (i == m->nsnaps)
            break;
        const struct snap *s = &m->snaps[i];
        hs[k] = (struct heap_snapshot){.time = s->ms,
                                       .heap_bytes = s->bytes + m->start_heap,
                                       .heap_extra_bytes = s->extra,
                                       .tree = s->tree,
                                       .before_bytes = m->start_heap};
        if (s->tree != HEAP_TREE_EMPTY) {
            uint64_t *w = widen(s->site_bytes, s->nsites, m->nsites);
            if (!w)
                goto out;
            owned[nowned++] = w;
            hs[k].site_bytes = w;
        }
        k++;
    }
    r = massif_write(path, cmd, fs, m->nsites, hs, k, err);
out:
    for (size_t i = 0; owned && i < nowned; i++)
        free(owned[i]);
    free(owned);
    free(hs);
    free(fs);
    return error_fill(err, r);
}

void memprof_free(struct memprof *m)
{
    if (!m)
        return;
    if (!m->finished)
        memprof_finish(m, NULL);
    if (m->hdr)
        munmap(m->hdr, m->ring_len);
    for (size_t i = 0; i < m->nsites; i++)
        site_free(&m->sites[i]);
    for (size_t i = 0; i < m->nsnaps; i++)
        snap_free(&m->snaps[i]);
    free(m->sites);
    free(m->site_index);
    free(m->blocks);
    free(m->slot_site);
    free(m->peak_site_bytes);
    free(m->out_sites);
    free(m);
}
