/* Object-growth and object-source logging (see watch.h). The growth logger's thread sleeps on
 * a condition variable with a deadline, so a stop wakes it at once and nothing polls. The source
 * logger's thread sleeps in poll on the tracer's descriptor and an eventfd that a stop writes;
 * between scans it queues the traced creations (with their stack copies, a bounded number) and
 * at each scan matches them with what the census finds still there, live objects first. On a
 * Python target each scan also runs pyscripts/objects.py inside it (agent/inside.h), one run per
 * scan: the logger keeps what the next scan compares with (objgraph's peaks, the seen filter) and
 * hands it over as data, so nothing stays behind in the target. dump_log_objects' Python dump runs
 * the same script, so its input and records are made here, once. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include "clock.h"
#include "inside.h"
#include "objects/objects.h"
#include "objects/objsrc.h"
#include "unwind/stacks.h"
#include "unwinders.h"
#include "watch.h"

#define GROWTH_LIMIT                                                                               \
    1000 /* types in a growth record: objgraph.growth(limit=1000), as the Profiler */
#define TEXT_MAX (256u << 10) /* bytes of one record built from the target's names and reprs */
/* The Python census (pyscripts/objects.py): what one run may look at and hand back. */
#define PY_MAX_SCAN 20000000  /* objects it looks at before it stops */
#define PY_BUDGET_MAX_S 2.0   /* the most it may hold the target's interpreter */
#define PY_MAX_TYPES 20000    /* type counts it hands back, largest first */
#define PY_PEAK_MAX 50000     /* type names a logger remembers the peak of */
#define PY_NAME_MAX 256       /* bytes of a type name in a record */
#define PY_REPR_MAX 300       /* of a new object's repr (the Profiler's reprlib limit) */
#define PY_LINK_REPR_MAX 100  /* of each referrer's, in its chain */
#define PY_DUMP_REPR_MAX 2000 /* of a dumped object's */
#define PY_CHAIN_DEPTH 8      /* referrers between a new object and a module */
#define PY_CHAIN_VISITS 64    /* gc.get_referrers calls per new object (each walks the heap) */
#define QUEUE_MIN 64          /* creations kept per scan interval: 4 x max_objects, */
#define QUEUE_MAX 1024        /* within these (a stack copy is up to 8 KiB each) */
#define RESCAN_WAIT_MS 1000   /* the tracer picks up uncovered threads this often */

/* One traced creation waiting for the next scan. */
struct queued {
    pid_t tid;
    char thread[PROCFS_COMM_MAX];
    uint64_t time_ns;
    enum objects_type type;
    bool any_fd_type;
    bool reused; /* a later call returned the same fd */
    int fds[2];
    pid_t new_tid;
    uint64_t addr, len;
    uint64_t regs[OBJSRC_NREGS];
    uint64_t stack_addr;
    unsigned char *stack;
    size_t stack_len;
};

struct logger {
    const char *kind; /* "objects", "object_sources" */
    const char *what; /* how messages name it */
    bool running;     /* the thread exists (joined by stop) */
    bool stop;
    bool ended; /* the thread ended by itself (target gone) */
    struct run_host *host;
    struct agent *agent; /* handed back to host->out.state_changed */
    struct target target;
    char spec[TARGET_SPEC_MAX];
    double interval;
    int64_t started_mono_us;
    uint64_t scans;
    struct objects_count last;
    bool have_last;
    pthread_t thread;
    /* The source logger's: owned by its thread while it runs. */
    unsigned max_objects;
    struct objsrc *src;
    int wakefd;
    struct queued *queue;
    size_t nqueue, qcap;
    uint64_t traced, logged; /* read under lock for the state */
    /* Python objects, counted inside the target: owned by the logger's thread while it runs. */
    bool py_off;                 /* not Python (or python_exec off): not asked again */
    struct json_object *py_peak; /* type name -> the most counted, objgraph's peak_stats */
    struct json_object *py_seen; /* the last scan's seen filter, for the next one's new objects */
    char py_warning[RUN_ERROR_MAX]; /* the last one logged: a repeated one is logged once */
    struct run py_run;              /* what inside_run needs; a stop sets its cancel */
};

static struct logger objlog = {.kind = "objects", .what = "Object logging", .wakefd = -1};
static struct logger srclog = {
    .kind = "object_sources", .what = "Object source logging", .wakefd = -1};
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;

static void emit(struct logger *l, const char *text)
{
    l->host->out.record(NULL, text, l->host->out.userdata);
}

/* A record's text, grown as needed up to TEXT_MAX; what comes from the target is added cut and
 * with its control characters replaced (no forged lines). */
struct text {
    char *s;
    size_t len, cap;
};

static void text_put(struct text *t, const char *s, size_t n, bool clean)
{
    if (t->len + n + 1 > TEXT_MAX)
        n = TEXT_MAX - 1 - t->len;
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        char *p;

        while (cap < t->len + n + 1)
            cap *= 2;
        p = realloc(t->s, cap);
        if (!p)
            return;
        t->s = p;
        t->cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        t->s[t->len++] = clean && (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    t->s[t->len] = '\0';
}

/* From the target: at most max bytes of s. */
static void text_clean(struct text *t, const char *s, size_t max)
{
    size_t n = strnlen(s ? s : "?", max);

    text_put(t, s ? s : "?", n, true);
}

static void text_addf(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_addf(struct text *t, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n > 0)
        text_put(t, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1, false);
}

static const char *json_str(struct json_object *o, const char *key)
{
    struct json_object *v;

    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static int64_t json_int(struct json_object *o, const char *key)
{
    struct json_object *v;

    return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

/* Runs pyscripts/objects.py in run's target: req (consumed) gets the limits every operation
 * shares. 1: *ret is the answer; 0: answer from outside (inside_run's warning says why);
 * negative: the run failed. */
static int objects_script(struct run *run, struct json_object *req, const char *instead,
                          struct json_object **ret)
{
    struct json_object *qualify = json_object_new_array();
    double budget = run->host->config->python_timeout / 4.0;
    int r;

    /* Held with the target's interpreter stopped: a fraction of python_timeout, and never long. */
    if (budget > PY_BUDGET_MAX_S)
        budget = PY_BUDGET_MAX_S;
    for (int t = 0; t < OBJECTS_NTYPES; t++)
        json_object_array_add(qualify, json_object_new_string(objects_type_name(t)));
    json_object_object_add(req, "qualify", qualify);
    json_object_object_add(req, "max_scan", json_object_new_int(PY_MAX_SCAN));
    json_object_object_add(req, "max_types", json_object_new_int(PY_MAX_TYPES));
    json_object_object_add(req, "budget_s", run_json_decimal(budget, 2));
    r = inside_run(run, "objects", json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN),
                   instead, ret);
    json_object_put(req);
    return r;
}

int watch_python_dump(struct run *run, const char *type, unsigned max_objects)
{
    struct json_object *req = json_object_new_object(), *a, *objs = NULL;
    char prefix[PY_NAME_MAX + 32];
    int r;

    json_object_object_add(req, "op", json_object_new_string("dump"));
    json_object_object_add(req, "type", json_object_new_string(type));
    json_object_object_add(req, "max_objects", json_object_new_int((int)max_objects));
    json_object_object_add(req, "repr_max", json_object_new_int(PY_DUMP_REPR_MAX));
    r = objects_script(run, req, "only its fds, threads and mappings can be listed", &a);
    if (r <= 0)
        return r;
    snprintf(prefix, sizeof(prefix), "%s object in memory: ", type);
    json_object_object_get_ex(a, "objects", &objs);
    size_t n = json_object_is_type(objs, json_type_array) ? json_object_array_length(objs) : 0;
    if (n > max_objects)
        n = max_objects;
    for (size_t i = 0; i < n; i++) {
        struct text t = {0};

        text_clean(&t, json_object_get_string(json_object_array_get_idx(objs, i)),
                   PY_DUMP_REPR_MAX);
        if (t.s)
            run_record(run, "%s%s", prefix, t.s);
        free(t.s);
    }
    int64_t matched = json_int(a, "matched");
    json_object_object_add(run->summary, "objects", json_object_new_uint64(n));
    json_object_object_add(run->summary, "matched", json_object_new_int64(matched));
    json_object_object_add(run->summary, "objects_scanned",
                           json_object_new_int64(json_int(a, "scanned")));
    if (json_str(a, "stopped"))
        run_warn(run, "the search inside the target %s", json_str(a, "stopped"));
    if (matched > (int64_t)n)
        run_warn(run, "logged %zu of %lld objects of type %s (max_objects)", n, (long long)matched,
                 type);
    json_object_put(a);
    return 1;
}

/* One type's growth: fd kinds since the last scan, Python types past their peak (objgraph). */
struct growth {
    const char *name;
    uint64_t count;
    uint64_t increase;
    size_t order; /* fd kinds in their order, then Python types largest first */
};

struct growths {
    struct growth *v;
    size_t n, cap;
};

static void growth_add(struct growths *g, const char *name, uint64_t count, uint64_t increase)
{
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : OBJECTS_NTYPES + 64;
        struct growth *v = realloc(g->v, cap * sizeof(*v));

        if (!v)
            return;
        g->v = v;
        g->cap = cap;
    }
    g->v[g->n] = (struct growth){name, count, increase, g->n};
    g->n++;
}

static int by_increase(const void *x, const void *y)
{
    const struct growth *a = x, *b = y;

    if (a->increase != b->increase)
        return a->increase < b->increase ? 1 : -1;
    return a->order < b->order ? -1 : a->order > b->order;
}

/* objgraph.growth()'s form: types that grew, largest increase first. */
static void log_growth(struct logger *l, struct growths *g)
{
    struct text t = {0};

    if (g->n == 0)
        return;
    qsort(g->v, g->n, sizeof(g->v[0]), by_increase);
    text_addf(&t, "Memory Growth: [");
    for (size_t i = 0; i < g->n && i < GROWTH_LIMIT; i++) {
        text_addf(&t, "%s('", i ? ", " : "");
        text_clean(&t, g->v[i].name, PY_NAME_MAX);
        text_addf(&t, "', %llu, %llu)", (unsigned long long)g->v[i].count,
                  (unsigned long long)g->v[i].increase);
    }
    text_addf(&t, "]");
    if (t.s)
        emit(l, t.s);
    free(t.s);
}

/* The Python types of answer a that grew past their peak, which move up. */
static void python_growth(struct logger *l, struct json_object *a, struct growths *g)
{
    struct json_object *types = NULL;

    json_object_object_get_ex(a, "types", &types);
    size_t n = json_object_is_type(types, json_type_array) ? json_object_array_length(types) : 0;
    for (size_t i = 0; i < n && i < PY_MAX_TYPES; i++) {
        struct json_object *row = json_object_array_get_idx(types, i), *v;

        if (!json_object_is_type(row, json_type_array) || json_object_array_length(row) != 2)
            continue;
        const char *name = json_object_get_string(json_object_array_get_idx(row, 0));
        int64_t count = json_object_get_int64(json_object_array_get_idx(row, 1));
        int64_t peak =
            json_object_object_get_ex(l->py_peak, name, &v) ? json_object_get_int64(v) : 0;
        if (count <= peak)
            continue;
        growth_add(g, name, (uint64_t)count, (uint64_t)(count - peak));
        /* Bounded: names past the limit are not remembered (they show as new each scan). */
        if (v || json_object_object_length(l->py_peak) < PY_PEAK_MAX)
            json_object_object_add(l->py_peak, name, json_object_new_int64(count));
    }
}

/* A warning of inside_run for the log: once, not every scan. */
static void python_note(struct logger *l, const char *text)
{
    if (!strcmp(text, l->py_warning))
        return;
    snprintf(l->py_warning, sizeof(l->py_warning), "%s", text);
    emit(l, text);
}

/* One run of the script for a scan: 1 with *ret its answer, 0 when this scan has no Python part
 * (the reason logged, unless the target is simply not Python), or after a stop. */
static int python_scan(struct logger *l, struct json_object **ret)
{
    struct run *run = &l->py_run;
    struct json_object *req = json_object_new_object(), *w;
    char note[RUN_ERROR_MAX + 64];
    bool sources = l == &srclog;
    int r;

    *ret = NULL;
    json_object_put(run->summary);
    json_object_put(run->warnings);
    run->summary = json_object_new_object();
    run->warnings = NULL;
    run->error[0] = '\0';
    run->ok = true;
    json_object_object_add(req, "op", json_object_new_string(sources ? "sources" : "counts"));
    if (sources) {
        json_object_object_add(req, "last", json_object_get(l->py_peak));
        if (l->py_seen) {
            json_object_object_foreach(l->py_seen, key, v)
            {
                json_object_object_add(req, key, json_object_get(v));
            }
        }
        json_object_object_add(req, "max_objects", json_object_new_int((int)l->max_objects));
        json_object_object_add(req, "max_depth", json_object_new_int(PY_CHAIN_DEPTH));
        json_object_object_add(req, "max_visits", json_object_new_int(PY_CHAIN_VISITS));
        json_object_object_add(req, "repr_max", json_object_new_int(PY_REPR_MAX));
        json_object_object_add(req, "link_repr_max", json_object_new_int(PY_LINK_REPR_MAX));
    }
    r = objects_script(run, req, "this scan counts the target's fds, threads and mappings only",
                       ret);
    if (atomic_load(&run->cancel)) {
        json_object_put(*ret);
        *ret = NULL;
        return 0;
    }
    if (r < 0) {
        snprintf(note, sizeof(note), "Python objects: %s", run->error);
        python_note(l, note);
        return 0;
    }
    if (r == 0) {
        if (!run->warnings)
            l->py_off = true; /* not Python, the agent itself, or python_exec off */
        else if ((w = json_object_array_get_idx(run->warnings, 0)))
            python_note(l, json_object_get_string(w));
        return 0;
    }
    if (json_str(*ret, "stopped")) {
        snprintf(note, sizeof(note),
                 "Python objects: the count inside the target %s; this scan leaves them out",
                 json_str(*ret, "stopped"));
        python_note(l, note);
        json_object_put(*ret);
        *ret = NULL;
        return 0;
    }
    l->py_warning[0] = '\0';
    return 1;
}

/* Where a new Python object is held: the file of a function, else its referrers nearest first. */
static void python_where(struct text *t, struct json_object *o)
{
    struct json_object *links = NULL;

    if (json_str(o, "file")) {
        text_clean(t, json_str(o, "file"), PY_NAME_MAX);
        return;
    }
    if (json_str(o, "chain_stopped")) {
        text_addf(t, "(not searched: ");
        text_clean(t, json_str(o, "chain_stopped"), PY_NAME_MAX);
        text_addf(t, ")");
        return;
    }
    json_object_object_get_ex(o, "chain", &links);
    size_t n = json_object_is_type(links, json_type_array) ? json_object_array_length(links) : 0;
    if (n == 0)
        text_addf(t, "(no referrer found)");
    for (size_t i = 0; i < n && i < PY_CHAIN_DEPTH; i++) {
        struct json_object *link = json_object_array_get_idx(links, i);

        text_addf(t, "%s", i ? " <- " : "");
        text_clean(t, json_str(link, "type"), PY_NAME_MAX);
        text_addf(t, " ");
        text_clean(t, json_str(link, "repr"), PY_LINK_REPR_MAX);
    }
}

/* The Profiler's records of new objects: `New object TYPE (PEAK/NOW) at WHERE: REPR`, then the
 * overflow by type, or that nothing new grew. The first scan only sets the baseline. */
static void log_python_sources(struct logger *l, struct json_object *a, bool baseline)
{
    struct json_object *news = NULL, *over = NULL;
    struct text t = {0};

    json_object_object_get_ex(a, "new", &news);
    json_object_object_get_ex(a, "overflow", &over);
    size_t n = json_object_is_type(news, json_type_array) ? json_object_array_length(news) : 0;
    for (size_t i = 0; i < n && i < l->max_objects; i++) {
        struct json_object *o = json_object_array_get_idx(news, i);

        t.len = 0;
        text_addf(&t, "New object ");
        text_clean(&t, json_str(o, "type"), PY_NAME_MAX);
        text_addf(&t, " (%lld/%lld) at ", (long long)json_int(o, "before"),
                  (long long)json_int(o, "now"));
        python_where(&t, o);
        text_addf(&t, ": ");
        text_clean(&t, json_str(o, "repr"), PY_REPR_MAX);
        if (t.s)
            emit(l, t.s);
    }
    t.len = 0;
    if (json_object_is_type(over, json_type_object) && json_object_object_length(over) > 0) {
        size_t k = 0;

        text_addf(&t, "New objects overflowed by {");
        json_object_object_foreach(over, name, count)
        {
            if (k == PY_MAX_TYPES)
                break;
            text_addf(&t, "%s'", k++ ? ", " : "");
            text_clean(&t, name, PY_NAME_MAX);
            text_addf(&t, "': %lld", (long long)json_object_get_int64(count));
        }
        text_addf(&t, "}");
    } else if (n == 0 && !baseline) {
        text_addf(&t, "No new object growth found");
    }
    if (t.len && t.s)
        emit(l, t.s);
    free(t.s);
}

/* Logs the end of a logger that stops by itself, with the engine's reason e. Called unlocked. */
static void end_logger(struct logger *l, const struct error *e)
{
    char text[TARGET_SPEC_MAX + 160 + ERROR_REASON_MAX];

    if (e->code == -ESRCH)
        snprintf(text, sizeof(text), "%s stopped: target %s (pid %d) has exited", l->what, l->spec,
                 (int)l->target.pid);
    else
        snprintf(text, sizeof(text), "%s stopped: target %s (pid %d): %s", l->what, l->spec,
                 (int)l->target.pid, e->reason[0] ? e->reason : strerror(-e->code));
    pthread_mutex_lock(&lock);
    l->ended = true;
    pthread_mutex_unlock(&lock);
    emit(l, text);
    if (l->host->out.state_changed)
        l->host->out.state_changed(l->agent, l->host->out.userdata);
}

/* One census (fds, threads and mappings; on a Python target its objects too) and its growth
 * record; for the source logger, the new Python objects' records. */
static int scan_growth(struct logger *l, struct error *err)
{
    struct objects_count now;
    struct growths g = {0};
    struct json_object *py = NULL;
    int r;

    if (!l->py_off)
        python_scan(l, &py);
    r = objects_count(PROCFS_ROOT, l->target.pid, &now, err);
    if (r < 0)
        goto out;
    for (int t = 0; t < OBJECTS_NTYPES; t++) {
        uint64_t before = l->have_last ? l->last.n[t] : 0;

        if (now.n[t] > before)
            growth_add(&g, objects_type_name(t), now.n[t], now.n[t] - before);
    }
    if (py)
        python_growth(l, py, &g);
    log_growth(l, &g);
    if (py && l == &srclog) {
        struct json_object *s, *bits;

        log_python_sources(l, py, l->py_seen == NULL);
        /* The seen filter the next scan compares with. */
        if (json_object_object_get_ex(py, "seen", &s) &&
            json_object_object_get_ex(py, "seen_bits", &bits)) {
            json_object_put(l->py_seen);
            l->py_seen = json_object_new_object();
            json_object_object_add(l->py_seen, "seen", json_object_get(s));
            json_object_object_add(l->py_seen, "seen_bits", json_object_get(bits));
        }
    }
    pthread_mutex_lock(&lock);
    l->last = now;
    l->have_last = true;
    l->scans++;
    pthread_mutex_unlock(&lock);
out:
    free(g.v);
    json_object_put(py);
    return r;
}

static void *objlog_main(void *arg)
{
    struct logger *l = arg;
    struct timespec deadline;
    struct error e;

    pthread_mutex_lock(&lock);
    while (!l->stop) {
        pthread_mutex_unlock(&lock);
        if (scan_growth(l, &e) < 0) {
            end_logger(l, &e);
            return NULL;
        }
        pthread_mutex_lock(&lock);
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += (time_t)l->interval;
        deadline.tv_nsec += (long)((l->interval - (double)(time_t)l->interval) * 1e9);
        if (deadline.tv_nsec >= 1000000000) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000;
        }
        while (!l->stop && pthread_cond_timedwait(&wake, &lock, &deadline) == 0)
            ;
    }
    pthread_mutex_unlock(&lock);
    return NULL;
}

/* The census's reprs of one type, keyed by fd, tid or mapping start, for matching creations. */
struct entry {
    uint64_t key, end;
    char *repr;
};

struct table {
    bool loaded;
    struct entry *v;
    size_t n, cap;
};

static bool parse_key(enum objects_type t, const char *repr, uint64_t *key, uint64_t *end)
{
    const char *p;
    char *e;

    if (t == OBJECTS_MAPPING) {
        /* "<mapping START-END perms path>" */
        p = strchr(repr, ' ');
        if (!p)
            return false;
        errno = 0;
        *key = strtoull(p + 1, &e, 16);
        if (errno || *e != '-')
            return false;
        *end = strtoull(e + 1, &e, 16);
        return !errno && *e == ' ' && *end > *key;
    }
    p = strstr(repr, t == OBJECTS_THREAD ? "tid=" : "fd=");
    if (!p)
        return false;
    p += t == OBJECTS_THREAD ? 4 : 3;
    if (*p < '0' || *p > '9')
        return false;
    errno = 0;
    *key = strtoull(p, &e, 10);
    *end = *key + 1;
    return !errno && (*e < '0' || *e > '9');
}

struct collect {
    enum objects_type type;
    struct table *t;
};

static int collect_repr(const char *repr, void *userdata)
{
    struct collect *c = userdata;
    struct table *t = c->t;
    uint64_t key, end;

    if (!parse_key(c->type, repr, &key, &end))
        return 0;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        struct entry *v = realloc(t->v, cap * sizeof(*v));

        if (!v)
            return -ENOMEM;
        t->v = v;
        t->cap = cap;
    }
    t->v[t->n].repr = strdup(repr);
    if (!t->v[t->n].repr)
        return -ENOMEM;
    t->v[t->n].key = key;
    t->v[t->n].end = end;
    t->n++;
    return 0;
}

static int by_key(const void *x, const void *y)
{
    const struct entry *a = x, *b = y;

    return a->key < b->key ? -1 : a->key > b->key;
}

static void tables_free(struct table *tables)
{
    for (int t = 0; t < OBJECTS_NTYPES; t++) {
        for (size_t i = 0; i < tables[t].n; i++)
            free(tables[t].v[i].repr);
        free(tables[t].v);
    }
}

/* The repr of the object of type t whose range holds key, loading that type's census on first
 * use; NULL when there is none (closed, exited, unmapped) or it cannot be read. */
static const char *lookup(struct logger *l, struct table *tables, enum objects_type t, uint64_t key)
{
    struct table *tb = &tables[t];
    size_t lo = 0, hi;

    if (!tb->loaded) {
        struct collect c = {t, tb};

        tb->loaded = true;
        if (objects_dump(PROCFS_ROOT, l->target.pid, t, collect_repr, &c, NULL) < 0)
            return NULL;
        /* No object of that type: no array at all, and qsort(NULL) is undefined. */
        if (tb->n)
            qsort(tb->v, tb->n, sizeof(*tb->v), by_key);
    }
    hi = tb->n;
    /* The last entry that starts at or before key. */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (tb->v[mid].key <= key)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0 || key >= tb->v[lo - 1].end)
        return NULL;
    return tb->v[lo - 1].repr;
}

/* What a creation is now: its type and repr (in buf when it has gone), and whether it lives. */
static bool resolve(struct logger *l, struct table *tables, const struct queued *q,
                    enum objects_type *ret_type, const char **ret_repr, char *buf, size_t len)
{
    const char *repr = NULL;
    enum objects_type t = q->type;

    if (t == OBJECTS_THREAD) {
        repr = lookup(l, tables, t, (uint64_t)q->new_tid);
        snprintf(buf, len, "<thread tid=%d (exited)>", (int)q->new_tid);
    } else if (t == OBJECTS_MAPPING) {
        repr = lookup(l, tables, t, q->addr);
        snprintf(buf, len, "<mapping %" PRIx64 "-%" PRIx64 " (unmapped)>", q->addr,
                 q->addr + q->len);
    } else if (q->fds[0] < 0) {
        snprintf(buf, len, "<%s fd=? (not readable at the call)>", objects_type_name(t));
    } else {
        for (int k = q->any_fd_type ? 0 : (int)t; !repr && k <= OBJECTS_OTHER_FD; k++) {
            if (!q->reused)
                repr = lookup(l, tables, k, (uint64_t)q->fds[0]);
            if (repr)
                t = k;
            if (!q->any_fd_type)
                break;
        }
        if (q->fds[1] >= 0)
            snprintf(buf, len, "<%s fd=%d (closed), other end fd=%d>", objects_type_name(t),
                     q->fds[0], q->fds[1]);
        else
            snprintf(buf, len, "<%s fd=%d (closed)>", objects_type_name(t), q->fds[0]);
    }
    *ret_type = t;
    *ret_repr = repr ? repr : buf;
    return repr != NULL;
}

static void log_source(struct logger *l, struct stacks *stacks, struct stacks_thread *th,
                       const struct queued *q, enum objects_type t, const char *repr)
{
    char *frames = NULL, *text;
    size_t len;
    int r;

    th->tid = q->tid;
    snprintf(th->name, sizeof(th->name), "%s", q->thread);
    th->err = 0;
    th->truncated = 0;
    th->nframes = 0;
    r = stacks ? stacks_unwind_regs(stacks, q->regs, q->stack_addr, q->stack, q->stack_len,
                                    th->frames, STACKS_MAX_FRAMES, &th->nframes, &th->truncated)
               : -EBUSY;
    if (r < 0) {
        th->err = r;
        th->nframes = 0;
        th->truncated = 0;
    }
    if (stacks_format_thread(th, &frames) < 0)
        return;
    len = strlen(objects_type_name(t)) + strlen(repr) + strlen(frames) + 32;
    text = malloc(len);
    if (text) {
        snprintf(text, len, "New object: %s %s from:\n%s", objects_type_name(t), repr, frames);
        emit(l, text);
        free(text);
    }
    free(frames);
}

static void queue_clear(struct logger *l)
{
    for (size_t i = 0; i < l->nqueue; i++)
        free(l->queue[i].stack);
    l->nqueue = 0;
}

/* The sources of up to max_objects creations since the last scan, live objects first. */
static void log_sources(struct logger *l)
{
    struct table tables[OBJECTS_NTYPES] = {{0}};
    struct stacks_thread *th = NULL;
    struct unwinder *u = NULL;
    char gone[128];
    unsigned logged = 0;

    if (l->nqueue == 0)
        return;
    th = malloc(sizeof(*th) + STACKS_MAX_FRAMES * sizeof(struct stacks_frame));
    if (!th)
        goto out;
    if (unwinders_get(&l->target, UNWINDERS_DUMP, &u) < 0)
        u = NULL;
    for (int pass = 0; pass < 2 && logged < l->max_objects; pass++) {
        for (size_t i = 0; i < l->nqueue && logged < l->max_objects; i++) {
            enum objects_type t;
            const char *repr;
            bool live = resolve(l, tables, &l->queue[i], &t, &repr, gone, sizeof(gone));

            if (live != (pass == 0))
                continue;
            log_source(l, u ? unwinders_stacks(u) : NULL, th, &l->queue[i], t, repr);
            logged++;
        }
    }
    if (u)
        unwinders_put(u);
out:
    pthread_mutex_lock(&lock);
    l->logged += logged;
    pthread_mutex_unlock(&lock);
    free(th);
    tables_free(tables);
    queue_clear(l);
}

static int enqueue(const struct objsrc_event *ev, void *userdata)
{
    struct logger *l = userdata;
    struct queued *q;

    pthread_mutex_lock(&lock);
    l->traced++;
    pthread_mutex_unlock(&lock);
    if (ev->type <= OBJECTS_OTHER_FD && ev->fds[0] >= 0)
        for (size_t i = 0; i < l->nqueue; i++) {
            q = &l->queue[i];
            if (q->type <= OBJECTS_OTHER_FD && q->fds[0] >= 0 &&
                (q->fds[0] == ev->fds[0] || q->fds[0] == ev->fds[1]))
                q->reused = true;
        }
    if (l->nqueue == l->qcap)
        return 0;
    q = &l->queue[l->nqueue];
    *q = (struct queued){
        .tid = ev->tid,
        .time_ns = ev->time_ns,
        .type = ev->type,
        .any_fd_type = ev->any_fd_type,
        .fds = {ev->fds[0], ev->fds[1]},
        .new_tid = ev->new_tid,
        .addr = ev->addr,
        .len = ev->len,
        .stack_addr = ev->stack_addr,
    };
    memcpy(q->regs, ev->regs, sizeof(q->regs));
    if (ev->stack_len > 0) {
        q->stack = malloc(ev->stack_len);
        if (!q->stack)
            return 0; /* dropped, like one the queue has no room for */
        memcpy(q->stack, ev->stack, ev->stack_len);
        q->stack_len = ev->stack_len;
    }
    if (procfs_read_comm(PROCFS_ROOT, l->target.pid, ev->tid, q->thread) < 0)
        snprintf(q->thread, sizeof(q->thread), "?");
    l->nqueue++;
    return 0;
}

static bool stopping(struct logger *l)
{
    bool stop;

    pthread_mutex_lock(&lock);
    stop = l->stop;
    pthread_mutex_unlock(&lock);
    return stop;
}

/* Collects traced creations until the next scan is due or a stop. 0 at the deadline, 1 on a
 * stop, or objsrc_poll's error, in err (-ESRCH: the target exited). */
static int collect_until(struct logger *l, int64_t deadline_us, struct error *err)
{
    for (;;) {
        struct pollfd p[2] = {{objsrc_fd(l->src), POLLIN, 0}, {l->wakefd, POLLIN, 0}};
        int64_t left = deadline_us - clock_monotonic_us();
        int r;

        if (stopping(l))
            return 1;
        if (left <= 0)
            return objsrc_poll(l->src, 0, enqueue, l, err);
        poll(p, 2, left / 1000 + 1 < RESCAN_WAIT_MS ? (int)(left / 1000 + 1) : RESCAN_WAIT_MS);
        r = objsrc_poll(l->src, 0, enqueue, l, err);
        if (r < 0)
            return r;
    }
}

static void *srclog_main(void *arg)
{
    struct logger *l = arg;
    struct error e;
    int r = 0;

    while (r == 0) {
        r = scan_growth(l, &e);
        if (r < 0)
            break;
        log_sources(l);
        r = collect_until(l, clock_monotonic_us() + (int64_t)(l->interval * 1e6), &e);
    }
    queue_clear(l);
    objsrc_close(l->src);
    l->src = NULL;
    if (r < 0)
        end_logger(l, &e);
    return NULL;
}

/* Joins a thread that ended by itself, so a new start finds the slot free. Called locked. */
static void reap_locked(struct logger *l)
{
    if (l->running && l->ended) {
        pthread_mutex_unlock(&lock);
        pthread_join(l->thread, NULL);
        pthread_mutex_lock(&lock);
        l->running = false;
    }
    if (!l->running) {
        free(l->queue);
        l->queue = NULL;
        if (l->wakefd >= 0)
            close(l->wakefd);
        l->wakefd = -1;
        json_object_put(l->py_peak);
        json_object_put(l->py_seen);
        json_object_put(l->py_run.summary);
        json_object_put(l->py_run.warnings);
        l->py_peak = l->py_seen = l->py_run.summary = l->py_run.warnings = NULL;
    }
}

/* Resets l for a new run of run's target. Called locked, with l not running. */
static void prepare(struct logger *l, const struct run *run, double interval)
{
    const char *kind = l->kind, *what = l->what;

    memset(l, 0, sizeof(*l));
    l->kind = kind;
    l->what = what;
    l->wakefd = -1;
    l->host = run->host;
    l->agent = run->agent;
    l->target = run->target;
    snprintf(l->spec, sizeof(l->spec), "%s", run->target_spec);
    l->interval = interval;
    l->started_mono_us = clock_monotonic_us();
    l->py_peak = json_object_new_object();
    l->py_run.host = run->host;
    l->py_run.agent = run->agent;
    l->py_run.has_target = true;
    l->py_run.target = run->target;
    snprintf(l->py_run.target_spec, sizeof(l->py_run.target_spec), "%s", run->target_spec);
    snprintf(l->py_run.action_name, sizeof(l->py_run.action_name), "%s",
             l == &srclog ? "start_log_object_sources" : "start_log_objects");
}

int watch_start_objects(struct run *run, double interval, char *err, size_t errlen)
{
    int r = 0;

    pthread_mutex_lock(&lock);
    reap_locked(&objlog);
    if (objlog.running) {
        snprintf(err, errlen, "Object logging already started");
        r = -EEXIST;
        goto out;
    }
    prepare(&objlog, run, interval);
    r = -pthread_create(&objlog.thread, NULL, objlog_main, &objlog);
    if (r < 0) {
        snprintf(err, errlen, "cannot start the object logger: %s", strerror(-r));
        goto out;
    }
    objlog.running = true;
out:
    pthread_mutex_unlock(&lock);
    return r;
}

/* The sentence for objsrc_open's error e: what the agent needs, then what the engine found in
 * the way (e's reason), when it says more. */
static void tracing_error(const struct target *t, const struct error *e, char *err, size_t errlen)
{
    size_t len;

    switch (e->code) {
    case -ENOENT:
        snprintf(err, errlen,
                 "Object source logging needs the kernel's system call tracepoints "
                 "(raw_syscalls:sys_exit in tracefs) and found none: they need a kernel built with "
                 "CONFIG_FTRACE_SYSCALLS and tracefs mounted on /sys/kernel/tracing (the agent "
                 "mounts it when it may)");
        break;
    case -EPERM:
    case -EACCES:
        snprintf(err, errlen,
                 "Object source logging is not permitted: tracing the system calls "
                 "of process %d with perf_event needs root, or CAP_PERFMON (CAP_SYS_ADMIN before "
                 "Linux 5.8) and read access to /sys/kernel/tracing",
                 (int)t->pid);
        break;
    case -ESRCH:
        snprintf(err, errlen, "Object source logging: target process %d has exited", (int)t->pid);
        break;
    case -EMFILE:
    case -ENFILE:
        snprintf(err, errlen,
                 "Object source logging: process %d has too many threads to trace "
                 "(one perf_event descriptor per thread and CPU); raise the agent's open file "
                 "limit (LimitNOFILE)",
                 (int)t->pid);
        break;
    default:
        snprintf(err, errlen, "Object source logging: cannot trace process %d: %s", (int)t->pid,
                 e->reason[0] ? e->reason : strerror(-e->code));
        return;
    }
    len = strlen(err);
    if (e->reason[0] && len < errlen)
        snprintf(err + len, errlen - len, " (%s)", e->reason);
}

int watch_start_sources(struct run *run, double interval, unsigned max_objects, char *err,
                        size_t errlen)
{
    const struct target *t = &run->target;
    struct objsrc *src = NULL;
    struct error e;
    int r = 0;

    pthread_mutex_lock(&lock);
    reap_locked(&srclog);
    if (srclog.running) {
        snprintf(err, errlen, "Object source logging already started");
        r = -EEXIST;
        goto out;
    }
    r = objsrc_open(t->pid, &src, &e);
    if (r < 0) {
        tracing_error(t, &e, err, errlen);
        goto out;
    }
    prepare(&srclog, run, interval);
    srclog.max_objects = max_objects;
    srclog.qcap = 4 * (size_t)max_objects < QUEUE_MIN   ? QUEUE_MIN
                  : 4 * (size_t)max_objects > QUEUE_MAX ? QUEUE_MAX
                                                        : 4 * (size_t)max_objects;
    srclog.queue = calloc(srclog.qcap, sizeof(*srclog.queue));
    srclog.wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (!srclog.queue || srclog.wakefd < 0) {
        r = srclog.queue ? -errno : -ENOMEM;
        snprintf(err, errlen, "cannot start the object source logger: %s", strerror(-r));
        goto out;
    }
    srclog.src = src;
    r = -pthread_create(&srclog.thread, NULL, srclog_main, &srclog);
    if (r < 0) {
        srclog.src = NULL;
        snprintf(err, errlen, "cannot start the object source logger: %s", strerror(-r));
        goto out;
    }
    src = NULL;
    srclog.running = true;
out:
    if (r < 0 && r != -EEXIST)
        reap_locked(&srclog);
    pthread_mutex_unlock(&lock);
    objsrc_close(src);
    return r;
}

static int stop_logger(struct logger *l)
{
    uint64_t one = 1;

    pthread_mutex_lock(&lock);
    reap_locked(l);
    if (!l->running) {
        pthread_mutex_unlock(&lock);
        return -ENOENT;
    }
    l->stop = true;
    atomic_store(&l->py_run.cancel, 1); /* a Python scan under way is withdrawn at once */
    pthread_cond_broadcast(&wake);
    if (l->wakefd >= 0 && write(l->wakefd, &one, sizeof(one)) < 0)
        one = 0; /* the counter is full: it is readable anyway */
    pthread_mutex_unlock(&lock);
    pthread_join(l->thread, NULL);
    pthread_mutex_lock(&lock);
    l->running = false;
    reap_locked(l);
    pthread_mutex_unlock(&lock);
    return 0;
}

int watch_stop_objects(void)
{
    return stop_logger(&objlog);
}

int watch_stop_sources(void)
{
    return stop_logger(&srclog);
}

void watch_stop_all(void)
{
    stop_logger(&objlog);
    stop_logger(&srclog);
}

static void describe_one(const struct logger *l, struct json_object *array)
{
    struct json_object *o;

    if (!l->running || l->ended)
        return;
    o = json_object_new_object();
    json_object_object_add(o, "logger", json_object_new_string(l->kind));
    json_object_object_add(o, "target", json_object_new_string(l->spec));
    json_object_object_add(o, "pid", json_object_new_int(l->target.pid));
    json_object_object_add(o, "scan_interval", run_json_decimal(l->interval, 3));
    json_object_object_add(o, "scans", json_object_new_int64((int64_t)l->scans));
    if (l == &srclog) {
        json_object_object_add(o, "max_objects", json_object_new_int((int)l->max_objects));
        json_object_object_add(o, "traced", json_object_new_int64((int64_t)l->traced));
        json_object_object_add(o, "logged", json_object_new_int64((int64_t)l->logged));
    }
    json_object_array_add(array, o);
}

void watch_describe(struct json_object *array)
{
    pthread_mutex_lock(&lock);
    describe_one(&objlog, array);
    describe_one(&srclog, array);
    pthread_mutex_unlock(&lock);
}

static void task_line(const struct logger *l, char *line, size_t len)
{
    char extra[96] = "";

    line[0] = '\0';
    if (!l->running || l->ended)
        return;
    if (l == &srclog)
        snprintf(extra, sizeof(extra), " max_objects=%u traced=%llu", l->max_objects,
                 (unsigned long long)l->traced);
    snprintf(line, len,
             "Task: <logger %s target=%s pid=%d scan_interval=%.3fs%s scans=%llu "
             "elapsed=%.3fs>",
             l->kind, l->spec, (int)l->target.pid, l->interval, extra, (unsigned long long)l->scans,
             (double)(clock_monotonic_us() - l->started_mono_us) / 1e6);
}

void watch_tasks(int (*fn)(const char *line, void *userdata), void *userdata)
{
    char lines[2][512];

    pthread_mutex_lock(&lock);
    task_line(&objlog, lines[0], sizeof(lines[0]));
    task_line(&srclog, lines[1], sizeof(lines[1]));
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < 2; i++)
        if (lines[i][0])
            fn(lines[i], userdata);
}
