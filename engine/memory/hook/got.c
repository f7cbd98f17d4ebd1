/* GOT rewriting for the allocation hooks: finds the GOT slots (JUMP_SLOT and GLOB_DAT
 * relocations) of named functions in every loaded module, points them at hooks and remembers
 * each original value so it can be put back. It reads the dynamic sections the loader mapped;
 * it does not parse files, and it never touches this library, nor the dynamic loader unless the
 * loader is the C library too (musl). Built against glibc and against musl. */
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdbool.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <unistd.h>

#include "memhook.h"

#define GOT_MAX_SLOTS 8192 /* ~10 functions x 2 relocation kinds x hundreds of modules */
#define MAPS_LINE_MAX 96   /* "start-end perms" is all that is read of a maps line */

struct got_slot {
    uintptr_t addr;
    uintptr_t orig;
    uintptr_t hook;
    uintptr_t base; /* load base of the module holding it */
    int keep;       /* restore failed: still patched */
};

struct module {
    uintptr_t base;
    const ElfW(Phdr) * phdr;
    size_t phnum;
};

struct dyninfo {
    uintptr_t symtab, strtab, rela, jmprel;
    size_t strsz, relasz, pltrelsz;
};

struct maps_range {
    uintptr_t start, end;
    int prot;
};

struct patch_ctx {
    const struct memhook_target *targets;
    size_t ntargets;
    uintptr_t self;
    uintptr_t ldso;
    int err;
    struct got_stats stats;
};

#ifdef DLFO_STRUCT_HAS_EH_DBASE
/* glibc 2.35's _dl_find_object, looked up at run time so that 2.34 loads this library too: it
 * finds only objects whose loading completed (relocated, RELRO applied). */
static int (*find_object)(void *pc, struct dl_find_object *ret);
static int find_object_known;
#endif

/* All of this is used under the caller's lock (memhook.c). */
static struct got_slot slots[GOT_MAX_SLOTS];
static size_t nslots;
static char maps_buf[4096];
static struct maps_range maps_cache;

static bool module_has(const struct module *m, uintptr_t addr, size_t len, bool writable)
{
    for (size_t i = 0; i < m->phnum; i++) {
        const ElfW(Phdr) *p = &m->phdr[i];
        uintptr_t start = m->base + p->p_vaddr;

        if (p->p_type != PT_LOAD || (writable && !(p->p_flags & PF_W)))
            continue;
        if (addr >= start && len <= p->p_memsz && addr - start <= p->p_memsz - len)
            return true;
    }
    return false;
}

/* Ready: loaded and relocated, so its RELRO protection is final. Without _dl_find_object
 * (glibc 2.34) every listed module counts as ready. musl's dl_iterate_phdr reaches a module only
 * through a link read under the loader's lock, which dlopen holds until relocation is done:
 * every module it lists is ready. */
static bool module_ready(const struct module *m)
{
#ifdef DLFO_STRUCT_HAS_EH_DBASE
    struct dl_find_object fo;

    if (!find_object)
        return true;
    for (size_t i = 0; i < m->phnum; i++)
        if (m->phdr[i].p_type == PT_LOAD && m->phdr[i].p_memsz > 0)
            return find_object((void *)(m->base + m->phdr[i].p_vaddr), &fo) == 0;
    return false;
#else
    (void)m;
    return true;
#endif
}

/* The dynamic loader is left alone, unless it is the C library defining the functions hooked
 * too, as musl's is: its own calls of malloc (strdup, fopen...) go through its GOT, while the
 * loader's part calls its internal allocator directly. */
static bool loader_skipped(const struct patch_ctx *c, const struct module *m)
{
    if (!c->ldso || m->base != c->ldso)
        return false;
    for (size_t i = 0; i < c->ntargets; i++)
        if (c->targets[i].real && module_has(m, c->targets[i].real, 1, false))
            return false;
    return true;
}

/* The loader relocates d_ptr values in place for most objects but not for read-only dynamic
 * sections (the vDSO): an unrelocated value is an offset below the load base. */
static uintptr_t dyn_addr(const struct module *m, uintptr_t p)
{
    return m->base && p < m->base ? m->base + p : p;
}

static bool read_dynamic(const struct module *m, struct dyninfo *d)
{
    const ElfW(Dyn) *dyn = NULL;
    size_t count = 0;
    bool rela_plt = true;

    for (size_t i = 0; i < m->phnum; i++) {
        if (m->phdr[i].p_type == PT_DYNAMIC) {
            dyn = (const ElfW(Dyn) *)(m->base + m->phdr[i].p_vaddr);
            count = m->phdr[i].p_memsz / sizeof(*dyn);
            break;
        }
    }
    if (!dyn || !module_has(m, (uintptr_t)dyn, count * sizeof(*dyn), false))
        return false;
    memset(d, 0, sizeof(*d));
    for (size_t i = 0; i < count && dyn[i].d_tag != DT_NULL; i++) {
        uintptr_t v = dyn[i].d_un.d_val;

        switch (dyn[i].d_tag) {
        case DT_SYMTAB:
            d->symtab = dyn_addr(m, v);
            break;
        case DT_STRTAB:
            d->strtab = dyn_addr(m, v);
            break;
        case DT_STRSZ:
            d->strsz = v;
            break;
        case DT_RELA:
            d->rela = dyn_addr(m, v);
            break;
        case DT_RELASZ:
            d->relasz = v;
            break;
        case DT_JMPREL:
            d->jmprel = dyn_addr(m, v);
            break;
        case DT_PLTRELSZ:
            d->pltrelsz = v;
            break;
        case DT_PLTREL:
            rela_plt = v == DT_RELA;
            break;
        case DT_RELAENT:
            if (v != sizeof(ElfW(Rela)))
                return false;
            break;
        default:
            break;
        }
    }
    if (!rela_plt)
        d->jmprel = 0;
    return d->symtab && d->strtab && module_has(m, d->strtab, d->strsz, false);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* "start-end rwxp ..." */
static bool parse_maps_line(const char *s, struct maps_range *r)
{
    uintptr_t v[2] = {0, 0};

    for (int k = 0; k < 2; k++) {
        int digits = 0;

        for (; hexval(*s) >= 0; s++, digits++) {
            if (digits >= 16)
                return false;
            v[k] = v[k] << 4 | (uintptr_t)hexval(*s);
        }
        if (!digits || *s != (k == 0 ? '-' : ' '))
            return false;
        s++;
    }
    if (strnlen(s, 3) < 3)
        return false;
    r->start = v[0];
    r->end = v[1];
    r->prot = (s[0] == 'r' ? PROT_READ : 0) | (s[1] == 'w' ? PROT_WRITE : 0) |
              (s[2] == 'x' ? PROT_EXEC : 0);
    return true;
}

/* The protection of the mapping holding addr, from /proc/self/maps: RELRO pages must get back
 * exactly what they had. No stdio: it would allocate through the hooks being installed. */
static int page_prot(uintptr_t addr, int *ret_prot)
{
    char line[MAPS_LINE_MAX];
    size_t len = 0;
    int fd, r = -ENOENT;

    if (addr >= maps_cache.start && addr < maps_cache.end) {
        *ret_prot = maps_cache.prot;
        return 0;
    }
    fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    for (;;) {
        ssize_t n = read(fd, maps_buf, sizeof(maps_buf));

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            goto out;
        }
        if (n == 0)
            goto out;
        for (ssize_t i = 0; i < n; i++) {
            struct maps_range m;

            if (maps_buf[i] != '\n') {
                if (len < sizeof(line) - 1)
                    line[len++] = maps_buf[i];
                continue;
            }
            line[len] = '\0';
            len = 0;
            if (parse_maps_line(line, &m) && addr >= m.start && addr < m.end) {
                maps_cache = m;
                *ret_prot = m.prot;
                r = 0;
                goto out;
            }
        }
    }
out:
    close(fd);
    return r;
}

static int write_slot(uintptr_t addr, uintptr_t value)
{
    uintptr_t pagesz = getauxval(AT_PAGESZ), page = addr & ~(pagesz - 1);
    int prot = 0, r = page_prot(addr, &prot);

    if (r < 0)
        return r;
    if (prot & PROT_WRITE) {
        __atomic_store_n((uintptr_t *)addr, value, __ATOMIC_RELAXED);
        return 0;
    }
    if (mprotect((void *)page, pagesz, prot | PROT_WRITE) < 0)
        return -errno;
    __atomic_store_n((uintptr_t *)addr, value, __ATOMIC_RELAXED);
    /* Cannot fail where the call above succeeded on the same page. */
    (void)mprotect((void *)page, pagesz, prot);
    return 0;
}

static const struct memhook_target *match_target(const struct patch_ctx *c, const struct dyninfo *d,
                                                 size_t name_off)
{
    const char *name = (const char *)d->strtab + name_off;
    size_t room = d->strsz - name_off;

    for (size_t i = 0; i < c->ntargets; i++) {
        size_t tl = strlen(c->targets[i].name);

        if (c->targets[i].real && tl < room && memcmp(name, c->targets[i].name, tl) == 0 &&
            name[tl] == '\0')
            return &c->targets[i];
    }
    return NULL;
}

/* The name of the symbol a relocation refers to, or NULL when the entry is out of bounds. */
static const char *rel_name(const struct module *m, const struct dyninfo *d, const ElfW(Rela) * rel)
{
    const ElfW(Sym) *sym = (const ElfW(Sym) *)d->symtab + ELF64_R_SYM(rel->r_info);

    if (!module_has(m, (uintptr_t)sym, sizeof(*sym), false) || sym->st_name >= d->strsz ||
        !memchr((const char *)d->strtab + sym->st_name, '\0', d->strsz - sym->st_name))
        return NULL;
    return (const char *)d->strtab + sym->st_name;
}

static struct got_slot *slot_find(uintptr_t addr)
{
    for (size_t i = 0; i < nslots; i++)
        if (slots[i].addr == addr)
            return &slots[i];
    return NULL;
}

static void patch_one(struct patch_ctx *c, const struct module *m, const struct dyninfo *d,
                      const ElfW(Rela) * rel)
{
    uint32_t type = ELF64_R_TYPE(rel->r_info);
    const ElfW(Sym) * sym;
    const struct memhook_target *t;
    struct got_slot *s;
    uintptr_t addr, cur;
    int r;

    if (type != R_X86_64_JUMP_SLOT && type != R_X86_64_GLOB_DAT)
        return;
    sym = (const ElfW(Sym) *)d->symtab + ELF64_R_SYM(rel->r_info);
    if (!module_has(m, (uintptr_t)sym, sizeof(*sym), false) || sym->st_name >= d->strsz)
        return;
    t = match_target(c, d, sym->st_name);
    addr = m->base + rel->r_offset;
    if (!t || (addr & 7) || !module_has(m, addr, sizeof(uintptr_t), true))
        return;
    cur = __atomic_load_n((uintptr_t *)addr, __ATOMIC_RELAXED);
    /* Patch what is bound to the process's definition, or an import not bound yet (a lazy PLT
     * stub inside the module); leave a module's binding to its own or another allocator. A slot
     * holding an executable's canonical PLT entry (the address of malloc everywhere in a process
     * whose non-PIE executable takes it) stays too: programs compare against that address, and
     * calls through it land on the executable's own slot, which is hooked. */
    if (cur == t->hook || cur == t->canonical ||
        (cur != t->real && (sym->st_shndx != SHN_UNDEF || !module_has(m, cur, 1, false))))
        return;
    s = slot_find(addr);
    if (!s) {
        if (nslots == GOT_MAX_SLOTS) {
            c->err = -ENOSPC;
            return;
        }
        s = &slots[nslots++];
    }
    *s = (struct got_slot){addr, cur, t->hook, m->base, 0};
    r = write_slot(addr, t->hook);
    if (r < 0) {
        *s = slots[--nslots];
        c->err = r;
        return;
    }
    c->stats.slots++;
}

static void patch_table(struct patch_ctx *c, const struct module *m, const struct dyninfo *d,
                        uintptr_t table, size_t size)
{
    const ElfW(Rela) *rel = (const ElfW(Rela) *)table;

    if (!table || !module_has(m, table, size, false))
        return;
    for (size_t i = 0; i < size / sizeof(*rel) && !c->err; i++)
        patch_one(c, m, d, &rel[i]);
}

static int patch_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct patch_ctx *c = arg;
    struct module m = {info->dlpi_addr, info->dlpi_phdr, info->dlpi_phnum};
    struct dyninfo d;
    uint64_t before = c->stats.slots;

    (void)size;
    if (module_has(&m, c->self, 1, false) || loader_skipped(c, &m) || !module_ready(&m) ||
        !read_dynamic(&m, &d))
        return 0;
    patch_table(c, &m, &d, d.jmprel, d.pltrelsz);
    patch_table(c, &m, &d, d.rela, d.relasz);
    if (c->stats.slots > before)
        c->stats.modules++;
    return c->err ? 1 : 0;
}

int got_patch_all(const struct memhook_target *targets, size_t n, struct got_stats *ret_stats)
{
    struct patch_ctx c = {
        .targets = targets,
        .ntargets = n,
        .self = (uintptr_t)&got_patch_all,
        .ldso = getauxval(AT_BASE),
    };

#ifdef DLFO_STRUCT_HAS_EH_DBASE
    if (!find_object_known) {
        void *f = dlsym(RTLD_DEFAULT, "_dl_find_object");

        memcpy(&find_object, &f, sizeof(find_object));
        find_object_known = 1;
    }
#endif
    maps_cache = (struct maps_range){0, 0, 0};
    dl_iterate_phdr(patch_cb, &c);
    if (c.err)
        return c.err;
    *ret_stats = c.stats;
    return 0;
}

struct binding_ctx {
    uintptr_t addr;
    const char *name;
    uintptr_t value;
    bool canonical;
};

/* The JUMP_SLOT relocation of name in m, or NULL. */
static const ElfW(Rela) *
    plt_reloc(const struct module *m, const struct dyninfo *d, const char *name)
{
    const ElfW(Rela) *rel = (const ElfW(Rela) *)d->jmprel;

    if (!d->jmprel || !module_has(m, d->jmprel, d->pltrelsz, false))
        return NULL;
    for (size_t i = 0; i < d->pltrelsz / sizeof(*rel); i++) {
        const char *n = rel_name(m, d, &rel[i]);

        if (ELF64_R_TYPE(rel[i].r_info) == R_X86_64_JUMP_SLOT && n && strcmp(n, name) == 0)
            return &rel[i];
    }
    return NULL;
}

static int binding_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct binding_ctx *c = arg;
    struct module m = {info->dlpi_addr, info->dlpi_phdr, info->dlpi_phnum};
    const ElfW(Rela) * rel;
    const ElfW(Sym) * sym;
    struct dyninfo d;
    uintptr_t slot, v;

    (void)size;
    if (!module_has(&m, c->addr, 1, false))
        return 0;
    if (!read_dynamic(&m, &d) || !(rel = plt_reloc(&m, &d, c->name)))
        return 1;
    /* rel_name checked the symbol is inside the table. */
    sym = (const ElfW(Sym) *)d.symtab + ELF64_R_SYM(rel->r_info);
    c->canonical = sym->st_shndx == SHN_UNDEF && sym->st_value && m.base + sym->st_value == c->addr;
    slot = m.base + rel->r_offset;
    if ((slot & 7) || !module_has(&m, slot, sizeof(uintptr_t), true))
        return 1;
    v = __atomic_load_n((uintptr_t *)slot, __ATOMIC_RELAXED);
    /* Not bound yet, it points back into the module (lazy binding). */
    if (!module_has(&m, v, 1, false))
        c->value = v;
    return 1;
}

uintptr_t got_plt_binding(uintptr_t addr, const char *name, bool *ret_canonical)
{
    struct binding_ctx c = {addr, name, 0, false};

    dl_iterate_phdr(binding_cb, &c);
    *ret_canonical = c.canonical;
    return c.value;
}

/* Inside dl_iterate_phdr's callback the module cannot be unmapped (the loader holds its list
 * lock), so a slot of a module that got unloaded meanwhile is dropped, never written. */
static int restore_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct module m = {info->dlpi_addr, info->dlpi_phdr, info->dlpi_phnum};
    int *err = arg;

    (void)size;
    for (size_t i = 0; i < nslots; i++) {
        struct got_slot *s = &slots[i];
        int r;

        if (s->base != m.base || !module_has(&m, s->addr, sizeof(uintptr_t), true) ||
            __atomic_load_n((uintptr_t *)s->addr, __ATOMIC_RELAXED) != s->hook)
            continue;
        r = write_slot(s->addr, s->orig);
        if (r < 0) {
            s->keep = 1;
            *err = *err ? *err : r;
        }
    }
    return 0;
}

int got_restore_all(void)
{
    size_t kept = 0;
    int err = 0;

    maps_cache = (struct maps_range){0, 0, 0};
    for (size_t i = 0; i < nslots; i++)
        slots[i].keep = 0;
    dl_iterate_phdr(restore_cb, &err);
    for (size_t i = 0; i < nslots; i++)
        if (slots[i].keep)
            slots[kept++] = slots[i];
    nslots = kept;
    return err;
}

static int loads_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    if (size >= offsetof(struct dl_phdr_info, dlpi_subs))
        *(uint64_t *)arg = info->dlpi_adds;
    return 1;
}

uint64_t got_loads(void)
{
    uint64_t adds = 0;

    dl_iterate_phdr(loads_cb, &adds);
    return adds;
}
