/* ELF files for unwinding and symbolization (see symbols.h). The file is mapped privately and
 * read through libelf; symbol names and DWARF strings point into that mapping or into libdw's
 * data, and names made for functions without a symbol are kept in a table of the file, so all
 * live exactly as long as the struct symfile. Symbols and DWARF are loaded on first use: most
 * mapped files only ever serve unwind tables. Function boundaries of stripped code come from the
 * .eh_frame FDEs (a small reader of their first fields, not a CFI interpreter: libunwind is). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <gelf.h>
#include <dwarf.h>
#include <elfutils/libdw.h>
#include "os/cachestat.h"
#include "unwind/symbols.h"

#define MAX_LOADS 64
#define BUILD_ID_MAX 64
#define PAGE_MASK_4K 0xfffull
#define LABEL_MAX 128    /* module name kept for made names; longer ones are cut */
#define FDE_HEAD_MAX 64  /* bytes of an FDE read: length, CIE pointer, pc_begin, pc_range */
#define CIE_HEAD_MAX 256 /* bytes of a CIE read: up to its augmentation data */
#define AUG_MAX 8        /* augmentation string characters understood ("zPLRSB" and the like) */

struct load {
    uint64_t vaddr, offset, filesz, memsz;
};

struct sym {
    uint64_t addr, size;
    const char *name;
    int func_line; /* 0 not looked up yet, -1 unknown */
};

struct symfile {
    unsigned char *image;
    size_t len;
    int mapped; /* image is an mmap (else malloc'd) */
    Elf *elf;
    struct load loads[MAX_LOADS];
    size_t nloads;
    uint64_t lo, hi;
    uint64_t eh_vaddr, eh_filesz;
    int has_eh;
    char *root, *path; /* for finding debug files; path NULL for images */
    unsigned char build_id[BUILD_ID_MAX];
    size_t build_id_len;

    int debug_tried;
    int dbg_fd;
    Elf *dbg_elf;

    int syms_loaded;
    struct sym *syms;
    size_t nsyms;

    int dwarf_tried;
    Dwarf *dw;

    char label[LABEL_MAX]; /* the module's name in made names: "liblzma.so.5" */
    int eh_state;          /* 0 not looked up, 1 found, <0 none */
    uint64_t eh_hdr, eh_table, eh_count;
    struct sym *made; /* open-addressed by addr, name NULL when free; names malloc'd */
    size_t made_cap, nmade, made_bytes;
};

CACHESTAT_DEFINE(symbols_stat, "symbols", 0)
static atomic_ulong symbols_loaded_count;

static int parse_headers(struct symfile *f)
{
    GElf_Ehdr eh;
    size_t nph;
    if (elf_kind(f->elf) != ELF_K_ELF || !gelf_getehdr(f->elf, &eh) ||
        gelf_getclass(f->elf) != ELFCLASS64 || elf_getphdrnum(f->elf, &nph) != 0)
        return -ENOEXEC;
    f->lo = UINT64_MAX;
    f->hi = 0;
    for (size_t i = 0; i < nph; i++) {
        GElf_Phdr ph;
        if (!gelf_getphdr(f->elf, (int)i, &ph))
            return -ENOEXEC;
        if (ph.p_type == PT_LOAD && f->nloads < MAX_LOADS) {
            if (ph.p_vaddr + ph.p_memsz < ph.p_vaddr || ph.p_offset + ph.p_filesz < ph.p_offset)
                return -ENOEXEC;
            f->loads[f->nloads++] = (struct load){ph.p_vaddr, ph.p_offset, ph.p_filesz, ph.p_memsz};
            if (ph.p_vaddr < f->lo)
                f->lo = ph.p_vaddr;
            if (ph.p_vaddr + ph.p_memsz > f->hi)
                f->hi = ph.p_vaddr + ph.p_memsz;
        } else if (ph.p_type == PT_GNU_EH_FRAME) {
            f->eh_vaddr = ph.p_vaddr;
            f->eh_filesz = ph.p_filesz;
            f->has_eh = 1;
        }
    }
    if (f->nloads == 0)
        return -ENOEXEC;
    return 0;
}

static void read_build_id(Elf *elf, unsigned char *out, size_t *out_len)
{
    Elf_Scn *scn = NULL;
    *out_len = 0;
    while ((scn = elf_nextscn(elf, scn))) {
        GElf_Shdr sh;
        if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_NOTE)
            continue;
        Elf_Data *d = elf_getdata(scn, NULL);
        if (!d)
            continue;
        size_t off = 0, name_off, desc_off;
        GElf_Nhdr nh;
        while ((off = gelf_getnote(d, off, &nh, &name_off, &desc_off)) > 0) {
            if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 &&
                memcmp((char *)d->d_buf + name_off, "GNU", 4) == 0 && nh.n_descsz > 0 &&
                nh.n_descsz <= BUILD_ID_MAX) {
                memcpy(out, (char *)d->d_buf + desc_off, nh.n_descsz);
                *out_len = nh.n_descsz;
                return;
            }
        }
    }
}

/* The basename of path, less the " (deleted)" that maps adds to a replaced file's name. */
static void set_label(struct symfile *f, const char *path)
{
    static const char deleted[] = " (deleted)";
    const size_t dl = sizeof(deleted) - 1;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t n = strlen(base);
    if (n >= dl && strcmp(base + n - dl, deleted) == 0)
        n -= dl;
    if (n >= sizeof(f->label))
        n = sizeof(f->label) - 1;
    memcpy(f->label, base, n);
    f->label[n] = '\0';
}

void symfile_set_module_name(struct symfile *f, const char *module_path)
{
    set_label(f, module_path);
}

static int symfile_init(struct symfile *f)
{
    elf_version(EV_CURRENT);
    f->dbg_fd = -1;
    f->elf = elf_memory((char *)f->image, f->len);
    if (!f->elf)
        return -ENOEXEC;
    int r = parse_headers(f);
    if (r < 0)
        return r;
    read_build_id(f->elf, f->build_id, &f->build_id_len);
    return 0;
}

/* Opens path read-only when it is a regular file, and the file dev/ino unless ino is 0: the fd,
 * or -ESTALE (another file has the name), -ENOEXEC (not a regular file), an open/stat error.
 * Every name here comes from the target (its maps, its root, its .gnu_debuglink): a FIFO put
 * under one would block open() for good and a device may act on being opened, so the type is
 * checked before opening, O_NONBLOCK covers a swap in between, and the file opened is checked. */
static int open_regular(const char *path, dev_t dev, ino_t ino, struct stat *ret_st)
{
    struct stat st;
    int fd;

    if (stat(path, &st) < 0)
        return -errno;
    if (ino && (st.st_ino != ino || st.st_dev != dev))
        return -ESTALE;
    if (!S_ISREG(st.st_mode))
        return -ENOEXEC;
    fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fstat(fd, ret_st) < 0 || !S_ISREG(ret_st->st_mode) ||
        (ino && (ret_st->st_ino != ino || ret_st->st_dev != dev))) {
        close(fd);
        return -ESTALE;
    }
    return fd;
}

int symfile_open(const char *root, const char *path, dev_t dev, ino_t ino, struct symfile **ret)
{
    int r, fd = -1;
    struct symfile *f = NULL;
    char full[PATH_MAX];
    struct stat st;

    if ((size_t)snprintf(full, sizeof(full), "%s%s", root, path) >= sizeof(full))
        return -ENAMETOOLONG;
    fd = open_regular(full, dev, ino, &st);
    if (fd < 0) {
        r = fd;
        goto out;
    }
    if ((uint64_t)st.st_size > SYMBOLS_FILE_MAX) {
        r = -EFBIG;
        goto out;
    }
    if (st.st_size < (off_t)sizeof(Elf64_Ehdr)) {
        r = -ENOEXEC;
        goto out;
    }
    f = calloc(1, sizeof(*f));
    if (!f) {
        r = -ENOMEM;
        goto out;
    }
    f->len = (size_t)st.st_size;
    /* Private and writable only because libelf's elf_memory wants a char *; never written. */
    void *p = mmap(NULL, f->len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
        r = -errno;
        goto out;
    }
    f->image = p;
    f->mapped = 1;
    f->root = strdup(root);
    f->path = strdup(path);
    if (!f->root || !f->path) {
        r = -ENOMEM;
        goto out;
    }
    set_label(f, path);
    r = symfile_init(f);
    if (r < 0)
        goto out;
    *ret = f;
    f = NULL;
out:
    if (fd >= 0)
        close(fd);
    symfile_free(f);
    return r;
}

int symfile_from_image(unsigned char *image, size_t len, struct symfile **ret)
{
    struct symfile *f = calloc(1, sizeof(*f));
    if (!f) {
        free(image);
        return -ENOMEM;
    }
    f->image = image;
    f->len = len;
    set_label(f, "[vdso]");
    int r = symfile_init(f);
    if (r < 0) {
        symfile_free(f);
        return r;
    }
    *ret = f;
    return 0;
}

void symfile_free(struct symfile *f)
{
    if (!f)
        return;
    if (f->syms_loaded) {
        atomic_fetch_sub(&symbols_loaded_count, 1);
        cachestat_size(&symbols_stat, atomic_load(&symbols_loaded_count));
    }
    if (f->dw)
        dwarf_end(f->dw);
    if (f->dbg_elf)
        elf_end(f->dbg_elf);
    if (f->dbg_fd >= 0)
        close(f->dbg_fd);
    if (f->elf)
        elf_end(f->elf);
    if (f->mapped)
        munmap(f->image, f->len);
    else
        free(f->image);
    free(f->syms);
    for (size_t i = 0; i < f->made_cap; i++)
        free((char *)f->made[i].name);
    free(f->made);
    free(f->root);
    free(f->path);
    free(f);
}

int symfile_bias(const struct symfile *f, uint64_t map_start, uint64_t map_offset,
                 uint64_t *ret_bias)
{
    for (size_t i = 0; i < f->nloads; i++) {
        const struct load *l = &f->loads[i];
        if (map_offset >= (l->offset & ~PAGE_MASK_4K) && map_offset < l->offset + l->filesz) {
            /* The mapping's first byte is file offset map_offset, i.e. virtual address
             * vaddr + (map_offset - offset) before relocation. */
            *ret_bias = map_start - (l->vaddr + map_offset - l->offset);
            return 0;
        }
    }
    return -ENOENT;
}

void symfile_span(const struct symfile *f, uint64_t *lo, uint64_t *hi)
{
    *lo = f->lo;
    *hi = f->hi;
}

const unsigned char *symfile_data(const struct symfile *f, uint64_t vaddr, size_t len)
{
    for (size_t i = 0; i < f->nloads; i++) {
        const struct load *l = &f->loads[i];
        if (vaddr < l->vaddr || vaddr - l->vaddr >= l->filesz)
            continue;
        uint64_t rel = vaddr - l->vaddr;
        if (len > l->filesz - rel)
            return NULL;
        uint64_t off = l->offset + rel;
        if (off > f->len || len > f->len - off)
            return NULL;
        return f->image + off;
    }
    return NULL;
}

int symfile_eh_table(struct symfile *f, uint64_t *ret_hdr_vaddr, uint64_t *ret_table_vaddr,
                     uint64_t *ret_count)
{
    /* version 1, eh_frame_ptr pcrel|sdata4, fde_count udata4, table datarel|sdata4: what every
     * linker writes; anything else is treated as no table. */
    static const unsigned char want[4] = {1, 0x1b, 0x03, 0x3b};
    if (!f->has_eh || f->eh_filesz < 12)
        return -ENOENT;
    const unsigned char *h = symfile_data(f, f->eh_vaddr, 12);
    if (!h || memcmp(h, want, 4) != 0)
        return -ENOENT;
    uint32_t count;
    memcpy(&count, h + 8, 4);
    if (count == 0 || (uint64_t)count * 8 > f->eh_filesz - 12)
        return -ENOENT;
    *ret_hdr_vaddr = f->eh_vaddr;
    *ret_table_vaddr = f->eh_vaddr + 12;
    *ret_count = count;
    return 0;
}

/* Opens root+candidate as the debug file if it exists and, when we know our build-id, has it. */
static int try_debug_file(struct symfile *f, const char *root, const char *candidate)
{
    char full[PATH_MAX];
    struct stat st;
    if ((size_t)snprintf(full, sizeof(full), "%s%s", root, candidate) >= sizeof(full))
        return -ENAMETOOLONG;
    int fd = open_regular(full, 0, 0, &st);
    if (fd < 0)
        return fd;
    Elf *e = elf_begin(fd, ELF_C_READ_MMAP, NULL);
    unsigned char id[BUILD_ID_MAX];
    size_t idlen = 0;
    if (e && elf_kind(e) == ELF_K_ELF)
        read_build_id(e, id, &idlen);
    if (!e || elf_kind(e) != ELF_K_ELF ||
        (f->build_id_len && (idlen != f->build_id_len || memcmp(id, f->build_id, idlen)))) {
        if (e)
            elf_end(e);
        close(fd);
        return -ENOENT;
    }
    f->dbg_elf = e;
    f->dbg_fd = fd;
    return 0;
}

/* The debuginfod client's downloads (elfutils' debuginfod-client.c lays them out so), where the
 * agent's own environment has them: $DEBUGINFOD_CACHE_PATH, then $XDG_CACHE_HOME's or ~/.cache's
 * debuginfod_client, each BUILDID/debuginfo. Our caches only: the target's root has no say. */
static int try_debuginfod(struct symfile *f, const char *hex)
{
    static const char *const fmts[3] = {"%s/%s/debuginfo", "%s/debuginfod_client/%s/debuginfo",
                                        "%s/.cache/debuginfod_client/%s/debuginfo"};
    const char *dirs[3] = {getenv("DEBUGINFOD_CACHE_PATH"), getenv("XDG_CACHE_HOME"), NULL};
    char cand[PATH_MAX];

    if (!dirs[1] || !*dirs[1])
        dirs[2] = getenv("HOME");
    for (int i = 0; i < 3; i++) {
        if (!dirs[i] || !*dirs[i] ||
            (size_t)snprintf(cand, sizeof(cand), fmts[i], dirs[i], hex) >= sizeof(cand))
            continue;
        if (try_debug_file(f, "", cand) == 0)
            return 0;
    }
    return -ENOENT;
}

static void find_debug_file(struct symfile *f)
{
    char cand[PATH_MAX];
    const char *roots[2] = {f->root, ""};
    f->debug_tried = 1;
    if (!f->path)
        return;
    if (f->build_id_len >= 2) {
        char hex[2 * BUILD_ID_MAX + 1];
        for (size_t i = 0; i < f->build_id_len; i++)
            snprintf(hex + 2 * i, 3, "%02x", f->build_id[i]);
        snprintf(cand, sizeof(cand), "/usr/lib/debug/.build-id/%.2s/%s.debug", hex, hex + 2);
        for (int i = 0; i < 2; i++)
            if (try_debug_file(f, roots[i], cand) == 0)
                return;
        if (try_debuginfod(f, hex) == 0)
            return;
    }
    size_t shstrndx;
    if (elf_getshdrstrndx(f->elf, &shstrndx) != 0)
        return;
    Elf_Scn *scn = NULL;
    while ((scn = elf_nextscn(f->elf, scn))) {
        GElf_Shdr sh;
        const char *n;
        if (!gelf_getshdr(scn, &sh) || !(n = elf_strptr(f->elf, shstrndx, sh.sh_name)) ||
            strcmp(n, ".gnu_debuglink") != 0)
            continue;
        Elf_Data *d = elf_getdata(scn, NULL);
        if (!d || d->d_size == 0 || !memchr(d->d_buf, 0, d->d_size))
            return;
        const char *link = d->d_buf;
        /* A file name, as gdb reads it: with a '/' (say "../../dev/watchdog") the target's file
         * would have us open any path, in its root and then in ours. */
        if (!*link || strchr(link, '/'))
            return;
        const char *slash = strrchr(f->path, '/');
        int dirlen = slash ? (int)(slash - f->path) : 0;
        const char *fmts[3] = {"%.*s/%s", "%.*s/.debug/%s", "/usr/lib/debug%.*s/%s"};
        for (int k = 0; k < 3; k++) {
            if ((size_t)snprintf(cand, sizeof(cand), fmts[k], dirlen, f->path, link) >=
                sizeof(cand))
                continue;
            if (strcmp(cand, f->path) == 0)
                continue;
            for (int i = 0; i < 2; i++)
                if (try_debug_file(f, roots[i], cand) == 0)
                    return;
        }
        return;
    }
}

static int add_syms(struct symfile *f, Elf *elf, Elf64_Word type, size_t *cap)
{
    Elf_Scn *scn = NULL;
    int found = 0;
    while ((scn = elf_nextscn(elf, scn))) {
        GElf_Shdr sh;
        if (!gelf_getshdr(scn, &sh) || sh.sh_type != type || sh.sh_entsize == 0)
            continue;
        Elf_Data *d = elf_getdata(scn, NULL);
        if (!d)
            continue;
        found = 1;
        size_t n = d->d_size / sh.sh_entsize;
        for (size_t i = 0; i < n && f->nsyms < SYMBOLS_MAX_SYMS; i++) {
            GElf_Sym s;
            if (!gelf_getsym(d, (int)i, &s))
                break;
            int t = GELF_ST_TYPE(s.st_info);
            if ((t != STT_FUNC && t != STT_GNU_IFUNC) || s.st_shndx == SHN_UNDEF || !s.st_value)
                continue;
            const char *name = elf_strptr(elf, sh.sh_link, s.st_name);
            if (!name || !*name)
                continue;
            if (f->nsyms == *cap) {
                size_t nc = *cap ? *cap * 2 : 1024;
                struct sym *ns = realloc(f->syms, nc * sizeof(*ns));
                if (!ns)
                    return -ENOMEM;
                f->syms = ns;
                *cap = nc;
            }
            f->syms[f->nsyms++] = (struct sym){s.st_value, s.st_size, name, 0};
        }
    }
    return found;
}

static int cmp_sym(const void *a, const void *b)
{
    const struct sym *x = a, *y = b;
    if (x->addr != y->addr)
        return x->addr < y->addr ? -1 : 1;
    /* Sized before unsized, so a lookup at a shared address finds the informative one. */
    return (x->size == 0) - (y->size == 0);
}

static void load_symbols(struct symfile *f)
{
    size_t cap = 0;
    f->syms_loaded = 1;
    atomic_fetch_add(&symbols_loaded_count, 1);
    cachestat_size(&symbols_stat, atomic_load(&symbols_loaded_count));
    if (!f->debug_tried)
        find_debug_file(f);
    int r = add_syms(f, f->elf, SHT_SYMTAB, &cap);
    if (r == 0 && f->dbg_elf)
        r = add_syms(f, f->dbg_elf, SHT_SYMTAB, &cap);
    if (r >= 0)
        r = add_syms(f, f->elf, SHT_DYNSYM, &cap);
    if (r < 0) {
        free(f->syms);
        f->syms = NULL;
        f->nsyms = 0;
        return;
    }
    /* A file without function symbols (a stripped executable) has no array: qsort(NULL) is UB. */
    if (f->nsyms)
        qsort(f->syms, f->nsyms, sizeof(*f->syms), cmp_sym);
}

/* A reader over bytes of the file at a virtual address: every read checks it stays inside. */
struct cursor {
    const unsigned char *p, *end;
    uint64_t vaddr; /* of p, for pc-relative pointers */
};

static int cur_bytes(struct cursor *c, void *out, size_t n)
{
    if ((size_t)(c->end - c->p) < n)
        return -1;
    memcpy(out, c->p, n);
    c->p += n;
    c->vaddr += n;
    return 0;
}

/* Reads a ULEB128; an SLEB128 is skipped the same way. */
static int cur_uleb(struct cursor *c, uint64_t *ret)
{
    uint64_t v = 0;
    for (unsigned shift = 0; c->p < c->end; shift += 7) {
        unsigned char b = *c->p++;
        c->vaddr++;
        if (shift < 64)
            v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *ret = v;
            return 0;
        }
    }
    return -1;
}

/* A DW_EH_PE_* encoded pointer; pc-relative ones resolved when apply is set. The encodings
 * linkers and compilers write for FDE addresses on x86-64 (pcrel or absolute, fixed size);
 * textrel, datarel, funcrel, aligned, indirect and sleb128 are refused. */
static int cur_pointer(struct cursor *c, unsigned char enc, int apply, uint64_t *ret)
{
    uint64_t at = c->vaddr, v = 0;
    unsigned char b[8];
    size_t size;

    switch (enc & 0x0f) {
    case 0x01: /* uleb128 */
        if (cur_uleb(c, &v) < 0)
            return -1;
        size = 0;
        break;
    case 0x00: /* absptr */
    case 0x04: /* udata8 */
    case 0x0c: /* sdata8 */
        size = 8;
        break;
    case 0x02: /* udata2 */
    case 0x0a: /* sdata2 */
        size = 2;
        break;
    case 0x03: /* udata4 */
    case 0x0b: /* sdata4 */
        size = 4;
        break;
    default:
        return -1;
    }
    if (size) {
        if (cur_bytes(c, b, size) < 0)
            return -1;
        for (size_t i = size; i-- > 0;)
            v = v << 8 | b[i];
        if ((enc & 0x08) && size < 8 && (v >> (8 * size - 1)) & 1)
            v |= ~0ull << (8 * size); /* sign-extended */
    }
    if (apply) {
        if (enc & 0x80)
            return -1;
        if ((enc & 0x70) == 0x10)
            v += at;
        else if (enc & 0x70)
            return -1;
    }
    *ret = v;
    return 0;
}

/* A cursor on the .eh_frame record (CIE or FDE) at vaddr, past its length, over at most max of
 * its bytes. 64-bit records and the terminator are refused: no x86-64 toolchain writes the
 * former into .eh_frame. */
static int cur_record(const struct symfile *f, uint64_t vaddr, size_t max, struct cursor *c)
{
    const unsigned char *p = symfile_data(f, vaddr, 4);
    uint32_t len;

    if (!p)
        return -1;
    memcpy(&len, p, 4);
    if (len == 0 || len == 0xffffffff)
        return -1;
    size_t n = len < max ? len : max;
    if (!(p = symfile_data(f, vaddr + 4, n)))
        return -1;
    *c = (struct cursor){p, p + n, vaddr + 4};
    return 0;
}

/* The FDE pointer encoding of the CIE at vaddr (its 'R' augmentation; absolute without one). */
static int cie_fde_encoding(const struct symfile *f, uint64_t vaddr, unsigned char *ret)
{
    struct cursor c;
    uint32_t id;
    unsigned char version, b;
    char aug[AUG_MAX + 1];
    size_t n = 0;
    uint64_t skip;

    if (cur_record(f, vaddr, CIE_HEAD_MAX, &c) < 0 || cur_bytes(&c, &id, 4) < 0 || id != 0 ||
        cur_bytes(&c, &version, 1) < 0 || (version != 1 && version != 3))
        return -1;
    do {
        if (n > AUG_MAX || cur_bytes(&c, &aug[n], 1) < 0)
            return -1;
    } while (aug[n++]);
    /* code alignment, data alignment, return address register */
    if (cur_uleb(&c, &skip) < 0 || cur_uleb(&c, &skip) < 0 ||
        (version == 1 ? cur_bytes(&c, &b, 1) : cur_uleb(&c, &skip)) < 0)
        return -1;
    *ret = 0;
    if (aug[0] != 'z')
        return aug[0] ? -1 : 0; /* "eh" and other forms older than 'z' */
    if (cur_uleb(&c, &skip) < 0)
        return -1;
    for (size_t i = 1; aug[i]; i++) {
        switch (aug[i]) {
        case 'R':
            return cur_bytes(&c, ret, 1);
        case 'L':
            if (cur_bytes(&c, &b, 1) < 0)
                return -1;
            break;
        case 'P':
            if (cur_bytes(&c, &b, 1) < 0 || cur_pointer(&c, b, 0, &skip) < 0)
                return -1;
            break;
        case 'S':
        case 'B':
            break;
        default:
            return -1;
        }
    }
    return 0;
}

/* The .eh_frame_hdr entry with the greatest start at or below vaddr: that start and the address
 * of its FDE. -1 when there is no table or vaddr is below its first entry. */
static int eh_entry(struct symfile *f, uint64_t vaddr, uint64_t *ret_start, uint64_t *ret_fde)
{
    uint64_t lo = 0, hi;
    int found = -1;

    if (f->eh_state == 0)
        f->eh_state = symfile_eh_table(f, &f->eh_hdr, &f->eh_table, &f->eh_count) == 0 ? 1 : -1;
    if (f->eh_state < 0)
        return -1;
    hi = f->eh_count;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        const unsigned char *e = symfile_data(f, f->eh_table + 8 * mid, 8);
        int32_t rel[2];
        if (!e)
            return -1;
        memcpy(rel, e, 8);
        uint64_t start = f->eh_hdr + (uint64_t)(int64_t)rel[0];
        if (start > vaddr) {
            hi = mid;
            continue;
        }
        *ret_start = start;
        *ret_fde = f->eh_hdr + (uint64_t)(int64_t)rel[1];
        found = 0;
        lo = mid + 1;
    }
    return found;
}

/* Whether the FDE at fde, which the table says starts at start, covers vaddr: its pc_begin must
 * be that start and vaddr below pc_begin + pc_range. */
static int fde_covers(const struct symfile *f, uint64_t start, uint64_t fde, uint64_t vaddr)
{
    struct cursor c;
    uint32_t cie;
    unsigned char enc;
    uint64_t begin, range;

    if (cur_record(f, fde, FDE_HEAD_MAX, &c) < 0)
        return 0;
    uint64_t at = c.vaddr;
    if (cur_bytes(&c, &cie, 4) < 0 || cie == 0 || cie_fde_encoding(f, at - cie, &enc) < 0 ||
        cur_pointer(&c, enc, 1, &begin) < 0 || cur_pointer(&c, enc & 0x0f, 0, &range) < 0)
        return 0;
    return begin == start && vaddr - begin < range;
}

static uint64_t hash_addr(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    return x ^ (x >> 33);
}

/* The entry for the function without a symbol that starts at addr, made on first use and named
 * as perf and objdump name an offset in a module: "liblzma.so.5+0x1c2a0". NULL once the file's
 * made names would hold more than SYMBOLS_MADE_MAX bytes, or out of memory. */
static struct sym *made_get(struct symfile *f, uint64_t addr)
{
    size_t i, mask = f->made_cap - 1;
    char *name;

    if (f->made_cap)
        for (i = hash_addr(addr) & mask; f->made[i].name; i = (i + 1) & mask)
            if (f->made[i].addr == addr)
                return &f->made[i];
    size_t cap =
        2 * (f->nmade + 1) > f->made_cap ? (f->made_cap ? 2 * f->made_cap : 64) : f->made_cap;
    int len = asprintf(&name, "%s+0x%" PRIx64, f->label, addr);
    if (len < 0)
        return NULL;
    if (cap * sizeof(struct sym) + f->made_bytes + (size_t)len + 1 > SYMBOLS_MADE_MAX)
        goto fail;
    if (cap != f->made_cap) {
        struct sym *t = calloc(cap, sizeof(*t));
        if (!t)
            goto fail;
        for (size_t k = 0; k < f->made_cap; k++) {
            if (!f->made[k].name)
                continue;
            for (i = hash_addr(f->made[k].addr) & (cap - 1); t[i].name; i = (i + 1) & (cap - 1))
                ;
            t[i] = f->made[k];
        }
        free(f->made);
        f->made = t;
        f->made_cap = cap;
        mask = cap - 1;
    }
    for (i = hash_addr(addr) & mask; f->made[i].name; i = (i + 1) & mask)
        ;
    f->made[i] = (struct sym){addr, 0, name, 0};
    f->nmade++;
    f->made_bytes += (size_t)len + 1;
    return &f->made[i];
fail:
    free(name);
    return NULL;
}

/* How many symbols start at or below vaddr: the index of the first one above it. */
static size_t syms_upto(const struct symfile *f, uint64_t vaddr)
{
    size_t lo = 0, hi = f->nsyms;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (f->syms[mid].addr <= vaddr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The first unsized symbol at addr, NULL if none. */
static struct sym *unsized_at(struct symfile *f, uint64_t addr)
{
    for (size_t i = addr ? syms_upto(f, addr - 1) : 0; i < f->nsyms && f->syms[i].addr == addr; i++)
        if (f->syms[i].size == 0)
            return &f->syms[i];
    return NULL;
}

/* What names the function holding vaddr, best first: a symbol whose size covers it; else the
 * .eh_frame FDE that covers it (one function, whatever symbols sit inside), named by an unsized
 * symbol at its start or else by a made name; else the nearest unsized symbol below (hand-written
 * assembly without .size), unless a function known from the FDE table starts between them: the
 * symbol's code has ended there. NULL when nothing does. */
static struct sym *resolve(struct symfile *f, uint64_t vaddr)
{
    size_t lo = syms_upto(f, vaddr);
    uint64_t start = 0, fde = 0;

    /* The nearest symbols below may be unsized or end before vaddr while an enclosing one (a
     * function with a local alias inside) still holds it: look back a little. */
    for (size_t i = lo, k = 0; i > 0 && k < 8; i--, k++) {
        struct sym *s = &f->syms[i - 1];
        if (s->size && vaddr - s->addr < s->size)
            return s;
    }
    int in_table = eh_entry(f, vaddr, &start, &fde) == 0;
    if (in_table && fde_covers(f, start, fde, vaddr)) {
        struct sym *s = unsized_at(f, start);
        return s ? s : made_get(f, start);
    }
    struct sym *s = lo ? &f->syms[lo - 1] : NULL;
    if (s && s->size == 0 && !(in_table && start > s->addr))
        return s;
    return NULL;
}

const char *symfile_func(struct symfile *f, uint64_t vaddr)
{
    if (f->syms_loaded) {
        cachestat_hit(&symbols_stat);
    } else {
        cachestat_miss(&symbols_stat);
        load_symbols(f);
    }
    struct sym *s = resolve(f, vaddr);
    return s ? s->name : NULL;
}

static Dwarf *get_dwarf(struct symfile *f)
{
    if (!f->dwarf_tried) {
        f->dwarf_tried = 1;
        if (!f->debug_tried)
            find_debug_file(f);
        if (f->dbg_elf)
            f->dw = dwarf_begin_elf(f->dbg_elf, DWARF_C_READ, NULL);
        if (!f->dw)
            f->dw = dwarf_begin_elf(f->elf, DWARF_C_READ, NULL);
    }
    return f->dw;
}

int symfile_line(struct symfile *f, uint64_t vaddr, const char **ret_file, int *ret_line)
{
    Dwarf *dw = get_dwarf(f);
    if (!dw)
        return -ENOENT;
    Dwarf_Die cu;
    if (!dwarf_addrdie(dw, vaddr, &cu))
        return -ENOENT;
    Dwarf_Line *l = dwarf_getsrc_die(&cu, vaddr);
    int line;
    const char *file;
    /* DWARF lines are unsigned and libdw hands them out as int: a line program that steps
     * below 1 or past INT_MAX gives a negative one, which no caller can print. Unknown. */
    if (!l || dwarf_lineno(l, &line) != 0 || line < 0 || !(file = dwarf_linesrc(l, NULL, NULL)))
        return -ENOENT;
    *ret_file = file;
    *ret_line = line;
    return 0;
}

/* The outermost DW_TAG_subprogram among the scopes holding vaddr: inlined code sits in
 * DW_TAG_inlined_subroutine scopes inside it, and the function a profile names is the one the
 * symbol names. dwarf_decl_line follows DW_AT_abstract_origin and DW_AT_specification. */
static int dwarf_func_line(struct symfile *f, uint64_t vaddr)
{
    Dwarf *dw = get_dwarf(f);
    Dwarf_Die cu, *scopes = NULL;
    int line = 0;
    if (!dw || !dwarf_addrdie(dw, vaddr, &cu))
        return 0;
    int n = dwarf_getscopes(&cu, vaddr, &scopes);
    for (int i = n - 1; i >= 0; i--) {
        if (dwarf_tag(&scopes[i]) != DW_TAG_subprogram)
            continue;
        if (dwarf_decl_line(&scopes[i], &line) != 0 || line < 0)
            line = 0;
        break;
    }
    free(scopes);
    return line;
}

int symfile_func_line(struct symfile *f, uint64_t vaddr)
{
    if (!f->syms_loaded)
        load_symbols(f);
    struct sym *s = resolve(f, vaddr);
    if (s && s->func_line)
        return s->func_line > 0 ? s->func_line : 0;
    int line = dwarf_func_line(f, vaddr);
    if (s)
        s->func_line = line > 0 ? line : -1;
    return line;
}
