/* Reading _Py_DebugOffsets (see pydebug.h). Every value comes from the target and is checked
 * by pylayout_check before the walker uses it. */
#include <errno.h>
#include <string.h>
#include "python/pydebug.h"

#define COOKIE "xdebugpy"

/* Where, inside _Py_DebugOffsets, each value the walker needs sits (every field is a uint64_t).
 * Computed with offsetof(_Py_DebugOffsets, ...) against the 3.13.0 headers pyenv installs and
 * the 3.13.18, 3.14.10 and 3.15.2 headers of Debian's libpython3.X-dev; the same for 3.13.0 and
 * 3.13.18, as CPython promises within a minor. */
struct shape {
    unsigned minor;
    uint16_t total;                                  /* sizeof(_Py_DebugOffsets) */
    uint16_t interp_head;                            /* runtime_state.interpreters_head */
    uint16_t is_next, is_threads_head, is_ceval_gil; /* interpreter_state.next, ... */
    uint16_t is_gil, is_gil_locked, is_gil_holder;   /* gil_runtime_state{,_locked,_holder} */
    uint16_t is_modules;                             /* imports_modules */
    uint16_t ts_next, ts_interp, ts_frame, ts_thread_id, ts_native_id; /* thread_state */
    uint16_t if_previous, if_executable, if_instr, if_owner;           /* interpreter_frame */
    uint16_t co_filename, co_qualname, co_linetable, co_firstlineno, co_code; /* code_object */
    uint16_t ob_size_of, ob_type;              /* pyobject.size, pyobject.ob_type */
    uint16_t dict_keys, dict_values;           /* dict_object.ma_keys, ma_values */
    uint16_t bytes_size, bytes_sval;           /* bytes_object.ob_size, ob_sval */
    uint16_t str_state, str_length, str_ascii; /* unicode_object.state, length,
                                                  asciiobject_size */
    uint16_t ht_cached_keys_at; /* heap_type_object.ht_cached_keys (3.15 on), else 0 and... */
    /* sys.remote_exec's fields (3.14 on, else 0): interpreter_state.size and threads_main,
     * thread_state.size, and debugger_support, the last member (six values). */
    uint16_t is_size, is_threads_main, ts_size, debugger;
    /* Facts _Py_DebugOffsets does not carry, from the same headers: */
    uint16_t ht_cached_keys;       /* ...offsetof(PyHeapTypeObject, ht_cached_keys) */
    uint8_t owner_shim, owner_max; /* enum _frameowner: see pylayout.h */
    uint64_t code_mask;            /* ~Py_TAG_BITS of _PyStackRef (pycore_stackref.h) */
};

/* What 3.14 and 3.15 share, from the same headers as below: runtime_state.interpreters_head,
 * interpreter_state up to imports_modules and its size and threads_main, thread_state up to
 * current_frame and its size, the CSTACK-less shim owner and the _PyStackRef tag bits. */
#define SHAPE_3_14_ON                                                                              \
    .interp_head = 40, .is_next = 64, .is_threads_head = 72, .is_ceval_gil = 120, .is_gil = 128,   \
    .is_gil_locked = 144, .is_gil_holder = 152, .is_modules = 96, .ts_next = 192,                  \
    .ts_interp = 200, .ts_frame = 208, .is_size = 48, .is_threads_main = 80, .ts_size = 176,       \
    .owner_shim = 3, .code_mask = ~(uint64_t)3

static const struct shape shapes[] = {
    /* 3.13: Include/internal/pycore_runtime.h. enum _frameowner (pycore_frame.h): THREAD 0,
     * GENERATOR 1, FRAME_OBJECT 2, CSTACK 3; f_executable a plain PyObject *. */
    {.minor = 13,
     .total = 584,
     .interp_head = 40,
     .is_next = 64,
     .is_threads_head = 72,
     .is_ceval_gil = 112,
     .is_gil = 120,
     .is_gil_locked = 136,
     .is_gil_holder = 144,
     .is_modules = 88,
     .ts_next = 168,
     .ts_interp = 176,
     .ts_frame = 184,
     .ts_thread_id = 192,
     .ts_native_id = 200,
     .if_previous = 232,
     .if_executable = 240,
     .if_instr = 248,
     .if_owner = 264,
     .co_filename = 280,
     .co_qualname = 296,
     .co_linetable = 304,
     .co_firstlineno = 312,
     .co_code = 344,
     .ob_size_of = 352,
     .ob_type = 360,
     .dict_keys = 456,
     .dict_values = 464,
     .bytes_size = 520,
     .bytes_sval = 528,
     .str_state = 544,
     .str_length = 552,
     .str_ascii = 560,
     .ht_cached_keys = 880,
     .owner_shim = 3,
     .owner_max = 3,
     .code_mask = ~(uint64_t)0},
    /* 3.14: Include/internal/pycore_debug_offsets.h (threads_main, tlbc fields, stackpointer,
     * set, gen and debugger fields added). Owners (pycore_interpframe_structs.h): ...,
     * INTERPRETER 3, CSTACK 4; f_executable a _PyStackRef whose low two bits are tags
     * (Py_TAG_BITS 3, default build). */
    {SHAPE_3_14_ON,         .minor = 14,        .total = 760,         .ts_thread_id = 216,
     .ts_native_id = 224,   .if_previous = 256, .if_executable = 264, .if_instr = 272,
     .if_owner = 288,       .co_filename = 320, .co_qualname = 336,   .co_linetable = 344,
     .co_firstlineno = 352, .co_code = 384,     .ob_size_of = 400,    .ob_type = 408,
     .dict_keys = 536,      .dict_values = 544, .bytes_size = 600,    .bytes_sval = 608,
     .str_state = 624,      .str_length = 632,  .str_ascii = 640,     .ht_cached_keys = 880,
     .debugger = 712,       .owner_max = 4},
    /* 3.15: base_frame, last_profiled_frame(_seq), holds_gil, ... added to thread_state; type,
     * heap type, unicode and gc fields grown. Owners: ..., INTERPRETER 3 (CSTACK is gone). */
    {SHAPE_3_14_ON,         .minor = 15,        .total = 888,         .ts_thread_id = 240,
     .ts_native_id = 248,   .if_previous = 320, .if_executable = 328, .if_instr = 336,
     .if_owner = 352,       .co_filename = 384, .co_qualname = 400,   .co_linetable = 408,
     .co_firstlineno = 416, .co_code = 448,     .ob_size_of = 464,    .ob_type = 472,
     .dict_keys = 632,      .dict_values = 640, .bytes_size = 696,    .bytes_sval = 704,
     .str_state = 720,      .str_length = 728,  .str_ascii = 736,     .ht_cached_keys_at = 536,
     .debugger = 840,       .owner_max = 3},
};

static uint64_t u64(const unsigned char *b, size_t off)
{
    uint64_t v;
    memcpy(&v, b + off, sizeof(v));
    return v;
}

/* An offset value from the target: UINT32_MAX when it is beyond any field we read (the layout
 * check then refuses it rather than the value wrapping into a small one). */
static uint32_t off(const unsigned char *b, size_t pos)
{
    uint64_t v = u64(b, pos);
    return v <= PYLAYOUT_FIELD_MAX ? (uint32_t)v : UINT32_MAX;
}

/* The shape of the _Py_DebugOffsets in b: by its cookie and version, checked against values that
 * would be other numbers if the shape were not the one assumed. */
static int find_shape(const unsigned char *b, size_t len, const struct shape **ret,
                      struct error *err)
{
    const size_t nshapes = sizeof(shapes) / sizeof(shapes[0]);
    const struct shape *s = NULL;

    if (len < 24 || memcmp(b, COOKIE, 8) != 0)
        return error_set(err, -EOPNOTSUPP,
                         "its _PyRuntime does not start with the "
                         "_Py_DebugOffsets cookie");
    uint64_t hex = u64(b, 8);
    unsigned major = (unsigned)(hex >> 24) & 0xff, minor = (unsigned)(hex >> 16) & 0xff;
    if (major != 3 || minor < 13)
        return error_set(err, -EOPNOTSUPP, "its _Py_DebugOffsets has version %#llx",
                         (unsigned long long)hex);
    if (u64(b, 16) != 0)
        return error_set(err, -EOPNOTSUPP,
                         "it is a free-threaded build (no GIL), whose frames "
                         "and bytecode are laid out differently");
    /* A newer minor is read as the newest shape known; the checks below and pylayout_check
     * refuse it if its _Py_DebugOffsets moved. */
    for (size_t i = 0; i < nshapes && !s; i++)
        if (shapes[i].minor == minor)
            s = &shapes[i];
    if (!s)
        s = &shapes[nshapes - 1];
    if (len < s->total)
        return error_set(err, -EOPNOTSUPP, "its _Py_DebugOffsets is cut short");
    /* Values that have been the same since 3.0 and would be other numbers if the shape were not
     * the one assumed: PyObject is 16 bytes with ob_type at 8, bytes data at 32, str length at
     * 16. */
    if (u64(b, s->ob_size_of) != 16 || u64(b, s->ob_type) != 8 || u64(b, s->bytes_size) != 16 ||
        u64(b, s->bytes_sval) != 32 || u64(b, s->str_length) != 16)
        return error_set(err, -EOPNOTSUPP,
                         "the _Py_DebugOffsets of Python 3.%u has a shape not "
                         "known here",
                         minor);
    *ret = s;
    return 0;
}

int pydebug_layout(const unsigned char *b, size_t len, struct pylayout *ret, struct error *err)
{
    const struct shape *s;
    struct pylayout l = {0};

    int r = find_shape(b, len, &s, err);
    if (r < 0)
        return r;
    unsigned minor = (unsigned)(u64(b, 8) >> 16) & 0xff;
    l.minor = minor;
    l.rt_interp_head = off(b, s->interp_head);
    l.is_next = off(b, s->is_next);
    l.is_threads_head = off(b, s->is_threads_head);
    l.is_gil = off(b, s->is_ceval_gil);
    /* last_holder and locked are given inside the interpreter's own _gil; ceval.gil points at
     * the struct _gil_runtime_state in use (the main interpreter's, when shared). */
    uint32_t gil = off(b, s->is_gil), locked = off(b, s->is_gil_locked),
             holder = off(b, s->is_gil_holder);
    if (locked < gil || holder < gil)
        return error_set(err, -EOPNOTSUPP, "its _Py_DebugOffsets has GIL offsets out of order");
    l.gil_locked = locked - gil;
    l.gil_holder = holder - gil;
    l.ts_next = off(b, s->ts_next);
    l.ts_interp = off(b, s->ts_interp);
    l.ts_frame = off(b, s->ts_frame);
    l.ts_thread_id = off(b, s->ts_thread_id);
    l.ts_native_id = off(b, s->ts_native_id);
    l.if_previous = off(b, s->if_previous);
    l.if_code = off(b, s->if_executable);
    l.if_instr = off(b, s->if_instr);
    l.if_owner = off(b, s->if_owner);
    l.instr_prev = false;
    l.code_mask = s->code_mask;
    l.owner_generator = 1;
    l.owner_shim = s->owner_shim;
    l.owner_max = s->owner_max;
    l.ob_type = off(b, s->ob_type);
    l.ob_size = 16; /* PyVarObject.ob_size: checked through bytes_object.ob_size above */
    l.co_filename = off(b, s->co_filename);
    l.co_qualname = off(b, s->co_qualname);
    l.co_linetable = off(b, s->co_linetable);
    l.co_firstlineno = off(b, s->co_firstlineno);
    l.co_code = off(b, s->co_code);
    /* _co_firsttraceable is not published: in 3.13-3.15's _PyCode_DEF (Include/cpython/code.h)
     * it is the int followed by void *co_extra just before co_code_adaptive. */
    l.co_firsttraceable = l.co_code >= 16 ? l.co_code - 16 : UINT32_MAX;
    l.str_state = off(b, s->str_state);
    l.str_length = off(b, s->str_length);
    l.str_ascii_data = off(b, s->str_ascii);
    /* PyCompactUnicodeObject: PyASCIIObject, Py_ssize_t utf8_length, char *utf8. */
    l.str_compact_data = l.str_ascii_data <= PYLAYOUT_SPAN_MAX ? l.str_ascii_data + 16 : UINT32_MAX;
    l.bytes_size = off(b, s->bytes_size);
    l.bytes_sval = off(b, s->bytes_sval);
    l.is_modules = off(b, s->is_modules);
    l.dict_keys = off(b, s->dict_keys);
    l.dict_values = off(b, s->dict_values);
    l.ht_cached_keys = s->ht_cached_keys_at ? off(b, s->ht_cached_keys_at) : s->ht_cached_keys;
    /* 3.13 on: pycore_object.h, _PyObject_ManagedDictPointer and _PyObject_InlineValues */
    l.values_at = PYLAYOUT_VALUES_INLINE;
    struct error why = {0};
    if (pylayout_check(&l, &why) < 0)
        return error_set(err, -EOPNOTSUPP, "its _Py_DebugOffsets fail the layout checks: %s",
                         why.reason);
    *ret = l;
    return 0;
}

int pydebug_remote(const unsigned char *b, size_t len, struct pydebug_remote *ret,
                   struct error *err)
{
    const struct shape *s;
    struct pydebug_remote d;

    int r = find_shape(b, len, &s, err);
    if (r < 0)
        return r;
    if (!s->debugger)
        return error_set(err, -EOPNOTSUPP,
                         "Python 3.%u has no remote debugging support (PEP 768 came "
                         "with 3.14)",
                         s->minor);
    /* debugger_support {eval_breaker, remote_debugger_support, remote_debugging_enabled,
     * debugger_pending_call, debugger_script_path, debugger_script_path_size}. */
    uint32_t ts_size = off(b, s->ts_size), is_size = off(b, s->is_size);
    uint32_t support = off(b, s->debugger + 8);
    uint32_t pending = off(b, s->debugger + 24), path = off(b, s->debugger + 32);
    d.ts_eval_breaker = off(b, s->debugger);
    d.is_enabled = off(b, s->debugger + 16);
    d.script_path_size = off(b, s->debugger + 40);
    d.is_threads_main = off(b, s->is_threads_main);
    d.ts_pending = support + pending;
    d.ts_script_path = support + path;
    /* Every field must lie inside the struct the target says it belongs to (the sums cannot
     * wrap: each term is at most PYLAYOUT_FIELD_MAX). */
    if (ts_size > PYLAYOUT_FIELD_MAX || is_size > PYLAYOUT_FIELD_MAX ||
        d.script_path_size < PYDEBUG_SCRIPT_PATH_MIN ||
        d.script_path_size > PYDEBUG_SCRIPT_PATH_MAX || (uint64_t)d.ts_eval_breaker + 8 > ts_size ||
        (uint64_t)d.ts_pending + 4 > ts_size ||
        (uint64_t)d.ts_script_path + d.script_path_size > ts_size ||
        (uint64_t)d.is_enabled + 4 > is_size || (uint64_t)d.is_threads_main + 8 > is_size)
        return error_set(err, -EOPNOTSUPP,
                         "its _Py_DebugOffsets gives remote debugging fields outside "
                         "their structs");
    *ret = d;
    return 0;
}
