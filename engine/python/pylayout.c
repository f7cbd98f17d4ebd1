/* Known layouts of CPython 3.11 and 3.12 (x86-64, default build), and the bounds check every
 * layout goes through (see pylayout.h). */
#include <errno.h>
#include <string.h>
#include "python/pylayout.h"

/* CPython 3.11. Each offset is from the 3.11 header named and was checked with gdb (`print
 * &((T *)0)->field`) against the debug info Debian 12 ships for its python3.11 (python3.11-dbg
 * 3.11.2-6+deb12u9), then by the unit tests on /usr/bin/python3.11 and pyenv's 3.11.7. */
static const struct pylayout v3_11 = {
    .minor = 11,
    /* Include/internal/pycore_runtime.h, struct _PyRuntimeState */
    .rt_interp_head = 40, /* interpreters.head (after 5 ints, _finalizing, mutex) */
    .rt_gil_tstate = 576, /* gilstate.tstate_current: the thread holding the GIL */
    /* Include/internal/pycore_interp.h, struct _is */
    .is_next = 0,
    .is_threads_head = 16, /* threads.head (after threads.next_unique_id) */
    /* Include/cpython/pystate.h, struct _ts and struct _PyCFrame */
    .ts_next = 8,
    .ts_interp = 16,
    .ts_frame = 56, /* cframe */
    .ts_cframe = true,
    .cf_current_frame = 8, /* after uint8_t use_tracing */
    .ts_thread_id = 152,   /* pthread_self() of the thread */
    .ts_native_id = 160,   /* gettid() of the thread */
    /* Include/internal/pycore_frame.h, struct _PyInterpreterFrame, enum _frameowner */
    .if_code = 32, /* f_code (after f_func, f_globals, f_builtins, f_locals) */
    .if_previous = 48,
    .if_instr = 56, /* prev_instr */
    .if_is_entry = 68,
    .has_is_entry = true,
    .if_owner = 69, /* char, after int stacktop and bool is_entry */
    .instr_prev = true,
    .code_mask = ~(uint64_t)0,
    .owner_generator = 1, /* THREAD 0, GENERATOR 1, FRAME_OBJECT 2 */
    .owner_max = 2,
    /* Include/object.h PyObject, PyVarObject; Include/cpython/code.h, struct PyCodeObject */
    .ob_type = 8,
    .ob_size = 16, /* of a code object: its bytecode length in code units */
    .co_firstlineno = 72,
    .co_filename = 112,
    .co_qualname = 128,
    .co_linetable = 136,
    .co_firsttraceable = 168, /* _co_firsttraceable: the first instruction tracebacks show */
    .co_code = 184,
    /* Include/cpython/unicodeobject.h: PyASCIIObject (with wstr), PyCompactUnicodeObject */
    .str_length = 16,
    .str_state = 32,
    .str_ascii_data = 48,
    .str_compact_data = 72,
    .str_ready = true,
    /* Include/cpython/bytesobject.h */
    .bytes_size = 16,
    .bytes_sval = 32,
    /* Thread names. pycore_interp.h (modules), Include/cpython/dictobject.h,
     * Include/cpython/object.h (PyHeapTypeObject); offsetof() against pyenv's 3.11.7 headers */
    .is_modules = 888,
    .dict_keys = 32,
    .dict_values = 40,
    .ht_cached_keys = 872,
    .values_at = PYLAYOUT_VALUES_311,
};

/* CPython 3.12. Offsets from the 3.12 headers named, checked by compiling offsetof() of each
 * field against the headers pyenv installs with 3.12.1 (include/python3.12/internal), then by
 * the unit tests on that interpreter. */
static const struct pylayout v3_12 = {
    .minor = 12,
    /* Include/internal/pycore_runtime.h, struct _PyRuntimeState */
    .rt_interp_head = 40, /* interpreters.head */
    /* Include/internal/pycore_interp.h, struct _is: the GIL moved into the interpreter */
    .is_next = 0,
    .is_threads_head = 72, /* threads.head */
    .is_gil = 384,         /* ceval.gil (struct _ceval_state, pycore_ceval_state.h) */
    /* Include/internal/pycore_gil.h, struct _gil_runtime_state */
    .gil_holder = 8,  /* last_holder (after unsigned long interval) */
    .gil_locked = 16, /* locked */
    /* Include/cpython/pystate.h, struct _ts and struct _PyCFrame (use_tracing is gone) */
    .ts_next = 8,
    .ts_interp = 16,
    .ts_frame = 56, /* cframe */
    .ts_cframe = true,
    .cf_current_frame = 0,
    .ts_thread_id = 136,
    .ts_native_id = 144,
    /* Include/internal/pycore_frame.h, struct _PyInterpreterFrame: f_code first, no is_entry;
     * each _PyEval_EvalFrameDefault call pushes an entry frame owned by the C stack */
    .if_code = 0, /* f_code */
    .if_previous = 8,
    .if_instr = 56, /* prev_instr */
    .if_owner = 70, /* char, after int stacktop and uint16_t return_offset */
    .instr_prev = true,
    .code_mask = ~(uint64_t)0,
    .owner_generator = 1, /* THREAD 0, GENERATOR 1, FRAME_OBJECT 2, CSTACK 3 */
    .owner_shim = 3,
    .owner_max = 3,
    /* Include/object.h; Include/cpython/code.h, _PyCode_DEF */
    .ob_type = 8,
    .ob_size = 16,
    .co_firstlineno = 68,
    .co_filename = 112,
    .co_qualname = 128,
    .co_linetable = 136,
    .co_firsttraceable = 176,
    .co_code = 192,
    /* Include/cpython/unicodeobject.h: wstr and state.ready are gone */
    .str_length = 16,
    .str_state = 32,
    .str_ascii_data = 40,   /* sizeof(PyASCIIObject) */
    .str_compact_data = 56, /* sizeof(PyCompactUnicodeObject) */
    /* Include/cpython/bytesobject.h */
    .bytes_size = 16,
    .bytes_sval = 32,
    /* Thread names. pycore_interp.h (imports.modules), Include/cpython/dictobject.h,
     * Include/cpython/object.h (PyHeapTypeObject) */
    .is_modules = 944,
    .dict_keys = 32,
    .dict_values = 40,
    .ht_cached_keys = 880,
    .values_at = PYLAYOUT_VALUES_312,
};

int pylayout_known(unsigned minor, struct pylayout *ret)
{
    if (minor == 11)
        *ret = v3_11;
    else if (minor == 12)
        *ret = v3_12;
    else
        return -EOPNOTSUPP;
    return 0;
}

/* The span covering fields f[0..n) of widths w (bytes), or 0 when one lies beyond the limit. */
static uint32_t span(const uint32_t *f, const uint8_t *w, size_t n)
{
    uint32_t end = 0;

    for (size_t i = 0; i < n; i++) {
        if (f[i] > (uint32_t)PYLAYOUT_SPAN_MAX - w[i])
            return 0;
        if (f[i] + w[i] > end)
            end = f[i] + w[i];
    }
    return end;
}

int pylayout_check(struct pylayout *l, struct error *err)
{
    const uint32_t ts[] = {l->ts_next, l->ts_interp, l->ts_thread_id, l->ts_native_id, l->ts_frame};
    const uint8_t tsw[] = {8, 8, 8, 8, 8};
    const uint32_t fr[] = {l->if_code, l->if_previous, l->if_instr, l->if_owner, l->if_is_entry};
    const uint8_t frw[] = {8, 8, 8, 1, 1};
    const uint32_t co[] = {l->ob_type,     l->ob_size,      l->co_firstlineno,   l->co_filename,
                           l->co_qualname, l->co_linetable, l->co_firsttraceable};
    const uint8_t cow[] = {8, 8, 4, 8, 8, 8, 4};
    const uint32_t st[] = {l->ob_type, l->str_length, l->str_state};
    const uint8_t stw[] = {8, 8, 4};

    l->ts_span = span(ts, tsw, 5);
    l->if_span = span(fr, frw, 5);
    l->co_span = span(co, cow, 7);
    l->str_span = span(st, stw, 3);
    const uint32_t one[] = {l->rt_interp_head,  l->rt_gil_tstate,    l->is_next,
                            l->is_threads_head, l->is_gil,           l->gil_holder,
                            l->gil_locked,      l->cf_current_frame, l->is_modules,
                            l->dict_keys,       l->dict_values,      l->ht_cached_keys};
    bool far = false;
    for (size_t i = 0; i < sizeof(one) / sizeof(one[0]); i++)
        far |= one[i] > PYLAYOUT_FIELD_MAX;
    if (far || !l->ts_span || !l->if_span || !l->co_span || !l->str_span)
        return error_set(err, -EBADMSG, "a Python 3.%u struct offset is out of range", l->minor);
    /* The bytecode follows the code object's fields; str and bytes data follow their headers. */
    if (l->co_code < l->co_span || l->co_code > PYLAYOUT_SPAN_MAX ||
        l->str_ascii_data < l->str_span || l->str_compact_data < l->str_ascii_data ||
        l->str_compact_data > PYLAYOUT_SPAN_MAX || l->bytes_sval <= l->bytes_size ||
        l->bytes_sval > PYLAYOUT_SPAN_MAX || l->bytes_size < l->ob_type + 8 ||
        l->owner_generator > l->owner_max || l->owner_shim > l->owner_max)
        return error_set(err, -EBADMSG, "the Python 3.%u object layout is inconsistent", l->minor);
    return 0;
}
