/* The per-target module cache (see modules.h). Change detection compares a signature made of
 * the executable mappings' lines (range, offset, device, inode, path), not the whole maps file:
 * thread stacks and heap come and go all the time and do not matter to unwind tables or
 * symbols. On a change, files still mapped are handed over to the new module list. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include "os/cachestat.h"
#include "os/procfs.h"
#include "unwind/modules.h"

struct modules {
    pid_t pid;
    char root[32];
    struct module *mods; /* sorted by start, disjoint */
    size_t nmods;
    struct snapshot_range *ranges;
    size_t nranges;
    char *sig; /* signature of the executable mappings */
    size_t siglen;
};

CACHESTAT_DEFINE(unwind_stat, "unwind", 0)
static atomic_ulong eh_tables_count;

static void module_clear(struct module *mod)
{
    if (mod->eh_state > 0) {
        atomic_fetch_sub(&eh_tables_count, 1);
        cachestat_size(&unwind_stat, atomic_load(&eh_tables_count));
    }
    symfile_free(mod->file);
    free(mod->path);
}

static void mods_free(struct module *mods, size_t n)
{
    for (size_t i = 0; i < n; i++)
        module_clear(&mods[i]);
    free(mods);
}

int modules_new(pid_t pid, struct modules **ret)
{
    struct modules *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->pid = pid;
    snprintf(m->root, sizeof(m->root), "/proc/%d/root", (int)pid);
    *ret = m;
    return 0;
}

void modules_free(struct modules *m)
{
    if (!m)
        return;
    mods_free(m->mods, m->nmods);
    free(m->ranges);
    free(m->sig);
    free(m);
}

static int is_exec(const struct procfs_map *p)
{
    return p->perms[2] == 'x' && (p->path[0] == '/' || strcmp(p->path, "[vdso]") == 0);
}

static int make_signature(const struct procfs_map *maps, size_t n, char **ret, size_t *ret_len)
{
    size_t cap = 4096, len = 0;
    char *s = malloc(cap);
    if (!s)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (!is_exec(&maps[i]))
            continue;
        for (;;) {
            int w = snprintf(s + len, cap - len, "%llx-%llx %llx %x:%x %llu %s\n",
                             (unsigned long long)maps[i].start, (unsigned long long)maps[i].end,
                             (unsigned long long)maps[i].offset, maps[i].dev_major,
                             maps[i].dev_minor, (unsigned long long)maps[i].inode, maps[i].path);
            if (w < 0) {
                free(s);
                return -EINVAL;
            }
            if ((size_t)w < cap - len) {
                len += (size_t)w;
                break;
            }
            char *ns = realloc(s, cap * 2);
            if (!ns) {
                free(s);
                return -ENOMEM;
            }
            s = ns;
            cap *= 2;
        }
    }
    *ret = s;
    *ret_len = len;
    return 0;
}

static struct symfile *read_vdso(pid_t pid, const struct procfs_map *p)
{
    size_t len = p->end - p->start;
    struct symfile *f = NULL;
    if (len == 0 || len > MODULES_VDSO_MAX)
        return NULL;
    unsigned char *img = malloc(len);
    if (!img)
        return NULL;
    struct iovec local = {img, len}, remote = {(void *)(uintptr_t)p->start, len};
    if (process_vm_readv(pid, &local, 1, &remote, 1, 0) != (ssize_t)len) {
        free(img);
        return NULL;
    }
    if (symfile_from_image(img, len, &f) < 0)
        return NULL;
    return f;
}

/* The file of a mapping: taken over from the previous module list when still the same file,
 * else opened through the target's root, else through map_files (deleted or replaced files). */
static struct symfile *get_file(struct modules *m, struct module *old, size_t nold,
                                const struct procfs_map *p, uint64_t dev)
{
    struct symfile *f = NULL;
    for (size_t i = 0; i < nold; i++) {
        if (old[i].file && old[i].dev == dev && old[i].ino == p->inode &&
            strcmp(old[i].path, p->path) == 0) {
            f = old[i].file;
            old[i].file = NULL;
            return f;
        }
    }
    if (symfile_open(m->root, p->path, (dev_t)dev, (ino_t)p->inode, &f) == 0)
        return f;
    char mf[96];
    snprintf(mf, sizeof(mf), "/proc/%d/map_files/%llx-%llx", (int)m->pid,
             (unsigned long long)p->start, (unsigned long long)p->end);
    if (symfile_open("", mf, 0, 0, &f) < 0)
        return NULL;
    symfile_set_module_name(f, p->path);
    return f;
}

static int cmp_mod(const void *a, const void *b)
{
    const struct module *x = a, *y = b;
    return (x->start > y->start) - (x->start < y->start);
}

static int rebuild(struct modules *m, const struct procfs_map *maps, size_t n)
{
    size_t nnew = 0;
    struct module *mods = calloc(n ? n : 1, sizeof(*mods));
    if (!mods)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const struct procfs_map *p = &maps[i];
        if (!is_exec(p))
            continue;
        int covered = 0;
        for (size_t k = 0; k < nnew && !covered; k++)
            covered = p->start >= mods[k].start && p->start < mods[k].end;
        if (covered)
            continue;
        struct module *mod = &mods[nnew];
        int vdso = p->path[0] == '[';
        mod->dev = vdso ? 0 : makedev(p->dev_major, p->dev_minor);
        mod->ino = vdso ? 0 : p->inode;
        mod->path = strdup(p->path);
        if (!mod->path) {
            mods_free(mods, nnew);
            return -ENOMEM;
        }
        nnew++;
        mod->file = vdso ? read_vdso(m->pid, p) : get_file(m, m->mods, m->nmods, p, mod->dev);
        uint64_t lo, hi;
        if (mod->file && symfile_bias(mod->file, p->start, p->offset, &mod->bias) == 0) {
            symfile_span(mod->file, &lo, &hi);
            mod->start = lo + mod->bias;
            mod->end = hi + mod->bias;
        } else {
            symfile_free(mod->file);
            mod->file = NULL;
            mod->bias = p->start - p->offset;
            mod->start = p->start;
            mod->end = p->end;
        }
        /* A span must not swallow an unrelated mapping that precedes it in the list. */
        if (mod->start > p->start)
            mod->start = p->start;
        if (mod->end < p->end)
            mod->end = p->end;
    }
    if (nnew > 1)
        qsort(mods, nnew, sizeof(*mods), cmp_mod);
    for (size_t i = 1; i < nnew; i++)
        if (mods[i - 1].end > mods[i].start)
            mods[i - 1].end = mods[i].start;
    mods_free(m->mods, m->nmods);
    m->mods = mods;
    m->nmods = nnew;
    return 0;
}

int modules_refresh(struct modules *m, int *ret_changed)
{
    struct procfs_map *maps = NULL;
    size_t n = 0, siglen = 0;
    char *sig = NULL;
    struct snapshot_range *ranges = NULL;
    int r = procfs_read_maps(PROCFS_ROOT, m->pid, &maps, &n);
    if (r < 0)
        goto out;
    if (n > MODULES_MAX_MAPS) {
        r = -E2BIG;
        goto out;
    }
    ranges = malloc((n ? n : 1) * sizeof(*ranges));
    if (!ranges) {
        r = -ENOMEM;
        goto out;
    }
    size_t nr = 0;
    for (size_t i = 0; i < n; i++) {
        if (maps[i].end <= maps[i].start || (nr && maps[i].start < ranges[nr - 1].end))
            continue; /* keep the array sorted and disjoint whatever the file says */
        ranges[nr++] = (struct snapshot_range){maps[i].start, maps[i].end};
    }
    r = make_signature(maps, n, &sig, &siglen);
    if (r < 0)
        goto out;
    int changed = !m->sig || siglen != m->siglen || memcmp(sig, m->sig, siglen) != 0;
    if (changed) {
        r = rebuild(m, maps, n);
        if (r < 0)
            goto out;
        free(m->sig);
        m->sig = sig;
        m->siglen = siglen;
        sig = NULL;
    }
    free(m->ranges);
    m->ranges = ranges;
    m->nranges = nr;
    ranges = NULL;
    *ret_changed = changed;
out:
    free(sig);
    free(ranges);
    procfs_maps_free(maps, n);
    return r;
}

struct module *modules_find(struct modules *m, uint64_t addr)
{
    size_t lo = 0, hi = m->nmods;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (addr < m->mods[mid].start)
            hi = mid;
        else if (addr >= m->mods[mid].end)
            lo = mid + 1;
        else
            return &m->mods[mid];
    }
    return NULL;
}

const struct snapshot_range *modules_ranges(const struct modules *m, size_t *ret_n)
{
    *ret_n = m->nranges;
    return m->ranges;
}

int modules_eh_table(struct module *mod)
{
    if (mod->eh_state != 0) {
        cachestat_hit(&unwind_stat);
        return mod->eh_state > 0 ? 0 : -ENOENT;
    }
    cachestat_miss(&unwind_stat);
    if (!mod->file ||
        symfile_eh_table(mod->file, &mod->eh_hdr, &mod->eh_table, &mod->eh_count) < 0) {
        mod->eh_state = -1;
        return -ENOENT;
    }
    mod->eh_state = 1;
    atomic_fetch_add(&eh_tables_count, 1);
    cachestat_size(&unwind_stat, atomic_load(&eh_tables_count));
    return 0;
}
