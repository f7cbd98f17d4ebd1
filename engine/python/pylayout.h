/* Where one CPython version keeps what the frame walker reads: the offsets of the fields of its
 * runtime, interpreter, thread state, frame, code, str and bytes structs (x86-64), and the few
 * facts that are not offsets (owner values, what the frame's instruction pointer points at,
 * tag bits of stack references). Known tables for 3.11 and 3.12; 3.13 and later fill one from
 * the target's own _Py_DebugOffsets (pydebug.h). Not a reader: nothing here touches a process. */
#ifndef PYLAYOUT_H
#define PYLAYOUT_H

#include <stdbool.h>
#include <stdint.h>
#include "os/error.h"

#define PYLAYOUT_SPAN_MAX 2048 /* bytes of one struct the walker reads at once */
/* Fields read one at a time (runtime, interpreter, GIL) may lie further in: 3.14's interpreter
 * state is 221 KiB, its threads.head at 7336. */
#define PYLAYOUT_FIELD_MAX (1u << 22)

/* Where a Python object's attribute values are (Include/internal/pycore_object.h): */
enum pylayout_values {
    PYLAYOUT_VALUES_311 = 1, /* a PyDictValues * at obj - 32, else a dict * at obj - 24 */
    PYLAYOUT_VALUES_312,     /* obj - 24: values - 1 (low bit set), or a dict * */
    PYLAYOUT_VALUES_INLINE,  /* a dict * at obj - 24, else PyDictValues at obj + tp_basicsize */
};

struct pylayout {
    unsigned minor; /* 3.MINOR */
    /* _PyRuntimeState */
    uint32_t rt_interp_head; /* interpreters.head */
    uint32_t rt_gil_tstate;  /* 3.11 gilstate.tstate_current; 0: the GIL is per interpreter */
    /* PyInterpreterState */
    uint32_t is_next, is_threads_head;
    uint32_t is_gil; /* 3.12 on: ceval.gil, the struct _gil_runtime_state * in use */
    /* struct _gil_runtime_state (3.12 on) */
    uint32_t gil_holder, gil_locked; /* last_holder, locked */
    /* PyThreadState */
    uint32_t ts_next, ts_interp, ts_thread_id, ts_native_id;
    uint32_t ts_frame;         /* current_frame, or (ts_cframe) cframe */
    bool ts_cframe;            /* 3.11, 3.12: ts_frame points at a _PyCFrame... */
    uint32_t cf_current_frame; /* ...whose current_frame is here */
    /* _PyInterpreterFrame */
    uint32_t if_code, if_previous, if_instr, if_owner;
    uint32_t if_is_entry; /* 3.11 only (has_is_entry) */
    bool has_is_entry;
    bool instr_prev;         /* 3.11, 3.12: prev_instr, the unit before the next instruction; 3.13
                                on: instr_ptr, the instruction executing or about to */
    uint64_t code_mask;      /* f_executable & code_mask is the code object (3.14 _PyStackRef) */
    uint8_t owner_generator; /* FRAME_OWNED_BY_GENERATOR */
    uint8_t owner_shim;      /* owners >= this are shim frames an eval call pushes (3.12
                                CSTACK, 3.14 INTERPRETER); 0: none (3.11 uses is_entry) */
    uint8_t owner_max;
    /* PyObject, PyVarObject, PyCodeObject */
    uint32_t ob_type, ob_size;
    uint32_t co_firstlineno, co_filename, co_qualname, co_linetable, co_firsttraceable;
    uint32_t co_code; /* co_code_adaptive: the bytecode */
    /* PyASCIIObject, PyCompactUnicodeObject */
    uint32_t str_length, str_state, str_ascii_data, str_compact_data;
    bool str_ready; /* 3.11: state.ready (bit 7) must be set */
    /* PyBytesObject */
    uint32_t bytes_size, bytes_sval;
    /* Thread names, threading._active[thread_id]._name (none when is_modules is 0):
     * PyInterpreterState's sys.modules (imports.modules; 3.11 modules), PyDictObject.ma_keys
     * and ma_values, PyHeapTypeObject.ht_cached_keys (the keys instances share), and where an
     * instance keeps its attribute values (enum pylayout_values). */
    uint32_t is_modules, dict_keys, dict_values, ht_cached_keys;
    uint8_t values_at;
    /* How many bytes of each struct the walker reads: set by pylayout_check. */
    uint32_t ts_span, if_span, co_span, str_span;
};

/* The table of 3.MINOR, for minors that have one (11, 12); -EOPNOTSUPP for others. */
int pylayout_known(unsigned minor, struct pylayout *ret);
/* Checks that every offset of l lies inside a struct the walker can read whole, and sets the
 * spans. -EBADMSG with a reason (offsets read from a target can be anything). */
int pylayout_check(struct pylayout *l, struct error *err);

#endif
