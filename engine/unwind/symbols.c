/* ELF files for unwinding and symbolization (see symbols.h). The file is mapped privately and
 * read through libelf; symbol names and DWARF strings point into that mapping or into libdw's
 * data, so they live exactly as long as the struct symfile. Symbols and DWARF are loaded on first
 * use: most mapped files only ever serve unwind tables. */
#include <errno.h>
#include <fcntl.h>
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

static struct sym *find_sym(struct symfile *f, uint64_t vaddr)
{
    size_t lo = 0, hi = f->nsyms;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (f->syms[mid].addr <= vaddr)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    /* The nearest symbols below may be unsized or end before vaddr while an enclosing one (a
     * function with a local alias inside) still holds it: look back a little. */
    for (size_t i = lo, k = 0; i > 0 && k < 8; i--, k++) {
        struct sym *s = &f->syms[i - 1];
        if (s->size && vaddr - s->addr < s->size)
            return s;
    }
    struct sym *s = &f->syms[lo - 1];
    return s->size == 0 ? s : NULL;
}

const char *symfile_func(struct symfile *f, uint64_t vaddr)
{
    if (f->syms_loaded) {
        cachestat_hit(&symbols_stat);
    } else {
        cachestat_miss(&symbols_stat);
        load_symbols(f);
    }
    struct sym *s = find_sym(f, vaddr);
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
    struct sym *s = find_sym(f, vaddr);
    if (s && s->func_line)
        return s->func_line > 0 ? s->func_line : 0;
    int line = dwarf_func_line(f, vaddr);
    if (s)
        s->func_line = line > 0 ? line : -1;
    return line;
}
