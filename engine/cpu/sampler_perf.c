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
#include <libunwind.h>
#include <linux/perf_event.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include "os/perfring.h"
#include "os/procfs.h"
#include "cpu/pybpf.h"
#include "cpu/sampler_ops.h"

#define EVENTS_MAX 65536 /* event fds: threads at start x online CPUs */
#define OPEN_SCANS_MAX 8 /* re-scans of /proc/PID/task while opening */
#define RESCAN_NS 1000000000ull
#define SAMPLE_BYTES_EST (SAMPLER_STACK_BYTES + 256)
/* A ring holds RING_MS of samples of one thread at the chosen rate (at least 64 pages, at most
 * 1024 = 4 MiB): at 999 Hz a sample is ~16.6 KiB, 16.6 MB/s per busy CPU, so 64 pages would
 * fill in 15 ms. We are woken at a quarter full, which leaves the caller's per-sample work
 * (unwinding, in the callback) ~3/4 of the ring, 35+ ms, of slack before the kernel drops. */
#define RING_MS 50
#define RING_PAGES_MIN 64
#define RING_PAGES_MAX 1024
#define RING_PAGES_FLOOR 8           /* smallest we retry with when mlock limits refuse */
#define RING_TOTAL_MAX (64ull << 20) /* all CPUs together */
#define TRAILER_BYTES 24             /* sample_id_all: pid, tid, time, identifier */

_Static_assert(SAMPLER_NREGS == PERFRING_NREGS, "register numbering");

struct perf {
    struct perfring_cpus rc; /* the rings, one per online CPU */
    int *tmpfds;             /* 2 * rc.n */
    struct perfring_evs evs; /* tag unused; hup: no longer polled */
    struct pollfd *pfds;
    size_t npfds;
    bool pfds_stale;
    bool inherit_thread; /* the kernel knows attr.inherit_thread (5.13+) */
    bool exited;
    size_t ring_pages;
    uint64_t next_scan_ns;
    /* A CPython target's in-kernel frame copier (NULL: none), the ids of its output event on
     * each ring (0: not opened yet), and per ring the record waiting for its sample. */
    struct pybpf *bpf;
    uint64_t *bpf_ids;
    struct pending *pending;
};

/* A frame copier's record, until the sample right behind it in the same ring. */
struct pending {
    bool valid;
    bool truncated;
    pid_t tid;
    size_t n;
    struct pyframes_raw_frame frames[PYBPF_FRAMES_MAX];
};

/* What perf_poll hands each record with. */
struct poll_ctx {
    struct sampler *s;
    struct perf *p;
    const struct sampler_callbacks *cb;
    void *userdata;
};

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

/* What an event is for (perfring_ev.tag). */
enum { EV_CLOCK, EV_SWITCH };

/* The attributes of an event of kind. EV_SWITCH, the wall-clock profile's second event, samples
 * each switch away from the CPU with the user registers and stack the thread leaves with (the
 * kernel runs it with kernel registers, so kernel samples must be allowed for it to fire; the
 * copies are still the user ones). */
static void fill_attr(struct perf_event_attr *a, const struct sampler *s, const struct perf *p,
                      long page, int kind)
{
    memset(a, 0, sizeof(*a));
    a->size = sizeof(*a);
    a->type = PERF_TYPE_SOFTWARE;
    a->sample_type = PERF_SAMPLE_IDENTIFIER | PERF_SAMPLE_TID | PERF_SAMPLE_TIME |
                     PERF_SAMPLE_PERIOD | PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER;
    a->sample_regs_user = PERFRING_REGS_MASK;
    a->sample_stack_user = SAMPLER_STACK_BYTES;
    a->disabled = 1; /* enabled once its output goes to the ring */
    a->inherit = 1;  /* inherit_thread too: forked processes are not ours */
    a->exclude_hv = 1;
    a->sample_id_all = 1;
    a->use_clockid = 1;
    a->clockid = CLOCK_MONOTONIC;
    a->watermark = 1;
    a->wakeup_watermark = (uint32_t)(p->ring_pages * (size_t)page / 4);
    if (kind == EV_SWITCH) {
        a->config = PERF_COUNT_SW_CONTEXT_SWITCHES;
        a->sample_period = 1;
        return;
    }
    a->config = PERF_COUNT_SW_CPU_CLOCK;
    a->freq = 1;
    a->sample_freq = s->freq;
    a->exclude_kernel = 1;
    a->mmap = 1; /* without mmap_data: executable mappings only */
    a->mmap2 = 1;
    a->comm = 1;
    a->task = 1;
    a->context_switch = s->wall; /* PERF_RECORD_SWITCH: when an off-CPU stretch ends */
}

/* One event for tid on the CPU at index ci. */
static int event_open(const struct sampler *s, struct perf *p, pid_t tid, size_t ci, long page,
                      int kind, int *ret_fd)
{
    struct perf_event_attr a;
    fill_attr(&a, s, p, page, kind);
    int r = perfring_event_open_inherit(&a, tid, p->rc.cpus[ci], &p->inherit_thread, ret_fd);
    /* Copies inherited by new threads run the same program. */
    if (r == 0 && p->bpf && ioctl(*ret_fd, PERF_EVENT_IOC_SET_BPF, pybpf_prog_fd(p->bpf)) < 0) {
        r = -errno;
        close(*ret_fd);
        *ret_fd = -1;
    }
    return r;
}

/* Maps the ring of CPU index ci from the event *fd. The kernel may refuse the size (the
 * perf_event_mlock_kb allowance of an unprivileged user): then smaller rings are tried, each
 * with a new event whose wake-up watermark fits that size. */
static int ring_map(const struct sampler *s, struct perf *p, pid_t tid, size_t ci, long page,
                    size_t opened_pages, int *fd)
{
    int r;
    if (opened_pages != p->ring_pages) {
        /* A smaller ring was settled on after this event was opened for a bigger one. */
        close(*fd);
        *fd = -1;
        r = event_open(s, p, tid, ci, page, EV_CLOCK, fd);
        if (r < 0)
            return r;
    }
    for (;;) {
        r = perfring_map(&p->rc.rings[ci], *fd, p->ring_pages);
        if (!perfring_shrink(r, &p->ring_pages, RING_PAGES_FLOOR))
            return r;
        close(*fd);
        *fd = -1;
        r = event_open(s, p, tid, ci, page, EV_CLOCK, fd);
        if (r < 0)
            return r;
    }
}

/* Forgets the event fd of a thread that could not be set up. A ring's owner stays (disabled,
 * never enabled): the ring's mapping and the other events' output depend on it. */
static void event_drop(struct perf *p, int fd)
{
    if (perfring_cpus_owns(&p->rc, fd))
        return;
    size_t k = 0;
    for (size_t e = 0; e < p->evs.n; e++)
        if (p->evs.v[e].fd != fd)
            p->evs.v[k++] = p->evs.v[e];
    p->evs.n = k;
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

    if (p->evs.n + (s->wall ? 2 : 1) * p->rc.n > EVENTS_MAX)
        return -EMFILE;
    r = perfring_evs_chain_reserve(&p->evs);
    if (r < 0)
        return r;
    /* Registered first, disabled until all went well: evs entries refer to it by index. */
    uint32_t chain = (uint32_t)p->evs.nchains++;
    p->evs.chains[chain] = (struct perfring_chain){.tid = tid, .disabled = true};
    for (; opened < p->rc.n; opened++) {
        r = event_open(s, p, tid, opened, page, EV_CLOCK, &p->tmpfds[opened]);
        if (r < 0)
            goto out;
    }
    for (size_t i = 0; i < p->rc.n; i++) {
        uint64_t id;
        if (p->rc.rings[i].fd < 0)
            r = ring_map(s, p, tid, i, page, pages_at_open, &p->tmpfds[i]);
        else if (ioctl(p->tmpfds[i], PERF_EVENT_IOC_SET_OUTPUT, p->rc.rings[i].fd) < 0)
            r = -errno;
        if (r == 0 && ioctl(p->tmpfds[i], PERF_EVENT_IOC_ID, &id) < 0)
            r = -errno;
        if (r == 0 && (r = perfring_evs_add(&p->evs, id, p->tmpfds[i], chain, 0)) == 0)
            p->pfds_stale = true;
        if (r < 0)
            goto out;
    }
    /* Into the rings the clock events opened: behind their owners. */
    for (; s->wall && opened < 2 * p->rc.n; opened++) {
        size_t i = opened - p->rc.n;
        uint64_t id;
        r = event_open(s, p, tid, i, page, EV_SWITCH, &p->tmpfds[opened]);
        if (r == 0 && ioctl(p->tmpfds[opened], PERF_EVENT_IOC_SET_OUTPUT, p->rc.rings[i].fd) < 0)
            r = -errno;
        if (r == 0 && ioctl(p->tmpfds[opened], PERF_EVENT_IOC_ID, &id) < 0)
            r = -errno;
        if (r == 0 && (r = perfring_evs_add(&p->evs, id, p->tmpfds[opened], chain, EV_SWITCH)) == 0)
            p->pfds_stale = true;
        if (r < 0) {
            if (p->tmpfds[opened] >= 0)
                close(p->tmpfds[opened]); /* not in evs yet */
            p->tmpfds[opened] = -1;
            goto out;
        }
    }
    for (size_t i = 0; p->bpf && i < p->rc.n && r == 0; i++)
        if (!p->bpf_ids[i] && p->rc.rings[i].fd >= 0)
            r = pybpf_output_open(p->bpf, p->rc.cpus[i], p->rc.rings[i].fd, &p->bpf_ids[i]);
    if (r < 0)
        goto out;
    p->evs.chains[chain].disabled = false;
    t = sampler_thread_find(s, tid);
    if (t || sampler_thread_add(s, tid, &t) == 0)
        t->chain = chain;
    for (size_t i = 0; i < opened; i++)
        ioctl(p->tmpfds[i], PERF_EVENT_IOC_ENABLE, 0);
out:
    if (r < 0)
        for (size_t i = 0; i < opened; i++)
            if (p->tmpfds[i] >= 0)
                event_drop(p, p->tmpfds[i]);
    return r;
}

struct scan {
    struct sampler *s;
    struct perf *p;
};

static bool scan_covered(void *userdata, pid_t tid)
{
    return sampler_thread_find(((struct scan *)userdata)->s, tid) != NULL;
}

static int scan_open(void *userdata, pid_t tid)
{
    struct scan *sc = userdata;
    return open_thread(sc->s, sc->p, tid);
}

/* Opens events for every listed thread not covered yet. *ret_new: how many were opened. */
static int scan_threads(struct sampler *s, struct perf *p, size_t *ret_new)
{
    struct scan sc = {s, p};
    return perfring_scan_threads(s->pid, scan_covered, scan_open, &sc, ret_new);
}

static void perf_free(struct perf *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->evs.n; i++)
        if (!perfring_cpus_owns(&p->rc, p->evs.v[i].fd))
            close(p->evs.v[i].fd);
    perfring_cpus_destroy(&p->rc);
    free(p->tmpfds);
    perfring_evs_destroy(&p->evs);
    free(p->pfds);
    pybpf_free(p->bpf);
    free(p->bpf_ids);
    free(p->pending);
    free(p);
}

/* The in-kernel frame copier of a CPython target. Refused (no CAP_BPF, a kernel without BPF,
 * a verifier that disagrees): sampling goes on without it, and stats say why. */
static int python_open(struct sampler *s, struct perf *p)
{
    p->bpf_ids = calloc(p->rc.n, sizeof(*p->bpf_ids));
    p->pending = calloc(p->rc.n, sizeof(*p->pending));
    if (!p->bpf_ids || !p->pending)
        return -ENOMEM;
    int r = pybpf_new(s->python, &p->bpf, &s->stats.python_fallback);
    if (r == -ENOMEM)
        return r;
    s->stats.python_in_kernel = r == 0;
    return 0;
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
    r = perfring_cpus_init(&p->rc);
    if (r < 0)
        goto out;
    p->tmpfds = calloc(2 * p->rc.n, sizeof(*p->tmpfds)); /* clock, then switch events */
    if (!p->tmpfds) {
        r = -ENOMEM;
        goto out;
    }
    if (s->python) {
        r = python_open(s, p);
        if (r < 0)
            goto out;
    }
    /* A wall-clock profile also samples every context switch, at a rate the target sets: the
     * largest rings. */
    p->ring_pages = ring_pages_for(s->wall ? SAMPLER_MAX_FREQ * 4 : s->freq, p->rc.n, page);
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

/* The sample_id_all trailer's identifier, and the body's bytes before the trailer. */
static bool trailer(const unsigned char *rec, size_t size, struct perfring_rd *body, uint64_t *id)
{
    if (size < sizeof(struct perf_event_header) + TRAILER_BYTES)
        return false;
    memcpy(id, rec + size - 8, 8);
    perfring_rd_init(body, rec, size - TRAILER_BYTES);
    return true;
}

/* Which of two chains a thread's samples are taken from (see the top of the file). True when
 * the sample of chain c is to be handed out. */
static bool chain_accept(struct perf *p, struct sampler_thread *t, uint32_t c)
{
    if (t->chain == c)
        return true;
    bool locked_own = p->evs.chains[t->chain].tid == t->tid;
    bool from_own = p->evs.chains[c].tid == t->tid;
    if ((locked_own && !from_own) || p->evs.chains[t->chain].disabled) {
        uint32_t old = t->chain;
        t->chain = c;
        if (locked_own)
            perfring_evs_chain_disable(&p->evs, old);
        return true;
    }
    if (from_own)
        perfring_evs_chain_disable(&p->evs, c);
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

/* A frame copier's record (IDENTIFIER, TID, RAW), kept for the sample behind it. */
static void on_python(struct sampler *s, struct pending *pd, struct perfring_rd *d)
{
    uint32_t pid, tid, len;
    const unsigned char *raw;
    pid_t rtid;

    pd->valid = false;
    if (!perfring_rd_u32(d, &pid) || !perfring_rd_u32(d, &tid) || !perfring_rd_u32(d, &len) ||
        !perfring_rd_bytes(d, len, &raw) ||
        pybpf_parse(raw, len, &rtid, pd->frames, &pd->n, &pd->truncated) < 0 ||
        rtid != (pid_t)tid) {
        s->stats.lost++;
        return;
    }
    pd->tid = (pid_t)tid;
    pd->valid = (pid_t)pid == s->pid;
}

static int on_sample(struct sampler *s, struct perf *p, size_t ci, const unsigned char *rec,
                     size_t size, const struct sampler_callbacks *cb, void *userdata)
{
    struct perfring_rd d;
    uint64_t id, time, period, abi;
    uint32_t pid, tid;
    struct sampler_sample smp = {0};

    perfring_rd_init(&d, rec, size);
    if (!perfring_rd_u64(&d, &id))
        goto bad;
    if (p->bpf && id == p->bpf_ids[ci]) {
        on_python(s, &p->pending[ci], &d);
        return 0;
    }
    if (!perfring_rd_u32(&d, &pid) || !perfring_rd_u32(&d, &tid) || !perfring_rd_u64(&d, &time) ||
        !perfring_rd_u64(&d, &period) || !perfring_rd_u64(&d, &abi))
        goto bad;
    /* The copier's record is written in the same interrupt, right before its sample. */
    if (p->pending && p->pending[ci].valid) {
        struct pending *pd = &p->pending[ci];
        pd->valid = false;
        if (pd->tid == (pid_t)tid) {
            smp.has_python = true;
            smp.python = pd->frames;
            smp.npython = pd->n;
            smp.python_truncated = pd->truncated;
        }
    }
    if ((pid_t)pid != s->pid)
        return 0; /* a forked child's copy, where inherit_thread is unknown */
    if (abi != PERF_SAMPLE_REGS_ABI_64)
        goto bad; /* no user registers (a kernel thread) or a 32-bit process */
    if (!perfring_rd_regs(&d, smp.regs) || !perfring_rd_stack(&d, &smp.stack, &smp.stack_len))
        goto bad;
    struct perfring_ev *ev = perfring_evs_find(&p->evs, id);
    if (!ev)
        goto bad;
    smp.off_cpu = ev->tag == EV_SWITCH;
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
    s->stats.samples++;
    int r = cb->sample(&smp, userdata);
    return r < 0 ? r : 0;
bad:
    s->stats.lost++;
    return 0;
}

static void on_comm(struct sampler *s, const struct perf_event_header *h, const unsigned char *rec,
                    const struct sampler_callbacks *cb, void *userdata)
{
    struct perfring_rd d;
    uint64_t id;
    uint32_t pid, tid;
    const unsigned char *name;
    char comm[PROCFS_COMM_MAX];

    if (!trailer(rec, h->size, &d, &id) || !perfring_rd_u32(&d, &pid) ||
        !perfring_rd_u32(&d, &tid) || d.left == 0 || !perfring_rd_bytes(&d, d.left, &name)) {
        s->stats.lost++;
        return;
    }
    size_t len = strnlen((const char *)name, (size_t)(d.p - name));
    if (len == (size_t)(d.p - name)) {
        s->stats.lost++; /* not NUL-terminated */
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

static void on_mmap2(struct sampler *s, const struct perf_event_header *h, const unsigned char *rec,
                     const struct sampler_callbacks *cb, void *userdata)
{
    struct perfring_rd d;
    uint64_t id;
    uint32_t pid, tid, prot;
    const unsigned char *skip;
    /* pid, tid, addr, len, pgoff, (maj, min, ino, ino_generation | build id), prot */
    if (!trailer(rec, h->size, &d, &id) || !perfring_rd_u32(&d, &pid) ||
        !perfring_rd_u32(&d, &tid) || !perfring_rd_bytes(&d, 6 * sizeof(uint64_t), &skip) ||
        !perfring_rd_u32(&d, &prot)) {
        s->stats.lost++;
        return;
    }
    if ((pid_t)pid == s->pid && (prot & PROT_EXEC) && cb->maps_changed)
        cb->maps_changed(userdata);
}

/* PERF_RECORD_SWITCH (wall-clock profiles): a thread back on a CPU ends its off-CPU stretch. */
static void on_switch(struct sampler *s, const struct perf_event_header *h,
                      const unsigned char *rec, const struct sampler_callbacks *cb, void *userdata)
{
    uint64_t time, id;
    uint32_t pid, tid;
    if (h->size < sizeof(*h) + TRAILER_BYTES) {
        s->stats.lost++;
        return;
    }
    const unsigned char *tr = rec + h->size - TRAILER_BYTES;
    memcpy(&pid, tr, 4);
    memcpy(&tid, tr + 4, 4);
    memcpy(&time, tr + 8, 8);
    memcpy(&id, tr + 16, 8);
    if ((pid_t)pid == s->pid && !(h->misc & PERF_RECORD_MISC_SWITCH_OUT) && cb->switch_in)
        cb->switch_in((pid_t)tid, time, userdata);
}

/* FORK and EXIT: pid, ppid, tid, ptid, time. */
static void on_task(struct sampler *s, struct perf *p, const struct perf_event_header *h,
                    const unsigned char *rec)
{
    struct perfring_rd d;
    uint64_t id;
    uint32_t pid, ppid, tid, ptid;
    if (!trailer(rec, h->size, &d, &id) || !perfring_rd_u32(&d, &pid) ||
        !perfring_rd_u32(&d, &ppid) || !perfring_rd_u32(&d, &tid) || !perfring_rd_u32(&d, &ptid)) {
        s->stats.lost++;
        return;
    }
    if ((pid_t)pid != s->pid)
        return;
    struct perfring_ev *ev = perfring_evs_find(&p->evs, id);
    if (h->type == PERF_RECORD_FORK) {
        /* The new thread carries copies of this chain: it needs no events of its own. */
        if (ev)
            thread_of(s, (pid_t)tid, ev->chain);
        return;
    }
    struct sampler_thread *t = sampler_thread_find(s, (pid_t)tid);
    if (t)
        t->exited = true;
    if ((pid_t)tid == s->pid && procfs_process_gone(PROCFS_ROOT, s->pid))
        p->exited = true;
}

static int on_record(void *arg, size_t ci, const unsigned char *rec, size_t size)
{
    const struct poll_ctx *c = arg;
    struct sampler *s = c->s;
    struct perf_event_header h;
    memcpy(&h, rec, sizeof(h));
    switch (h.type) {
    case PERF_RECORD_SAMPLE:
        return on_sample(s, c->p, ci, rec, size, c->cb, c->userdata);
    case PERF_RECORD_LOST:
        s->stats.lost += perfring_lost(rec, size);
        break;
    case PERF_RECORD_COMM:
        on_comm(s, &h, rec, c->cb, c->userdata);
        break;
    case PERF_RECORD_MMAP2:
        on_mmap2(s, &h, rec, c->cb, c->userdata);
        break;
    case PERF_RECORD_SWITCH:
        on_switch(s, &h, rec, c->cb, c->userdata);
        break;
    case PERF_RECORD_FORK:
    case PERF_RECORD_EXIT:
        on_task(s, c->p, &h, rec);
        break;
    default:
        break; /* THROTTLE, UNTHROTTLE, MMAP (not asked: mmap2 is set) */
    }
    return 0;
}

static int pfds_rebuild(struct perf *p)
{
    struct pollfd *n = realloc(p->pfds, (p->evs.n ? p->evs.n : 1) * sizeof(*n));
    if (!n)
        return -ENOMEM;
    p->pfds = n;
    p->npfds = 0;
    for (size_t i = 0; i < p->evs.n; i++)
        if (!p->evs.v[i].hup)
            p->pfds[p->npfds++] = (struct pollfd){.fd = p->evs.v[i].fd, .events = POLLIN};
    p->pfds_stale = false;
    return 0;
}

static void mark_hup(struct perf *p)
{
    for (size_t i = 0; i < p->npfds; i++) {
        if (!(p->pfds[i].revents & (POLLHUP | POLLERR | POLLNVAL)))
            continue;
        for (size_t e = 0; e < p->evs.n; e++)
            if (p->evs.v[e].fd == p->pfds[i].fd)
                p->evs.v[e].hup = true;
        p->pfds_stale = true;
    }
}

static int perf_poll(struct sampler *s, int timeout_ms, const struct sampler_callbacks *cb,
                     void *userdata)
{
    struct perf *p = s->priv;
    struct poll_ctx ctx = {s, p, cb, userdata};
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
            p->exited = true; /* every event's thread and copies are gone */
    }
    r = perfring_cpus_drain(&p->rc, on_record, &ctx, &s->stats.lost);
    if (r < 0)
        return r;
    if (!p->exited && sampler_now_ns() >= p->next_scan_ns) {
        size_t n;
        sampler_threads_prune(s);
        r = scan_threads(s, p, &n);
        if (r == -ESRCH || (r == 0 && procfs_process_gone(PROCFS_ROOT, s->pid)))
            p->exited = true;
        else if (r < 0 && r != -EMFILE)
            return r;
        p->next_scan_ns = sampler_now_ns() + RESCAN_NS;
    }
    if (p->exited) {
        r = perfring_cpus_drain(&p->rc, on_record, &ctx, &s->stats.lost);
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

static int perf_python_thread(struct sampler *s, pid_t tid, uint64_t tstate)
{
    struct perf *p = s->priv;
    return p->bpf ? pybpf_set_thread(p->bpf, tid, tstate) : -EOPNOTSUPP;
}

const struct sampler_ops sampler_perf_ops = {
    .name = "perf_event",
    .open = perf_open,
    .poll = perf_poll,
    .close = perf_close,
    .python_thread = perf_python_thread,
};
