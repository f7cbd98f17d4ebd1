/* Python-level stacks of a CPython process, read from outside (see pyframes.h). The target's
 * memory is read with process_vm_readv only; every pointer comes from a process that may be
 * changing under us, so each object read is checked for its type (code, str and bytes objects
 * must point at the interpreter's own PyCode_Type, PyUnicode_Type, PyBytes_Type) and each index
 * for its bounds, and any failed check ends that thread's stack as truncated. */
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
#include "python/pyframes.h"

/* CPython 3.11 layouts, x86-64. Each offset is from the 3.11 headers named and was checked with
 * gdb (`print &((T *)0)->field`) against the debug info Debian 12 ships for its python3.11
 * (python3.11-dbg 3.11.2-6+deb12u9), then by the unit tests on /usr/bin/python3.11.
 * Include/internal/pycore_runtime.h, struct _PyRuntimeState: */
#define RT_INTERP_HEAD 40     /* interpreters.head (after 5 ints, _finalizing, mutex) */
#define RT_TSTATE_CURRENT 576 /* gilstate.tstate_current: the thread holding the GIL */
/* Include/internal/pycore_interp.h, struct _is (PyInterpreterState): */
#define IS_NEXT 0          /* next */
#define IS_THREADS_HEAD 16 /* threads.head (after threads.next_unique_id) */
/* Include/cpython/pystate.h, struct _ts (PyThreadState) and struct _PyCFrame: */
#define TS_NEXT 8        /* next */
#define TS_INTERP 16     /* interp */
#define TS_CFRAME 56     /* cframe */
#define TS_THREAD_ID 152 /* thread_id: pthread_self() of the thread */
#define TS_NATIVE_ID 160 /* native_thread_id: gettid() of the thread */
#define TS_SIZE 168
#define CF_CURRENT_FRAME 8 /* _PyCFrame.current_frame (after uint8_t use_tracing) */
/* Include/internal/pycore_frame.h, struct _PyInterpreterFrame and its owner values: */
#define IF_CODE 32       /* f_code */
#define IF_PREVIOUS 48   /* previous */
#define IF_PREV_INSTR 56 /* prev_instr: _Py_CODEUNIT * into f_code's bytecode */
#define IF_IS_ENTRY 68   /* is_entry: the first frame an eval loop call runs */
#define IF_OWNER 69      /* owner (char, after int stacktop and bool is_entry) */
#define IF_SIZE 72
#define OWNED_BY_GENERATOR 1 /* FRAME_OWNED_BY_THREAD 0, _GENERATOR 1, _FRAME_OBJECT 2 */
#define OWNER_MAX 2
/* Include/object.h PyObject/PyVarObject; Include/cpython/code.h, struct PyCodeObject: */
#define OB_TYPE 8
#define OB_SIZE 16 /* code: its bytecode length in code units */
#define CO_FIRSTLINENO 72
#define CO_FILENAME 112
#define CO_QUALNAME 128
#define CO_LINETABLE 136
#define CO_FIRSTTRACEABLE 168 /* _co_firsttraceable: first instruction tracebacks show */
#define CO_CODE_ADAPTIVE 184  /* the bytecode itself */
#define CO_SIZE 176
#define CODE_UNITS_MAX (1 << 24)
/* Include/cpython/unicodeobject.h: PyASCIIObject (length, state bitfield: interned:2, kind:3,
 * compact:1, ascii:1, ready:1) followed by the data of a compact ASCII string; the data of any
 * other compact string follows PyCompactUnicodeObject. */
#define STR_LENGTH 16
#define STR_STATE 32
#define STR_ASCII_DATA 48
#define STR_COMPACT_DATA 72
/* Include/cpython/bytesobject.h, PyBytesObject: ob_size, then ob_sval. */
#define BYTES_SVAL 32

/* The 3.11 location table (Objects/locations.md), codes in bits 3-6 of an entry's first byte: */
#define LOC_ONE_LINE0 10  /* 10-12: line delta is code - 10 */
#define LOC_NO_COLUMNS 13 /* svarint line delta */
#define LOC_LONG 14       /* svarint line delta, then 3 varints */
#define LOC_NONE 15       /* no line */

#define PID_MAX (1 << 22) /* the kernel's PID_MAX_LIMIT */

enum { SYM_RUNTIME, SYM_VERSION, SYM_CODE, SYM_UNICODE, SYM_BYTES, NSYMS };
static const char *const sym_names[NSYMS] = {
    "_PyRuntime", "Py_Version", "PyCode_Type", "PyUnicode_Type", "PyBytes_Type",
};

/* Code objects met during one pyframes_read, so that threads running the same functions cost
 * one read of each code object rather than six. Entries live for one pass only, and a hit also
 * needs the same name and line table pointers: a code object freed and another allocated at
 * its address within one pass is the same race as any other read of a changing target. */
#define CACHE_SLOTS 1024             /* a power of two; filled at most half */
#define CACHE_TABLE_BYTES (8u << 20) /* line table bytes kept per pass */

struct code_entry {
    uint64_t code; /* 0: a free slot */
    uint64_t filename_at, qualname_at, table_at;
    char *filename, *funcname;
    unsigned char *table;
    size_t table_len;
};

struct pyframes {
    pid_t pid;
    char version[PYFRAMES_VERSION_MAX];
    uint64_t sym[NSYMS];  /* addresses in the target */
    unsigned char *table; /* scratch for line tables */
    size_t table_cap;
    struct code_entry *cache; /* CACHE_SLOTS */
    size_t cache_n, cache_bytes;
};

static int rd(const struct pyframes *p, uint64_t addr, void *buf, size_t len)
{
    struct iovec local = {buf, len};
    struct iovec remote = {(void *)(uintptr_t)addr, len};

    if (addr == 0 || addr + len < addr)
        return -EFAULT;
    ssize_t n = process_vm_readv(p->pid, &local, 1, &remote, 1, 0);
    if (n < 0)
        return -errno;
    return (size_t)n == len ? 0 : -EFAULT;
}

static uint64_t u64_at(const unsigned char *b, size_t off)
{
    uint64_t v;
    memcpy(&v, b + off, sizeof(v));
    return v;
}

static int32_t i32_at(const unsigned char *b, size_t off)
{
    int32_t v;
    memcpy(&v, b + off, sizeof(v));
    return v;
}

static int rd_u64(const struct pyframes *p, uint64_t addr, uint64_t *ret)
{
    unsigned char b[8];
    int r = rd(p, addr, b, sizeof(b));
    if (r == 0)
        *ret = u64_at(b, 0);
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

/* Opens the file behind map m of pid: through map_files (the very file mapped, even deleted or
 * in another mount namespace) or else by its path under the target's root, checked by inode. */
static int open_mapped(pid_t pid, const struct procfs_map *m)
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

    if (lv < 0xF && level[lv] != NULL)
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

/* Tries the file of m (its first mapping) as the interpreter: 0 with p filled in,
 * -ENOENT when it has no _PyRuntime, -EOPNOTSUPP for another version. */
static int try_module(struct pyframes *p, const struct procfs_map *m)
{
    int found[NSYMS] = {0};
    uint64_t hex;
    int fd = open_mapped(p->pid, m);
    if (fd < 0)
        return fd == -ESTALE ? -ENOENT : fd;
    int r = elf_symbols(fd, m->start, m->offset, p->sym, found);
    close(fd);
    if (r < 0)
        return r;
    if (found[SYM_VERSION] && rd_u64(p, p->sym[SYM_VERSION], &hex) == 0) {
        version_from_hex(hex, p->version, sizeof(p->version));
        if ((hex >> 16) != 0x030B)
            return -EOPNOTSUPP;
    } else {
        /* Py_Version exists from 3.11 on: without it this is an older interpreter. */
        if (version_from_name(m->path, p->version, sizeof(p->version)) < 0)
            snprintf(p->version, sizeof(p->version), "unknown");
        return -EOPNOTSUPP;
    }
    if (!found[SYM_CODE] || !found[SYM_UNICODE] || !found[SYM_BYTES])
        return -EOPNOTSUPP;
    return 0;
}

int pyframes_open(pid_t pid, char *version, size_t version_len, struct pyframes **ret)
{
    struct procfs_map *maps = NULL;
    size_t n = 0;
    char exe[PATH_MAX];
    struct pyframes *p = NULL;
    int r;

    if (version && version_len)
        version[0] = '\0';
    if (pid <= 0)
        return -EINVAL;
    p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->pid = pid;
    p->cache = calloc(CACHE_SLOTS, sizeof(*p->cache));
    if (!p->cache) {
        r = -ENOMEM;
        goto out;
    }
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
                r = try_module(p, m);
        }
    }
    if (version && version_len)
        snprintf(version, version_len, "%s", p->version);
    if (r < 0)
        goto out;
    uint64_t head;
    r = rd_u64(p, p->sym[SYM_RUNTIME] + RT_INTERP_HEAD, &head);
    if (r < 0)
        goto out;
    *ret = p;
    p = NULL;
out:
    procfs_maps_free(maps, n);
    pyframes_free(p);
    return r;
}

void pyframes_free(struct pyframes *p)
{
    if (!p)
        return;
    free(p->table);
    free(p->cache);
    free(p);
}

const char *pyframes_version(const struct pyframes *p)
{
    return p->version;
}

/* ---- objects ---- */

static int put_utf8(char *out, size_t cap, size_t *pos, uint32_t c)
{
    unsigned char b[4];
    size_t n;

    if (c >= 0xd800 && c < 0xe000)
        c = '?'; /* a lone surrogate (surrogateescape'd file names) */
    if (c < 0x80) {
        b[0] = (unsigned char)c;
        n = 1;
    } else if (c < 0x800) {
        b[0] = (unsigned char)(0xc0 | (c >> 6));
        b[1] = (unsigned char)(0x80 | (c & 0x3f));
        n = 2;
    } else if (c < 0x10000) {
        b[0] = (unsigned char)(0xe0 | (c >> 12));
        b[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
        b[2] = (unsigned char)(0x80 | (c & 0x3f));
        n = 3;
    } else if (c < 0x110000) {
        b[0] = (unsigned char)(0xf0 | (c >> 18));
        b[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3f));
        b[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
        b[3] = (unsigned char)(0x80 | (c & 0x3f));
        n = 4;
    } else {
        return -EBADMSG;
    }
    if (*pos + n >= cap)
        return -E2BIG;
    memcpy(out + *pos, b, n);
    *pos += n;
    return 0;
}

/* A str object's text as UTF-8, cut at PYFRAMES_STR_MAX. Only compact, ready strings (what
 * code objects hold): anything else is refused rather than guessed at. */
static int read_str(struct pyframes *p, uint64_t addr, char **ret)
{
    unsigned char h[STR_ASCII_DATA];
    uint32_t raw[PYFRAMES_STR_MAX];
    char out[PYFRAMES_STR_MAX];
    size_t pos = 0;
    int r = rd(p, addr, h, sizeof(h));

    if (r < 0)
        return r;
    uint64_t len = u64_at(h, STR_LENGTH);
    uint32_t state = (uint32_t)i32_at(h, STR_STATE);
    unsigned kind = (state >> 2) & 7, compact = (state >> 5) & 1, ascii = (state >> 6) & 1;
    if (u64_at(h, OB_TYPE) != p->sym[SYM_UNICODE] || len > INT64_MAX || !compact ||
        !((state >> 7) & 1) || (kind != 1 && kind != 2 && kind != 4) || (ascii && kind != 1))
        return -EBADMSG;
    size_t n = len < PYFRAMES_STR_MAX - 1 ? (size_t)len : PYFRAMES_STR_MAX - 1;
    if (ascii) {
        r = rd(p, addr + STR_ASCII_DATA, out, n);
        if (r < 0)
            return r;
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)out[i] >= 0x80 || out[i] == '\0')
                return -EBADMSG;
        pos = n;
    } else {
        r = rd(p, addr + STR_COMPACT_DATA, raw, n * kind);
        if (r < 0)
            return r;
        for (size_t i = 0; i < n; i++) {
            const unsigned char *b = (const unsigned char *)raw + i * kind;
            uint32_t c = kind == 1   ? b[0]
                         : kind == 2 ? (uint32_t)(b[0] | b[1] << 8)
                                     : (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                                           (uint32_t)b[3] << 24;
            if (c == 0)
                return -EBADMSG;
            r = put_utf8(out, sizeof(out), &pos, c);
            if (r == -E2BIG)
                break;
            if (r < 0)
                return r;
        }
    }
    out[pos] = '\0';
    *ret = strdup(out);
    return *ret ? 0 : -ENOMEM;
}

static int varint(const unsigned char *t, size_t n, size_t *i, uint32_t *ret)
{
    uint32_t v = 0;
    unsigned shift = 0;

    for (;;) {
        if (*i >= n || shift > 24)
            return -EBADMSG;
        unsigned char b = t[(*i)++];
        v |= (uint32_t)(b & 0x3f) << shift;
        shift += 6;
        if (!(b & 0x40))
            break;
    }
    *ret = v;
    return 0;
}

static int svarint(const unsigned char *t, size_t n, size_t *i, int32_t *ret)
{
    uint32_t u;
    int r = varint(t, n, i, &u);
    if (r == 0)
        *ret = (u & 1) ? -(int32_t)(u >> 1) : (int32_t)(u >> 1);
    return r;
}

/* The line of code unit lasti from a 3.11 location table, as PyCode_Addr2Line computes it:
 * 0 for an instruction without a line. -EBADMSG when the table does not cover lasti. */
static int table_line(const unsigned char *t, size_t n, int firstlineno, int64_t lasti, int *ret)
{
    int64_t addr = 0, line = firstlineno;
    size_t i = 0;

    while (i < n) {
        unsigned char b = t[i++];
        unsigned code = (b >> 3) & 15;
        int64_t units = (b & 7) + 1;
        int32_t d = 0;
        uint32_t skip;

        if (!(b & 0x80))
            return -EBADMSG;
        if (code == LOC_LONG) {
            if (svarint(t, n, &i, &d) || varint(t, n, &i, &skip) || varint(t, n, &i, &skip) ||
                varint(t, n, &i, &skip))
                return -EBADMSG;
        } else if (code == LOC_NO_COLUMNS) {
            if (svarint(t, n, &i, &d))
                return -EBADMSG;
        } else if (code >= LOC_ONE_LINE0 && code < LOC_NO_COLUMNS) {
            d = (int32_t)(code - LOC_ONE_LINE0);
            i += 2;
        } else if (code < LOC_ONE_LINE0) {
            i += 1;
        }
        if (i > n)
            return -EBADMSG;
        line += d;
        if (lasti < addr + units) {
            *ret = code == LOC_NONE || line <= 0 || line > INT_MAX ? 0 : (int)line;
            return 0;
        }
        addr += units;
    }
    return -EBADMSG;
}

/* The bytes of the line table object at addr, into p->table. */
static int read_table(struct pyframes *p, uint64_t addr, size_t *ret_n)
{
    unsigned char h[BYTES_SVAL];
    int r = rd(p, addr, h, sizeof(h));

    if (r < 0)
        return r;
    uint64_t n = u64_at(h, OB_SIZE);
    if (u64_at(h, OB_TYPE) != p->sym[SYM_BYTES] || n > PYFRAMES_LINETABLE_MAX)
        return -EBADMSG;
    if (n > p->table_cap) {
        unsigned char *t = realloc(p->table, n);
        if (!t)
            return -ENOMEM;
        p->table = t;
        p->table_cap = n;
    }
    r = rd(p, addr + BYTES_SVAL, p->table, n);
    if (r == 0)
        *ret_n = n;
    return r;
}

/* The slot of code: its entry, or the free slot where it would go (NULL when the cache is
 * full). */
static struct code_entry *cache_slot(struct pyframes *p, uint64_t code)
{
    size_t i = (size_t)((code >> 4) * 0x9e3779b97f4a7c15ull >> 54) & (CACHE_SLOTS - 1);

    while (p->cache[i].code && p->cache[i].code != code)
        i = (i + 1) & (CACHE_SLOTS - 1);
    return p->cache[i].code || p->cache_n < CACHE_SLOTS / 2 ? &p->cache[i] : NULL;
}

static void cache_put(struct pyframes *p, struct code_entry *e, const struct code_entry *from,
                      size_t table_len)
{
    if (p->cache_bytes + table_len > CACHE_TABLE_BYTES)
        return;
    *e = *from;
    e->filename = strdup(from->filename);
    e->funcname = strdup(from->funcname);
    e->table = malloc(table_len ? table_len : 1);
    if (!e->filename || !e->funcname || !e->table) {
        free(e->filename);
        free(e->funcname);
        free(e->table);
        memset(e, 0, sizeof(*e));
        return;
    }
    memcpy(e->table, p->table, table_len);
    e->table_len = table_len;
    p->cache_n++;
    p->cache_bytes += table_len;
}

static void cache_clear(struct pyframes *p)
{
    for (size_t i = 0; p->cache_n && i < CACHE_SLOTS; i++) {
        if (p->cache[i].code) {
            free(p->cache[i].filename);
            free(p->cache[i].funcname);
            free(p->cache[i].table);
            memset(&p->cache[i], 0, sizeof(p->cache[i]));
            p->cache_n--;
        }
    }
    p->cache_bytes = 0;
}

/* ---- threads and frames ---- */

static void frame_clear(struct pyframes_frame *f)
{
    free(f->filename);
    free(f->funcname);
}

/* One _PyInterpreterFrame at addr. *ret_skip is set for a frame that has not reached its first
 * traceable instruction (_PyFrame_IsIncomplete): CPython hides those from tracebacks too. */
static int read_frame(struct pyframes *p, uint64_t addr, struct pyframes_frame *f,
                      uint64_t *ret_previous, bool *ret_skip)
{
    unsigned char fr[IF_SIZE], co[CO_SIZE];
    int r = rd(p, addr, fr, sizeof(fr));

    if (r < 0)
        return r;
    uint64_t code = u64_at(fr, IF_CODE), instr = u64_at(fr, IF_PREV_INSTR);
    unsigned owner = fr[IF_OWNER];
    if (owner > OWNER_MAX)
        return -EBADMSG;
    r = rd(p, code, co, sizeof(co));
    if (r < 0)
        return r;
    uint64_t units = u64_at(co, OB_SIZE), start = code + CO_CODE_ADAPTIVE;
    if (u64_at(co, OB_TYPE) != p->sym[SYM_CODE] || units == 0 || units > CODE_UNITS_MAX ||
        instr + 2 < start || instr >= start + units * 2 || (instr - start) % 2)
        return -EBADMSG;
    int64_t lasti = (int64_t)(instr + 2 - start) / 2 - 1;
    int firstlineno = i32_at(co, CO_FIRSTLINENO);
    if (firstlineno < 0)
        return -EBADMSG;
    *ret_previous = u64_at(fr, IF_PREVIOUS);
    *ret_skip = owner != OWNED_BY_GENERATOR && lasti < i32_at(co, CO_FIRSTTRACEABLE);
    if (*ret_skip)
        return 0;
    f->firstlineno = firstlineno;
    f->is_entry = fr[IF_IS_ENTRY] != 0;
    struct code_entry want = {
        .code = code,
        .filename_at = u64_at(co, CO_FILENAME),
        .qualname_at = u64_at(co, CO_QUALNAME),
        .table_at = u64_at(co, CO_LINETABLE),
    };
    struct code_entry *e = cache_slot(p, code);
    const unsigned char *table;
    size_t table_len = 0;
    if (e && e->code == code && e->filename_at == want.filename_at &&
        e->qualname_at == want.qualname_at && e->table_at == want.table_at) {
        f->filename = strdup(e->filename);
        f->funcname = strdup(e->funcname);
        table = e->table;
        table_len = e->table_len;
        r = f->filename && f->funcname ? 0 : -ENOMEM;
    } else {
        r = read_table(p, want.table_at, &table_len);
        table = p->table;
        if (r == 0)
            r = read_str(p, want.filename_at, &f->filename);
        if (r == 0)
            r = read_str(p, want.qualname_at, &f->funcname);
        if (r == 0 && e && e->code == 0) {
            want.filename = f->filename;
            want.funcname = f->funcname;
            cache_put(p, e, &want, table_len);
        }
    }
    if (r == 0 && lasti < 0)
        f->line = firstlineno; /* not started yet: PyCode_Addr2Line's answer */
    else if (r == 0)
        r = table_line(table, table_len, firstlineno, lasti, &f->line);
    if (r < 0) {
        frame_clear(f);
        memset(f, 0, sizeof(*f));
    }
    return r;
}

/* The frames of the thread whose current frame is addr, into t. Only allocation failure is an
 * error; anything unreadable ends the stack as truncated. */
static int read_frames(struct pyframes *p, uint64_t addr, struct pyframes_thread *t)
{
    size_t cap = 0;

    for (unsigned steps = 0; addr; steps++) {
        struct pyframes_frame f = {0};
        bool skip;

        if (steps == PYFRAMES_MAX_FRAMES || t->nframes == PYFRAMES_MAX_FRAMES) {
            t->truncated = true;
            break;
        }
        int r = read_frame(p, addr, &f, &addr, &skip);
        if (r == -ENOMEM)
            return r;
        if (r < 0) {
            t->truncated = true;
            break;
        }
        if (skip)
            continue;
        if (t->nframes == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            struct pyframes_frame *nf = realloc(t->frames, ncap * sizeof(*nf));
            if (!nf) {
                frame_clear(&f);
                return -ENOMEM;
            }
            t->frames = nf;
            cap = ncap;
        }
        t->frames[t->nframes++] = f;
    }
    return 0;
}

void pyframes_thread_clear(struct pyframes_thread *t)
{
    for (size_t j = 0; j < t->nframes; j++)
        frame_clear(&t->frames[j]);
    free(t->frames);
    t->frames = NULL;
    t->nframes = 0;
}

void pyframes_threads_free(struct pyframes_thread *threads, size_t n)
{
    if (!threads)
        return;
    for (size_t i = 0; i < n; i++)
        pyframes_thread_clear(&threads[i]);
    free(threads);
}

/* The thread state at ts of interpreter interp, into t; -EBADMSG when it is not one (any
 * more). *ret_next gets the next thread state. */
/* One thread state; with only != 0, a thread with another tid is skipped (returns 1, with
 * *ret_next set and t untouched). */
static int read_thread(struct pyframes *p, uint64_t ts, uint64_t interp, uint64_t gil, pid_t only,
                       struct pyframes_thread *t, uint64_t *ret_next)
{
    unsigned char b[TS_SIZE];
    uint64_t frame = 0;
    int r = rd(p, ts, b, sizeof(b));

    if (r < 0)
        return r;
    uint64_t native = u64_at(b, TS_NATIVE_ID), cframe = u64_at(b, TS_CFRAME);
    if (u64_at(b, TS_INTERP) != interp || native == 0 || native >= PID_MAX)
        return -EBADMSG;
    if (only && (pid_t)native != only) {
        *ret_next = u64_at(b, TS_NEXT);
        return 1;
    }
    memset(t, 0, sizeof(*t));
    t->tid = (pid_t)native;
    t->pthread_id = u64_at(b, TS_THREAD_ID);
    t->holds_gil = gil == ts;
    *ret_next = u64_at(b, TS_NEXT);
    if (cframe && rd_u64(p, cframe + CF_CURRENT_FRAME, &frame) < 0) {
        t->truncated = true;
        return 0;
    }
    return read_frames(p, frame, t);
}

int pyframes_read(struct pyframes *p, struct pyframes_thread **ret, size_t *ret_n)
{
    struct pyframes_thread *ts = NULL;
    size_t n = 0, cap = 0;
    uint64_t interp = 0, gil = 0;
    int r = rd_u64(p, p->sym[SYM_RUNTIME] + RT_INTERP_HEAD, &interp);

    if (r == 0)
        r = rd_u64(p, p->sym[SYM_RUNTIME] + RT_TSTATE_CURRENT, &gil);
    if (r < 0)
        goto out;
    for (unsigned ni = 0; interp && ni < PYFRAMES_MAX_INTERPS && n < PYFRAMES_MAX_THREADS; ni++) {
        uint64_t next_interp = 0, tstate = 0;
        if (rd_u64(p, interp + IS_NEXT, &next_interp) < 0 ||
            rd_u64(p, interp + IS_THREADS_HEAD, &tstate) < 0)
            break;
        while (tstate && n < PYFRAMES_MAX_THREADS) {
            if (n == cap) {
                size_t ncap = cap ? cap * 2 : 16;
                struct pyframes_thread *nt = realloc(ts, ncap * sizeof(*nt));
                if (!nt) {
                    r = -ENOMEM;
                    goto out;
                }
                ts = nt;
                cap = ncap;
            }
            r = read_thread(p, tstate, interp, gil, 0, &ts[n], &tstate);
            if (r == -ENOMEM) {
                n++; /* its frames so far are freed with the rest */
                goto out;
            }
            if (r < 0)
                break; /* not a thread state of this interpreter: list changed */
            n++;
        }
        interp = next_interp;
    }
    r = 0;
    *ret = ts;
    *ret_n = n;
    ts = NULL;
out:
    cache_clear(p);
    if (ts)
        pyframes_threads_free(ts, n);
    return r;
}

int pyframes_read_tid(struct pyframes *p, pid_t tid, struct pyframes_thread *ret)
{
    struct pyframes_thread t;
    uint64_t interp = 0, gil = 0;
    unsigned seen = 0;
    int r = rd_u64(p, p->sym[SYM_RUNTIME] + RT_INTERP_HEAD, &interp);

    if (tid <= 0)
        return -EINVAL;
    if (r == 0)
        r = rd_u64(p, p->sym[SYM_RUNTIME] + RT_TSTATE_CURRENT, &gil);
    for (unsigned ni = 0; r == 0 && interp && ni < PYFRAMES_MAX_INTERPS; ni++) {
        uint64_t next_interp = 0, tstate = 0;
        if (rd_u64(p, interp + IS_NEXT, &next_interp) < 0 ||
            rd_u64(p, interp + IS_THREADS_HEAD, &tstate) < 0)
            break;
        while (tstate && seen++ < PYFRAMES_MAX_THREADS) {
            r = read_thread(p, tstate, interp, gil, tid, &t, &tstate);
            if (r == 0) {
                *ret = t;
                goto out;
            }
            if (r == -ENOMEM) {
                pyframes_thread_clear(&t); /* read_thread had set it up */
                goto out;
            }
            if (r < 0)
                break;
        }
        r = 0;
        interp = next_interp;
    }
    r = r < 0 ? r : -ENOENT;
out:
    cache_clear(p);
    return r;
}

int pyframes_format_frame(const struct pyframes_frame *f, char *buf, size_t len)
{
    int n = snprintf(buf, len, "  File \"%s\", line %d, in %s", f->filename, f->line, f->funcname);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* Python 3.11 runs nested Python calls inside one _PyEval_EvalFrameDefault call; each call of it
 * starts at an entry frame. So, going outwards, the Python frames up to and including the next
 * entry frame replace the next native _PyEval_EvalFrameDefault frame. */
int pyframes_merge(const struct stacks_thread *native, const struct pyframes_thread *py,
                   struct stacks_thread **ret)
{
    size_t max = native->nframes + py->nframes, n = 0, pi = 0;
    struct stacks_thread *t = malloc(sizeof(*t) + (max ? max : 1) * sizeof(t->frames[0]));

    if (!t)
        return -ENOMEM;
    *t = *native;
    for (size_t i = 0; i < native->nframes; i++) {
        const struct stacks_frame *nf = &native->frames[i];
        if (!nf->func || strcmp(nf->func, PYFRAMES_EVAL_FUNC) || pi == py->nframes) {
            t->frames[n++] = *nf;
            continue;
        }
        bool entry;
        do {
            const struct pyframes_frame *pf = &py->frames[pi++];
            t->frames[n++] = (struct stacks_frame){.file = pf->filename,
                                                   .func = pf->funcname,
                                                   .line = pf->line,
                                                   .func_line = pf->firstlineno,
                                                   .python = true};
            entry = pf->is_entry;
        } while (!entry && pi < py->nframes);
    }
    /* The native stack ended early: the rest of the Python stack is further out. */
    while (pi < py->nframes) {
        const struct pyframes_frame *pf = &py->frames[pi++];
        t->frames[n++] = (struct stacks_frame){.file = pf->filename,
                                               .func = pf->funcname,
                                               .line = pf->line,
                                               .func_line = pf->firstlineno,
                                               .python = true};
    }
    t->nframes = n;
    t->truncated = native->truncated && py->truncated;
    *ret = t;
    return 0;
}
