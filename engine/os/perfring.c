/* perf_event plumbing shared by the engine's event users (see perfring.h): open, map, frame,
 * read. Not an event source of its own: it knows no target, thread or meaning of a sample. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libunwind.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include "os/procfs.h"
#include "os/perfring.h"

#define CPUS_MAX 4096
#define CPU_LIST_MAX 8192 /* bytes of /sys/devices/system/cpu/online */
#define RECORD_MAX 65536  /* header.size is 16 bits */

/* perf writes the registers in bit order; where each goes in libunwind's numbering. */
static const unsigned char regs_to_unw[PERFRING_NREGS] = {
    UNW_X86_64_RAX, UNW_X86_64_RBX, UNW_X86_64_RCX, UNW_X86_64_RDX, UNW_X86_64_RSI, UNW_X86_64_RDI,
    UNW_X86_64_RBP, UNW_X86_64_RSP, UNW_X86_64_RIP, UNW_X86_64_R8,  UNW_X86_64_R9,  UNW_X86_64_R10,
    UNW_X86_64_R11, UNW_X86_64_R12, UNW_X86_64_R13, UNW_X86_64_R14, UNW_X86_64_R15,
};
_Static_assert(__builtin_popcountll(PERFRING_REGS_MASK) == PERFRING_NREGS, "register mask");

int perfring_event_open(struct perf_event_attr *a, pid_t pid, int cpu, int *ret_fd)
{
    int fd = (int)syscall(SYS_perf_event_open, a, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC);
    if (fd < 0)
        return -errno;
    *ret_fd = fd;
    return 0;
}

int perfring_event_open_inherit(struct perf_event_attr *a, pid_t pid, int cpu, bool *inherit_thread,
                                int *ret_fd)
{
    a->inherit_thread = *inherit_thread;
    int r = perfring_event_open(a, pid, cpu, ret_fd);
    if (r == -EINVAL && *inherit_thread) {
        a->inherit_thread = 0;
        r = perfring_event_open(a, pid, cpu, ret_fd);
        if (r == 0)
            *inherit_thread = false;
    }
    return r;
}

int perfring_map(struct perfring *rg, int fd, size_t pages)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t len = (pages + 1) * (size_t)page;
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return -errno;
    const struct perf_event_mmap_page *meta = m;
    /* data_offset/data_size exist since Linux 4.1; before, data follows the first page */
    uint64_t off = meta->data_offset ? meta->data_offset : (uint64_t)page;
    uint64_t size = meta->data_size ? meta->data_size : pages * (uint64_t)page;
    if (off > len || size > len - off || size == 0 || (size & (size - 1)) != 0) {
        munmap(m, len);
        return -EBADMSG;
    }
    rg->fd = fd;
    rg->meta = m;
    rg->map_len = len;
    rg->data = (unsigned char *)m + off;
    rg->size = size;
    rg->head = rg->tail = 0;
    return 0;
}

bool perfring_shrink(int r, size_t *pages, size_t floor)
{
    if ((r != -EPERM && r != -ENOMEM) || *pages <= floor)
        return false;
    *pages /= 2;
    return true;
}

void perfring_begin(struct perfring *rg)
{
    if (!rg->meta)
        return;
    /* Acquire: the records before data_head are complete once we see it. data_tail is ours. */
    rg->head = __atomic_load_n(&rg->meta->data_head, __ATOMIC_ACQUIRE);
    rg->tail = rg->meta->data_tail;
}

void perfring_read(const struct perfring *rg, size_t off, void *dst, size_t n)
{
    uint64_t at = (rg->tail + off) & (rg->size - 1);
    size_t first = rg->size - at < n ? (size_t)(rg->size - at) : n;
    memcpy(dst, rg->data + at, first);
    memcpy((unsigned char *)dst + first, rg->data, n - first);
}

int perfring_peek(struct perfring *rg, struct perf_event_header *ret)
{
    struct perf_event_header h;
    if (!rg->meta || rg->tail == rg->head)
        return -ENODATA;
    uint64_t avail = rg->head - rg->tail;
    if (avail < sizeof(h) || avail > rg->size)
        goto bad;
    perfring_read(rg, 0, &h, sizeof(h));
    if (h.size < sizeof(h) || h.size > avail || h.size % 8 != 0)
        goto bad;
    *ret = h;
    return 0;
bad:
    /* Nothing after a bad header can be framed: drop the rest of what was there. */
    rg->tail = rg->head;
    __atomic_store_n(&rg->meta->data_tail, rg->tail, __ATOMIC_RELEASE);
    return -EBADMSG;
}

const unsigned char *perfring_record(const struct perfring *rg, size_t size, unsigned char *copy)
{
    uint64_t off = rg->tail & (rg->size - 1);
    if (off + size <= rg->size)
        return rg->data + off;
    perfring_read(rg, 0, copy, size);
    return copy;
}

void perfring_consume(struct perfring *rg, size_t size)
{
    rg->tail += size;
    /* Release: our reads of the record are done before the kernel may write over it. */
    __atomic_store_n(&rg->meta->data_tail, rg->tail, __ATOMIC_RELEASE);
}

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

static int read_cpu_list(char *buf, size_t max)
{
    int r = 0;
    FILE *f = fopen("/sys/devices/system/cpu/online", "re");
    if (!f)
        return -errno;
    if (!fgets(buf, (int)max, f))
        r = -EBADMSG;
    fclose(f);
    return r;
}

int perfring_scan_threads(pid_t pid, bool (*covered)(void *userdata, pid_t tid),
                          int (*open)(void *userdata, pid_t tid), void *userdata, size_t *ret_new)
{
    pid_t *tids = NULL;
    size_t n = 0, opened = 0;
    int r = procfs_list_tasks(PROCFS_ROOT, pid, &tids, &n);

    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++) {
        if (covered(userdata, tids[i]))
            continue;
        r = open(userdata, tids[i]);
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

int perfring_scan_settle(int (*scan)(void *userdata, size_t *ret_new), void *userdata, int passes)
{
    size_t opened = 0, n = 1;

    for (int pass = 0; pass < passes && n > 0; pass++) {
        int r;

        n = 0;
        r = scan(userdata, &n);
        if (r < 0)
            return r;
        opened += n;
    }
    return opened > 0 ? 0 : -ESRCH;
}

int perfring_cpus_init(struct perfring_cpus *c)
{
    char buf[CPU_LIST_MAX];
    int r = read_cpu_list(buf, sizeof(buf));
    if (r < 0)
        return r;
    c->cpus = calloc(CPUS_MAX, sizeof(*c->cpus));
    if (!c->cpus)
        return -ENOMEM;
    r = parse_cpu_list(buf, c->cpus, &c->n);
    if (r < 0)
        return r;
    c->rings = calloc(c->n, sizeof(*c->rings));
    c->copy = malloc(RECORD_MAX);
    if (!c->rings || !c->copy)
        return -ENOMEM;
    for (size_t i = 0; i < c->n; i++)
        c->rings[i].fd = -1;
    return 0;
}

void perfring_cpus_destroy(struct perfring_cpus *c)
{
    for (size_t i = 0; c->rings && i < c->n; i++) {
        if (c->rings[i].meta)
            munmap(c->rings[i].meta, c->rings[i].map_len);
        if (c->rings[i].fd >= 0)
            close(c->rings[i].fd);
    }
    free(c->cpus);
    free(c->rings);
    free(c->copy);
    memset(c, 0, sizeof(*c));
}

bool perfring_cpus_owns(const struct perfring_cpus *c, int fd)
{
    for (size_t i = 0; c->rings && i < c->n; i++)
        if (c->rings[i].fd == fd)
            return true;
    return false;
}

int perfring_cpus_drain(struct perfring_cpus *c,
                        int (*fn)(void *arg, size_t ci, const unsigned char *rec, size_t size),
                        void *arg, uint64_t *lost)
{
    for (size_t i = 0; i < c->n; i++) {
        struct perfring *rg = &c->rings[i];
        struct perf_event_header h;
        int r;
        perfring_begin(rg);
        while ((r = perfring_peek(rg, &h)) == 0) {
            r = fn(arg, i, perfring_record(rg, h.size, c->copy), h.size);
            perfring_consume(rg, h.size);
            if (r < 0)
                return r;
        }
        if (r == -EBADMSG)
            (*lost)++;
    }
    return 0;
}

int perfring_evs_add(struct perfring_evs *e, uint64_t id, int fd, uint32_t chain, uint32_t tag)
{
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 64;
        struct perfring_ev *v = realloc(e->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        e->v = v;
        e->cap = cap;
    }
    size_t i = e->n;
    while (i > 0 && e->v[i - 1].id > id)
        i--;
    memmove(&e->v[i + 1], &e->v[i], (e->n - i) * sizeof(*e->v));
    e->v[i] = (struct perfring_ev){.id = id, .fd = fd, .chain = chain, .tag = tag};
    e->n++;
    return 0;
}

struct perfring_ev *perfring_evs_find(struct perfring_evs *e, uint64_t id)
{
    size_t lo = 0, hi = e->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (e->v[mid].id < id)
            lo = mid + 1;
        else if (e->v[mid].id > id)
            hi = mid;
        else
            return &e->v[mid];
    }
    return NULL;
}

int perfring_evs_chain_reserve(struct perfring_evs *e)
{
    if (e->nchains < e->chains_cap)
        return 0;
    size_t cap = e->chains_cap ? e->chains_cap * 2 : 64;
    struct perfring_chain *c = realloc(e->chains, cap * sizeof(*c));
    if (!c)
        return -ENOMEM;
    e->chains = c;
    e->chains_cap = cap;
    return 0;
}

void perfring_evs_chain_disable(struct perfring_evs *e, uint32_t chain)
{
    if (e->chains[chain].disabled)
        return;
    e->chains[chain].disabled = true;
    for (size_t i = 0; i < e->n; i++)
        if (e->v[i].chain == chain)
            ioctl(e->v[i].fd, PERF_EVENT_IOC_DISABLE, 0);
}

void perfring_evs_destroy(struct perfring_evs *e)
{
    free(e->v);
    free(e->chains);
    memset(e, 0, sizeof(*e));
}

void perfring_rd_init(struct perfring_rd *d, const unsigned char *rec, size_t size)
{
    d->p = rec + sizeof(struct perf_event_header);
    d->left = size > sizeof(struct perf_event_header) ? size - sizeof(struct perf_event_header) : 0;
}

bool perfring_rd_u64(struct perfring_rd *d, uint64_t *v)
{
    if (d->left < 8)
        return false;
    memcpy(v, d->p, 8);
    d->p += 8;
    d->left -= 8;
    return true;
}

bool perfring_rd_u32(struct perfring_rd *d, uint32_t *v)
{
    if (d->left < 4)
        return false;
    memcpy(v, d->p, 4);
    d->p += 4;
    d->left -= 4;
    return true;
}

bool perfring_rd_bytes(struct perfring_rd *d, size_t n, const unsigned char **v)
{
    if (d->left < n)
        return false;
    *v = d->p;
    d->p += n;
    d->left -= n;
    return true;
}

bool perfring_rd_regs(struct perfring_rd *d, uint64_t regs[PERFRING_NREGS])
{
    for (int i = 0; i < PERFRING_NREGS; i++)
        if (!perfring_rd_u64(d, &regs[regs_to_unw[i]]))
            return false;
    return true;
}

bool perfring_rd_stack(struct perfring_rd *d, const unsigned char **ret_stack, size_t *ret_len)
{
    uint64_t size, dyn_size = 0;
    const unsigned char *stack = NULL;
    if (!perfring_rd_u64(d, &size))
        return false;
    /* size bytes are copied whatever the stack's depth; dyn_size of them are valid. */
    if (size > 0 && (size > d->left || !perfring_rd_bytes(d, (size_t)size, &stack) ||
                     !perfring_rd_u64(d, &dyn_size) || dyn_size > size))
        return false;
    *ret_stack = dyn_size ? stack : NULL;
    *ret_len = (size_t)dyn_size;
    return true;
}

uint64_t perfring_lost(const unsigned char *rec, size_t size)
{
    uint64_t lost[2]; /* id, lost */
    if (size < sizeof(struct perf_event_header) + sizeof(lost))
        return 1;
    memcpy(lost, rec + sizeof(struct perf_event_header), sizeof(lost));
    return lost[1];
}
