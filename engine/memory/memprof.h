/* Allocation profiles of a running process, for the memory action. The main method injects
 * the hook library (memhook.so) into the target with inject.c and drains the shared ring it
 * fills (memring.h); where injection cannot work (a static binary, no dlopen, ptrace refused)
 * it falls back to uprobes (memprobe.c), much slower for the target. Either way the events end
 * up here: blocks allocated during the run are tracked until freed, their call stacks unwound
 * and symbolized once per call path, and live bytes per allocation site sampled over time for
 * the massif file. Only blocks allocated during the run and still live count. After a run the
 * hooks keep the ring mapped in the target, inert, until memprof_release unmaps it or the next
 * run replaces it. */
#ifndef MEMPROF_H
#define MEMPROF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "formats/hpy.h"
#include "os/error.h"
#include "unwind/stacks.h"

#define MEMPROF_MAX_FRAMES 64
#define MEMPROF_MAX_BLOCKS (1u << 22) /* live blocks tracked; past it they are counted */
#define MEMPROF_MAX_SITES 65536
#define MEMPROF_MAX_SNAPSHOTS 100 /* as massif's --max-snapshots default */
#define MEMPROF_DETAILED_EVERY 10 /* as massif's --detailed-freq default */
#define MEMPROF_RING_EVENTS (1u << 18)
#define MEMPROF_RING_STACKS 2048
#define MEMPROF_HOOK_LIB "libprofiler-agent-memhook.so"
/* The musl build, beside it, for targets linked with musl. */
#define MEMPROF_HOOK_LIB_MUSL "libprofiler-agent-memhook-musl.so"
#define MEMPROF_SILENT_MS 1000 /* a run this long with no allocation is worth a warning */

struct memprof_options {
    uint64_t sample_bytes; /* 0: every allocation */
    double seconds;        /* planned length, to space the snapshots */
    const char *hook_path; /* the hook library on the agent's side (its glibc build) */
    bool force_uprobes;    /* skip injection (tests, and users who ask) */
};

struct memprof_stats {
    const char *method; /* "inject" or "uprobes" */
    /* Why injection was not used ("the target has no C library with dlopen (a static
     * binary?)"), code 0 when it was. */
    struct error fallback;
    uint64_t allocs, frees;           /* events seen (sampled ones only, when sampling) */
    uint64_t alloc_bytes;             /* bytes of the allocations seen */
    uint64_t live_bytes, live_blocks; /* at the end; estimates when sampling */
    uint64_t peak_bytes, peak_ms;
    uint64_t lost;      /* allocations not recorded (ring, stack slots, probes) */
    uint64_t untracked; /* allocations past MEMPROF_MAX_BLOCKS */
    uint64_t sites;
    uint64_t elapsed_ms;
    bool target_exited;
    bool hooks_abandoned; /* the hooks removed themselves (the agent was too slow) */
    /* Set by memprof_finish: a sentence for the user when the hooks were installed but recorded
     * no allocation (with frees seen, or for MEMPROF_SILENT_MS or longer): the target's
     * allocations likely bypass the slots hooked, and the profile is empty. Else "". */
    char silent_hooks[320];
};

/* One allocation site of the blocks still live, for summaries and the files. */
struct memprof_site {
    const struct stacks_frame *frames; /* innermost first: frames[0] called the allocator */
    size_t nframes;
    uint64_t live_bytes, live_blocks;
};

struct memprof;

/* Starts recording pid's allocations; stacks is the target's unwinder (kept by the caller,
 * used only from the calling thread). A fallback to uprobes is in the stats (fallback). On
 * failure err (may be NULL) says why: both methods' reasons when neither worked, none when the
 * target exited (-ESRCH). -EINVAL for the calling process itself. */
int memprof_open(pid_t pid, struct stacks *stacks, const struct memprof_options *o,
                 struct memprof **ret, struct error *err);
/* Drains what the target recorded for up to timeout_ms. 0, or -ESRCH once the target exited
 * and everything was drained; failures in err too (may be NULL). */
int memprof_poll(struct memprof *m, int timeout_ms, struct error *err);
/* Removes the hooks or probes (the target runs on unchanged) and drains the rest. Returns the
 * first error of the removal, in err too (may be NULL); the profile stays readable either
 * way. */
int memprof_finish(struct memprof *m, struct error *err);
void memprof_get_stats(const struct memprof *m, struct memprof_stats *ret);
/* Sites with live bytes at the end, largest first; valid until memprof_free. */
int memprof_sites(struct memprof *m, const struct memprof_site **ret, size_t *ret_n);
/* The rows heap_profile.T.hpy lists (hpy_rows_new's, largest first): what a summary names as
 * the top sites, grouped as the file groups them. Free with hpy_rows_free. */
int memprof_rows(struct memprof *m, struct hpy_row **ret, size_t *ret_n, struct error *err);
/* heap_profile.T.hpy and massif.out.T (cmd: the target's command line, for massif's header),
 * with formats/hpy.h's and formats/massif.h's errors, in err too (may be NULL). */
int memprof_write_hpy(struct memprof *m, const char *path, double timemade, struct error *err);
int memprof_write_massif(struct memprof *m, const char *path, const char *cmd, struct error *err);
/* Frees everything; finishes first when memprof_finish was not called. Accepts NULL. */
void memprof_free(struct memprof *m);

/* Unmaps the ring a finished run left mapped in pid (the hooks keep it, inert, until the next
 * run starts), with one short call into the target as memprof_open's, when pid is still the
 * process that started at starttime. 0 with the bytes unmapped; -ESRCH: gone or replaced;
 * -ENXIO: nothing to unmap (no ring, or it exec'd); -EAGAIN: not now, try later (a thread that
 * may still be inside a hook because it is stopped or in uninterruptible sleep, the hooks off
 * for less than MEMRING_RELEASE_QUIET_NS, no thread at a safe point); -EBUSY: the hooks are on
 * (another run); else a failure. All but 0 and -ESRCH, -ENXIO come with a reason in err (may
 * be NULL). */
int memprof_release(pid_t pid, uint64_t starttime, uint64_t *ret_bytes, struct error *err);

#endif
