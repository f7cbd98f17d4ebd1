/* The per-target module cache: which ELF file (struct symfile) is loaded where in a process, from
 * /proc/PID/maps, kept across dumps and rebuilt only when the target's executable mappings
 * change (files that stay mapped keep their loaded symbols and tables). Also the list of all
 * mappings, from which the snapshot finds where each thread's stack ends. Not thread-safe: one
 * user at a time. */
#ifndef MODULES_H
#define MODULES_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include "os/snapshot.h"
#include "unwind/symbols.h"

#define MODULES_MAX_MAPS 65536 /* mappings read from maps */
#define MODULES_VDSO_MAX (1u << 20)

struct module {
    char *path;          /* as in maps: "/usr/lib/.../libc.so.6", "[vdso]" */
    uint64_t start, end; /* the file's PT_LOAD span once loaded at bias */
    uint64_t bias;
    struct symfile *file; /* NULL when the file could not be opened or parsed */
    uint64_t dev, ino;    /* identity from maps; 0 for the vdso */
    int eh_state;         /* 0 not looked up yet, 1 found, <0 none */
    uint64_t eh_hdr, eh_table, eh_count;
};

struct modules;

int modules_new(pid_t pid, struct modules **ret);
void modules_free(struct modules *m);
/* Re-reads the target's maps. *ret_changed is set when the executable mappings differ from the
 * previous call (the first call always counts as a change): cached unwind state must then be
 * flushed. Module pointers from before a change are invalid afterwards. -ESRCH when gone. */
int modules_refresh(struct modules *m, int *ret_changed);
/* The module whose span holds addr, or NULL. */
struct module *modules_find(struct modules *m, uint64_t addr);
/* Every mapping of the target, sorted, as of the last refresh. */
const struct snapshot_range *modules_ranges(const struct modules *m, size_t *ret_n);
/* The .eh_frame_hdr table of mod, looked up once per module; counted in the "unwind" cache
 * statistics (hit: already known). -ENOENT when the module has none. */
int modules_eh_table(struct module *mod);

#endif
