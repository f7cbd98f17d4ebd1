/* Remote calls into a stopped thread (see inject.h). The thread's general registers and its
 * whole extended FPU state (NT_X86_XSTATE) are saved before the first call and written back at
 * the end, so code that was interrupted between two instructions, or inside a system call, goes
 * on as if nothing happened: a system call interrupted with -ERESTART* is restarted by the
 * kernel when the thread resumes with its original orig_rax and rax. Each call returns to
 * address 0; the resulting SIGSEGV stop tells us it is done, and is never delivered. */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <gelf.h>
#include <libelf.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "os/inject.h"
#include "os/procfs.h"
#include "os/targetfile.h"

#define RED_ZONE 128
#define STOP_TIMEOUT_MS 300
#define XSTATE_MAX 16384 /* the XSAVE area is 2.7 KiB with AVX-512; room to spare */
#define CANDIDATES_MAX 4096
#define SYMBOLS_MAX (1u << 20)

struct inject {
    pid_t pid, tid;
    int pending_sig; /* a signal caught on its way in, handed back at detach */
    struct user_regs_struct saved;
    unsigned char *xstate;
    size_t xstate_len;
    uint64_t scratch; /* lowest address used below the saved stack pointer */
    bool dirty;       /* registers were changed since the save */
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_us(long us)
{
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

/* Waits for a stop (or the end) of tid, up to timeout_ms. 0 with *st set, -ETIMEDOUT, or
 * waitpid's error. */
static int wait_tid(pid_t tid, int *st, unsigned timeout_ms)
{
    uint64_t deadline = now_ms() + timeout_ms;
    long pause_us = 20;

    for (;;) {
        pid_t w = waitpid(tid, st, __WALL | WNOHANG);
        if (w == tid)
            return 0;
        if (w < 0 && errno != EINTR)
            return -errno;
        if (now_ms() >= deadline)
            return -ETIMEDOUT;
        sleep_us(pause_us);
        if (pause_us < 1000)
            pause_us *= 2;
    }
}

/* System calls during which a thread may hold the allocator's lock (they are made from inside
 * malloc): a dlopen on top of them could deadlock or corrupt the heap. */
static bool syscall_unsafe(long nr)
{
    return nr == SYS_mmap || nr == SYS_munmap || nr == SYS_brk || nr == SYS_mprotect ||
           nr == SYS_madvise || nr == SYS_mremap;
}

struct region {
    uint64_t start, end;
};

/* Text of the C library and the dynamic loader: a thread stopped there may be in the middle of
 * malloc or of a library load, which our calls would enter again. */
static int libc_regions(pid_t pid, struct region **ret, size_t *ret_n)
{
    struct procfs_map *maps;
    size_t n, k = 0;
    int r = procfs_read_maps(PROCFS_ROOT, pid, &maps, &n);
    if (r < 0)
        return r;
    struct region *out = calloc(n ? n : 1, sizeof(*out));
    if (!out) {
        procfs_maps_free(maps, n);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        const char *base = strrchr(maps[i].path, '/');
        base = base ? base + 1 : maps[i].path;
        if (maps[i].perms[2] != 'x')
            continue;
        if (!strncmp(base, "libc.so", 7) || !strncmp(base, "libc-", 5) ||
            !strncmp(base, "ld-linux", 8) || !strncmp(base, "ld-", 3) ||
            !strncmp(base, "libpthread", 10)) {
            out[k].start = maps[i].start;
            out[k].end = maps[i].end;
            k++;
        }
    }
    procfs_maps_free(maps, n);
    *ret = out;
    *ret_n = k;
    return 0;
}

static bool in_regions(const struct region *rg, size_t n, uint64_t ip)
{
    for (size_t i = 0; i < n; i++)
        if (ip >= rg[i].start && ip < rg[i].end)
            return true;
    return false;
}

/* How promising a thread is, from /proc/PID/task/TID/syscall: blocked in an ordinary system
 * call (0) beats running (1) beats anything else (2); -1 to skip it. */
static int thread_rank(pid_t pid, pid_t tid)
{
    char path[96], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/task/%d/syscall", (int)pid, (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 2;
    ssize_t len = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (len <= 0)
        return 2;
    buf[len] = '\0';
    if (!strncmp(buf, "running", 7))
        return 1;
    char *end;
    long nr = strtol(buf, &end, 10);
    if (end == buf || nr < 0)
        return 2;
    return syscall_unsafe(nr) ? -1 : 0;
}

static int get_regs(pid_t tid, struct user_regs_struct *u)
{
    struct iovec iov = {u, sizeof(*u)};
    if (ptrace(PTRACE_GETREGSET, tid, NT_PRSTATUS, &iov) < 0)
        return -errno;
    return iov.iov_len == sizeof(*u) ? 0 : -EOPNOTSUPP; /* a 32-bit target */
}

static int set_regs(pid_t tid, const struct user_regs_struct *u)
{
    struct iovec iov = {(void *)u, sizeof(*u)};
    return ptrace(PTRACE_SETREGSET, tid, NT_PRSTATUS, &iov) < 0 ? -errno : 0;
}

/* Seizes tid and waits for it to stop. *sig gets a signal that was being delivered when it
 * stopped (to hand back later), else 0. On failure the thread is released. */
static int seize_stop(pid_t tid, int *sig)
{
    int st, r;

    *sig = 0;
    if (ptrace(PTRACE_SEIZE, tid, 0, 0) < 0)
        return -errno;
    if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) < 0) {
        r = -errno;
        ptrace(PTRACE_DETACH, tid, 0, 0);
        return r;
    }
    r = wait_tid(tid, &st, STOP_TIMEOUT_MS);
    if (r < 0) {
        /* Detaching needs a stopped tracee; a thread that never stops (vfork, D state) is
         * released when it next stops, or when we exit. Interrupt it again to make it quick. */
        ptrace(PTRACE_DETACH, tid, 0, 0);
        return r;
    }
    if (WIFEXITED(st) || WIFSIGNALED(st))
        return -ESRCH;
    if (!WIFSTOPPED(st)) {
        ptrace(PTRACE_DETACH, tid, 0, 0);
        return -ECHILD;
    }
    if ((st >> 16) == 0)
        *sig = WSTOPSIG(st);
    return 0;
}

static int save_state(struct inject *in)
{
    int r = get_regs(in->tid, &in->saved);
    if (r < 0)
        return r;
    in->xstate = malloc(XSTATE_MAX);
    if (!in->xstate)
        return -ENOMEM;
    struct iovec iov = {in->xstate, XSTATE_MAX};
    if (ptrace(PTRACE_GETREGSET, in->tid, NT_X86_XSTATE, &iov) < 0)
        return -errno;
    in->xstate_len = iov.iov_len;
    in->scratch = in->saved.rsp - RED_ZONE;
    return 0;
}

int inject_attach(pid_t pid, struct inject **ret, struct error *err)
{
    struct inject *in = NULL;
    struct region *rg = NULL;
    pid_t *tids = NULL;
    size_t ntids = 0, nrg = 0;
    int r;

    error_clear(err);
    if (pid <= 0 || pid == getpid())
        return error_set(err, -EINVAL, NULL);
    r = procfs_list_tasks(PROCFS_ROOT, pid, &tids, &ntids);
    if (r < 0)
        goto out;
    r = libc_regions(pid, &rg, &nrg);
    if (r < 0)
        goto out;
    if (ntids > CANDIDATES_MAX)
        ntids = CANDIDATES_MAX;
    in = calloc(1, sizeof(*in));
    if (!in) {
        r = -ENOMEM;
        goto out;
    }
    in->pid = pid;
    r = -EAGAIN;
    for (int attempt = 0; attempt < INJECT_SETTLE_TRIES; attempt++) {
        /* Best-ranked thread first; rank is re-read each attempt as threads move on. */
        pid_t best = 0;
        int best_rank = 3;
        for (size_t i = 0; i < ntids && best_rank > 0; i++) {
            int rank = thread_rank(pid, tids[i]);
            if (rank >= 0 && rank < best_rank) {
                best_rank = rank;
                best = tids[i];
            }
        }
        if (!best) {
            sleep_us(2000);
            continue;
        }
        int sig, e = seize_stop(best, &sig);
        if (e == -EPERM || e == -EACCES) {
            r = error_set(err, e,
                          "ptrace of thread %d was refused (%s): the agent needs "
                          "CAP_SYS_PTRACE, and the target must not be traced by another debugger",
                          (int)best, strerror(-e));
            goto out;
        }
        if (e < 0)
            continue;
        struct user_regs_struct u;
        e = get_regs(best, &u);
        bool safe = e == 0 && (((long)u.orig_rax >= 0 && !syscall_unsafe((long)u.orig_rax)) ||
                               ((long)u.orig_rax < 0 && !in_regions(rg, nrg, u.rip)));
        if (safe) {
            in->tid = best;
            in->pending_sig = sig;
            e = save_state(in);
            if (e == 0) {
                r = 0;
                goto out;
            }
        }
        ptrace(PTRACE_DETACH, best, 0, sig);
        if (e == -EOPNOTSUPP) {
            r = error_set(err, e, "the target is not a 64-bit x86 process");
            goto out;
        }
        sleep_us(1000 + attempt * 200);
    }
    error_set(err, r,
              "no thread of process %d stopped at a point where it is safe to load "
              "a library (each was inside the C library) in %d attempts",
              (int)pid, INJECT_SETTLE_TRIES);
out:
    free(tids);
    free(rg);
    if (r < 0) {
        if (in)
            free(in->xstate);
        free(in);
        return error_fill(err, r);
    }
    *ret = in;
    return 0;
}

pid_t inject_tid(const struct inject *in)
{
    return in->tid;
}

static int write_mem(pid_t pid, uint64_t addr, const void *data, size_t len)
{
    struct iovec local = {(void *)data, len};
    struct iovec remote = {(void *)(uintptr_t)addr, len};
    ssize_t n = process_vm_writev(pid, &local, 1, &remote, 1, 0);
    if (n < 0)
        return -errno;
    return (size_t)n == len ? 0 : -EFAULT;
}

int inject_push(struct inject *in, const void *data, size_t len, uint64_t *ret_addr)
{
    uint64_t used = in->saved.rsp - RED_ZONE - in->scratch;
    size_t need = (len + 15) & ~(size_t)15;

    if (len > INJECT_SCRATCH_MAX || used + need > INJECT_SCRATCH_MAX)
        return -ENOSPC;
    uint64_t addr = (in->scratch - need) & ~(uint64_t)15;
    int r = write_mem(in->pid, addr, data, len);
    if (r < 0)
        return r;
    in->scratch = addr;
    *ret_addr = addr;
    return 0;
}

int inject_call(struct inject *in, uint64_t func, const uint64_t *args, size_t nargs, uint64_t *ret)
{
    struct user_regs_struct u = in->saved;
    uint64_t zero = 0;
    int r, st;

    if (nargs > INJECT_MAX_ARGS)
        return -EINVAL;
    /* At a function's entry rsp + 8 is 16-byte aligned (the System V ABI). */
    uint64_t sp = ((in->scratch - 64) & ~(uint64_t)15) - 8;
    r = write_mem(in->pid, sp, &zero, sizeof(zero));
    if (r < 0)
        return r;
    unsigned long long *argregs[INJECT_MAX_ARGS] = {&u.rdi, &u.rsi, &u.rdx, &u.rcx, &u.r8, &u.r9};
    for (size_t i = 0; i < nargs; i++)
        *argregs[i] = args[i];
    u.rip = func;
    u.rsp = sp;
    u.rax = 0;
    /* Not in a system call as far as the kernel's restart logic is concerned. */
    u.orig_rax = (unsigned long long)-1;
    in->dirty = true;
    r = set_regs(in->tid, &u);
    if (r < 0)
        return r;
    int sig = 0;
    uint64_t deadline = now_ms() + INJECT_CALL_TIMEOUT_MS;
    for (;;) {
        if (ptrace(PTRACE_CONT, in->tid, 0, sig) < 0)
            return -errno;
        sig = 0;
        uint64_t now = now_ms();
        r = wait_tid(in->tid, &st, now < deadline ? (unsigned)(deadline - now) : 0);
        if (r == -ETIMEDOUT) {
            /* Stop it again so detach can put the original state back. */
            ptrace(PTRACE_INTERRUPT, in->tid, 0, 0);
            if (wait_tid(in->tid, &st, STOP_TIMEOUT_MS) == 0 && WIFSTOPPED(st))
                return -ETIMEDOUT;
            in->tid = 0;
            return -ETIMEDOUT;
        }
        if (r < 0)
            return r;
        if (WIFEXITED(st) || WIFSIGNALED(st)) {
            in->tid = 0;
            return -ESRCH;
        }
        if (!WIFSTOPPED(st))
            continue;
        int event = st >> 16;
        if (event != 0)
            continue; /* PTRACE_EVENT_STOP (our interrupt, a group stop): go on */
        if (WSTOPSIG(st) == SIGSEGV) {
            r = get_regs(in->tid, &u);
            if (r < 0)
                return r;
            if (u.rip == 0) {
                *ret = u.rax;
                return 0;
            }
            return -EFAULT;
        }
        sig = WSTOPSIG(st); /* someone else's signal: deliver it, the handler runs here */
    }
}

int inject_detach(struct inject *in)
{
    int r = 0;

    if (!in)
        return 0;
    if (in->tid) {
        if (in->dirty) {
            struct iovec iov = {in->xstate, in->xstate_len};
            r = set_regs(in->tid, &in->saved);
            if (ptrace(PTRACE_SETREGSET, in->tid, NT_X86_XSTATE, &iov) < 0 && r == 0)
                r = -errno;
        }
        if (ptrace(PTRACE_DETACH, in->tid, 0, in->pending_sig) < 0 && r == 0)
            r = -errno;
    }
    free(in->xstate);
    free(in);
    return r;
}

int inject_read_string(pid_t pid, uint64_t addr, char *buf, size_t len)
{
    if (len == 0)
        return -EINVAL;
    struct iovec local = {buf, len - 1};
    struct iovec remote = {(void *)(uintptr_t)addr, len - 1};
    /* A string near the end of a mapping is read short rather than failed. */
    ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (n < 0) {
        size_t in_page = 4096 - (addr & 4095);
        local.iov_len = remote.iov_len = in_page < len - 1 ? in_page : len - 1;
        n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        if (n < 0)
            return -errno;
    }
    buf[n] = '\0';
    return 0;
}

/* The load bias of the module: where its ELF address 0 sits in the target. */
static int module_bias(Elf *elf, uint64_t map_start, uint64_t map_offset, uint64_t *ret)
{
    size_t nph;
    if (elf_getphdrnum(elf, &nph) < 0)
        return -EBADMSG;
    for (size_t i = 0; i < nph; i++) {
        GElf_Phdr ph;
        if (!gelf_getphdr(elf, (int)i, &ph) || ph.p_type != PT_LOAD)
            continue;
        uint64_t page_off = ph.p_offset & ~(uint64_t)4095;
        if (page_off != map_offset)
            continue;
        *ret = map_start - (ph.p_vaddr & ~(uint64_t)4095);
        return 0;
    }
    return -ENOENT;
}

static int elf_dynsym(Elf *elf, const char *name, uint64_t *ret)
{
    Elf_Scn *scn = NULL, *symscn = NULL, *verscn = NULL;
    GElf_Shdr sh, symsh = {0};
    bool found = false;

    while ((scn = elf_nextscn(elf, scn))) {
        if (!gelf_getshdr(scn, &sh))
            continue;
        if (sh.sh_type == SHT_DYNSYM) {
            symscn = scn;
            symsh = sh;
        } else if (sh.sh_type == SHT_GNU_versym) {
            verscn = scn;
        }
    }
    if (!symscn || !symsh.sh_entsize)
        return -ENOENT;
    Elf_Data *syms = elf_getdata(symscn, NULL);
    Elf_Data *vers = verscn ? elf_getdata(verscn, NULL) : NULL;
    size_t n = symsh.sh_size / symsh.sh_entsize;
    if (!syms || n > SYMBOLS_MAX)
        return -EBADMSG;
    for (size_t i = 0; i < n; i++) {
        GElf_Sym sym;
        if (!gelf_getsym(syms, (int)i, &sym) || sym.st_shndx == SHN_UNDEF ||
            GELF_ST_TYPE(sym.st_info) != STT_FUNC)
            continue;
        const char *s = elf_strptr(elf, symsh.sh_link, sym.st_name);
        if (!s || strcmp(s, name))
            continue;
        GElf_Versym vs = 0;
        bool hidden = vers && gelf_getversym(vers, (int)i, &vs) && (vs & 0x8000);
        /* The default version wins; a hidden (compat) one only when nothing else exists. */
        if (!found || !hidden)
            *ret = sym.st_value;
        found = true;
        if (!hidden)
            return 0;
    }
    return found ? 0 : -ENOENT;
}

int inject_symbol(pid_t pid, const char *path, const char *name, uint64_t *ret)
{
    struct procfs_map *maps;
    size_t n;
    char file[PATH_MAX + 64];
    int r = procfs_read_maps(PROCFS_ROOT, pid, &maps, &n);
    if (r < 0)
        return r;
    const struct procfs_map *m = NULL;
    size_t plen = strlen(path);
    for (size_t i = 0; i < n && !m; i++) {
        const char *p = maps[i].path;
        if (!strncmp(p, path, plen) && (p[plen] == '\0' || !strcmp(p + plen, " (deleted)")))
            m = &maps[i];
    }
    if (!m) {
        r = -ENOENT;
        goto out;
    }
    /* The file through the target's root (maps give our view of its path: made its own first),
     * or, deleted or not found there, through map_files. */
    int fd = -1;
    char own[PATH_MAX];
    if (strcmp(m->path + plen, " (deleted)") &&
        targetfile_own_path(pid, path, own, sizeof(own)) == 0) {
        snprintf(file, sizeof(file), "/proc/%d/root%s", (int)pid, own);
        fd = open(file, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) {
        snprintf(file, sizeof(file), "/proc/%d/map_files/%llx-%llx", (int)pid,
                 (unsigned long long)m->start, (unsigned long long)m->end);
        fd = open(file, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) {
        r = -errno;
        goto out;
    }
    elf_version(EV_CURRENT);
    Elf *elf = elf_begin(fd, ELF_C_READ_MMAP, NULL);
    uint64_t bias = 0, value = 0;
    if (!elf) {
        r = -EBADMSG;
    } else {
        r = module_bias(elf, m->start, m->offset, &bias);
        if (r == 0)
            r = elf_dynsym(elf, name, &value);
        elf_end(elf);
    }
    close(fd);
    if (r == 0)
        *ret = bias + value;
out:
    procfs_maps_free(maps, n);
    return r;
}
