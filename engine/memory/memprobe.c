/* Uprobes on the target's allocator (see memprobe.h), through perf_event_open's uprobe PMU.
 * Not the unwinder (events carry registers and stack, stacks.c unwinds them) and not the
 * profile (memprof keeps the live blocks).
 *
 * Events: for each thread present at open, one inherited event per probe per online CPU (the
 * kernel refuses to mmap inherited per-task events with cpu == -1, as sampler_perf.c explains;
 * threads created later carry copies). Their output goes to one ring per CPU owned by a disabled
 * dummy event on ourselves, so the rings do not depend on any target thread. A thread created
 * while events were being opened may end up with two sets ("chains") of events; each thread is
 * locked onto one chain and a redundant chain of its own is disabled, as in sampler_perf.c.
 *
 * Calls: entry probes record the arguments (rdi, rsi, rdx) in a small per-thread stack of calls
 * in flight; the return probe pops it and, with the caller's registers and stack, completes
 * ALLOC events; free's entry gives FREE. glibc calls its own malloc from realloc(NULL, n) and the
 * memalign family, and free from realloc(p, 0), through the probed entry points: only the
 * outermost call of a thread reports. A pending call that cannot be the outer one of the new
 * call is stale (its return was lost) and is dropped.
 *
 * Order: the per-CPU rings are merged by sample time. Records younger than HOLD_NS stay for the
 * next round: a writer on another CPU may still be committing an older one. realloc's FREE of
 * the old block goes out at its return, after the new ALLOC is known: another thread that got
 * the old address in between is reported first (rare; it looks like a lost free). */
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <limits.h>
#include <libelf.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <asm/perf_regs.h>
#include <libunwind.h>
#include <linux/perf_event.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include "memory/memring.h"
#include "os/perfring.h"
#include "os/procfs.h"
#include "os/targetfile.h"
#include "memory/memprobe.h"

#define PMU_DIR "/sys/bus/event_source/devices/uprobe"
#define EVENTS_MAX 65536 /* event fds: probes x CPUs x threads at open */
#define OPEN_SCANS_MAX 8 /* re-scans of /proc/PID/task while opening */
#define ELF_FILE_MAX (2ull << 30)
#define ELF_SYMS_MAX (8u << 20) /* symbols read per table */
#define ELF_LOADS_MAX 64
/* 8 MiB per CPU: ~1000 ALLOCs with their stacks, 20+ ms of a busy allocating thread, which is
 * the slack the consumer's unwinding has before the kernel drops records. */
#define RING_PAGES 2048
#define RING_PAGES_FLOOR 8
#define RING_TOTAL_MAX (64ull << 20)
#define TRAILER_BYTES 24 /* sample_id_all: pid, tid, time, identifier */
#define HOLD_NS 2000000ull
#define HOLD_MS 2
#define CHECK_NS 1000000000ull /* how often to look whether the target is gone */
#define DEPTH_MAX 2            /* calls in flight per thread: outer + glibc's inner */
#define THREADS_CAP (2 * MEMPROBE_THREADS_MAX) /* hash slots, a power of two */

enum fn {
    FN_MALLOC,
    FN_CALLOC,
    FN_REALLOC,
    FN_FREE,
    FN_POSIX_MEMALIGN,
    FN_ALIGNED_ALLOC,
    FN_MEMALIGN,
    FN_COUNT
};
static const char *const fn_names[FN_COUNT] = {
    "malloc", "calloc", "realloc", "free", "posix_memalign", "aligned_alloc", "memalign",
};
#define PROBES_MAX (2 * FN_COUNT)

/* Entry probes need the three argument registers only; perf writes registers in bit order. */
#define ENTRY_MASK                                                                                 \
    ((1ull << PERF_REG_X86_DX) | (1ull << PERF_REG_X86_SI) | (1ull << PERF_REG_X86_DI))
_Static_assert(MEMPROBE_NREGS == MEMRING_NREGS && MEMPROBE_NREGS == PERFRING_NREGS,
               "register numbering");

struct probe {
    enum fn fn;
    bool ret;
    uint64_t offset; /* of the function's first instruction in the file */
};

/* The record at a ring's tail, once peeked in this round. */
struct next {
    bool peeked;
    uint16_t size;
    uint64_t time;
};

struct call {
    enum fn fn;
    uint64_t a[3]; /* rdi, rsi, rdx at entry */
};

struct thread {
    pid_t tid; /* 0: free slot */
    uint32_t chain;
    unsigned depth;
    struct call calls[DEPTH_MAX];
};

struct memprobe {
    pid_t pid;
    char kpath[PATH_MAX]; /* the module as the kernel opens it from here */
    char *module;         /* as the target's maps name it */
    struct probe probes[PROBES_MAX];
    unsigned nprobes;
    uint32_t pmu_type, retprobe_bit;
    struct perfring_cpus rc; /* rings owned by dummy events, one per online CPU */
    struct next *next;       /* one per ring */
    struct pollfd *pfds;     /* one per ring */
    int *tmpfds;             /* nprobes x rc.n */
    struct perfring_evs evs; /* tag: the probe's index */
    struct thread *threads;  /* THREADS_CAP slots, linear probing */
    size_t nthreads;
    bool inherit_thread; /* the kernel knows attr.inherit_thread (5.13+) */
    bool exited, held;
    uint64_t next_check_ns;
    uint64_t regs[MEMPROBE_NREGS];
    struct memprobe_stats stats;
    int (*cb)(const struct memprobe_event *e, void *userdata); /* of the current poll */
    void *userdata;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One small decimal or "config:N" number from a sysfs file. */
static int read_sysfs_u32(const char *path, const char *prefix, uint32_t *ret)
{
    char buf[64];
    const char *q = buf;
    uint64_t v;
    int r = 0;
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    if (!fgets(buf, sizeof(buf), f)) {
        r = -EBADMSG;
        goto out;
    }
    if (strncmp(buf, prefix, strlen(prefix)) != 0) {
        r = -EBADMSG;
        goto out;
    }
    q += strlen(prefix);
    if (procfs_parse_u64(&q, 10, 9, &v) < 0 || v > UINT32_MAX) {
        r = -EBADMSG;
        goto out;
    }
    *ret = (uint32_t)v;
out:
    fclose(f);
    return r;
}

/* File offsets of the allocator functions defined in the ELF file at path (0: not defined).
 * ifuncs are skipped: their symbol is the resolver, not the function. */
static int elf_lookup(const char *path, uint64_t offs[FN_COUNT])
{
    uint64_t vaddr[FN_COUNT] = {0};
    GElf_Phdr loads[ELF_LOADS_MAX];
    size_t nloads = 0, phnum;
    struct stat st;
    Elf *e = NULL;
    Elf_Scn *scn = NULL;
    GElf_Ehdr eh;
    int r = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > ELF_FILE_MAX) {
        r = -ENOEXEC;
        goto out;
    }
    elf_version(EV_CURRENT);
    e = elf_begin(fd, ELF_C_READ_MMAP, NULL);
    if (!e || elf_kind(e) != ELF_K_ELF || !gelf_getehdr(e, &eh) ||
        eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64 ||
        elf_getphdrnum(e, &phnum) != 0) {
        r = -ENOEXEC;
        goto out;
    }
    for (size_t i = 0; i < phnum && nloads < ELF_LOADS_MAX; i++) {
        GElf_Phdr ph;
        if (gelf_getphdr(e, (int)i, &ph) && ph.p_type == PT_LOAD && (ph.p_flags & PF_X))
            loads[nloads++] = ph;
    }
    while ((scn = elf_nextscn(e, scn)) != NULL) {
        GElf_Shdr sh;
        Elf_Data *d;
        if (!gelf_getshdr(scn, &sh) || (sh.sh_type != SHT_SYMTAB && sh.sh_type != SHT_DYNSYM) ||
            sh.sh_entsize != sizeof(Elf64_Sym) || !(d = elf_getdata(scn, NULL)))
            continue;
        size_t n = d->d_size / sizeof(Elf64_Sym);
        if (n > ELF_SYMS_MAX)
            n = ELF_SYMS_MAX;
        for (size_t i = 0; i < n; i++) {
            GElf_Sym sym;
            const char *name;
            if (!gelf_getsym(d, (int)i, &sym) || GELF_ST_TYPE(sym.st_info) != STT_FUNC ||
                sym.st_shndx == SHN_UNDEF || sym.st_value == 0 ||
                (GELF_ST_BIND(sym.st_info) != STB_GLOBAL &&
                 GELF_ST_BIND(sym.st_info) != STB_WEAK) ||
                !(name = elf_strptr(e, sh.sh_link, sym.st_name)))
                continue;
            for (int f = 0; f < FN_COUNT; f++)
                if (!vaddr[f] && strcmp(name, fn_names[f]) == 0)
                    vaddr[f] = sym.st_value;
        }
    }
    for (int f = 0; f < FN_COUNT; f++) {
        offs[f] = 0;
        for (size_t i = 0; vaddr[f] && i < nloads; i++)
            if (vaddr[f] >= loads[i].p_vaddr && vaddr[f] - loads[i].p_vaddr < loads[i].p_filesz)
                offs[f] = vaddr[f] - loads[i].p_vaddr + loads[i].p_offset;
    }
out:
    if (e)
        elf_end(e);
    close(fd);
    return r;
}

static bool is_loader(const char *path)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    return strncmp(b, "ld-linux", 8) == 0 || strncmp(b, "ld-musl", 7) == 0 ||
           strncmp(b, "ld.so", 5) == 0;
}

static int by_start_desc(const void *a, const void *b)
{
    const struct procfs_map *x = *(const struct procfs_map *const *)a;
    const struct procfs_map *y = *(const struct procfs_map *const *)b;
    return x->start < y->start ? 1 : x->start > y->start ? -1 : 0;
}

/* The module that provides malloc: the executable when it defines it, else the first library
 * in load order that does (ld.so maps libraries top-down in the order it loads them, so
 * descending addresses approximate its search order: an LD_PRELOADed allocator comes first).
 * Fills p->kpath (reachable from our mount namespace, checked against the maps' inode),
 * p->module and the probes. */
static int find_allocator(struct memprobe *p, struct error *err)
{
    struct procfs_map *maps = NULL;
    const struct procfs_map **cand = NULL;
    size_t nmaps = 0, ncand = 0;
    struct stat exe;
    char exepath[64];
    int r = procfs_read_maps(PROCFS_ROOT, p->pid, &maps, &nmaps);
    if (r < 0) {
        return error_set(err, r, "cannot read /proc/%d/maps: %s", (int)p->pid, strerror(-r));
    }
    snprintf(exepath, sizeof(exepath), "/proc/%d/exe", (int)p->pid);
    bool have_exe = stat(exepath, &exe) == 0;
    cand = calloc(nmaps ? nmaps : 1, sizeof(*cand));
    if (!cand) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < nmaps; i++) {
        const struct procfs_map *m = &maps[i];
        bool dup = false;
        if (m->path[0] != '/' || !strchr(m->perms, 'x') || strstr(m->path, " (deleted)") ||
            is_loader(m->path))
            continue;
        for (size_t k = 0; k < ncand && !dup; k++)
            dup = cand[k]->inode == m->inode && cand[k]->dev_major == m->dev_major &&
                  cand[k]->dev_minor == m->dev_minor;
        if (!dup)
            cand[ncand++] = m;
    }
    if (ncand > 1)
        qsort(cand, ncand, sizeof(*cand), by_start_desc);
    /* The executable first, whatever its address. */
    for (size_t k = 0; have_exe && k < ncand; k++) {
        if (cand[k]->inode == exe.st_ino &&
            makedev(cand[k]->dev_major, cand[k]->dev_minor) == exe.st_dev) {
            const struct procfs_map *m = cand[k];
            memmove(&cand[1], &cand[0], k * sizeof(*cand));
            cand[0] = m;
            break;
        }
    }
    r = -ENOENT;
    for (size_t k = 0; k < ncand; k++) {
        const struct procfs_map *m = cand[k];
        uint64_t offs[FN_COUNT];
        char own[PATH_MAX];
        struct stat st;
        /* maps names a chrooted target's libraries ROOT/usr/lib/... (our view), and
         * /proc/PID/root already leads to ROOT: the rest of the path is the target's own. */
        if (k == 0 && have_exe && m->inode == exe.st_ino)
            snprintf(p->kpath, sizeof(p->kpath), "%s", exepath);
        else if (targetfile_own_path(p->pid, m->path, own, sizeof(own)) < 0 ||
                 snprintf(p->kpath, sizeof(p->kpath), "/proc/%d/root%s", (int)p->pid, own) >=
                     (int)sizeof(p->kpath))
            continue;
        if (stat(p->kpath, &st) < 0 || st.st_ino != m->inode ||
            st.st_dev != makedev(m->dev_major, m->dev_minor) || elf_lookup(p->kpath, offs) < 0 ||
            offs[FN_MALLOC] == 0)
            continue;
        p->module = strdup(m->path);
        if (!p->module) {
            r = -ENOMEM;
            goto out;
        }
        /* Aliases (memalign and aligned_alloc are one function in glibc) are probed once. */
        for (int f = 0; f < FN_COUNT; f++) {
            bool seen = false;
            for (unsigned i = 0; i < p->nprobes; i++)
                seen |= p->probes[i].offset == offs[f];
            if (offs[f] == 0 || seen)
                continue;
            p->probes[p->nprobes++] = (struct probe){.fn = (enum fn)f, .offset = offs[f]};
            if (f != FN_FREE)
                p->probes[p->nprobes++] =
                    (struct probe){.fn = (enum fn)f, .ret = true, .offset = offs[f]};
        }
        r = 0;
        break;
    }
    if (r == -ENOENT)
        error_set(err, r,
                  "no malloc found in the executable or the libraries of process %d "
                  "(a stripped static binary, or an allocator under another name)",
                  (int)p->pid);
    else if (r < 0)
        error_set(err, r, "cannot look for the allocator of process %d: %s", (int)p->pid,
                  strerror(-r));
out:
    free(cand);
    procfs_maps_free(maps, nmaps);
    return r;
}

static void fill_attr(struct perf_event_attr *a, const struct memprobe *p, unsigned k)
{
    const struct probe *pr = &p->probes[k];
    memset(a, 0, sizeof(*a));
    a->size = sizeof(*a);
    a->type = p->pmu_type;
    a->config = pr->ret ? 1ull << p->retprobe_bit : 0;
    a->config1 = (uint64_t)(uintptr_t)p->kpath;
    a->config2 = pr->offset;
    a->sample_period = 1;
    a->sample_type = PERF_SAMPLE_IDENTIFIER | PERF_SAMPLE_TID | PERF_SAMPLE_TIME |
                     PERF_SAMPLE_REGS_USER | (pr->ret ? PERF_SAMPLE_STACK_USER : 0);
    a->sample_regs_user = pr->ret ? PERFRING_REGS_MASK : ENTRY_MASK;
    a->sample_stack_user = pr->ret ? MEMPROBE_STACK_BYTES : 0;
    a->disabled = 1;  /* enabled once its output goes to the ring */
    a->inherit = 1;   /* inherit_thread too: forked processes are not ours */
    a->task = k == 0; /* one EXIT record per thread is enough */
    a->sample_id_all = 1;
    a->use_clockid = 1;
    a->clockid = CLOCK_MONOTONIC;
}

static int event_open(struct memprobe *p, unsigned k, pid_t tid, size_t ci, int *ret_fd)
{
    struct perf_event_attr a;
    fill_attr(&a, p, k);
    return perfring_event_open_inherit(&a, tid, p->rc.cpus[ci], &p->inherit_thread, ret_fd);
}

/* The ring of CPU index ci, owned by a disabled dummy event on ourselves (which any process
 * may open). Smaller rings are tried when the mlock allowance refuses the size. */
static int ring_map(struct memprobe *p, size_t ci, size_t *pages)
{
    long page = sysconf(_SC_PAGESIZE);
    for (;;) {
        struct perf_event_attr a = {
            .size = sizeof(a),
            .type = PERF_TYPE_SOFTWARE,
            .config = PERF_COUNT_SW_DUMMY,
            .disabled = 1,
            .exclude_kernel = 1,
            .exclude_hv = 1,
            .use_clockid = 1,
            .clockid = CLOCK_MONOTONIC,
            .watermark = 1,
            .wakeup_watermark = (uint32_t)(*pages * (size_t)page / 4),
        };
        int fd;
        int r = perfring_event_open(&a, 0, p->rc.cpus[ci], &fd);
        if (r < 0)
            return r;
        r = perfring_map(&p->rc.rings[ci], fd, *pages);
        if (r == 0)
            return 0;
        close(fd);
        if (!perfring_shrink(r, pages, RING_PAGES_FLOOR))
            return r;
    }
}

/* Opens every probe of tid on every CPU and starts them. -ESRCH: the thread is gone. */
static int open_thread(struct memprobe *p, pid_t tid)
{
    size_t n = (size_t)p->nprobes * p->rc.n, opened = 0, added = 0;
    int r = 0;
    if (p->evs.n + n > EVENTS_MAX)
        return -EMFILE;
    r = perfring_evs_chain_reserve(&p->evs);
    if (r < 0)
        return r;
    uint32_t chain = (uint32_t)p->evs.nchains;
    for (; opened < n; opened++) {
        r = event_open(p, (unsigned)(opened / p->rc.n), tid, opened % p->rc.n, &p->tmpfds[opened]);
        if (r < 0)
            goto out;
    }
    for (; added < n; added++) {
        uint64_t id;
        int fd = p->tmpfds[added];
        if (ioctl(fd, PERF_EVENT_IOC_SET_OUTPUT, p->rc.rings[added % p->rc.n].fd) < 0 ||
            ioctl(fd, PERF_EVENT_IOC_ID, &id) < 0) {
            r = -errno;
            goto out;
        }
        r = perfring_evs_add(&p->evs, id, fd, chain, (uint32_t)(added / p->rc.n));
        if (r < 0)
            goto out;
    }
    p->evs.chains[p->evs.nchains++] = (struct perfring_chain){.tid = tid};
    for (size_t i = 0; i < n; i++)
        ioctl(p->tmpfds[i], PERF_EVENT_IOC_ENABLE, 0);
    p->stats.fds += n;
out:
    if (r < 0) {
        size_t k = 0;
        for (size_t e = 0; e < p->evs.n; e++)
            if (p->evs.v[e].chain != chain)
                p->evs.v[k++] = p->evs.v[e];
        p->evs.n = k;
        for (size_t i = 0; i < opened; i++)
            close(p->tmpfds[i]);
    }
    return r;
}

static bool covered(void *userdata, pid_t tid)
{
    const struct memprobe *p = userdata;

    for (size_t i = 0; i < p->evs.nchains; i++)
        if (p->evs.chains[i].tid == tid)
            return true;
    return false;
}

static int open_one(void *userdata, pid_t tid)
{
    return open_thread(userdata, tid);
}

/* Opens events for every listed thread of the memprobe not covered yet. *ret_new: how many were
 * opened. */
static int scan_threads(void *userdata, size_t *ret_new)
{
    const struct memprobe *p = userdata;

    return perfring_scan_threads(p->pid, covered, open_one, userdata, ret_new);
}

/* Sets err to r and why opening the events failed. Returns r. */
static int open_failed(const struct memprobe *p, int r, struct error *err)
{
    if (r == -EPERM || r == -EACCES)
        return error_set(err, r,
                         "perf_event_open refused a uprobe on %s (%s): uprobes through perf "
                         "need CAP_PERFMON or CAP_SYS_ADMIN, and ptrace access to process %d",
                         p->module, strerror(-r), (int)p->pid);
    if (r == -EMFILE || r == -ENFILE)
        return error_set(err, r,
                         "too many open files for uprobes on every thread of process %d "
                         "(%u probes x %zu CPUs per thread): raise RLIMIT_NOFILE",
                         (int)p->pid, p->nprobes, p->rc.n);
    if (r == -ESRCH)
        return error_set(err, r, "process %d has exited", (int)p->pid);
    return error_set(err, r, "cannot open uprobes on %s in process %d: %s", p->module, (int)p->pid,
                     strerror(-r));
}

int memprobe_open(pid_t pid, struct memprobe **ret, struct error *err)
{
    struct memprobe *p = NULL;
    size_t pages = RING_PAGES;
    long page = sysconf(_SC_PAGESIZE);
    char st;
    int r;

    error_clear(err);
    if (pid <= 0 || procfs_read_state(PROCFS_ROOT, pid, pid, &st) < 0 || st == 'Z')
        return error_set(err, -ESRCH, "process %d does not exist", (int)pid);
    p = calloc(1, sizeof(*p));
    if (!p) {
        r = error_set(err, -ENOMEM, "cannot set up uprobes: %s", strerror(ENOMEM));
        goto out;
    }
    p->pid = pid;
    p->inherit_thread = true;
    if (read_sysfs_u32(PMU_DIR "/type", "", &p->pmu_type) < 0 ||
        read_sysfs_u32(PMU_DIR "/format/retprobe", "config:", &p->retprobe_bit) < 0 ||
        p->retprobe_bit > 63) {
        r = error_set(err, -EOPNOTSUPP,
                      "this kernel has no uprobe PMU (%s): it was built without "
                      "CONFIG_UPROBE_EVENTS",
                      PMU_DIR);
        goto out;
    }
    r = find_allocator(p, err);
    if (r < 0)
        goto out;
    r = perfring_cpus_init(&p->rc);
    if (r == 0) {
        p->next = calloc(p->rc.n, sizeof(*p->next));
        p->pfds = calloc(p->rc.n, sizeof(*p->pfds));
        p->tmpfds = calloc(p->rc.n * p->nprobes, sizeof(*p->tmpfds));
        p->threads = calloc(THREADS_CAP, sizeof(*p->threads));
        if (!p->next || !p->pfds || !p->tmpfds || !p->threads)
            r = -ENOMEM;
    }
    if (r < 0) {
        error_set(err, r, "cannot set up uprobes: %s", strerror(-r));
        goto out;
    }
    while (pages > RING_PAGES_FLOOR && (uint64_t)(pages + 1) * page * p->rc.n > RING_TOTAL_MAX)
        pages /= 2;
    for (size_t i = 0; i < p->rc.n; i++) {
        r = ring_map(p, i, &pages);
        if (r < 0) {
            error_set(err, r, "cannot map a perf ring buffer: %s", strerror(-r));
            goto out;
        }
        p->pfds[i] = (struct pollfd){.fd = p->rc.rings[i].fd, .events = POLLIN};
    }
    r = perfring_scan_settle(scan_threads, p, OPEN_SCANS_MAX);
    if (r < 0) {
        open_failed(p, r, err);
        goto out;
    }
    p->stats.probes = p->nprobes;
    p->stats.module = p->module;
    p->next_check_ns = now_ns() + CHECK_NS;
    *ret = p;
    p = NULL;
out:
    memprobe_close(p);
    return r;
}

void memprobe_close(struct memprobe *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->evs.n; i++)
        close(p->evs.v[i].fd);
    perfring_cpus_destroy(&p->rc);
    free(p->module);
    free(p->next);
    free(p->pfds);
    free(p->tmpfds);
    perfring_evs_destroy(&p->evs);
    free(p->threads);
    free(p);
}

void memprobe_get_stats(const struct memprobe *p, struct memprobe_stats *ret)
{
    *ret = p->stats;
}

/* The thread table: open addressing, linear probing, backward-shift deletion. */
static size_t thread_slot(pid_t tid)
{
    return ((uint32_t)tid * 2654435761u) & (THREADS_CAP - 1);
}

static struct thread *thread_get(struct memprobe *p, pid_t tid, uint32_t chain)
{
    size_t i = thread_slot(tid);
    while (p->threads[i].tid != 0) {
        if (p->threads[i].tid == tid)
            return &p->threads[i];
        i = (i + 1) & (THREADS_CAP - 1);
    }
    if (p->nthreads == MEMPROBE_THREADS_MAX)
        return NULL;
    p->nthreads++;
    p->threads[i] = (struct thread){.tid = tid, .chain = chain};
    return &p->threads[i];
}

static void thread_forget(struct memprobe *p, pid_t tid)
{
    size_t i = thread_slot(tid);
    while (p->threads[i].tid != tid) {
        if (p->threads[i].tid == 0)
            return;
        i = (i + 1) & (THREADS_CAP - 1);
    }
    p->threads[i].tid = 0;
    p->nthreads--;
    for (size_t j = (i + 1) & (THREADS_CAP - 1); p->threads[j].tid != 0;
         j = (j + 1) & (THREADS_CAP - 1)) {
        size_t home = thread_slot(p->threads[j].tid);
        /* j's entry may move into the hole at i unless its home lies cyclically in (i, j]. */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (stays)
            continue;
        p->threads[i] = p->threads[j];
        p->threads[j].tid = 0;
        i = j;
    }
}

/* Which of two chains a thread's samples are taken from (see the top of the file). */
static bool chain_accept(struct memprobe *p, struct thread *t, uint32_t c)
{
    if (t->chain == c)
        return true;
    if (p->evs.chains[t->chain].disabled) {
        t->chain = c;
        return true;
    }
    if (p->evs.chains[c].tid == t->tid)
        perfring_evs_chain_disable(&p->evs, c);
    return false;
}

static int emit(struct memprobe *p, int kind, pid_t tid, uint64_t time, uint64_t ptr, uint64_t size,
                const unsigned char *stack, size_t stack_len)
{
    struct memprobe_event e = {.kind = kind, .tid = tid, .time_ns = time, .ptr = ptr, .size = size};
    if (kind == MEMRING_ALLOC) {
        e.regs = p->regs;
        e.stack_addr = p->regs[UNW_X86_64_RSP];
        e.stack = stack_len ? stack : NULL;
        e.stack_len = stack_len;
        p->stats.allocs++;
    } else {
        p->stats.frees++;
    }
    int r = p->cb(&e, p->userdata);
    return r < 0 ? r : 0;
}

/* The block posix_memalign stored at memptr: from the stack copy when memptr is on the caller's
 * stack (the usual `void *q; posix_memalign(&q, ...)`, and exact), else from the target now. */
static int read_memptr(const struct memprobe *p, uint64_t memptr, const unsigned char *stack,
                       size_t stack_len, uint64_t *ret)
{
    uint64_t sp = p->regs[UNW_X86_64_RSP];
    if (memptr >= sp && memptr - sp <= stack_len && stack_len - (memptr - sp) >= 8) {
        memcpy(ret, stack + (memptr - sp), 8);
        return 0;
    }
    struct iovec local = {ret, 8}, remote = {(void *)(uintptr_t)memptr, 8};
    return process_vm_readv(p->pid, &local, 1, &remote, 1, 0) == 8 ? 0 : -EFAULT;
}

/* The events of an outermost call that returned rax. */
static int complete(struct memprobe *p, const struct call *c, pid_t tid, uint64_t time,
                    const unsigned char *stack, size_t stack_len)
{
    uint64_t rax = p->regs[UNW_X86_64_RAX], size, ptr;
    int r;
    switch (c->fn) {
    case FN_MALLOC:
        return rax ? emit(p, MEMRING_ALLOC, tid, time, rax, c->a[0], stack, stack_len) : 0;
    case FN_CALLOC:
        if (!rax || __builtin_mul_overflow(c->a[0], c->a[1], &size))
            return 0;
        return emit(p, MEMRING_ALLOC, tid, time, rax, size, stack, stack_len);
    case FN_REALLOC:
        /* glibc: realloc(NULL, n) allocates; realloc(p, 0) frees and returns NULL; a failure
         * (NULL for n > 0) leaves p alone. */
        if (c->a[0] && (rax || c->a[1] == 0)) {
            r = emit(p, MEMRING_FREE, tid, time, c->a[0], 0, NULL, 0);
            if (r < 0)
                return r;
        }
        return rax ? emit(p, MEMRING_ALLOC, tid, time, rax, c->a[1], stack, stack_len) : 0;
    case FN_ALIGNED_ALLOC:
    case FN_MEMALIGN:
        return rax ? emit(p, MEMRING_ALLOC, tid, time, rax, c->a[1], stack, stack_len) : 0;
    case FN_POSIX_MEMALIGN:
        if (rax != 0)
            return 0; /* an error number: nothing allocated */
        if (read_memptr(p, c->a[0], stack, stack_len, &ptr) < 0) {
            p->stats.lost++;
            return 0;
        }
        return ptr ? emit(p, MEMRING_ALLOC, tid, time, ptr, c->a[2], stack, stack_len) : 0;
    default:
        return 0;
    }
}

/* Can a call of fn start while `outer` is in flight? Only glibc's own inner calls can. */
static bool nests(const struct call *outer, enum fn fn, uint64_t a0)
{
    switch (outer->fn) {
    case FN_REALLOC:
        return (fn == FN_MALLOC && outer->a[0] == 0) ||
               (fn == FN_FREE && outer->a[1] == 0 && outer->a[0] == a0);
    case FN_POSIX_MEMALIGN:
    case FN_ALIGNED_ALLOC:
    case FN_MEMALIGN:
        return fn == FN_MALLOC;
    default:
        return false;
    }
}

static int on_sample(struct memprobe *p, const unsigned char *rec, size_t size)
{
    struct perfring_rd d;
    uint64_t id, time, abi, a[3] = {0};
    uint32_t pid, tid;
    const unsigned char *stack = NULL;
    size_t stack_len = 0;

    perfring_rd_init(&d, rec, size);
    if (!perfring_rd_u64(&d, &id) || !perfring_rd_u32(&d, &pid) || !perfring_rd_u32(&d, &tid) ||
        !perfring_rd_u64(&d, &time) || !perfring_rd_u64(&d, &abi))
        goto bad;
    struct perfring_ev *ev = perfring_evs_find(&p->evs, id);
    if (!ev || ev->tag >= p->nprobes)
        goto bad;
    if ((pid_t)pid != p->pid)
        return 0; /* a forked child's copy, where inherit_thread is unknown */
    if (abi != PERF_SAMPLE_REGS_ABI_64)
        goto bad;
    const struct probe *pr = &p->probes[ev->tag];
    if (!pr->ret) {
        /* DX, SI, DI in perf's order */
        if (!perfring_rd_u64(&d, &a[2]) || !perfring_rd_u64(&d, &a[1]) ||
            !perfring_rd_u64(&d, &a[0]))
            goto bad;
    } else if (!perfring_rd_regs(&d, p->regs) || !perfring_rd_stack(&d, &stack, &stack_len)) {
        goto bad;
    }
    struct thread *t = thread_get(p, (pid_t)tid, ev->chain);
    if (!t) {
        /* Past the thread limit: frees need no state, other calls cannot be paired. */
        if (pr->fn == FN_FREE && !pr->ret)
            return a[0] ? emit(p, MEMRING_FREE, (pid_t)tid, time, a[0], 0, NULL, 0) : 0;
        p->stats.lost++;
        return 0;
    }
    if (!chain_accept(p, t, ev->chain))
        return 0;
    if (!pr->ret) {
        if (t->depth > 0 && !nests(&t->calls[t->depth - 1], pr->fn, a[0])) {
            p->stats.lost += t->depth; /* their returns were lost */
            t->depth = 0;
        }
        if (pr->fn == FN_FREE)
            return a[0] && t->depth == 0 ? emit(p, MEMRING_FREE, (pid_t)tid, time, a[0], 0, NULL, 0)
                                         : 0;
        if (t->depth == DEPTH_MAX) {
            p->stats.lost += t->depth;
            t->depth = 0;
        }
        t->calls[t->depth++] = (struct call){.fn = pr->fn, .a = {a[0], a[1], a[2]}};
        return 0;
    }
    if (t->depth == 0 || t->calls[t->depth - 1].fn != pr->fn) {
        p->stats.lost += 1 + t->depth; /* this return's entry, and the stale calls */
        t->depth = 0;
        return 0;
    }
    struct call c = t->calls[--t->depth];
    if (t->depth > 0)
        return 0; /* glibc's inner call: the outer one reports */
    return complete(p, &c, (pid_t)tid, time, stack, stack_len);
bad:
    p->stats.lost++;
    return 0;
}

/* EXIT: pid, ppid, tid, ptid, time, then the trailer. */
static void on_exit_record(struct memprobe *p, const unsigned char *rec, size_t size)
{
    struct perfring_rd d;
    uint32_t pid, ppid, tid, ptid;
    perfring_rd_init(&d, rec, size);
    if (!perfring_rd_u32(&d, &pid) || !perfring_rd_u32(&d, &ppid) || !perfring_rd_u32(&d, &tid) ||
        !perfring_rd_u32(&d, &ptid)) {
        p->stats.lost++;
        return;
    }
    if ((pid_t)pid != p->pid)
        return;
    thread_forget(p, (pid_t)tid);
    if ((pid_t)tid == p->pid && procfs_process_gone(PROCFS_ROOT, p->pid))
        p->exited = true;
}

static int on_record(struct memprobe *p, const unsigned char *rec, size_t size)
{
    struct perf_event_header h;
    memcpy(&h, rec, sizeof(h));
    switch (h.type) {
    case PERF_RECORD_SAMPLE:
        return on_sample(p, rec, size);
    case PERF_RECORD_LOST:
        p->stats.lost += perfring_lost(rec, size);
        break;
    case PERF_RECORD_THROTTLE:
        /* Hits past perf_event_max_sample_rate per second are dropped until the next tick,
         * uncounted: at least one call went unreported. */
        p->stats.lost++;
        break;
    case PERF_RECORD_EXIT:
        on_exit_record(p, rec, size);
        break;
    default:
        break; /* FORK, UNTHROTTLE: nothing to do */
    }
    return 0;
}

/* Describes the record at ring ci's tail in p->next[ci]: false when the ring has none left this
 * round. */
static bool ring_peek(struct memprobe *p, size_t ci)
{
    struct perfring *rg = &p->rc.rings[ci];
    struct next *nx = &p->next[ci];
    struct perf_event_header h;
    if (nx->peeked)
        return true;
    int r = perfring_peek(rg, &h);
    if (r == -EBADMSG)
        p->stats.lost++;
    if (r < 0)
        return false;
    nx->time = 0; /* records without a time go first */
    if (h.type == PERF_RECORD_SAMPLE && h.size >= sizeof(h) + 24)
        perfring_read(rg, sizeof(h) + 16, &nx->time, 8);
    else if (h.type != PERF_RECORD_SAMPLE && h.size >= sizeof(h) + TRAILER_BYTES)
        perfring_read(rg, h.size - 16, &nx->time, 8);
    nx->size = h.size;
    nx->peeked = true;
    return true;
}

/* Hands out, in time order across the rings, every record up to limit. */
static int drain(struct memprobe *p, uint64_t limit)
{
    p->held = false;
    for (size_t i = 0; i < p->rc.n; i++) {
        perfring_begin(&p->rc.rings[i]);
        p->next[i].peeked = false;
    }
    for (;;) {
        size_t best = p->rc.n;
        for (size_t i = 0; i < p->rc.n; i++)
            if (ring_peek(p, i) && (best == p->rc.n || p->next[i].time < p->next[best].time))
                best = i;
        if (best == p->rc.n)
            return 0;
        if (p->next[best].time > limit) {
            p->held = true;
            return 0;
        }
        struct perfring *rg = &p->rc.rings[best];
        size_t size = p->next[best].size;
        int r = on_record(p, perfring_record(rg, size, p->rc.copy), size);
        perfring_consume(rg, size);
        p->next[best].peeked = false;
        if (r < 0)
            return r;
    }
}

int memprobe_poll(struct memprobe *p, int timeout_ms,
                  int (*cb)(const struct memprobe_event *e, void *userdata), void *userdata)
{
    int r;
    p->cb = cb;
    p->userdata = userdata;
    if (!p->exited) {
        uint64_t now = now_ns();
        uint64_t to_check = p->next_check_ns > now ? (p->next_check_ns - now) / 1000000 : 0;
        if ((uint64_t)timeout_ms > to_check)
            timeout_ms = (int)to_check;
        if (p->held && timeout_ms > HOLD_MS)
            timeout_ms = HOLD_MS;
        if (timeout_ms < 0)
            timeout_ms = 0;
        poll(p->pfds, p->rc.n, timeout_ms);
        now = now_ns();
        r = drain(p, now > HOLD_NS ? now - HOLD_NS : 0);
        if (r < 0)
            return r;
        if (!p->exited && now_ns() >= p->next_check_ns) {
            p->exited = procfs_process_gone(PROCFS_ROOT, p->pid);
            p->next_check_ns = now_ns() + CHECK_NS;
        }
    }
    if (p->exited) {
        r = drain(p, UINT64_MAX);
        return r < 0 ? r : -ESRCH;
    }
    return 0;
}
