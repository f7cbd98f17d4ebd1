/* The flight recorder (see recorder.h). Three tables intern what samples point to: names and
 * paths (string ids), frames (function, file, line, module, offset, as string ids) and stacks
 * (arrays of frame ids), so a sample is 24 bytes and a stack seen a thousand times is stored
 * once. A stretch off the CPU is a sample too, stamped with its end and weighing its length,
 * once it has ended; until then it is one of the open ones, one per thread blocked now, kept
 * apart. A thread that blocks in the same place again and again (a loop's sleep or wait, a
 * thousand times a second) would fill the ring with them: stretches that end within one
 * sampling period (a bucket of 1/freq) in the same place share a sample, which weighs them all
 * and ends with the last; a window's edge then cuts such a sample up to a period off, the
 * precision of the on-CPU samples beside it. Samples live in fixed chunks in arrival order: the
 * oldest go first and memory comes back a chunk at a time. A stack no sample uses any more is
 * counted dead; when the dead are a large part of the tables, the tables are rebuilt from the live
 * samples (compaction), the only way frames and names ever leave them. One mutex guards everything:
 * the recording thread adds at 19 samples a second per busy thread, readers build a profile now and
 * then. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cpu/offcpu.h"
#include "cpu/recorder.h"

#define CHUNK_SAMPLES 1024
#define INDEX_MIN 64
#define IDS_MAX (1u << 24)             /* entries of each table */
#define COMPACT_MIN_BYTES (256u << 10) /* dead stack bytes worth a compaction */
#define MALLOC_OVERHEAD 16             /* what a small allocation costs beyond its size */
#define FRAME_PYTHON 1u
#define FRAME_SCANNED 2u
#define NS_PER_US 1000u

/* The longest piece of a stretch one sample holds: a longer one is kept as several. */
#define PIECE_NS ((uint64_t)UINT32_MAX * NS_PER_US)
/* How far back in the newest chunk a thread's last stretch is looked for, to take the next. */
#define MERGE_LOOKBACK 64

struct rsample {
    uint64_t time_ns; /* when taken; a stretch: when it ended */
    pid_t tid;
    uint32_t stack;
    uint32_t name : 24; /* ids are below IDS_MAX */
    uint32_t off : 1;   /* a stretch off the CPU, of weight_us */
    uint32_t state : 7; /* a stretch's enum cpuprof_state */
    uint32_t weight_us;
};

_Static_assert(sizeof(struct rsample) == 24, "a sample is 24 bytes");
_Static_assert(IDS_MAX <= 1u << 24 && CPUPROF_NSTATES <= 1 << 7, "ids and states fit");

/* A thread off the CPU now: since when, and where it blocked (a reference on the stack). */
struct ropen {
    uint64_t since_ns;
    pid_t tid;
    uint32_t stack, name, state;
};

struct chunk {
    struct chunk *next;
    size_t begin, end; /* the live samples are s[begin..end) */
    struct rsample s[CHUNK_SAMPLES];
};

/* Compared and hashed as bytes: no padding, every field set. */
struct rframe {
    uint64_t ip, offset;
    uint32_t module, func, file; /* string ids, 0: none */
    int32_t line, func_line;
    uint32_t flags;
};

struct rstack {
    uint32_t *frames; /* innermost first */
    uint32_t n, refs, hash;
    bool truncated;
};

/* Open addressing, at most half full: hash << 32 | (id + 1), 0 empty. */
struct index {
    uint64_t *slot;
    size_t mask, count;
};

struct tables {
    char **str; /* str[0] is NULL: no string */
    size_t nstr, cap_str;
    struct index istr;
    struct rframe *frame;
    size_t nframe, cap_frame;
    struct index iframe;
    struct rstack *stack;
    size_t nstack, cap_stack;
    struct index istack;
    size_t bytes; /* all of the above */
    size_t dead;  /* bytes of stacks no sample uses */
};

struct recorder {
    pthread_mutex_t lock;
    uint64_t window_ns;
    size_t max_bytes;
    enum recorder_mode mode;
    struct tables t;
    struct chunk *head, *tail; /* oldest, newest */
    struct chunk *spare;       /* one emptied chunk kept for the next */
    size_t nchunks;
    uint64_t nsamples, nstretches, covered_from_ns, dropped, lost;
    uint64_t bucket_ns; /* stretches ending within one bucket share a sample; 0: none */
    struct ropen *open; /* by tid in no order, searched linearly as offcpu.c does */
    size_t nopen, cap_open;
    bool recording;
};

static uint32_t hash_bytes(const void *p, size_t n, uint32_t h)
{
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 16777619u; /* FNV-1a */
    return h;
}

#define HASH_SEED 2166136261u

static int grow(void *arr, size_t *cap, size_t elem, size_t need, size_t *bytes)
{
    void **p = arr;

    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap * 2 : 64;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * elem);
    if (!q)
        return -ENOMEM;
    *p = q;
    *bytes += (n - *cap) * elem;
    *cap = n;
    return 0;
}

/* Room for one more entry in ix. */
static int ix_reserve(struct index *ix, size_t *bytes)
{
    size_t old = ix->slot ? ix->mask + 1 : 0;

    if (ix->slot && (ix->count + 1) * 2 <= old)
        return 0;
    size_t n = old ? old * 2 : INDEX_MIN;
    uint64_t *slot = calloc(n, sizeof(*slot));
    if (!slot)
        return -ENOMEM;
    for (size_t i = 0; i < old; i++) {
        uint64_t v = ix->slot[i];
        size_t j = (size_t)(v >> 32) & (n - 1);

        if (!v)
            continue;
        while (slot[j])
            j = (j + 1) & (n - 1);
        slot[j] = v;
    }
    free(ix->slot);
    ix->slot = slot;
    ix->mask = n - 1;
    *bytes += (n - old) * sizeof(*slot);
    return 0;
}

/* The slot of the entry with hash h that eq says is key's, or the empty one where it goes. */
static uint64_t *ix_probe(const struct index *ix, uint32_t h,
                          bool (*eq)(const struct tables *t, uint32_t id, const void *key),
                          const struct tables *t, const void *key)
{
    for (size_t i = h & ix->mask;; i = (i + 1) & ix->mask) {
        uint64_t v = ix->slot[i];

        if (!v || ((uint32_t)(v >> 32) == h && eq(t, (uint32_t)v - 1, key)))
            return &ix->slot[i];
    }
}

struct str_key {
    const char *s;
    size_t len;
};

static bool str_eq(const struct tables *t, uint32_t id, const void *key)
{
    const struct str_key *k = key;

    return strncmp(t->str[id], k->s, k->len) == 0 && t->str[id][k->len] == '\0';
}

static int str_intern(struct tables *t, const char *s, uint32_t *ret)
{
    struct str_key k = {s, s ? strnlen(s, RECORDER_NAME_MAX - 1) : 0};
    uint32_t h;
    uint64_t *slot;

    if (!s) {
        *ret = 0;
        return 0;
    }
    if (ix_reserve(&t->istr, &t->bytes) < 0)
        return -ENOMEM;
    h = hash_bytes(s, k.len, HASH_SEED);
    slot = ix_probe(&t->istr, h, str_eq, t, &k);
    if (*slot) {
        *ret = (uint32_t)*slot - 1;
        return 0;
    }
    if (t->nstr >= IDS_MAX || grow(&t->str, &t->cap_str, sizeof(*t->str), t->nstr + 1, &t->bytes))
        return -ENOMEM;
    t->str[t->nstr] = strndup(s, k.len);
    if (!t->str[t->nstr])
        return -ENOMEM;
    t->bytes += k.len + 1 + MALLOC_OVERHEAD;
    *slot = (uint64_t)h << 32 | (t->nstr + 1);
    t->istr.count++;
    *ret = (uint32_t)t->nstr++;
    return 0;
}

static bool frame_eq(const struct tables *t, uint32_t id, const void *key)
{
    return memcmp(&t->frame[id], key, sizeof(struct rframe)) == 0;
}

/* A frame whose strings are already ids of t. */
static int frame_key_intern(struct tables *t, const struct rframe *key, uint32_t *ret)
{
    uint32_t h;
    uint64_t *slot;

    if (ix_reserve(&t->iframe, &t->bytes) < 0)
        return -ENOMEM;
    h = hash_bytes(key, sizeof(*key), HASH_SEED);
    slot = ix_probe(&t->iframe, h, frame_eq, t, key);
    if (*slot) {
        *ret = (uint32_t)*slot - 1;
        return 0;
    }
    if (t->nframe >= IDS_MAX ||
        grow(&t->frame, &t->cap_frame, sizeof(*t->frame), t->nframe + 1, &t->bytes))
        return -ENOMEM;
    t->frame[t->nframe] = *key;
    *slot = (uint64_t)h << 32 | (t->nframe + 1);
    t->iframe.count++;
    *ret = (uint32_t)t->nframe++;
    return 0;
}

/* A frame's strings as ids of t (names lent by the unwinder, or by another table). */
static int frame_intern(struct tables *t, const char *module, const char *func, const char *file,
                        const struct rframe *f, uint32_t *ret)
{
    struct rframe key = *f;

    if (str_intern(t, module, &key.module) < 0 || str_intern(t, func, &key.func) < 0 ||
        str_intern(t, file, &key.file) < 0)
        return -ENOMEM;
    return frame_key_intern(t, &key, ret);
}

static size_t stack_bytes(const struct rstack *st)
{
    return st->n * sizeof(*st->frames) + MALLOC_OVERHEAD;
}

struct stack_key {
    const uint32_t *frames;
    uint32_t n;
    bool truncated;
};

static bool stack_eq(const struct tables *t, uint32_t id, const void *key)
{
    const struct stack_key *k = key;
    const struct rstack *st = &t->stack[id];

    return st->n == k->n && st->truncated == k->truncated &&
           memcmp(st->frames, k->frames, k->n * sizeof(*k->frames)) == 0;
}

/* A new stack counts as dead until a sample uses it (ref). */
static int stack_intern(struct tables *t, const uint32_t *frames, uint32_t n, bool truncated,
                        uint32_t *ret)
{
    struct stack_key k = {frames, n, truncated};
    struct rstack *st;
    uint32_t h;
    uint64_t *slot;

    if (ix_reserve(&t->istack, &t->bytes) < 0)
        return -ENOMEM;
    h = hash_bytes(frames, n * sizeof(*frames), HASH_SEED ^ (uint32_t)truncated);
    slot = ix_probe(&t->istack, h, stack_eq, t, &k);
    if (*slot) {
        *ret = (uint32_t)*slot - 1;
        return 0;
    }
    if (t->nstack >= IDS_MAX ||
        grow(&t->stack, &t->cap_stack, sizeof(*t->stack), t->nstack + 1, &t->bytes))
        return -ENOMEM;
    st = &t->stack[t->nstack];
    st->frames = malloc(n ? n * sizeof(*frames) : 1);
    if (!st->frames)
        return -ENOMEM;
    memcpy(st->frames, frames, n * sizeof(*frames));
    st->n = n;
    st->refs = 0;
    st->hash = h;
    st->truncated = truncated;
    t->bytes += stack_bytes(st);
    t->dead += stack_bytes(st);
    *slot = (uint64_t)h << 32 | (t->nstack + 1);
    t->istack.count++;
    *ret = (uint32_t)t->nstack++;
    return 0;
}

static void ref(struct tables *t, uint32_t stack)
{
    struct rstack *st = &t->stack[stack];

    if (st->refs++ == 0)
        t->dead -= stack_bytes(st);
}

static void unref(struct tables *t, uint32_t stack)
{
    struct rstack *st = &t->stack[stack];

    if (--st->refs == 0)
        t->dead += stack_bytes(st);
}

static int tables_init(struct tables *t)
{
    memset(t, 0, sizeof(*t));
    if (grow(&t->str, &t->cap_str, sizeof(*t->str), 1, &t->bytes) < 0)
        return -ENOMEM;
    t->str[0] = NULL;
    t->nstr = 1;
    return 0;
}

static void tables_destroy(struct tables *t)
{
    for (size_t i = 1; i < t->nstr; i++)
        free(t->str[i]);
    for (size_t i = 0; i < t->nstack; i++)
        free(t->stack[i].frames);
    free(t->str);
    free(t->frame);
    free(t->stack);
    free(t->istr.slot);
    free(t->iframe.slot);
    free(t->istack.slot);
    memset(t, 0, sizeof(*t));
}

static size_t used_bytes(const struct recorder *r)
{
    return (r->nchunks + (r->spare != NULL)) * sizeof(struct chunk) + r->t.bytes +
           r->cap_open * sizeof(*r->open);
}

/* Stack id `id` of old, interned in nt: *ret. */
static int restack(const struct tables *old, struct tables *nt, uint32_t id, uint32_t *ret)
{
    const struct rstack *st = &old->stack[id];
    uint32_t frames[STACKS_MAX_FRAMES];

    for (uint32_t i = 0; i < st->n; i++) {
        const struct rframe *f = &old->frame[st->frames[i]];

        if (frame_intern(nt, old->str[f->module], old->str[f->func], old->str[f->file], f,
                         &frames[i]) < 0)
            return -ENOMEM;
    }
    return stack_intern(nt, frames, st->n, st->truncated, ret);
}

#define EACH_SAMPLE(r, c, s)                                                                       \
    for (struct chunk *c = (r)->head; c; c = c->next)                                              \
        for (struct rsample *s = c->s + c->begin; s < c->s + c->end; s++)

/* New tables holding only what the live samples use. On failure the old ones stay. */
static int compact(struct recorder *r)
{
    struct tables nt;
    uint32_t *smap = NULL, *nmap = NULL;
    int e = tables_init(&nt);

    if (e < 0)
        return e;
    smap = malloc((r->t.nstack ? r->t.nstack : 1) * sizeof(*smap));
    nmap = malloc(r->t.nstr * sizeof(*nmap));
    if (!smap || !nmap) {
        e = -ENOMEM;
        goto out;
    }
    memset(smap, 0xff, (r->t.nstack ? r->t.nstack : 1) * sizeof(*smap));
    memset(nmap, 0xff, r->t.nstr * sizeof(*nmap));
    EACH_SAMPLE(r, c, s)
    {
        if (e == 0 && smap[s->stack] == UINT32_MAX)
            e = restack(&r->t, &nt, s->stack, &smap[s->stack]);
        if (e == 0 && nmap[s->name] == UINT32_MAX)
            e = str_intern(&nt, r->t.str[s->name], &nmap[s->name]);
    }
    for (size_t i = 0; i < r->nopen && e == 0; i++) {
        const struct ropen *op = &r->open[i];

        if (smap[op->stack] == UINT32_MAX)
            e = restack(&r->t, &nt, op->stack, &smap[op->stack]);
        if (e == 0 && nmap[op->name] == UINT32_MAX)
            e = str_intern(&nt, r->t.str[op->name], &nmap[op->name]);
    }
    if (e < 0)
        goto out;
    EACH_SAMPLE(r, c, s)
    {
        s->stack = smap[s->stack];
        s->name = nmap[s->name];
        ref(&nt, s->stack);
    }
    for (size_t i = 0; i < r->nopen; i++) {
        r->open[i].stack = smap[r->open[i].stack];
        r->open[i].name = nmap[r->open[i].name];
        ref(&nt, r->open[i].stack);
    }
    tables_destroy(&r->t);
    r->t = nt;
out:
    if (e < 0)
        tables_destroy(&nt);
    free(smap);
    free(nmap);
    return e;
}

static int push(struct recorder *r, const struct rsample *s)
{
    struct chunk *c = r->tail;

    if (!c || c->end == CHUNK_SAMPLES) {
        c = r->spare ? r->spare : malloc(sizeof(*c));
        if (!c)
            return -ENOMEM;
        r->spare = NULL;
        c->next = NULL;
        c->begin = c->end = 0;
        if (r->tail)
            r->tail->next = c;
        else
            r->head = c;
        r->tail = c;
        r->nchunks++;
    }
    c->s[c->end++] = *s;
    r->nsamples++;
    r->nstretches += s->off;
    ref(&r->t, s->stack);
    return 0;
}

static void drop_oldest(struct recorder *r)
{
    struct chunk *c = r->head;
    const struct rsample *s = &c->s[c->begin++];

    unref(&r->t, s->stack);
    /* Samples come from several rings, a little out of order: what is left starts here. */
    if (s->time_ns > r->covered_from_ns)
        r->covered_from_ns = s->time_ns;
    r->nsamples--;
    r->nstretches -= s->off;
    r->dropped++;
    if (c->begin < c->end)
        return;
    if (c == r->tail) {
        c->begin = c->end = 0;
        return;
    }
    r->head = c->next;
    r->nchunks--;
    free(r->spare);
    r->spare = c;
}

/* Drops the samples older than the window at now, then the oldest while over the byte cap,
 * rebuilding the tables first when mostly dead stacks fill them. */
static void evict(struct recorder *r, uint64_t now)
{
    uint64_t limit = now > r->window_ns ? now - r->window_ns : 0;
    bool compacted = false;

    while (r->nsamples) {
        const struct rsample *s = &r->head->s[r->head->begin];
        bool aged = s->time_ns < limit;

        if (!aged && used_bytes(r) <= r->max_bytes)
            break;
        if (!aged && !compacted && r->t.dead * 4 >= r->t.bytes) {
            compacted = true;
            if (compact(r) == 0)
                continue;
        }
        drop_oldest(r);
    }
    if (r->covered_from_ns && r->covered_from_ns < limit)
        r->covered_from_ns = limit;
    if (r->t.dead > COMPACT_MIN_BYTES && r->t.dead * 2 > r->t.bytes)
        compact(r);
}

int recorder_new(const struct recorder_limits *l, struct recorder **ret, struct error *err)
{
    struct recorder *r;

    error_clear(err);
    if (!l || l->minutes < 1 || l->minutes > RECORDER_MAX_MINUTES)
        return error_set(err, -EINVAL, "the recorder keeps 1 to %d minutes", RECORDER_MAX_MINUTES);
    if (l->max_bytes < RECORDER_MIN_BYTES || l->max_bytes > RECORDER_MAX_BYTES)
        return error_set(err, -EINVAL, "the recorder's memory cap is %u KiB to %llu MiB",
                         RECORDER_MIN_BYTES >> 10, RECORDER_MAX_BYTES >> 20);
    if (l->mode != RECORDER_CPU && l->mode != RECORDER_WALL)
        return error_set(err, -EINVAL, "the recorder records CPU time, or wall-clock time");
    r = calloc(1, sizeof(*r));
    if (!r || tables_init(&r->t) < 0) {
        free(r);
        return error_set(err, -ENOMEM, NULL);
    }
    pthread_mutex_init(&r->lock, NULL);
    r->window_ns = (uint64_t)l->minutes * 60 * 1000000000ull;
    r->max_bytes = l->max_bytes;
    r->mode = l->mode;
    *ret = r;
    return 0;
}

void recorder_free(struct recorder *r)
{
    if (!r)
        return;
    while (r->head) {
        struct chunk *c = r->head;

        r->head = c->next;
        free(c);
    }
    free(r->spare);
    free(r->open);
    tables_destroy(&r->t);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static struct ropen *open_of(struct recorder *r, pid_t tid)
{
    for (size_t i = 0; i < r->nopen; i++)
        if (r->open[i].tid == tid)
            return &r->open[i];
    return NULL;
}

/* Thread tid left the CPU at t in stack; one open before is lost unweighed (offcpu.h). */
static int open_stretch(struct recorder *r, pid_t tid, uint64_t t, uint32_t stack, uint32_t name,
                        enum cpuprof_state state)
{
    struct ropen *op = open_of(r, tid);

    if (op) {
        unref(&r->t, op->stack);
    } else {
        size_t bytes = 0; /* used_bytes counts cap_open */

        if (r->nopen == OFFCPU_THREADS_MAX)
            return -ENOBUFS;
        if (grow(&r->open, &r->cap_open, sizeof(*r->open), r->nopen + 1, &bytes) < 0)
            return -ENOMEM;
        op = &r->open[r->nopen++];
    }
    *op = (struct ropen){t, tid, stack, name, state};
    ref(&r->t, stack);
    return 0;
}

/* Whether [since, t), op's stretch, went into the sample of an earlier one: among the newest
 * chunk's last few samples, one of the thread's stretches that ended in the same bucket and
 * blocked in the same place (a preemption elsewhere between does not stop it). A thread's
 * stretches come in order: that one ended before since. */
static bool merged(struct recorder *r, const struct ropen *op, uint64_t since, uint64_t t)
{
    struct chunk *c = r->tail;
    uint64_t bucket = r->bucket_ns ? t / r->bucket_ns : 0;

    if (!c || !r->bucket_ns)
        return false;
    size_t stop = c->end - c->begin > MERGE_LOOKBACK ? c->end - MERGE_LOOKBACK : c->begin;
    for (size_t i = c->end; i-- > stop;) {
        struct rsample *s = &c->s[i];
        uint64_t w = s->weight_us + (t - since) / NS_PER_US;

        /* On-CPU samples go in as they are read, ahead of the stretches' settling: no order. */
        if (s->tid != op->tid || !s->off)
            continue;
        if (s->time_ns / r->bucket_ns != bucket || s->time_ns > since)
            return false; /* and its stretches before it are older still */
        if (s->stack != op->stack || s->name != op->name || s->state != op->state || w > UINT32_MAX)
            continue;
        s->weight_us = (uint32_t)w;
        s->time_ns = t;
        return true;
    }
    return false;
}

/* The open stretch op ends at t: into the ring in pieces of at most PIECE_NS, none older than
 * the window (the ring would drop it at once), or into the sample of the thread's last one
 * (merged); and forgotten. */
static int close_stretch(struct recorder *r, struct ropen *op, uint64_t t)
{
    uint64_t since = op->since_ns, oldest = t > r->window_ns ? t - r->window_ns : 0;
    int e = 0;

    if (since < oldest)
        since = oldest;
    if (since < t && merged(r, op, since, t))
        since = t;
    while (since < t && e == 0) {
        uint64_t end = t - since > PIECE_NS ? since + PIECE_NS : t;
        struct rsample s = {
            .time_ns = end,
            .tid = op->tid,
            .stack = op->stack,
            .name = op->name,
            .off = 1,
            .state = op->state,
            .weight_us = (uint32_t)((end - since) / NS_PER_US),
        };

        e = push(r, &s);
        since = end;
    }
    unref(&r->t, op->stack);
    *op = r->open[--r->nopen];
    return e;
}

/* The stretches a run left open (it ended on an error): forgotten unweighed. */
static void forget_open(struct recorder *r)
{
    for (size_t i = 0; i < r->nopen; i++)
        unref(&r->t, r->open[i].stack);
    r->nopen = 0;
}

static int on_sample(const struct cpuprof_sample *s, void *userdata)
{
    struct recorder *r = userdata;
    uint32_t ids[STACKS_MAX_FRAMES], stack = 0, name = 0;
    size_t n = s->n < STACKS_MAX_FRAMES ? s->n : STACKS_MAX_FRAMES;
    uint64_t weight_us = s->weight_ns / NS_PER_US;
    int e = 0;

    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < n && e == 0; i++) {
        const struct stacks_frame *f = &s->frames[i];
        struct rframe key = {
            .ip = f->ip,
            .offset = f->offset,
            .line = f->line,
            .func_line = f->func_line,
            .flags = (f->python ? FRAME_PYTHON : 0) | (f->scanned ? FRAME_SCANNED : 0),
        };

        e = frame_intern(&r->t, f->module, f->func, f->file, &key, &ids[i]);
    }
    if (e == 0)
        e = stack_intern(&r->t, ids, (uint32_t)n, s->truncated || n < s->n, &stack);
    if (e == 0)
        e = str_intern(&r->t, s->thread, &name);
    if (e == 0 && s->off_cpu) {
        e = open_stretch(r, s->tid, s->time_ns, stack, name, s->state);
    } else if (e == 0) {
        struct rsample rs = {
            .time_ns = s->time_ns,
            .tid = s->tid,
            .stack = stack,
            .name = name,
            .weight_us = weight_us > UINT32_MAX ? UINT32_MAX : (uint32_t)weight_us,
        };
        e = push(r, &rs);
    }
    if (e < 0)
        r->lost++;
    evict(r, s->time_ns);
    pthread_mutex_unlock(&r->lock);
    return 0; /* a sample not kept never ends the recording */
}

/* Thread tid's stretch, if one is open, ends at t: kept as samples (sink_back). */
static int on_back(pid_t tid, uint64_t t, void *userdata)
{
    struct recorder *r = userdata;
    struct ropen *op;

    pthread_mutex_lock(&r->lock);
    op = open_of(r, tid);
    if (op && close_stretch(r, op, t) < 0)
        r->lost++;
    evict(r, t);
    pthread_mutex_unlock(&r->lock);
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* About once a second: an idle target gives no samples, and what ages must still go. */
static void on_tick(const struct cpuprof_progress *p, void *userdata)
{
    struct recorder *r = userdata;

    (void)p;
    pthread_mutex_lock(&r->lock);
    evict(r, now_ns());
    pthread_mutex_unlock(&r->lock);
}

int recorder_run(struct recorder *r, pid_t pid, struct stacks *s, unsigned freq, atomic_int *cancel,
                 struct cpuprof_result *ret, struct error *err)
{
    struct cpuprof_options o = {
        .seconds = CPUPROF_MAX_SECONDS,
        .frequency = freq,
        .wall = r->mode == RECORDER_WALL,
        .cancel = cancel,
        .sink = on_sample,
        .sink_back = on_back,
        .no_ptrace = true,
        .progress = on_tick,
        .userdata = r,
    };
    int e;

    pthread_mutex_lock(&r->lock);
    if (!r->covered_from_ns)
        r->covered_from_ns = now_ns();
    r->recording = true;
    r->bucket_ns = freq ? 1000000000u / freq : 0;
    pthread_mutex_unlock(&r->lock);
    e = cpuprof_run(pid, s, &o, ret, err);
    pthread_mutex_lock(&r->lock);
    r->recording = false;
    forget_open(r);
    pthread_mutex_unlock(&r->lock);
    if (e == 0) {
        profile_free(ret->profile);
        ret->profile = NULL;
    }
    return e;
}

/* How much of [a, b) lies in [from, to). */
static uint64_t overlap(uint64_t a, uint64_t b, uint64_t from, uint64_t to)
{
    if (a < from)
        a = from;
    if (b > to)
        b = to;
    return b > a ? b - a : 0;
}

/* Stack id's frames into frames, names lent by the tables. */
static void fill(const struct tables *t, uint32_t id, struct stacks_frame *frames)
{
    const struct rstack *st = &t->stack[id];

    for (uint32_t i = 0; i < st->n; i++) {
        const struct rframe *f = &t->frame[st->frames[i]];

        frames[i] = (struct stacks_frame){
            .ip = f->ip,
            .module = t->str[f->module],
            .offset = f->offset,
            .func = t->str[f->func],
            .file = t->str[f->file],
            .line = f->line,
            .func_line = f->func_line,
            .python = f->flags & FRAME_PYTHON,
            .scanned = f->flags & FRAME_SCANNED,
        };
    }
}

/* One sample (or stretch) of weight_ns into p; frames holds stack `*filled` already. */
static int add(struct profile *p, const struct tables *t, uint32_t stack, uint32_t name,
               struct stacks_frame *frames, uint32_t *filled, uint64_t weight_ns)
{
    if (*filled != stack) {
        fill(t, stack, frames);
        *filled = stack;
    }
    return profile_add(p, t->str[name], frames, t->stack[stack].n, t->stack[stack].truncated,
                       weight_ns);
}

int recorder_profile(struct recorder *r, uint64_t from_ns, uint64_t to_ns, pid_t tid,
                     enum recorder_mode mode, struct profile **ret,
                     uint64_t states_ns[CPUPROF_NSTATES], struct error *err)
{
    struct stacks_frame *frames = NULL;
    struct profile *p = NULL;
    uint32_t filled = UINT32_MAX; /* the stack frames holds */
    uint64_t states[CPUPROF_NSTATES] = {0}, now = now_ns();
    int e;

    error_clear(err);
    if ((mode & ~r->mode) || !mode)
        return error_set(err, -EOPNOTSUPP, "the recorder records %s only",
                         r->mode == RECORDER_CPU ? "time on a CPU" : "time on and off a CPU");
    frames = malloc(STACKS_MAX_FRAMES * sizeof(*frames));
    e = frames ? profile_new(&p) : -ENOMEM;
    if (e < 0)
        goto out;
    if (mode != RECORDER_CPU)
        profile_set_timed(p);
    pthread_mutex_lock(&r->lock);
    EACH_SAMPLE(r, c, s)
    {
        uint64_t w;

        if (tid > 0 && s->tid != tid)
            continue;
        if (!s->off && (mode & RECORDER_CPU) && s->time_ns >= from_ns && s->time_ns < to_ns)
            w = (uint64_t)s->weight_us * NS_PER_US;
        else if (s->off && (mode & RECORDER_OFF))
            w = overlap(s->time_ns - (uint64_t)s->weight_us * NS_PER_US, s->time_ns, from_ns,
                        to_ns);
        else
            continue;
        if (!w)
            continue;
        states[s->off ? s->state : CPUPROF_RUNNING] += w;
        e = add(p, &r->t, s->stack, s->name, frames, &filled, w);
        if (e < 0)
            break;
    }
    /* Stretches not over yet: blocked as far as the ring knows, up to now. */
    for (size_t i = 0; i < r->nopen && e == 0 && (mode & RECORDER_OFF); i++) {
        const struct ropen *op = &r->open[i];
        uint64_t w = overlap(op->since_ns, now, from_ns, to_ns);

        if ((tid > 0 && op->tid != tid) || !w)
            continue;
        states[op->state] += w;
        e = add(p, &r->t, op->stack, op->name, frames, &filled, w);
    }
    pthread_mutex_unlock(&r->lock);
out:
    free(frames);
    if (e < 0) {
        profile_free(p);
        return error_set(err, e, NULL);
    }
    if (states_ns)
        memcpy(states_ns, states, sizeof(states));
    *ret = p;
    return 0;
}

void recorder_get_stats(struct recorder *r, uint64_t now_ns, struct recorder_stats *ret)
{
    pthread_mutex_lock(&r->lock);
    evict(r, now_ns);
    *ret = (struct recorder_stats){
        .covered_from_ns = r->covered_from_ns,
        .bytes = used_bytes(r),
        .samples = r->nsamples,
        .stretches = r->nstretches,
        .stacks = r->t.nstack,
        .dropped = r->dropped,
        .lost = r->lost,
        .recording = r->recording,
    };
    pthread_mutex_unlock(&r->lock);
}
