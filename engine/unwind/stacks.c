/* The snapshot unwinder (see stacks.h): ties the capture (snapshot.c), the per-target module
 * cache (modules.c), offline unwinding (unwind.c) and symbolization (symbols.c) together and
 * formats the log record. Only the capture touches the live target; everything after it works
 * on the copy while the target runs on. A dump covers the threads listed when it starts: threads
 * created during it are not in it, and threads that exit during it are left out. Samples
 * (stacks_unwind_regs) share the caches and re-read the maps only when told they changed or
 * when an address falls outside every known module, and then at most every REFRESH_MIN_NS. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include "unwind/modules.h"
#include "os/snapshot.h"
#include "unwind/unwind.h"
#include "unwind/stacks.h"

/* libunwind's x86-64 numbering, as snapshot.h and sampler.h keep registers. */
_Static_assert(SNAPSHOT_NREGS == 17, "stacks_unwind_regs takes 17 registers");
#define REFRESH_MIN_NS (100 * 1000 * 1000ull)
#define SYMCACHE_BITS 12 /* symbolized frames kept for samples, direct-mapped by ip */

struct symcache_entry {
    uint64_t ip; /* 0: empty */
    int exact;
    struct stacks_frame f;
};

struct stacks {
    pid_t pid;
    struct modules *mods;
    struct unwind *uw;
    struct snapshot *snap;
    int maps_stale;        /* re-read the maps before the next sample's unwind */
    uint64_t refreshed_ns; /* last attempt to re-read them */
    /* Samples hit the same return addresses over and over: naming one from the symbol table
     * and DWARF costs more than unwinding to it. Allocated by the first sample. */
    struct symcache_entry *symcache;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int stacks_new(pid_t pid, struct stacks **ret)
{
    int r;
    char p[64];
    struct stat st;
    struct stacks *s = NULL;
    snprintf(p, sizeof(p), "/proc/%d", (int)pid);
    if (pid <= 0 || stat(p, &st) < 0)
        return -ESRCH;
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->pid = pid;
    s->maps_stale = 1;
    r = modules_new(pid, &s->mods);
    if (r < 0)
        goto out;
    r = unwind_new(s->mods, &s->uw);
    if (r < 0)
        goto out;
    r = snapshot_new(&s->snap);
    if (r < 0)
        goto out;
    *ret = s;
    s = NULL;
out:
    stacks_free(s);
    return r;
}

void stacks_free(struct stacks *s)
{
    if (!s)
        return;
    unwind_free(s->uw);
    modules_free(s->mods);
    snapshot_free(s->snap);
    free(s->symcache);
    free(s);
}

void stacks_dump_free(struct stacks_dump *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->nthreads; i++)
        free(d->threads[i]);
    free(d->threads);
    free(d);
}

static void symbolize(struct stacks *s, const struct unwind_frame *uf, struct stacks_frame *f)
{
    memset(f, 0, sizeof(*f));
    f->ip = uf->ip;
    struct module *mod = modules_find(s->mods, uf->ip);
    if (!mod)
        return;
    f->module = mod->path;
    f->offset = uf->ip - mod->bias;
    if (!mod->file)
        return;
    /* A return address may already belong to the next line or function: look up the call. */
    uint64_t vaddr = f->offset - (uf->exact ? 0 : 1);
    f->func = symfile_func(mod->file, vaddr);
    f->func_line = symfile_func_line(mod->file, vaddr);
    symfile_line(mod->file, vaddr, &f->file, &f->line);
}

/* Re-reads the maps; 1 when the modules changed (earlier module pointers and frame strings are
 * then invalid), 0 when not, or -errno, which leaves the previous modules in place. */
static int refresh(struct stacks *s)
{
    int changed;
    s->refreshed_ns = now_ns();
    int r = modules_refresh(s->mods, &changed);
    if (r < 0)
        return r;
    s->maps_stale = 0;
    if (changed) {
        unwind_flush(s->uw);
        if (s->symcache)
            memset(s->symcache, 0, sizeof(*s->symcache) << SYMCACHE_BITS);
    }
    return changed;
}

static int build_thread(struct stacks *s, const struct snapshot_thread *st,
                        struct stacks_thread **ret)
{
    struct unwind_frame uf[STACKS_MAX_FRAMES];
    size_t n = 0;
    int truncated = 0, err = st->err;
    if (!err)
        err = unwind_thread(s->uw, st, uf, STACKS_MAX_FRAMES, &n, &truncated);
    struct stacks_thread *t = calloc(1, sizeof(*t) + n * sizeof(t->frames[0]));
    if (!t)
        return -ENOMEM;
    t->tid = st->tid;
    if (procfs_read_comm(PROCFS_ROOT, s->pid, st->tid, t->name) < 0)
        t->name[0] = '\0';
    t->err = err;
    t->truncated = truncated;
    t->nframes = n;
    for (size_t i = 0; i < n; i++) {
        symbolize(s, &uf[i], &t->frames[i]);
        t->frames[i].sp = uf[i].sp;
        t->frames[i].scanned = uf[i].scanned;
    }
    *ret = t;
    return 0;
}

int stacks_dump_threads(struct stacks *s, const struct snapshot_hold *hold,
                        struct stacks_dump **ret, struct error *err)
{
    int r;
    uint64_t t0 = now_ns();
    pid_t *tids = NULL;
    size_t ntids = 0;
    struct stacks_dump *d = NULL;

    error_clear(err);
    r = refresh(s);
    if (r < 0) {
        if (r != -ESRCH)
            error_set(err, r, "cannot read the memory map %s/%d/maps", PROCFS_ROOT, (int)s->pid);
        goto out;
    }
    r = procfs_list_tasks(PROCFS_ROOT, s->pid, &tids, &ntids);
    if (r < 0)
        goto out;
    if (ntids > STACKS_MAX_THREADS)
        ntids = STACKS_MAX_THREADS;
    if (ntids == 0) {
        r = -ESRCH;
        goto out;
    }
    size_t nranges;
    const struct snapshot_range *ranges = modules_ranges(s->mods, &nranges);
    r = snapshot_capture_hold(s->snap, s->pid, tids, ntids, ranges, nranges, hold);
    if (r < 0)
        goto out;

    d = calloc(1, sizeof(*d));
    if (!d || !(d->threads = calloc(ntids, sizeof(*d->threads)))) {
        r = -ENOMEM;
        goto out;
    }
    int common_err = 0, captured = 0;
    for (size_t i = 0; i < s->snap->nthreads; i++) {
        const struct snapshot_thread *st = &s->snap->threads[i];
        char state = 0;
        /* Threads that exited since the list was read are not listed, nor is a zombie leader
         * (whose seize fails with EPERM: it has no user context left). */
        if (st->err == -ESRCH ||
            (st->err == -EPERM && (procfs_read_state(PROCFS_ROOT, s->pid, st->tid, &state) < 0 ||
                                   state == 'Z' || state == 'X')))
            continue;
        r = build_thread(s, st, &d->threads[d->nthreads]);
        if (r < 0)
            goto out;
        d->nthreads++;
        if (!st->err)
            captured = 1;
        else if (!common_err)
            common_err = st->err;
        else if (common_err != st->err)
            common_err = -EIO;
    }
    /* Nothing captured at all (the target is gone or traced by someone else): an error names
     * the cause better than a list of identical failures. */
    if (d->nthreads == 0 || (!captured && common_err != -EIO)) {
        r = d->nthreads == 0 ? -ESRCH : common_err;
        if (r == -ETIMEDOUT)
            error_set(err, r,
                      "none of its %zu threads stopped within %d ms (a thread inside vfork() or "
                      "in uninterruptible sleep cannot be stopped)",
                      d->nthreads, SNAPSHOT_STOP_TIMEOUT_MS);
        goto out;
    }
    d->stopped_ns = s->snap->stopped_ns;
    d->copied_bytes = s->snap->copied_bytes;
    d->held = s->snap->held;
    d->total_ns = now_ns() - t0;
    *ret = d;
    d = NULL;
    r = 0;
out:
    /* The errno says the rest: -ESRCH gone, -EPERM (the agent words why), -ENOMEM. */
    if (r < 0)
        error_fill(err, r);
    stacks_dump_free(d);
    free(tids);
    return r;
}

static int has_unknown(struct stacks *s, const struct unwind_frame *uf, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!modules_find(s->mods, uf[i].ip))
            return 1;
    return 0;
}

static void symbolize_cached(struct stacks *s, const struct unwind_frame *uf,
                             struct stacks_frame *f)
{
    if (!s->symcache) {
        symbolize(s, uf, f);
        return;
    }
    struct symcache_entry *e =
        &s->symcache[(uf->ip * 0x9e3779b97f4a7c15ull) >> (64 - SYMCACHE_BITS)];
    if (e->ip != uf->ip || e->exact != uf->exact) {
        symbolize(s, uf, &e->f);
        e->ip = uf->ip;
        e->exact = uf->exact;
    }
    *f = e->f;
}

int stacks_unwind_regs(struct stacks *s, const uint64_t regs[17], uint64_t stack_addr,
                       const unsigned char *stack, size_t stack_len, struct stacks_frame *out,
                       size_t max, size_t *ret_n, int *ret_truncated)
{
    struct unwind_frame uf[STACKS_MAX_FRAMES];
    struct snapshot_thread t = {.stack_addr = stack_addr, .stack_len = stack_len, .stack = stack};
    size_t n;
    int truncated;
    if (!regs || !out || max == 0 || (!stack && stack_len))
        return -EINVAL;
    if (max > STACKS_MAX_FRAMES)
        max = STACKS_MAX_FRAMES;
    if (!s->symcache)
        s->symcache = calloc((size_t)1 << SYMCACHE_BITS, sizeof(*s->symcache));
    memcpy(t.regs, regs, sizeof(t.regs));
    /* A failed re-read keeps the old modules: samples still queued when the target exits were
     * taken with those mappings. */
    if (s->maps_stale)
        refresh(s);
    /* A sample that cannot be unwound at all still gives its ip as one frame. */
    unwind_thread(s->uw, &t, uf, max, &n, &truncated);
    /* Code mapped since the last read (dlopen, a JIT) whose mmap event was missed or not yet
     * handled: look again, rate-limited, since addresses outside any file stay unknown. */
    if (has_unknown(s, uf, n) && now_ns() - s->refreshed_ns >= REFRESH_MIN_NS && refresh(s) > 0)
        unwind_thread(s->uw, &t, uf, max, &n, &truncated);
    for (size_t i = 0; i < n; i++) {
        symbolize_cached(s, &uf[i], &out[i]);
        out[i].sp = uf[i].sp;
        out[i].scanned = uf[i].scanned;
    }
    *ret_n = n;
    *ret_truncated = truncated;
    return 0;
}

void stacks_maps_changed(struct stacks *s)
{
    s->maps_stale = 1;
}

static void print_frame(FILE *f, const struct stacks_frame *fr)
{
    const char *file = fr->file ? fr->file : fr->module ? fr->module : "??";
    fprintf(f, "\n  File \"%s\", line %d, in %s", file, fr->line, fr->func ? fr->func : "??");
    if (fr->python)
        return;
    if (fr->module)
        fprintf(f, " [%s+0x%llx]", fr->module, (unsigned long long)fr->offset);
    else
        fprintf(f, " [0x%llx]", (unsigned long long)fr->ip);
    if (fr->scanned)
        fprintf(f, " (scanned)");
}

int stacks_format_thread(const struct stacks_thread *t, char **ret)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return -ENOMEM;
    fprintf(f, "Thread [%s]: tid=%d", t->name, (int)t->tid);
    if (t->err == -ETIMEDOUT) {
        /* The usual cause, named so the user is not left with "Connection timed out". */
        fprintf(f,
                "\n  <unavailable: the thread did not stop for ptrace within %d ms (inside "
                "vfork, or in uninterruptible sleep)>",
                SNAPSHOT_STOP_TIMEOUT_MS);
    } else if (t->err) {
        char eb[128];
        fprintf(f, "\n  <unavailable: %s>", strerror_r(-t->err, eb, sizeof(eb)));
    }
    for (size_t i = t->nframes; i > 0; i--)
        print_frame(f, &t->frames[i - 1]);
    if (t->truncated)
        fprintf(f, "\n  <truncated: outer frames missing>");
    if (fclose(f) != 0 || !buf) {
        free(buf);
        return -ENOMEM;
    }
    *ret = buf;
    return 0;
}
