/* The perf_event backend of the sampler (see sampler.h): software cpu-clock events on every
 * thread of the target, user space only, each sample carrying the user registers and a copy of
 * the user stack, read from one mmap'd ring buffer per CPU, woken by poll. Not an unwinder.
 *
 * Why per-CPU events: the kernel refuses to mmap an inherited per-task event with cpu == -1
 * (perf_mmap), and inheritance is what samples the threads created during the run. So each
 * thread present when sampling starts gets one inherited event per online CPU (pid = tid,
 * cpu = c), all redirected (PERF_EVENT_IOC_SET_OUTPUT) into that CPU's ring; threads they create
 * carry copies. A thread created while events were being opened, by a thread not covered yet,
 * has none: /proc/PID/task is scanned again after opening and then every second, and events are
 * opened for every thread not known. Such a thread may have inherited events after all (the
 * scan cannot tell), so samples of one thread may come from two "chains" (the events opened for
 * one thread and their copies): each thread is locked onto one chain, the duplicates dropped and
 * the redundant chain disabled (the disable reaches its copies, whose threads then hold another
 * chain). A sample carries the id of its chain's first event (PERF_SAMPLE_IDENTIFIER).
 *
 * Why cpu-clock and not task-clock: for a per-task event both tick only while the task runs, and
 * both turn a frequency into a fixed period of 1e9 / freq ns (perf_swevent_init_hrtimer);
 * cpu-clock is what perf itself falls back to and what `perf record -e cpu-clock` measures,
 * which keeps our figures comparable with perf's. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <asm/perf_regs.h>
#include <libunwind.h>
#include <linux/perf_event.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include "procfs.h"
#include "sampler_ops.h"

#define CPUS_MAX 4096
#define EVENTS_MAX 65536                /* event fds: threads at start x online CPUs */
#define OPEN_SCANS_MAX 8                /* re-scans of /proc/PID/task while opening */
#define RESCAN_NS 1000000000ull
#define SAMPLE_BYTES_EST (SAMPLER_STACK_BYTES + 256)
/* A ring holds RING_MS of samples of one thread at the chosen rate (at least 64 pages, at most
 * 1024 = 4 MiB): at 999 Hz a sample is ~16.6 KiB, 16.6 MB/s per busy CPU, so 64 pages would
 * fill in 15 ms. We are woken at a quarter full, which leaves the caller's per-sample work
 * (unwinding, in the callback) ~3/4 of the ring, 35+ ms, of slack before the kernel drops. */
#define RING_MS 50
#define RING_PAGES_MIN 64
#define RING_PAGES_MAX 1024
#define RING_PAGES_FLOOR 8              /* smallest we retry with when mlock limits refuse */
#define RING_TOTAL_MAX (64ull << 20)    /* all CPUs together */
#define RECORD_MAX 65536                /* header.size is 16 bits */
#define TRAILER_BYTES 24                /* sample_id_all: pid, tid, time, identifier */

/* x86-64 user registers in perf's bit order (which is the record's order), and where each goes
 * in libunwind's numbering, the one sampler_sample.regs uses. Flags and segments are left out. */
#define REGS_MASK ((1ull << PERF_REG_X86_AX) | (1ull << PERF_REG_X86_BX) | \
                   (1ull << PERF_REG_X86_CX) | (1ull << PERF_REG_X86_DX) | \
                   (1ull << PERF_REG_X86_SI) | (1ull << PERF_REG_X86_DI) | \
                   (1ull << PERF_REG_X86_BP) | (1ull << PERF_REG_X86_SP) | \
                   (1ull << PERF_REG_X86_IP) | (1ull << PERF_REG_X86_R8) | \
                   (1ull << PERF_REG_X86_R9) | (1ull << PERF_REG_X86_R10) | \
                   (1ull << PERF_REG_X86_R11) | (1ull << PERF_REG_X86_R12) | \
                   (1ull << PERF_REG_X86_R13) | (1ull << PERF_REG_X86_R14) | \
                   (1ull << PERF_REG_X86_R15))
static const unsigned char regs_to_unw[SAMPLER_NREGS] = {
    UNW_X86_64_RAX, UNW_X86_64_RBX, UNW_X86_64_RCX, UNW_X86_64_RDX, UNW_X86_64_RSI,
    UNW_X86_64_RDI, UNW_X86_64_RBP, UNW_X86_64_RSP, UNW_X86_64_RIP, UNW_X86_64_R8,
    UNW_X86_64_R9, UNW_X86_64_R10, UNW_X86_64_R11, UNW_X86_64_R12, UNW_X86_64_R13,
    UNW_X86_64_R14, UNW_X86_64_R15,
};

struct ring {
    int fd;                             /* the event that owns the mapping; -1: not mapped yet */
    struct perf_event_mmap_page *meta;
    unsigned char *data;
    uint64_t size;                      /* data bytes, a power of two */
    size_t map_len;
};

struct pev {
    uint64_t id;
    int fd;
    uint32_t chain;
    bool hup;
};

struct chain {
    pid_t tid;                          /* the thread the events were opened for */
    bool disabled;
};

struct perf {
    int *cpus;
    size_t ncpus;
    struct ring *rings;                 /* one per entry of cpus */
    int *tmpfds;                        /* ncpus */
    struct pev *evs;                    /* ascending id */
    size_t nevs, evs_cap;
    struct chain *chains;
    size_t nchains, chains_cap;
    struct pollfd *pfds;
    size_t npfds;
    bool pfds_stale;
    bool inherit_thread;                /* the kernel knows attr.inherit_thread (5.13+) */
    bool exited;
    size_t ring_pages;
    uint64_t next_scan_ns;
    unsigned char *copy;                /* RECORD_MAX: a record that wraps the ring's end */
};

static int parse_cpu_list(const char *p, int *cpus, size_t *ret_n)
{
    size_t n = 0;
    while (*p && *p != '\n') {
        uint64_t a, b;
        if (procfs_parse_u64(&p, 10, 6, &a) < 0)
            return -EBADMSG;
        b = a;
        if (*p == '-') {
            p++;
            if (procfs_parse_u64(&p, 10, 6, &b) < 0 || b < a)
                return -EBADMSG;
        }
        for (uint64_t c = a; c <= b; c++) {
            if (n == CPUS_MAX)
                return -E2BIG;
            cpus[n++] = (int)c;
        }
        if (*p == ',')
            p++;
        else if (*p && *p != '\n')
            return -EBADMSG;
    }
    if (n == 0)
        return -EBADMSG;
    *ret_n = n;
    return 0;
}

static int online_cpus(struct perf *p)
{
    char buf[8192];
    int r = 0;
    FILE *f = fopen("/sys/devices/system/cpu/online", "re");
    if (!f)
        return -errno;
    if (!fgets(buf, sizeof(buf), f)) {
        r = -EBADMSG;
        goto out;
    }
    p->cpus = calloc(CPUS_MAX, sizeof(*p->cpus));
    if (!p->cpus) {
        r = -ENOMEM;
        goto out;
    }
    r = parse_cpu_list(buf, p->cpus, &p->ncpus);
out:
    fclose(f);
    return r;
}

static size_t pow2_pages(uint64_t bytes, long page)
{
    size_t pages = RING_PAGES_MIN;
    while (pages < RING_PAGES_MAX && (uint64_t)pages * (uint64_t)page < bytes)
        pages *= 2;
    return pages;
}

static size_t ring_pages_for(unsigned freq, size_t ncpus, long page)
{
    size_t pages = pow2_pages((uint64_t)freq * SAMPLE_BYTES_EST * RING_MS / 1000, page);
    while (pages > RING_PAGES_FLOOR && (uint64_t)(pages + 1) * page * ncpus > RING_TOTAL_MAX)
        pages /= 2;
    return pages;
}

static void fill_attr(struct perf_event_attr *a, const struct sampler *s, const struct perf *p,
                      long page)
{
    memset(a, 0, sizeof(*a));
    a->size = sizeof(*a);
    a->type = PERF_TYPE_SOFTWARE;
    a->config = PERF_COUNT_SW_CPU_CLOCK;
    a->freq = 1;
    a->sample_freq = s->freq;
    a->sample_type = PERF_SAMPLE_IDENTIFIER | PERF_SAMPLE_TID | PERF_SAMPLE_TIME |
                     PERF_SAMPLE_PERIOD | PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER;
    a->sample_regs_user = REGS_MASK;
    a->sample_stack_user = SAMPLER_STACK_BYTES;
    a->disabled = 1;                    /* enabled once its output goes to the ring */
    a->inherit = 1;
    a->inherit_thread = p->inherit_thread;  /* forked processes are not the target */
    a->exclude_kernel = 1;
    a->exclude_hv = 1;
    a->mmap = 1;                        /* without mmap_data: executable mappings only */
    a->mmap2 = 1;
    a->comm = 1;
    a->task = 1;
    a->sample_id_all = 1;
    a->use_clockid = 1;
    a->clockid = CLOCK_MONOTONIC;
    a->watermark = 1;
    a->wakeup_watermark = (uint32_t)(p->ring_pages * (size_t)page / 4);
}

/* One event for tid on the CPU at index ci. */
static int event_open(const struct sampler *s, struct perf *p, pid_t tid, size_t ci, long page,
                      int *ret_fd)
{
    struct perf_event_attr a;
    fill_attr(&a, s, p, page);
    int fd = (int)syscall(SYS_perf_event_open, &a, tid, p->cpus[ci], -1, PERF_FLAG_FD_CLOEXEC);
    if (fd < 0 && errno == EINVAL && p->inherit_thread) {
        /* A kernel before 5.13: forked children get copies too, their samples are dropped. */
        p->inherit_thread = false;
        fill_attr(&a, s, p, page);
        fd = (int)syscall(SYS_perf_event_open, &a, tid, p->cpus[ci], -1, PERF_FLAG_FD_CLOEXEC);
        if (fd < 0)
            p->inherit_thread = true;
    }
    if (fd < 0)
        return -errno;
    *ret_fd = fd;
    return 0;
}

/* Maps the ring of CPU index ci from the event *fd. The kernel may refuse the size (the
 * perf_event_mlock_kb allowance of an unprivileged user): then smaller rings are tried, each
 * with a new event whose wake-up watermark fits that size. */
static int ring_map(const struct sampler *s, struct perf *p, pid_t tid, size_t ci, long page,
                    size_t opened_pages, int *fd)
{
    struct ring *rg = &p->rings[ci];
    int r;
    if (opened_pages != p->ring_pages) {
        /* A smaller ring was settled on after this event was opened for a bigger one. */
        close(*fd);
        *fd = -1;
        r = event_open(s, p, tid, ci, page, fd);
        if (r < 0)
            return r;
    }
    for (;;) {
        size_t len = (p->ring_pages + 1) * (size_t)page;
        void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
        if (m != MAP_FAILED) {
            const struct perf_event_mmap_page *meta = m;
            /* data_offset/data_size exist since Linux 4.1; before, data follows the first page */
            uint64_t off = meta->data_offset ? meta->data_offset : (uint64_t)page;
            uint64_t size = meta->data_size ? meta->data_size : p->ring_pages * (uint64_t)page;
            if (off > len || size > len - off || size == 0 || (size & (size - 1)) != 0) {
                munmap(m, len);
                return -EBADMSG;
            }
            rg->fd = *fd;
            rg->meta = m;
            rg->map_len = len;
            rg->data = (unsigned char *)m + off;
            rg->size = size;
            return 0;
        }
        r = -errno;
        if ((r != -EPERM && r != -ENOMEM) || p->ring_pages <= RING_PAGES_FLOOR)
            return r;
        p->ring_pages /= 2;
        close(*fd);
        *fd = -1;
        r = event_open(s, p, tid, ci, page, fd);
        if (r < 0)
            return r;
    }
}

static int evs_add(struct perf *p, uint64_t id, int fd, uint32_t chain)
{
    if (p->nevs == p->evs_cap) {
        size_t cap = p->evs_cap ? p->evs_cap * 2 : 64;
        struct pev *e = realloc(p->evs, cap * sizeof(*e));
        if (!e)
            return -ENOMEM;
        p->evs = e;
        p->evs_cap = cap;
    }
    size_t i = p->nevs;
    while (i > 0 && p->evs[i - 1].id > id)
        i--;
    memmove(&p->evs[i + 1], &p->evs[i], (p->nevs - i) * sizeof(*p->evs));
    p->evs[i] = (struct pev){ .id = id, .fd = fd, .chain = chain };
    p->nevs++;
    p->pfds_stale = true;
    return 0;
}

static struct pev *evs_find(struct perf *p, uint64_t id)
{
    size_t lo = 0, hi = p->nevs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->evs[mid].id < id)
            lo = mid + 1;
        else if (p->evs[mid].id > id)
            hi = mid;
        else
            return &p->evs[mid];
    }
    return NULL;
}

static void chain_disable(struct perf *p, uint32_t chain)
{
    if (p->chains[chain].disabled)
        return;
    p->chains[chain].disabled = true;
    for (size_t i = 0; i < p->nevs; i++)
        if (p->evs[i].chain == chain)
            ioctl(p->evs[i].fd, PERF_EVENT_IOC_DISABLE, 0);
}

/* Forgets the event fd of a thread that could not be set up. A ring's owner stays (disabled,
 * never enabled): the ring's mapping and the other events' output depend on it. */
static void event_drop(struct perf *p, int fd)
{
    for (size_t c = 0; c < p->ncpus; c++)
        if (p->rings[c].fd == fd)
            return;
    size_t k = 0;
    for (size_t e = 0; e < p->nevs; e++)
        if (p->evs[e].fd != fd)
            p->evs[k++] = p->evs[e];
    p->nevs = k;
    p->pfds_stale = true;
    close(fd);
}

/* Opens tid's events on every CPU and starts them. -ESRCH: the thread is gone. */
static int open_thread(struct sampler *s, struct perf *p, pid_t tid)
{
    int r = 0;
    size_t opened = 0;
    long page = sysconf(_SC_PAGESIZE);
    size_t pages_at_open = p->ring_pages;
    struct sampler_thread *t;

    if (p->nevs + p->ncpus > EVENTS_MAX)
        return -EMFILE;
    if (p->nchains == p->chains_cap) {
        size_t cap = p->chains_cap ? p->chains_cap * 2 : 64;
        struct chain *c = realloc(p->chains, cap * sizeof(*c));
        if (!c)
            return -ENOMEM;
        p->chains = c;
        p->chains_cap = cap;
    }
    /* Registered first, disabled until all went well: evs entries refer to it by index. */
    uint32_t chain = (uint32_t)p->nchains++;
    p->chains[chain] = (struct chain){ .tid = tid, .disabled = true };
    for (; opened < p->ncpus; opened++) {
        r = event_open(s, p, tid, opened, page, &p->tmpfds[opened]);
        if (r < 0)
            goto out;
    }
    for (size_t i = 0; i < p->ncpus; i++) {
        uint64_t id;
        if (p->rings[i].fd < 0)
            r = ring_map(s, p, tid, i, page, pages_at_open, &p->tmpfds[i]);
        else if (ioctl(p->tmpfds[i], PERF_EVENT_IOC_SET_OUTPUT, p->rings[i].fd) < 0)
            r = -errno;
        if (r == 0 && ioctl(p->tmpfds[i], PERF_EVENT_IOC_ID, &id) < 0)
            r = -errno;
        if (r == 0)
            r = evs_add(p, id, p->tmpfds[i], chain);
        if (r < 0)
            goto out;
    }
    p->chains[chain].disabled = false;
    t = sampler_thread_find(s, tid);
    if (t || sampler_thread_add(s, tid, &t) == 0)
        t->chain = chain;
    for (size_t i = 0; i < p->ncpus; i++)
        ioctl(p->tmpfds[i], PERF_EVENT_IOC_ENABLE, 0);
out:
    if (r < 0)
        for (size_t i = 0; i < opened; i++)
            if (p->tmpfds[i] >= 0)
                event_drop(p, p->tmpfds[i]);
    return r;
}

/* The target has exited when /proc has no thread of it left but a zombie leader. */
static bool target_gone(const struct sampler *s)
{
    pid_t *tids = NULL;
    size_t n = 0;
    char st = 0;
    int r = procfs_list_tasks(PROCFS_ROOT, s->pid, &tids, &n);
    if (r == -ESRCH)
        return true;
    bool gone = r == 0 && (n == 0 || (n == 1 && tids[0] == s->pid &&
                           (procfs_read_state(PROCFS_ROOT, s->pid, s->pid, &st) == -ESRCH ||
                            st == 'Z' || st == 'X')));
    free(tids);
    return gone;
}

/* Opens events for every listed thread not covered yet. *ret_new: how many were opened. */
static int scan_threads(struct sampler *s, struct perf *p, size_t *ret_new)
{
    pid_t *tids = NULL;
    size_t n = 0, opened = 0;
    int r = procfs_list_tasks(PROCFS_ROOT, s->pid, &tids, &n);
    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        struct sampler_thread *t = sampler_thread_find(s, tids[i]);
        if (t)
            continue;
        r = open_thread(s, p, tids[i]);
        if (r == -ESRCH) {
            r = 0;
            continue;
        }
        if (r < 0)
            goto out;
        opened++;
    }
    *ret_new = opened;
out:
    free(tids);
    return r;
}

static void perf_free(struct perf *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->nevs; i++) {
        bool owns = false;
        for (size_t c = 0; c < p->ncpus; c++)
            owns |= p->rings[c].fd == p->evs[i].fd;
        if (!owns)
            close(p->evs[i].fd);
    }
    for (size_t i = 0; p->rings && i < p->ncpus; i++) {
        if (p->rings[i].meta)
            munmap(p->rings[i].meta, p->rings[i].map_len);
        if (p->rings[i].fd >= 0)
            close(p->rings[i].fd);
    }
    free(p->cpus);
    free(p->rings);
    free(p->tmpfds);
    free(p->evs);
    free(p->chains);
    free(p->pfds);
    free(p->copy);
    free(p);
}

static int perf_open(struct sampler *s)
{
    int r;
    size_t opened = 0;
    long page = sysconf(_SC_PAGESIZE);
    struct perf *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->inherit_thread = true;
    r = online_cpus(p);
    if (r < 0)
        goto out;
    p->rings = calloc(p->ncpus, sizeof(*p->rings));
    p->tmpfds = calloc(p->ncpus, sizeof(*p->tmpfds));
    p->copy = malloc(RECORD_MAX);
    for (size_t i = 0; p->rings && i < p->ncpus; i++)
        p->rings[i].fd = -1;
    if (!p->rings || !p->tmpfds || !p->copy) {
        r = -ENOMEM;
        goto out;
    }
    p->ring_pages = ring_pages_for(s->freq, p->ncpus, page);
    /* The kernel's ceiling (lowered by itself when sampling takes too long) refuses more. */
    FILE *f = fopen("/proc/sys/kernel/perf_event_max_sample_rate", "re");
    if (f) {
        const char *q;
        char buf[32];
        uint64_t max;
        if (fgets(buf, sizeof(buf), f) && (q = buf, procfs_parse_u64(&q, 10, 9, &max) == 0) &&
            max > 0 && max < s->freq)
            s->freq = (unsigned)max;
        fclose(f);
        s->stats.frequency = s->freq;
    }
    for (int scan = 0; scan < OPEN_SCANS_MAX; scan++) {
        size_t n = 0;
        r = scan_threads(s, p, &n);
        if (r < 0)
            goto out;
        opened += n;
        if (n == 0)
            break;
    }
    if (opened == 0)
        r = -ESRCH;
    p->next_scan_ns = sampler_now_ns() + RESCAN_NS;
out:
    if (r < 0) {
        perf_free(p);
        s->nthreads = 0;
        return r;
    }
    s->priv = p;
    return 0;
}

struct rd {
    const unsigned char *p;
    size_t left;
};

static bool rd_u64(struct rd *d, uint64_t *v)
{
    if (d->left < 8)
        return false;
    memcpy(v, d->p, 8);
    d->p += 8;
    d->left -= 8;
    return true;
}

static bool rd_u32(struct rd *d, uint32_t *v)
{
    if (d->left < 4)
        return false;
    memcpy(v, d->p, 4);
    d->p += 4;
    d->left -= 4;
    return true;
}

static bool rd_bytes(struct rd *d, size_t n, const unsigned char **v)
{
    if (d->left < n)
        return false;
    *v = d->p;
    d->p += n;
    d->left -= n;
    return true;
}

/* The sample_id_all trailer's identifier, and the body's bytes before the trailer. */
static bool trailer(const unsigned char *rec, size_t size, struct rd *body, uint64_t *id)
{
    if (size < sizeof(struct perf_event_header) + TRAILER_BYTES)
        return false;
    memcpy(id, rec + size - 8, 8);
    body->p = rec + sizeof(struct perf_event_header);
    body->left = size - sizeof(struct perf_event_header) - TRAILER_BYTES;
    return true;
}

/* Which of two chains a thread's samples are taken from (see the top of the file). True when
 * the sample of chain c is to be handed out. */
static bool chain_accept(struct perf *p, struct sampler_thread *t, uint32_t c)
{
    if (t->chain == c)
        return true;
    bool locked_own = p->chains[t->chain].tid == t->tid;
    bool from_own = p->chains[c].tid == t->tid;
    if ((locked_own && !from_own) || p->chains[t->chain].disabled) {
        uint32_t old = t->chain;
        t->chain = c;
        if (locked_own)
            chain_disable(p, old);
        return true;
    }
    if (from_own)
        chain_disable(p, c);
    return false;
}

/* The thread entry of tid, created on first sight with chain c; NULL past the table's limit
 * (then the sample goes out without de-duplication). */
static struct sampler_thread *thread_of(struct sampler *s, pid_t tid, uint32_t c)
{
    struct sampler_thread *t = sampler_thread_find(s, tid);
    if (!t && sampler_thread_add(s, tid, &t) == 0)
        t->chain = c;
    return t;
}

static int on_sample(struct sampler *s, struct perf *p, const unsigned char *rec, size_t size,
                     const struct sampler_callbacks *cb, void *userdata)
{
    struct rd d = { rec + sizeof(struct perf_event_header),
                    size - sizeof(struct perf_event_header) };
    uint64_t id, time, period, abi, stack_size = 0, dyn_size = 0;
    uint32_t pid, tid;
    const unsigned char *stack = NULL;
    struct sampler_sample smp;

    if (!rd_u64(&d, &id) || !rd_u32(&d, &pid) || !rd_u32(&d, &tid) || !rd_u64(&d, &time) ||
        !rd_u64(&d, &period) || !rd_u64(&d, &abi))
        goto bad;
    if ((pid_t)pid != s->pid)
        return 0;               /* a forked child's copy, where inherit_thread is unknown */
    if (abi != PERF_SAMPLE_REGS_ABI_64)
        goto bad;               /* no user registers (a kernel thread) or a 32-bit process */
    for (int i = 0; i < SAMPLER_NREGS; i++)
        if (!rd_u64(&d, &smp.regs[regs_to_unw[i]]))
            goto bad;
    if (!rd_u64(&d, &stack_size))
        goto bad;
    if (stack_size > 0 &&
        (stack_size > d.left || !rd_bytes(&d, (size_t)stack_size, &stack) ||
         !rd_u64(&d, &dyn_size) || dyn_size > stack_size))
        goto bad;
    struct pev *ev = evs_find(p, id);
    if (!ev)
        goto bad;
    struct sampler_thread *t = thread_of(s, (pid_t)tid, ev->chain);
    if (t) {
        if (!chain_accept(p, t, ev->chain))
            return 0;
        sampler_thread_first_sample(s, t, cb, userdata);
    }
    smp.tid = (pid_t)tid;
    smp.time_ns = time;
    smp.period_ns = period;
    smp.stack_addr = smp.regs[UNW_X86_64_RSP];
    smp.stack = dyn_size ? stack : NULL;
    smp.stack_len = (size_t)dyn_size;
    s->stats.samples++;
    int r = cb->sample(&smp, userdata);
    return r < 0 ? r : 0;
bad:
    s->stats.lost++;
    return 0;
}

static void on_comm(struct sampler *s, const struct perf_event_header *h,
                    const unsigned char *rec, const struct sampler_callbacks *cb, void *userdata)
{
    struct rd d;
    uint64_t id;
    uint32_t pid, tid;
    const unsigned char *name;
    char comm[PROCFS_COMM_MAX];

    if (!trailer(rec, h->size, &d, &id) || !rd_u32(&d, &pid) || !rd_u32(&d, &tid) ||
        d.left == 0 || !rd_bytes(&d, d.left, &name)) {
        s->stats.lost++;
        return;
    }
    size_t len = strnlen((const char *)name, (size_t)(d.p - name));
    if (len == (size_t)(d.p - name)) {
        s->stats.lost++;        /* not NUL-terminated */
        return;
    }
    if ((pid_t)pid != s->pid)
        return;
    if (h->misc & PERF_RECORD_MISC_COMM_EXEC && cb->maps_changed)
        cb->maps_changed(userdata);
    if (!cb->thread_name)
        return;
    if (len >= sizeof(comm))
        len = sizeof(comm) - 1;
    memcpy(comm, name, len);
    comm[len] = '\0';
    cb->thread_name((pid_t)tid, comm, userdata);
}

static void on_mmap2(struct sampler *s, const struct perf_event_header *h,
                     const unsigned char *rec, const struct sampler_callbacks *cb, void *userdata)
{
    struct rd d;
    uint64_t id, skip;
    uint32_t pid, tid, prot;
    /* pid, tid, addr, len, pgoff, (maj, min, ino, ino_generation | build id), prot */
    if (!trailer(rec, h->size, &d, &id) || !rd_u32(&d, &pid) || !rd_u32(&d, &tid) ||
        !rd_u64(&d, &skip) || !rd_u64(&d, &skip) || !rd_u64(&d, &skip) ||
        !rd_u64(&d, &skip) || !rd_u64(&d, &skip) || !rd_u64(&d, &skip) ||
        !rd_u32(&d, &prot)) {
        s->stats.lost++;
        return;
    }
    if ((pid_t)pid == s->pid && (prot & PROT_EXEC) && cb->maps_changed)
        cb->maps_changed(userdata);
}

/* FORK and EXIT: pid, ppid, tid, ptid, time. */
static void on_task(struct sampler *s, struct perf *p, const struct perf_event_header *h,
                    const unsigned char *rec)
{
    struct rd d;
    uint64_t id;
    uint32_t pid, ppid, tid, ptid;
    if (!trailer(rec, h->size, &d, &id) || !rd_u32(&d, &pid) || !rd_u32(&d, &ppid) ||
        !rd_u32(&d, &tid) || !rd_u32(&d, &ptid)) {
        s->stats.lost++;
        return;
    }
    if ((pid_t)pid != s->pid)
        return;
    struct pev *ev = evs_find(p, id);
    if (h->type == PERF_RECORD_FORK) {
        /* The new thread carries copies of this chain: it needs no events of its own. */
        if (ev)
            thread_of(s, (pid_t)tid, ev->chain);
        return;
    }
    struct sampler_thread *t = sampler_thread_find(s, (pid_t)tid);
    if (t)
        t->exited = true;
    if ((pid_t)tid == s->pid && target_gone(s))
        p->exited = true;
}

static int on_record(struct sampler *s, struct perf *p, const unsigned char *rec,
                     const struct sampler_callbacks *cb, void *userdata)
{
    struct perf_event_header h;
    memcpy(&h, rec, sizeof(h));
    switch (h.type) {
    case PERF_RECORD_SAMPLE:
        return on_sample(s, p, rec, h.size, cb, userdata);
    case PERF_RECORD_LOST: {
        uint64_t lost[2];           /* id, lost */
        if (h.size < sizeof(h) + sizeof(lost)) {
            s->stats.lost++;
            break;
        }
        memcpy(lost, rec + sizeof(h), sizeof(lost));
        s->stats.lost += lost[1];
        break;
    }
    case PERF_RECORD_COMM:
        on_comm(s, &h, rec, cb, userdata);
        break;
    case PERF_RECORD_MMAP2:
        on_mmap2(s, &h, rec, cb, userdata);
        break;
    case PERF_RECORD_FORK:
    case PERF_RECORD_EXIT:
        on_task(s, p, &h, rec);
        break;
    default:
        break;                      /* THROTTLE, UNTHROTTLE, MMAP (not asked: mmap2 is set) */
    }
    return 0;
}

/* Hands out every complete record of one ring, freeing the space of each as it goes. */
static int ring_drain(struct sampler *s, struct perf *p, struct ring *rg,
                      const struct sampler_callbacks *cb, void *userdata)
{
    if (!rg->meta)
        return 0;
    uint64_t head = __atomic_load_n(&rg->meta->data_head, __ATOMIC_ACQUIRE);
    uint64_t tail = rg->meta->data_tail;
    uint64_t mask = rg->size - 1;
    int r = 0;

    while (tail != head) {
        struct perf_event_header h;
        uint64_t avail = head - tail;
        uint64_t off = tail & mask;
        const unsigned char *rec;
        if (avail < sizeof(h) || avail > rg->size)
            goto bad;
        for (size_t i = 0; i < sizeof(h); i++)
            ((unsigned char *)&h)[i] = rg->data[(off + i) & mask];
        if (h.size < sizeof(h) || h.size > avail || h.size % 8 != 0)
            goto bad;
        if (off + h.size <= rg->size) {
            rec = rg->data + off;
        } else {
            size_t first = (size_t)(rg->size - off);
            memcpy(p->copy, rg->data + off, first);
            memcpy(p->copy + first, rg->data, h.size - first);
            rec = p->copy;
        }
        r = on_record(s, p, rec, cb, userdata);
        tail += h.size;
        __atomic_store_n(&rg->meta->data_tail, tail, __ATOMIC_RELEASE);
        if (r < 0)
            return r;
    }
    return 0;
bad:
    /* Nothing after a bad header can be framed: drop the rest of what was there. */
    s->stats.lost++;
    __atomic_store_n(&rg->meta->data_tail, head, __ATOMIC_RELEASE);
    return 0;
}

static int drain_all(struct sampler *s, struct perf *p, const struct sampler_callbacks *cb,
                     void *userdata)
{
    for (size_t i = 0; i < p->ncpus; i++) {
        int r = ring_drain(s, p, &p->rings[i], cb, userdata);
        if (r < 0)
            return r;
    }
    return 0;
}

static int pfds_rebuild(struct perf *p)
{
    struct pollfd *n = realloc(p->pfds, (p->nevs ? p->nevs : 1) * sizeof(*n));
    if (!n)
        return -ENOMEM;
    p->pfds = n;
    p->npfds = 0;
    for (size_t i = 0; i < p->nevs; i++)
        if (!p->evs[i].hup)
            p->pfds[p->npfds++] = (struct pollfd){ .fd = p->evs[i].fd, .events = POLLIN };
    p->pfds_stale = false;
    return 0;
}

static void mark_hup(struct perf *p)
{
    for (size_t i = 0; i < p->npfds; i++) {
        if (!(p->pfds[i].revents & (POLLHUP | POLLERR | POLLNVAL)))
            continue;
        for (size_t e = 0; e < p->nevs; e++)
            if (p->evs[e].fd == p->pfds[i].fd)
                p->evs[e].hup = true;
        p->pfds_stale = true;
    }
}

static int perf_poll(struct sampler *s, int timeout_ms, const struct sampler_callbacks *cb,
                     void *userdata)
{
    struct perf *p = s->priv;
    int r;
    if (!p->exited) {
        if (p->pfds_stale && (r = pfds_rebuild(p)) < 0)
            return r;
        uint64_t now = sampler_now_ns();
        uint64_t to_scan = p->next_scan_ns > now ? (p->next_scan_ns - now) / 1000000 : 0;
        if ((uint64_t)timeout_ms > to_scan)
            timeout_ms = (int)to_scan;
        if (p->npfds > 0 && poll(p->pfds, p->npfds, timeout_ms) > 0) {
            mark_hup(p);
            if (p->pfds_stale && (r = pfds_rebuild(p)) < 0)
                return r;
        }
        if (p->npfds == 0)
            p->exited = true;   /* every event's thread and copies are gone */
    }
    r = drain_all(s, p, cb, userdata);
    if (r < 0)
        return r;
    if (!p->exited && sampler_now_ns() >= p->next_scan_ns) {
        size_t n;
        sampler_threads_prune(s);
        r = scan_threads(s, p, &n);
        if (r == -ESRCH || (r == 0 && target_gone(s)))
            p->exited = true;
        else if (r < 0 && r != -EMFILE)
            return r;
        p->next_scan_ns = sampler_now_ns() + RESCAN_NS;
    }
    if (p->exited) {
        r = drain_all(s, p, cb, userdata);
        if (r < 0)
            return r;
        s->stats.target_exited = true;
        return -ESRCH;
    }
    return 0;
}

static void perf_close(struct sampler *s)
{
    perf_free(s->priv);
    s->priv = NULL;
}

const struct sampler_ops sampler_perf_ops = {
    .name = "perf_event",
    .open = perf_open,
    .poll = perf_poll,
    .close = perf_close,
};
