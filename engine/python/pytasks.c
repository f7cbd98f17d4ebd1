/* Reading asyncio tasks from outside (see pytasks.h), the way CPython's own
 * Modules/_remote_debugging does for `python -m asyncio ps`. Every pointer comes from a process
 * that may be changing under us: lists and chains are bounded, every object read is checked
 * (type names, string and number shapes), and a failed check ends that part as truncated. */
#include <errno.h>
#include <gelf.h>
#include <libelf.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "os/procfs.h"
#include "python/pydebug.h"
#include "python/pytasks.h"
#include "python/pywalk.h"

#define SECTION ".AsyncioDebug" /* GENERATE_DEBUG_SECTION(AsyncioDebug, ...) on Linux */
#define ASYNCIO_DEBUG_BYTES 104 /* _Py_AsyncioModuleDebugOffsets: 13 uint64_t (3.14, 3.15) */
#define TASK_SIZE_MAX 512       /* sizeof(TaskObj) is 168 in 3.14 and 3.15 */
#define SET_SLOTS_MAX 65536     /* slots of an awaited-by set believed */
#define CALLBACKS_MAX (1 << 20) /* entries of a future's callback list believed */
#define NESTED_MAX 3            /* wait_for=<Task ... wait_for=<...>> levels written out */
#define TYPE_NAME_MAX 128
#define PTR_MASK (~(uint64_t)3) /* _PyStackRef tag bits (Py_TAG_BITS, pycore_stackref.h) */

/* Objects outside _Py_DebugOffsets, the same from 3.11 to 3.15 (checked with offsetof against
 * Debian's 3.14.10 and 3.15.2 headers): */
#define OB_TYPE 8            /* PyObject.ob_type */
#define TP_NAME 24           /* PyTypeObject.tp_name, a char * */
#define VAR_SIZE 16          /* PyVarObject.ob_size */
#define LIST_ITEMS 24        /* PyListObject.ob_item */
#define TUPLE_ITEMS 32       /* PyTupleObject.ob_item[] */
#define FUNC_QUALNAME 40     /* PyFunctionObject.func_qualname (Include/cpython/funcobject.h) */
#define FUNC_CODE 48         /* PyFunctionObject.func_code */
#define METHOD_FUNC 16       /* PyMethodObject.im_func (Include/cpython/classobject.h) */
#define CFUNC_DEF 16         /* PyCFunctionObject.m_ml (Include/cpython/methodobject.h) */
#define CFUNC_SELF 24        /* PyCFunctionObject.m_self */
#define GEN_QUALNAME_AFTER 8 /* PyGenObject.gi_qualname follows gi_name (pycore_genobject.h) */
#define LONG_SUBCLASS (1ull << 24) /* Py_TPFLAGS_LONG_SUBCLASS (Include/object.h) */
#define LLIST_NEXT 0               /* struct llist_node {next, prev} (pycore_llist.h) */
/* FutureObj_HEAD of Modules/_asynciomodule.c (3.14, 3.15): PyObject_HEAD, then fut_loop,
 * fut_callback0, fut_context0, fut_callbacks, ... ten PyObject * before fut_awaited_by, then
 * fut_state, fut_is_task, fut_awaited_by_is_set; TaskObj goes on with two bitfields, int
 * task_num_cancels_requested, task_fut_waiter, task_coro, task_name. Only the offsets of
 * awaited_by, is_task, awaited_by_is_set, coro and name are published: the rest is placed
 * from them, and they are checked to sit where this layout says. */
#define FUT_CALLBACK0 24
#define FUT_CALLBACKS 40
#define FUT_AWAITED_BY 96
enum { FUT_PENDING, FUT_CANCELLED, FUT_FINISHED }; /* fut_state */

/* Where, inside _Py_DebugOffsets (Include/internal/pycore_debug_offsets.h), the values this
 * reader needs beyond pylayout's are; computed with offsetof against Debian's 3.14.10 and
 * 3.15.2 headers. And the frame states of enum _framestate (pycore_frame.h). */
struct shape {
    unsigned minor;
    uint16_t stackpointer;                       /* interpreter_frame.stackpointer */
    uint16_t tp_flags;                           /* type_object.tp_flags */
    uint16_t set_used, set_table, set_mask;      /* set_object */
    uint16_t long_tag, long_digit;               /* long_object.lv_tag, ob_digit */
    uint16_t gi_name, gi_iframe, gi_frame_state; /* gen_object */
    int8_t yield_from, done, cleared; /* FRAME_SUSPENDED_YIELD_FROM, first finished, CLEARED */
    uint8_t yf_depth;                 /* _PyGen_yf: the awaited object's depth on the stack */
};

static const struct shape shapes[] = {
    {14, 296, 440, 504, 512, 520, 576, 584, 672, 680, 688, -1, 1, 4, 1},
    /* 3.15: states renumbered from 0 (CREATED) with YIELD_FROM_LOCKED added; _PyGen_yf peeks
     * two deep (Modules/_remote_debugging/asyncio.c reads stackpointer[-2]). */
    {15, 360, 504, 600, 608, 616, 672, 680, 800, 808, 816, 2, 5, 5, 2},
};

/* The values read from the target. */
struct offs {
    const struct shape *s;
    uint64_t stackpointer, tp_flags, set_used, set_table, set_mask, long_tag, long_digit;
    uint64_t gi_name, gi_iframe, gi_frame_state;
    uint64_t task_size, task_name, task_awaited_by, task_is_task, task_awaited_by_is_set;
    uint64_t task_coro, task_node, interp_tasks_head;
    uint64_t ts_running_loop, ts_running_task, ts_tasks_head;
    uint64_t fut_state, task_cancels, task_fut_waiter; /* placed, see FutureObj_HEAD above */
};

struct reader {
    struct pywalk *w;
    const struct pylayout *l;
    struct offs o;
    struct pytasks_task *tasks;
    size_t n, cap;
    uint64_t *ids; /* the tasks' ids, sorted, for awaited-by lookups */
    uint64_t interps[PYFRAMES_MAX_INTERPS];
    size_t ninterps;
    uint64_t running[PYFRAMES_MAX_THREADS];
    size_t nrunning;
    bool cut; /* a task list was cut: every task gets truncated */
};

/* A repr being written, cut at PYTASKS_REPR_MAX. */
struct text {
    char s[PYTASKS_REPR_MAX];
    size_t len;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct text *t, const char *fmt, ...)
{
    va_list ap;
    size_t room = sizeof(t->s) - t->len;

    va_start(ap, fmt);
    int n = vsnprintf(t->s + t->len, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        t->len += (size_t)n < room ? (size_t)n : room - 1;
}

static uint64_t u64_at(const unsigned char *b, size_t off)
{
    uint64_t v;
    memcpy(&v, b + off, sizeof(v));
    return v;
}

/* *ret is 0 when the read fails. */
static int rd_u64(const struct reader *c, uint64_t addr, uint64_t *ret)
{
    unsigned char b[8] = {0};
    int r = pywalk_read(c->w, addr, b, sizeof(b));

    *ret = r == 0 ? u64_at(b, 0) : 0;
    return r;
}

/* ---- finding _AsyncioDebug ---- */

/* File offset and size of the SECTION of the ELF file fd. */
static int section_of(int fd, uint64_t *ret_off, uint64_t *ret_size)
{
    size_t shstrndx;
    int r = -ENOENT;

    elf_version(EV_CURRENT);
    Elf *e = elf_begin(fd, ELF_C_READ_MMAP, NULL);
    if (!e || elf_kind(e) != ELF_K_ELF || elf_getshdrstrndx(e, &shstrndx) != 0)
        goto out;
    for (Elf_Scn *s = elf_nextscn(e, NULL); s; s = elf_nextscn(e, s)) {
        GElf_Shdr sh;
        const char *name;
        if (!gelf_getshdr(s, &sh) || sh.sh_type != SHT_PROGBITS)
            continue;
        name = elf_strptr(e, shstrndx, sh.sh_name);
        if (name && strcmp(name, SECTION) == 0) {
            *ret_off = sh.sh_offset;
            *ret_size = sh.sh_size;
            r = 0;
            break;
        }
    }
out:
    elf_end(e);
    return r;
}

/* Where _AsyncioDebug is in pid: the SECTION of a mapped file whose name has "python" in it (the
 * executable or libpython from 3.15, lib-dynload's _asyncio.cpython-314-*.so in Debian's 3.14),
 * at the address that maps its file offset. */
static int find_asyncio_debug(pid_t pid, uint64_t *ret)
{
    struct procfs_map *maps = NULL;
    size_t n = 0;
    int r = procfs_read_maps(PROCFS_ROOT, pid, &maps, &n);

    if (r < 0)
        return r;
    r = -ENOENT;
    for (size_t i = 0; i < n && r == -ENOENT; i++) {
        const struct procfs_map *m = &maps[i];
        const char *base = strrchr(m->path, '/');
        uint64_t off, size;
        bool seen = false;
        if (m->inode == 0 || !base || !strstr(base, "python"))
            continue;
        for (size_t j = 0; j < i && !seen; j++)
            seen = maps[j].inode == m->inode && strcmp(maps[j].path, m->path) == 0;
        int fd = seen ? -1 : pyframes_open_mapped(pid, m);
        if (fd < 0)
            continue;
        int s = section_of(fd, &off, &size);
        close(fd);
        if (s < 0 || size < ASYNCIO_DEBUG_BYTES)
            continue;
        for (size_t j = 0; j < n && r == -ENOENT; j++) {
            const struct procfs_map *k = &maps[j];
            if (k->inode == m->inode && strcmp(k->path, m->path) == 0 && off >= k->offset &&
                off - k->offset + ASYNCIO_DEBUG_BYTES <= k->end - k->start) {
                *ret = k->start + (off - k->offset);
                r = 0;
            }
        }
    }
    procfs_maps_free(maps, n);
    return r;
}

/* The offsets: those of _Py_DebugOffsets at the start of _PyRuntime, those of _AsyncioDebug at
 * at, each checked against the layout its struct is known to have. */
static int read_offsets(struct reader *c, uint64_t at, struct error *err)
{
    const size_t nshapes = sizeof(shapes) / sizeof(shapes[0]);
    unsigned char d[PYDEBUG_READ_MAX], a[ASYNCIO_DEBUG_BYTES];
    const struct shape *s = &shapes[nshapes - 1];
    struct offs *o = &c->o;
    int r = pywalk_read(c->w, pywalk_addrs(c->w)->runtime, d, sizeof(d));

    if (r == 0)
        r = pywalk_read(c->w, at, a, sizeof(a));
    if (r < 0)
        return error_set(err, r, "the asyncio offsets of the target cannot be read");
    for (size_t i = 0; i < nshapes; i++)
        if (shapes[i].minor == c->l->minor)
            s = &shapes[i];
    o->s = s;
    o->stackpointer = u64_at(d, s->stackpointer);
    o->tp_flags = u64_at(d, s->tp_flags);
    o->set_used = u64_at(d, s->set_used);
    o->set_table = u64_at(d, s->set_table);
    o->set_mask = u64_at(d, s->set_mask);
    o->long_tag = u64_at(d, s->long_tag);
    o->long_digit = u64_at(d, s->long_digit);
    o->gi_name = u64_at(d, s->gi_name);
    o->gi_iframe = u64_at(d, s->gi_iframe);
    o->gi_frame_state = u64_at(d, s->gi_frame_state);
    /* _Py_AsyncioModuleDebugOffsets: asyncio_task_object {size, task_name, task_awaited_by,
     * task_is_task, task_awaited_by_is_set, task_coro, task_node}, asyncio_interpreter_state
     * {size, asyncio_tasks_head}, asyncio_thread_state {size, asyncio_running_loop,
     * asyncio_running_task, asyncio_tasks_head} (Modules/_asynciomodule.c). */
    o->task_size = u64_at(a, 0);
    o->task_name = u64_at(a, 8);
    o->task_awaited_by = u64_at(a, 16);
    o->task_is_task = u64_at(a, 24);
    o->task_awaited_by_is_set = u64_at(a, 32);
    o->task_coro = u64_at(a, 40);
    o->task_node = u64_at(a, 48);
    o->interp_tasks_head = u64_at(a, 64);
    o->ts_running_loop = u64_at(a, 80);
    o->ts_running_task = u64_at(a, 88);
    o->ts_tasks_head = u64_at(a, 96);
    o->fut_state = o->task_awaited_by + 8;
    o->task_cancels = o->task_coro - 12;
    o->task_fut_waiter = o->task_coro - 8;
    uint64_t small = PYLAYOUT_SPAN_MAX, big = PYLAYOUT_FIELD_MAX;
    if (o->task_size > TASK_SIZE_MAX || o->task_awaited_by != FUT_AWAITED_BY ||
        o->task_is_task != o->task_awaited_by + 12 ||
        o->task_awaited_by_is_set != o->task_is_task + 1 ||
        o->task_coro != o->task_awaited_by + 32 || o->task_name != o->task_coro + 8 ||
        o->task_node < o->task_name + 8 || o->task_node + 16 > o->task_size ||
        o->interp_tasks_head > big || o->ts_running_loop > big || o->ts_running_task > big ||
        o->ts_tasks_head > big || o->stackpointer > small || o->tp_flags > small ||
        o->set_used > 248 || o->set_table > 248 || o->set_mask > 248 || o->long_tag > small ||
        o->long_digit > small || o->gi_name > small || o->gi_iframe > small ||
        o->gi_frame_state > small)
        return error_set(err, -EOPNOTSUPP,
                         "the asyncio offsets of Python 3.%u are not laid out as "
                         "3.14's and 3.15's are",
                         c->l->minor);
    return 0;
}

/* ---- the task lists ---- */

static int add_task(struct reader *c, uint64_t id, pid_t tid)
{
    if (c->n == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 64;
        struct pytasks_task *nt = realloc(c->tasks, ncap * sizeof(*nt));
        if (!nt)
            return -ENOMEM;
        c->tasks = nt;
        c->cap = ncap;
    }
    memset(&c->tasks[c->n], 0, sizeof(c->tasks[0]));
    c->tasks[c->n].id = id;
    c->tasks[c->n++].tid = tid;
    return 0;
}

/* The tasks of the circular list whose head node is at head (a struct llist_node). */
static int read_list(struct reader *c, uint64_t head, pid_t tid)
{
    uint64_t node;

    if (rd_u64(c, head + LLIST_NEXT, &node) < 0) {
        c->cut = true;
        return 0;
    }
    while (node != head) {
        if (!node || node < c->o.task_node || c->n == PYTASKS_MAX_TASKS) {
            c->cut = true;
            break;
        }
        int r = add_task(c, node - c->o.task_node, tid);
        if (r < 0)
            return r;
        if (rd_u64(c, node + LLIST_NEXT, &node) < 0) {
            c->cut = true;
            break;
        }
    }
    return 0;
}

static int on_thread(void *ctx, uint64_t interp, uint64_t ts, pid_t tid)
{
    struct reader *c = ctx;
    uint64_t loop = 0, task = 0;
    bool known = false;

    for (size_t i = 0; i < c->ninterps && !known; i++)
        known = c->interps[i] == interp;
    if (!known && c->ninterps < PYFRAMES_MAX_INTERPS)
        c->interps[c->ninterps++] = interp;
    if (rd_u64(c, ts + c->o.ts_running_loop, &loop) == 0 && loop &&
        rd_u64(c, ts + c->o.ts_running_task, &task) == 0 && task &&
        c->nrunning < PYFRAMES_MAX_THREADS)
        c->running[c->nrunning++] = task;
    return read_list(c, ts + c->o.ts_tasks_head, tid);
}

/* ---- objects ---- */

/* A NUL-ended C string of the target at addr, of printable ASCII. */
static int read_cstr(const struct reader *c, uint64_t addr, char *buf, size_t len)
{
    /* Short strings near the end of a mapping: try a whole buffer, then a small one. */
    size_t n = len - 1;
    int r = pywalk_read(c->w, addr, buf, n);

    if (r < 0 && n > 32)
        r = pywalk_read(c->w, addr, buf, n = 32);
    if (r < 0)
        return r;
    buf[n] = '\0';
    size_t k = strlen(buf);
    if (k == 0 || k == n)
        return -EBADMSG;
    for (size_t i = 0; i < k; i++)
        if (buf[i] < 0x20 || buf[i] > 0x7e)
            return -EBADMSG;
    return 0;
}

/* The tp_name of obj's type ("_asyncio.Task", "method"). */
static int type_name(const struct reader *c, uint64_t obj, char *buf, size_t len)
{
    uint64_t type, name;
    int r = rd_u64(c, obj + OB_TYPE, &type);

    if (r == 0)
        r = rd_u64(c, type + TP_NAME, &name);
    return r == 0 ? read_cstr(c, name, buf, len) : r;
}

/* What __name__ of a class says: tp_name after its last dot. */
static const char *short_name(const char *tp_name)
{
    const char *dot = strrchr(tp_name, '.');
    return dot ? dot + 1 : tp_name;
}

/* The str at addr into t. */
static int put_str(const struct reader *c, uint64_t addr, struct text *t)
{
    char *s;
    int r = pywalk_str(c->w, addr, &s);

    if (r == 0) {
        put(t, "%s", s);
        free(s);
    }
    return r;
}

/* A task's name: a str, or (3.13 on, until get_name is called) the int n of "Task-n". */
static int read_name(const struct reader *c, uint64_t obj, char *out, size_t len)
{
    uint64_t type, flags, tag, digits;
    char *s;

    if (pywalk_str(c->w, obj, &s) == 0) {
        snprintf(out, len, "%s", s);
        free(s);
        return 0;
    }
    /* lv_tag: the number of digits << 3, sign in the low bits (0 positive, 1 zero);
     * digits of 30 bits (Include/cpython/longintrepr.h, 3.12 on). */
    if (rd_u64(c, obj + OB_TYPE, &type) < 0 || rd_u64(c, type + c->o.tp_flags, &flags) < 0 ||
        !(flags & LONG_SUBCLASS) || rd_u64(c, obj + c->o.long_tag, &tag) < 0)
        return -EBADMSG;
    if ((tag & 3) == 1) {
        snprintf(out, len, "Task-0");
        return 0;
    }
    if ((tag & 3) != 0 || (tag >> 3) == 0 || (tag >> 3) > 2 ||
        rd_u64(c, obj + c->o.long_digit, &digits) < 0)
        return -EBADMSG;
    uint64_t v = (digits & 0x3fffffff) | ((tag >> 3) == 2 ? (digits >> 32 & 0x3fffffff) << 30 : 0);
    snprintf(out, len, "Task-%llu", (unsigned long long)v);
    return 0;
}

/* A str as repr() quotes it: single quotes unless it holds one and no double quote. */
static void put_quoted(struct text *t, const char *s)
{
    char q = strchr(s, '\'') && !strchr(s, '"') ? '"' : '\'';

    put(t, "%c", q);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\\' || *p == (unsigned char)q)
            put(t, "\\%c", *p);
        else if (*p == '\n')
            put(t, "\\n");
        else if (*p == '\t')
            put(t, "\\t");
        else if (*p == '\r')
            put(t, "\\r");
        else if (*p < 0x20 || *p == 0x7f)
            put(t, "\\x%02x", *p);
        else
            put(t, "%c", *p);
    }
    put(t, "%c", q);
}

/* One callback as asyncio's format_helpers._format_callback_source writes it: the callable's
 * qualified name, "()", and for a plain function where it is defined. "..." for callables of
 * other kinds (partials, callable objects), whose repr cannot be made up from outside. */
static void put_callback(const struct reader *c, uint64_t cb, struct text *t)
{
    const struct pylayout *l = c->l;
    char tn[TYPE_NAME_MAX], name[TYPE_NAME_MAX];
    uint64_t func = 0, code, at, self = 0;
    unsigned char co[PYLAYOUT_SPAN_MAX];

    if (type_name(c, cb, tn, sizeof(tn)) < 0) {
        put(t, "...");
    } else if (strcmp(tn, "method") == 0) {
        if (rd_u64(c, cb + METHOD_FUNC, &func) < 0 || rd_u64(c, func + FUNC_QUALNAME, &at) < 0 ||
            put_str(c, at, t) < 0)
            put(t, "...");
        else
            put(t, "()");
    } else if (strcmp(tn, "function") == 0) {
        if (rd_u64(c, cb + FUNC_QUALNAME, &at) < 0 || put_str(c, at, t) < 0) {
            put(t, "...");
            return;
        }
        put(t, "()");
        if (rd_u64(c, cb + FUNC_CODE, &code) < 0 || pywalk_read(c->w, code, co, l->co_span) < 0 ||
            u64_at(co, l->ob_type) != pywalk_addrs(c->w)->code_type)
            return;
        int32_t first;
        memcpy(&first, co + l->co_firstlineno, sizeof(first));
        put(t, " at ");
        if (put_str(c, u64_at(co, l->co_filename), t) == 0)
            put(t, ":%d", (int)first);
    } else if (strcmp(tn, "builtin_function_or_method") == 0) {
        /* __qualname__ of a builtin method: the class of its self, a dot, ml_name. */
        if (rd_u64(c, cb + CFUNC_DEF, &at) < 0 || rd_u64(c, at, &at) < 0 ||
            read_cstr(c, at, name, sizeof(name)) < 0 || rd_u64(c, cb + CFUNC_SELF, &self) < 0) {
            put(t, "...");
            return;
        }
        if (self && type_name(c, self, tn, sizeof(tn)) == 0 && strcmp(tn, "module") != 0)
            put(t, "%s.", short_name(tn));
        put(t, "%s()", name);
    } else {
        put(t, "...");
    }
}

/* Callback i of a future: callback0 first, then the (callback, context) tuples of callbacks. */
static int callback_at(const struct reader *c, const unsigned char *fut, uint64_t list, size_t i,
                       uint64_t *ret)
{
    uint64_t items, tuple;

    if (u64_at(fut, FUT_CALLBACK0)) {
        if (i == 0) {
            *ret = u64_at(fut, FUT_CALLBACK0);
            return 0;
        }
        i--;
    }
    int r = rd_u64(c, list + LIST_ITEMS, &items);
    if (r == 0)
        r = rd_u64(c, items + 8 * i, &tuple);
    return r == 0 ? rd_u64(c, tuple + TUPLE_ITEMS, ret) : r;
}

/* " cb=[...]" as base_futures._format_callbacks writes it: one, two, or the first, how many
 * more, and the last. */
static void put_callbacks(const struct reader *c, const unsigned char *fut, struct text *t)
{
    uint64_t list = u64_at(fut, FUT_CALLBACKS), len = 0, cb;
    size_t n = u64_at(fut, FUT_CALLBACK0) ? 1 : 0;

    if (list && rd_u64(c, list + VAR_SIZE, &len) < 0)
        len = 0;
    if (len > CALLBACKS_MAX)
        len = 0;
    n += (size_t)len;
    if (n == 0)
        return;
    size_t show[2] = {0, n - 1};
    put(t, " cb=[");
    for (size_t k = 0; k < (n == 1 ? 1u : 2u); k++) {
        if (k == 1 && n > 2)
            put(t, ", <%zu more>, ", n - 2);
        else if (k == 1)
            put(t, ", ");
        if (callback_at(c, fut, list, show[k], &cb) == 0)
            put_callback(c, cb, t);
        else
            put(t, "...");
    }
    put(t, "]");
}

/* The coroutine repr of coroutines._format_coroutine: "QUALNAME() running at FILE:LINE" while
 * it has a frame, "QUALNAME() done, defined at FILE:LINE" after. */
static void put_coro(struct reader *c, uint64_t coro, struct text *t)
{
    struct pyframes_frame f = {0};
    uint64_t qualname;
    int8_t state = 0;

    if (rd_u64(c, coro + c->o.gi_name + GEN_QUALNAME_AFTER, &qualname) < 0 ||
        pywalk_read(c->w, coro + c->o.gi_frame_state, &state, 1) < 0 ||
        put_str(c, qualname, t) < 0) {
        put(t, "...");
        return;
    }
    put(t, "()");
    int r = pywalk_frame(c->w, coro + c->o.gi_iframe, &f);
    bool done = c->o.s->done <= state;
    if (r == 0 && !done)
        put(t, " running at %s:%d", f.filename, f.line);
    else if (r == 0)
        put(t, " done, defined at %s:%d", f.filename, f.firstlineno);
    else if (done)
        put(t, " done");
    pywalk_frame_clear(&f);
}

static const char *state_word(int32_t state)
{
    return state == FUT_PENDING ? "pending" : state == FUT_CANCELLED ? "cancelled" : "finished";
}

/* A future's or task's repr, as base_futures._future_repr and base_tasks._task_repr write it:
 * "<Task STATE name='NAME' coro=<...> wait_for=<...> cb=[...]>". A finished one's result or
 * exception is not written (its repr is the object's own code). Other objects (what a task may
 * wait for besides futures) as "<TYPE object at ADDR>". */
static void put_future(struct reader *c, uint64_t obj, unsigned depth, struct text *t)
{
    const struct offs *o = &c->o;
    unsigned char b[TASK_SIZE_MAX];
    char tn[TYPE_NAME_MAX];
    int32_t state, cancels;

    if (type_name(c, obj, tn, sizeof(tn)) < 0) {
        put(t, "<...>");
        return;
    }
    bool task = strcmp(tn, "_asyncio.Task") == 0;
    if ((!task && strcmp(tn, "_asyncio.Future") != 0) ||
        pywalk_read(c->w, obj, b, task ? o->task_size : o->task_awaited_by_is_set + 1) < 0) {
        put(t, "<%s object at %#llx>", tn, (unsigned long long)obj);
        return;
    }
    memcpy(&state, b + o->fut_state, sizeof(state));
    memcpy(&cancels, b + o->task_cancels, sizeof(cancels));
    /* _task_repr_info: a pending task asked to cancel is "cancelling". */
    bool cancelling = task && state == FUT_PENDING && cancels > 0;
    put(t, "<%s %s", short_name(tn), cancelling ? "cancelling" : state_word(state));
    if (task) {
        char name[PYTASKS_NAME_MAX];
        put(t, " name=");
        if (read_name(c, u64_at(b, o->task_name), name, sizeof(name)) == 0)
            put_quoted(t, name);
        else
            put(t, "...");
        if (u64_at(b, o->task_coro)) {
            put(t, " coro=<");
            put_coro(c, u64_at(b, o->task_coro), t);
            put(t, ">");
        }
        if (u64_at(b, o->task_fut_waiter)) {
            put(t, " wait_for=");
            if (depth < NESTED_MAX)
                put_future(c, u64_at(b, o->task_fut_waiter), depth + 1, t);
            else
                put(t, "<...>");
        }
    }
    put_callbacks(c, b, t);
    put(t, ">");
}

/* ---- one task ---- */

/* The coroutine chain from coro down its awaits (parse_coro_chain of _remote_debugging): each
 * coroutine's frame, then, while it is suspended in an await of a coroutine of its own type, that
 * one; innermost first in the end. */
static int read_chain(struct reader *c, uint64_t coro, struct pytasks_task *t)
{
    const struct shape *s = c->o.s;
    size_t cap = 0;

    for (unsigned depth = 0; coro; depth++) {
        struct pyframes_frame f = {0};
        uint64_t type, sp, yf, yf_type;
        int8_t state = 0;
        if (depth == PYTASKS_MAX_DEPTH) {
            t->truncated = true;
            break;
        }
        if (rd_u64(c, coro + OB_TYPE, &type) < 0 ||
            pywalk_read(c->w, coro + c->o.gi_frame_state, &state, 1) < 0) {
            t->truncated = true;
            break;
        }
        if (state == s->cleared)
            break;
        int r = pywalk_frame(c->w, coro + c->o.gi_iframe, &f);
        if (r == -ENOMEM)
            return r;
        if (r < 0)
            t->truncated = true;
        if (r != 0)
            break;
        if (t->nstack == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            struct pyframes_frame *nf = realloc(t->stack, ncap * sizeof(*nf));
            if (!nf) {
                pywalk_frame_clear(&f);
                return -ENOMEM;
            }
            t->stack = nf;
            cap = ncap;
        }
        t->stack[t->nstack++] = f;
        if (state != s->yield_from ||
            rd_u64(c, coro + c->o.gi_iframe + c->o.stackpointer, &sp) < 0 ||
            (sp &= PTR_MASK) < 8u * s->yf_depth || rd_u64(c, sp - 8u * s->yf_depth, &yf) < 0 ||
            !(yf &= PTR_MASK) || rd_u64(c, yf + OB_TYPE, &yf_type) < 0 || yf_type != type)
            break;
        coro = yf;
    }
    for (size_t i = 0; i < t->nstack / 2; i++) {
        struct pyframes_frame x = t->stack[i];
        t->stack[i] = t->stack[t->nstack - 1 - i];
        t->stack[t->nstack - 1 - i] = x;
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static bool is_task_id(const struct reader *c, uint64_t id)
{
    return bsearch(&id, c->ids, c->n, sizeof(*c->ids), cmp_u64) != NULL;
}

static int add_awaiter(struct pytasks_task *t, uint64_t id)
{
    if (t->nawaiters == PYTASKS_MAX_AWAITERS) {
        t->truncated = true;
        return 0;
    }
    if (!t->awaiters) {
        t->awaiters = malloc(PYTASKS_MAX_AWAITERS * sizeof(*t->awaiters));
        if (!t->awaiters)
            return -ENOMEM;
    }
    t->awaiters[t->nawaiters++] = id;
    return 0;
}

/* The task's awaited-by: one object, or a set of them (set entries {key, hash}, 16 bytes; only
 * keys that are tasks of the lists count, which leaves out the set's dummy entries). */
static int read_awaiters(struct reader *c, const unsigned char *b, struct pytasks_task *t)
{
    const struct offs *o = &c->o;
    uint64_t ab = u64_at(b, o->task_awaited_by);
    unsigned char h[256];

    if (!ab)
        return 0;
    if (!b[o->task_awaited_by_is_set])
        return add_awaiter(t, ab);
    size_t span = 8 + (o->set_used > o->set_table ? o->set_used : o->set_table);
    span = span > o->set_mask + 8 ? span : o->set_mask + 8;
    if (pywalk_read(c->w, ab, h, span) < 0) {
        t->truncated = true;
        return 0;
    }
    uint64_t mask = u64_at(h, o->set_mask), table = u64_at(h, o->set_table);
    if (mask >= SET_SLOTS_MAX) {
        t->truncated = true;
        return 0;
    }
    unsigned char *entries = malloc((mask + 1) * 16);
    if (!entries)
        return -ENOMEM;
    int r = 0;
    if (pywalk_read(c->w, table, entries, (mask + 1) * 16) < 0)
        t->truncated = true;
    else
        for (uint64_t i = 0; i <= mask && r == 0; i++)
            if (is_task_id(c, u64_at(entries, i * 16)))
                r = add_awaiter(t, u64_at(entries, i * 16));
    free(entries);
    return r;
}

static int read_task(struct reader *c, struct pytasks_task *t)
{
    const struct offs *o = &c->o;
    unsigned char b[TASK_SIZE_MAX];
    struct text repr = {.len = 0};
    int32_t state;

    t->truncated = c->cut;
    for (size_t i = 0; i < c->nrunning; i++)
        t->running |= c->running[i] == t->id;
    if (pywalk_read(c->w, t->id, b, o->task_size) < 0 || !b[o->task_is_task]) {
        t->truncated = true;
        return 0;
    }
    memcpy(&state, b + o->fut_state, sizeof(state));
    if (state < FUT_PENDING || state > FUT_FINISHED) {
        t->truncated = true;
        return 0;
    }
    t->state = (enum pytasks_state)state;
    if (read_name(c, u64_at(b, o->task_name), t->name, sizeof(t->name)) < 0)
        t->truncated = true;
    int r = u64_at(b, o->task_coro) ? read_chain(c, u64_at(b, o->task_coro), t) : 0;
    if (r == 0)
        r = read_awaiters(c, b, t);
    if (r < 0)
        return r;
    put_future(c, t->id, 0, &repr);
    t->repr = strdup(repr.s);
    return t->repr ? 0 : -ENOMEM;
}

/* ---- the interface ---- */

int pytasks_walk(struct pywalk *w, uint64_t debug_addr, struct pytasks_task **ret, size_t *ret_n,
                 struct error *err)
{
    struct reader *c = calloc(1, sizeof(*c));
    int r;

    error_clear(err);
    if (!c)
        return error_set(err, -ENOMEM, NULL);
    c->w = w;
    c->l = pywalk_layout(w);
    r = c->l->minor < 14 ? error_set(err, -EOPNOTSUPP, "no asyncio offsets before Python 3.14")
                         : read_offsets(c, debug_addr, err);
    if (r == 0)
        r = pywalk_each_thread(c->w, on_thread, c);
    /* Tasks of threads that have exited move to their interpreter's list. */
    for (size_t i = 0; r == 0 && i < c->ninterps; i++)
        r = read_list(c, c->interps[i] + c->o.interp_tasks_head, 0);
    if (r == 0 && c->n) {
        c->ids = malloc(c->n * sizeof(*c->ids));
        r = c->ids ? 0 : -ENOMEM;
    }
    for (size_t i = 0; r == 0 && i < c->n; i++)
        c->ids[i] = c->tasks[i].id;
    if (r == 0 && c->n)
        qsort(c->ids, c->n, sizeof(*c->ids), cmp_u64);
    for (size_t i = 0; r == 0 && i < c->n; i++)
        r = read_task(c, &c->tasks[i]);
    pywalk_end_pass(c->w);
    if (r == 0) {
        *ret = c->tasks;
        *ret_n = c->n;
        c->tasks = NULL;
        c->n = 0;
    }
    pytasks_free(c->tasks, c->n);
    free(c->ids);
    free(c);
    return r < 0 ? error_fill(err, r) : 0;
}

int pytasks_read(struct pyframes *p, pid_t pid, struct pytasks_task **ret, size_t *ret_n,
                 struct error *err)
{
    uint64_t at = 0;
    int r;

    error_clear(err);
    if (pywalk_layout(pyframes_walker(p))->minor < 14)
        return error_set(err, -EOPNOTSUPP,
                         "asyncio tasks of Python %s cannot be read from outside: before 3.14, "
                         "_asyncio publishes no offsets of its Task objects, and keeps its tasks "
                         "in weak sets only code inside the process can walk",
                         pyframes_version(p));
    r = find_asyncio_debug(pid, &at);
    if (r == -ENOENT)
        return error_set(err, r, "the target has not imported asyncio (no %s section is mapped)",
                         SECTION);
    if (r < 0)
        return error_set(err, r, NULL);
    return pytasks_walk(pyframes_walker(p), at, ret, ret_n, err);
}

void pytasks_free(struct pytasks_task *tasks, size_t n)
{
    if (!tasks)
        return;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < tasks[i].nstack; j++)
            pywalk_frame_clear(&tasks[i].stack[j]);
        free(tasks[i].stack);
        free(tasks[i].awaiters);
        free(tasks[i].repr);
    }
    free(tasks);
}
