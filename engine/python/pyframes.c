/* Python-level stacks of a CPython process, read from outside (see pyframes.h): finding the
 * interpreter and its version, choosing its layout, reading target memory with process_vm_readv,
 * and mapping the thread ids of a target in another PID namespace to ours. The walk itself is
 * pywalk.c's. */
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include "os/procfs.h"
#include "python/pydebug.h"
#include "python/pyframes.h"
#include "python/pylayout.h"
#include "python/pywalk.h"

#define OLDEST_MINOR 11 /* 3.10 and older keep frames in PyFrameObjects: another walker */
#define NSPID_MAX 32    /* PID namespace levels (the kernel's MAX_PID_NS_LEVEL) */

enum { SYM_RUNTIME, SYM_VERSION, SYM_CODE, SYM_UNICODE, SYM_BYTES, SYM_DICT, NSYMS };
static const char *const sym_names[NSYMS] = {
    "_PyRuntime", "Py_Version", "PyCode_Type", "PyUnicode_Type", "PyBytes_Type", "PyDict_Type",
};

struct pyframes {
    pid_t pid;
    char version[PYFRAMES_VERSION_MAX];
    char module[PATH_MAX]; /* the mapped file holding _PyRuntime, as /proc/PID/maps names it */
    uint64_t sym[NSYMS];   /* addresses in the target */
    struct pylayout layout;
    struct pywalk *walk;
    bool other_ns; /* the target's thread ids are another PID namespace's */
};

static int vm_read(void *ctx, uint64_t addr, void *buf, size_t len)
{
    const struct pyframes *p = ctx;
    struct iovec local = {buf, len};
    struct iovec remote = {(void *)(uintptr_t)addr, len};

    if (addr == 0 || addr + len < addr)
        return -EFAULT;
    ssize_t n = process_vm_readv(p->pid, &local, 1, &remote, 1, 0);
    if (n < 0)
        return -errno;
    return (size_t)n == len ? 0 : -EFAULT;
}

static int rd_u64(const struct pyframes *p, uint64_t addr, uint64_t *ret)
{
    uint64_t v;
    int r = vm_read((void *)p, addr, &v, sizeof(v));
    if (r == 0)
        *ret = v;
    return r;
}

/* ---- finding the interpreter ---- */

/* Looks up sym_names in the symbol tables of the ELF file fd, and its load bias from the
 * mapping (start, offset). found[] tells which were there. */
static int elf_symbols(int fd, uint64_t map_start, uint64_t map_off, uint64_t sym[NSYMS],
                       int found[NSYMS])
{
    uint64_t pagemask = (uint64_t)sysconf(_SC_PAGESIZE) - 1;
    int r = -ENOENT, have_bias = 0;
    uint64_t bias = 0;
    size_t nph;
    GElf_Ehdr eh;

    elf_version(EV_CURRENT);
    Elf *e = elf_begin(fd, ELF_C_READ_MMAP, NULL);
    if (!e || elf_kind(e) != ELF_K_ELF || !gelf_getehdr(e, &eh) ||
        eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64 ||
        elf_getphdrnum(e, &nph) != 0)
        goto out;
    for (size_t i = 0; i < nph && !have_bias; i++) {
        GElf_Phdr ph;
        if (!gelf_getphdr(e, (int)i, &ph) || ph.p_type != PT_LOAD)
            continue;
        if (map_off >= (ph.p_offset & ~pagemask) && map_off < ph.p_offset + ph.p_filesz) {
            bias = map_start - map_off - ((ph.p_vaddr & ~pagemask) - (ph.p_offset & ~pagemask));
            have_bias = 1;
        }
    }
    if (!have_bias)
        goto out;
    for (Elf_Scn *s = elf_nextscn(e, NULL); s; s = elf_nextscn(e, s)) {
        GElf_Shdr sh;
        if (!gelf_getshdr(s, &sh) || (sh.sh_type != SHT_SYMTAB && sh.sh_type != SHT_DYNSYM) ||
            sh.sh_entsize == 0)
            continue;
        Elf_Data *d = elf_getdata(s, NULL);
        size_t n = sh.sh_size / sh.sh_entsize;
        for (size_t i = 0; d && i < n; i++) {
            GElf_Sym st;
            if (!gelf_getsym(d, (int)i, &st) || st.st_shndx == SHN_UNDEF ||
                GELF_ST_TYPE(st.st_info) != STT_OBJECT)
                continue;
            const char *name = elf_strptr(e, sh.sh_link, st.st_name);
            for (int k = 0; name && k < NSYMS; k++) {
                if (!found[k] && strcmp(name, sym_names[k]) == 0) {
                    sym[k] = bias + st.st_value;
                    found[k] = 1;
                }
            }
        }
    }
    r = found[SYM_RUNTIME] ? 0 : -ENOENT;
out:
    elf_end(e);
    return r;
}

/* Through map_files the file is found even deleted or in another mount namespace. */
int pyframes_open_mapped(pid_t pid, const struct procfs_map *m)
{
    char path[PATH_MAX];
    struct stat st;
    int fd;

    snprintf(path, sizeof(path), "/proc/%d/map_files/%llx-%llx", (int)pid,
             (unsigned long long)m->start, (unsigned long long)m->end);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (snprintf(path, sizeof(path), "/proc/%d/root%s", (int)pid, m->path) >= (int)sizeof(path))
            return -ENAMETOOLONG;
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return -errno;
    }
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_ino != m->inode) {
        close(fd);
        return -ESTALE;
    }
    return fd;
}

/* "3.10" from a module name such as libpython3.10.so.1.0 or python3.10; -ENOENT if none. */
static int version_from_name(const char *path, char *buf, size_t len)
{
    const char *base = strrchr(path, '/');
    const char *s = strstr(base ? base + 1 : path, "python3.");

    if (!s)
        return -ENOENT;
    s += strlen("python3.");
    size_t n = strspn(s, "0123456789");
    if (n == 0 || n > 3)
        return -ENOENT;
    snprintf(buf, len, "3.%.*s", (int)n, s);
    return 0;
}

/* Py_VERSION_HEX (Include/patchlevel.h): major, minor, micro, level (0xA alpha, 0xB beta, 0xC
 * candidate, 0xF final), serial, one byte each but the last two nibbles. */
static void version_from_hex(uint64_t v, char *buf, size_t len)
{
    static const char *const level[] = {[0xA] = "a", [0xB] = "b", [0xC] = "rc"};
    unsigned lv = (v >> 4) & 0xf;

    if (lv < sizeof(level) / sizeof(level[0]) && level[lv] != NULL)
        snprintf(buf, len, "%u.%u.%u%s%u", (unsigned)(v >> 24) & 0xff, (unsigned)(v >> 16) & 0xff,
                 (unsigned)(v >> 8) & 0xff, level[lv], (unsigned)v & 0xf);
    else
        snprintf(buf, len, "%u.%u.%u", (unsigned)(v >> 24) & 0xff, (unsigned)(v >> 16) & 0xff,
                 (unsigned)(v >> 8) & 0xff);
}

static bool is_libpython(const char *path)
{
    const char *base = strrchr(path, '/');
    return strncmp(base ? base + 1 : path, "libpython3", strlen("libpython3")) == 0;
}

/* The layout of 3.MINOR: a known table, or the target's _Py_DebugOffsets from 3.13 on. */
static int choose_layout(struct pyframes *p, unsigned minor, struct error *err)
{
    unsigned char dbg[PYDEBUG_READ_MAX];
    struct error why = {0};
    int r;

    if (minor < OLDEST_MINOR)
        return error_set(err, -EOPNOTSUPP,
                         "Python %s is older than 3.11, the oldest whose frames "
                         "can be read",
                         p->version);
    if (pylayout_known(minor, &p->layout) == 0) {
        r = pylayout_check(&p->layout, &why);
    } else {
        r = vm_read(p, p->sym[SYM_RUNTIME], dbg, sizeof(dbg));
        if (r < 0)
            return error_set(err, r, "the _PyRuntime of Python %s cannot be read", p->version);
        r = pydebug_layout(dbg, sizeof(dbg), &p->layout, &why);
        if (r == 0 && p->layout.minor != minor)
            r = error_set(&why, -EOPNOTSUPP, "its _Py_DebugOffsets say 3.%u", p->layout.minor);
    }
    return r < 0 ? error_set(err, -EOPNOTSUPP, "Python %s: %s", p->version, why.reason) : 0;
}

/* Tries the file of m (its first mapping) as the interpreter: 0 with p filled in,
 * -ENOENT when it has no _PyRuntime, -EOPNOTSUPP for a version that cannot be read. */
static int try_module(struct pyframes *p, const struct procfs_map *m, struct error *err)
{
    int found[NSYMS] = {0};
    uint64_t hex = 0;
    int fd = pyframes_open_mapped(p->pid, m);
    if (fd < 0)
        return fd == -ESTALE ? -ENOENT : fd;
    int r = elf_symbols(fd, m->start, m->offset, p->sym, found);
    close(fd);
    if (r < 0)
        return r;
    if (!found[SYM_VERSION] || rd_u64(p, p->sym[SYM_VERSION], &hex) < 0) {
        /* Py_Version exists from 3.11 on: without it this is an older interpreter. */
        if (version_from_name(m->path, p->version, sizeof(p->version)) < 0)
            snprintf(p->version, sizeof(p->version), "unknown");
        return error_set(err, -EOPNOTSUPP,
                         "Python %s is older than 3.11, the oldest whose "
                         "frames can be read",
                         p->version);
    }
    version_from_hex(hex, p->version, sizeof(p->version));
    if ((hex >> 24) != 3)
        return error_set(err, -EOPNOTSUPP, "Python %s is not a Python 3", p->version);
    if (!found[SYM_CODE] || !found[SYM_UNICODE] || !found[SYM_BYTES])
        return error_set(err, -EOPNOTSUPP,
                         "Python %s does not export PyCode_Type, "
                         "PyUnicode_Type and PyBytes_Type",
                         p->version);
    return choose_layout(p, (unsigned)(hex >> 16) & 0xff, err);
}

/* ---- PID namespaces ---- */

/* The ids of ROOT/PID/task/TID in each PID namespace, from its status NSpid line (outermost,
 * ours, first). 0 and the count, or -ESRCH and such. */
static int read_nspid(pid_t pid, pid_t tid, pid_t ids[NSPID_MAX], size_t *ret_n)
{
    char buf[4096];
    size_t n = 0, len;

    int r = procfs_read_head(PROCFS_ROOT, pid, tid, "status", buf, sizeof(buf), &len);
    if (r < 0)
        return r;
    const char *s = strstr(buf, "\nNSpid:");
    if (!s)
        return -ENOENT; /* a kernel before 4.1: no namespaces to tell apart */
    s += strlen("\nNSpid:");
    while (*s == ' ' || *s == '\t') {
        uint64_t v;
        while (*s == ' ' || *s == '\t')
            s++;
        if (n == NSPID_MAX || procfs_parse_u64(&s, 10, 10, &v) < 0 || v == 0 || v > INT32_MAX)
            return -EBADMSG;
        ids[n++] = (pid_t)v;
    }
    if (n == 0)
        return -EBADMSG;
    *ret_n = n;
    return 0;
}

/* The innermost (the target's own) id of our thread tid; tid itself outside namespaces. */
static int inner_tid(const struct pyframes *p, pid_t tid, pid_t *ret)
{
    pid_t ids[NSPID_MAX];
    size_t n;

    if (!p->other_ns) {
        *ret = tid;
        return 0;
    }
    int r = read_nspid(p->pid, tid, ids, &n);
    if (r == 0)
        *ret = ids[n - 1];
    return r;
}

/* Gives the threads of ts our ids in place of the target's; drops those whose OS thread is gone
 * (a thread state outlives its thread for a moment). */
static int map_tids(const struct pyframes *p, struct pyframes_thread *ts, size_t *n)
{
    pid_t *tids = NULL, *inner = NULL;
    size_t nt = 0, kept = 0;
    int r = procfs_list_tasks(PROCFS_ROOT, p->pid, &tids, &nt);

    if (r < 0)
        return r;
    inner = calloc(nt ? nt : 1, sizeof(*inner));
    if (!inner) {
        free(tids);
        return -ENOMEM;
    }
    for (size_t i = 0; i < nt; i++)
        if (inner_tid(p, tids[i], &inner[i]) < 0)
            inner[i] = 0;
    for (size_t i = 0; i < *n; i++) {
        pid_t host = 0;
        for (size_t k = 0; k < nt && !host; k++)
            if (inner[k] == ts[i].tid)
                host = tids[k];
        if (!host) {
            pyframes_thread_clear(&ts[i]);
            continue;
        }
        ts[kept] = ts[i];
        ts[kept++].tid = host;
    }
    *n = kept;
    free(inner);
    free(tids);
    return 0;
}

/* ---- the interface ---- */

int pyframes_attach(pid_t pid, char *version, size_t version_len, struct pyframes **ret,
                    struct error *err)
{
    struct procfs_map *maps = NULL;
    size_t n = 0;
    char exe[PATH_MAX];
    struct pyframes *p = NULL;
    pid_t ids[NSPID_MAX];
    size_t nids;
    int r;

    error_clear(err);
    if (version && version_len)
        version[0] = '\0';
    if (pid <= 0)
        return error_set(err, -EINVAL, NULL);
    p = calloc(1, sizeof(*p));
    if (!p)
        return error_set(err, -ENOMEM, NULL);
    p->pid = pid;
    r = procfs_read_exe(PROCFS_ROOT, pid, exe, sizeof(exe));
    if (r < 0)
        exe[0] = '\0';
    r = procfs_read_maps(PROCFS_ROOT, pid, &maps, &n);
    if (r < 0)
        goto out;
    /* libpython first (a dynamically linked interpreter or an embedding program), then the
     * executable itself (a static interpreter); each file tried at its first mapping. */
    r = -ENOENT;
    for (int pass = 0; pass < 2 && r == -ENOENT; pass++) {
        for (size_t i = 0; i < n && r == -ENOENT; i++) {
            const struct procfs_map *m = &maps[i];
            bool seen = false;
            if (m->inode == 0 || m->path[0] != '/' ||
                (pass == 0 ? !is_libpython(m->path) : strcmp(m->path, exe) != 0))
                continue;
            for (size_t j = 0; j < i && !seen; j++)
                seen = maps[j].inode == m->inode && strcmp(maps[j].path, m->path) == 0;
            if (!seen)
                r = try_module(p, m, err);
            if (!seen && r == 0)
                snprintf(p->module, sizeof(p->module), "%s", m->path);
        }
    }
    if (version && version_len)
        snprintf(version, version_len, "%s", p->version);
    if (r < 0)
        goto out;
    uint64_t head;
    r = rd_u64(p, p->sym[SYM_RUNTIME] + p->layout.rt_interp_head, &head);
    if (r < 0)
        goto out;
    r = read_nspid(pid, pid, ids, &nids);
    p->other_ns = r == 0 && nids > 1;
    struct pywalk_addrs a = {p->sym[SYM_RUNTIME], p->sym[SYM_CODE], p->sym[SYM_UNICODE],
                             p->sym[SYM_BYTES], p->sym[SYM_DICT]};
    struct pywalk_reader rdr = {vm_read, p};
    r = pywalk_new(&p->layout, &a, &rdr, &p->walk);
    if (r < 0)
        goto out;
    *ret = p;
    p = NULL;
out:
    procfs_maps_free(maps, n);
    pyframes_free(p);
    if (r < 0 && (!err || err->code == 0))
        error_set(err, r, NULL);
    return r;
}

void pyframes_free(struct pyframes *p)
{
    if (!p)
        return;
    pywalk_free(p->walk);
    free(p);
}

struct pywalk *pyframes_walker(struct pyframes *p)
{
    return p->walk;
}

const char *pyframes_version(const struct pyframes *p)
{
    return p->version;
}

int pyframes_read(struct pyframes *p, struct pyframes_thread **ret, size_t *ret_n)
{
    struct pyframes_thread *ts;
    size_t n;
    int r = pywalk_threads(p->walk, &ts, &n);

    if (r == 0 && p->other_ns && (r = map_tids(p, ts, &n)) < 0)
        pyframes_threads_free(ts, n);
    if (r < 0)
        return r;
    *ret = ts;
    *ret_n = n;
    return 0;
}

int pyframes_read_tid(struct pyframes *p, pid_t tid, struct pyframes_thread *ret)
{
    pid_t inner;
    int r = tid > 0 ? inner_tid(p, tid, &inner) : -EINVAL;

    if (r == -ESRCH)
        r = -ENOENT; /* that thread is gone: it has no thread state either */
    if (r == 0)
        r = pywalk_thread(p->walk, inner, ret);
    if (r == 0)
        ret->tid = tid;
    return r;
}

const char *pyframes_module(const struct pyframes *p)
{
    return p->module;
}

/* struct _gil_runtime_state (Include/internal/pycore_gil.h, 3.11-3.15, x86-64 glibc): interval,
 * last_holder, locked, switch_number, cond, mutex, switch_cond, switch_mutex: 208 bytes. */
#define GIL_BYTES 208
/* 3.11: the GIL is _PyRuntime.ceval.gil, which ends 8 bytes before gilstate.tstate_current
 * (struct _gilstate_runtime_state starts with an int, padded). */
#define GIL_311_BEFORE_TSTATE 8

int pyframes_gil_range(const struct pyframes *p, uint64_t *ret_lo, uint64_t *ret_hi)
{
    const struct pylayout *l = &p->layout;
    uint64_t gil = 0, interp = 0;

    if (l->rt_gil_tstate) {
        gil = p->sym[SYM_RUNTIME] + l->rt_gil_tstate - GIL_311_BEFORE_TSTATE - GIL_BYTES;
    } else if (rd_u64(p, p->sym[SYM_RUNTIME] + l->rt_interp_head, &interp) < 0 ||
               rd_u64(p, interp + l->is_gil, &gil) < 0 || gil == 0) {
        return -ENOENT;
    }
    *ret_lo = gil;
    *ret_hi = gil + GIL_BYTES;
    return 0;
}

const struct pylayout *pyframes_layout(const struct pyframes *p)
{
    return &p->layout;
}

int pyframes_decode(struct pyframes *p, pid_t tid, const struct pyframes_raw_frame *raw, size_t n,
                    bool truncated, struct pyframes_thread *ret)
{
    int r = pywalk_decode(p->walk, raw, n, ret);
    if (r == 0) {
        ret->tid = tid;
        ret->truncated = ret->truncated || truncated;
    }
    return r;
}

int pyframes_format_frame(const struct pyframes_frame *f, char *buf, size_t len)
{
    int n = snprintf(buf, len, "  File \"%s\", line %d, in %s", f->filename, f->line, f->funcname);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

bool pyframes_is_eval(const char *func)
{
    size_t n = strlen(PYFRAMES_EVAL_FUNC);
    return func && strncmp(func, PYFRAMES_EVAL_FUNC, n) == 0 && (func[n] == '\0' || func[n] == '.');
}

/* The native frame whose stack holds addr: i with sp(i) <= addr < sp(i + 1), both known (the
 * unwinder's stack pointers); -1. */
static ssize_t frame_holding(const struct stacks_thread *native, uint64_t addr)
{
    const struct stacks_frame *f = native->frames;

    for (size_t i = 0; addr && i + 1 < native->nframes && f[i].sp && f[i + 1].sp; i++)
        if (f[i].sp <= addr && addr < f[i + 1].sp)
            return (ssize_t)i;
    return -1;
}

static void put_python(struct stacks_thread *t, const struct pyframes_frame *pf)
{
    t->frames[t->nframes++] = (struct stacks_frame){.file = pf->filename,
                                                    .func = pf->funcname,
                                                    .line = pf->line,
                                                    .func_line = pf->firstlineno,
                                                    .python = true};
}

static void put_native(struct stacks_thread *t, const struct stacks_thread *native, size_t from,
                       size_t to)
{
    for (size_t i = from; i < to; i++)
        t->frames[t->nframes++] = native->frames[i];
}

/* CPython 3.11 on runs nested Python calls inside one _PyEval_EvalFrameDefault call; each call
 * of it starts at an entry frame. So the Python frames cut after each entry frame are runs,
 * innermost first, and each replaces the native frame of the eval-loop call that runs it:
 * first where the run's shim frame lies on the C stack (3.12 on, by the frames' sp), which finds
 * that call whatever C sits between and whatever its symbol (a stripped interpreter, GCC's .cold
 * part); then, in order, the native frames named as the eval loop. A run left without one goes
 * just inside the next run out that has one; outermost runs left over go at the outer end when
 * the native stack ends early, else just outside the last placed run (or innermost), never
 * under the program's entry point. */
int pyframes_merge(const struct stacks_thread *native, const struct pyframes_thread *py,
                   struct stacks_thread **ret)
{
    size_t max = native->nframes + py->nframes, nruns = 0, pos = 0;
    struct stacks_thread *t = malloc(sizeof(*t) + (max ? max : 1) * sizeof(t->frames[0]));
    size_t *end = malloc((py->nframes + 1) * sizeof(*end)); /* run j: [end[j-1], end[j]) */
    ssize_t *host = malloc((py->nframes + 1) * sizeof(*host));

    if (!t || !end || !host) {
        free(t);
        free(end);
        free(host);
        return -ENOMEM;
    }
    for (size_t i = 0; i < py->nframes; i++)
        if (py->frames[i].is_entry || i + 1 == py->nframes)
            end[nruns++] = i + 1;
    /* Hosts by the shim frames' place, kept only while they go outwards. */
    ssize_t last = -1;
    for (size_t j = 0; j < nruns; j++) {
        host[j] = frame_holding(native, py->frames[end[j] - 1].entry_at);
        if (host[j] >= 0 && host[j] <= last)
            host[j] = -1;
        if (host[j] >= 0)
            last = host[j];
    }
    /* Then by name, between the hosts found. */
    size_t e = 0;
    for (size_t j = 0; j < nruns; j++) {
        if (host[j] >= 0) {
            e = (size_t)host[j] + 1;
            continue;
        }
        size_t limit = native->nframes;
        for (size_t k = j + 1; k < nruns && limit == native->nframes; k++)
            if (host[k] >= 0)
                limit = (size_t)host[k];
        while (e < limit && !pyframes_is_eval(native->frames[e].func))
            e++;
        if (e < limit)
            host[j] = (ssize_t)e++;
    }
    *t = *native;
    t->nframes = 0;
    for (size_t j = 0; j < nruns;) {
        size_t k = j; /* runs j..k-1 have no host, run k has */
        while (k < nruns && host[k] < 0)
            k++;
        size_t at = k < nruns ? (size_t)host[k] : native->truncated ? native->nframes : pos;
        size_t through = k < nruns ? k : nruns - 1;
        put_native(t, native, pos, at);
        for (; j <= through; j++)
            for (size_t i = j ? end[j - 1] : 0; i < end[j]; i++)
                put_python(t, &py->frames[i]);
        pos = k < nruns ? at + 1 : at; /* past the eval-loop frame run k replaced */
    }
    put_native(t, native, pos, native->nframes);
    t->truncated = native->truncated && py->truncated;
    free(end);
    free(host);
    *ret = t;
    return 0;
}
