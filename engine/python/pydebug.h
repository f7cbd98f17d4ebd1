/* The _Py_DebugOffsets that CPython 3.13 and later publish at the start of _PyRuntime for
 * out-of-process tools: a cookie ("xdebugpy"), PY_VERSION_HEX, then the offsets of the fields of
 * its own structs. Turns those bytes into a struct pylayout, so a new micro release (and a new
 * minor whose _Py_DebugOffsets has the same shape) needs no table here. Not a reader of the
 * target: callers hand it the bytes; the shape of _Py_DebugOffsets itself is known per minor
 * (Include/internal/pycore_runtime.h in 3.13, pycore_debug_offsets.h from 3.14). */
#ifndef PYDEBUG_H
#define PYDEBUG_H

#include <stddef.h>
#include <stdint.h>
#include "os/error.h"
#include "python/pylayout.h"

#define PYDEBUG_READ_MAX 1024 /* the struct is 584 (3.13), 760 (3.14), 888 (3.15) bytes */

/* Bounds on debugger_script_path_size (_Py_MAX_SCRIPT_PATH_SIZE, 512 in 3.14 and 3.15). */
#define PYDEBUG_SCRIPT_PATH_MIN 64
#define PYDEBUG_SCRIPT_PATH_MAX 4096

/* Where sys.remote_exec (PEP 768, 3.14 on) writes its request, from _Py_DebugOffsets's
 * debugger_support (Include/internal/pycore_debug_offsets.h; the fields of
 * _PyRemoteDebuggerSupport in Include/cpython/pystate.h). Offsets from the start of a
 * PyThreadState (ts_) or PyInterpreterState (is_). */
struct pydebug_remote {
    uint32_t ts_eval_breaker;  /* uintptr_t eval_breaker */
    uint32_t ts_pending;       /* int32_t remote_debugger_support.debugger_pending_call */
    uint32_t ts_script_path;   /* char remote_debugger_support.debugger_script_path[] */
    uint32_t script_path_size; /* ...its size, the NUL included */
    uint32_t is_enabled;       /* int config.remote_debug: 1 unless disabled */
    uint32_t is_threads_main;  /* PyThreadState *threads.main */
};

/* The layout of the interpreter whose _PyRuntime starts with the len bytes of buf. -EOPNOTSUPP
 * with a reason for no cookie, a version before 3.13, a free-threaded build, or offsets that
 * fail the checks (a shape of _Py_DebugOffsets not known here). */
int pydebug_layout(const unsigned char *buf, size_t len, struct pylayout *ret, struct error *err);
/* The remote debugging fields of the same bytes, each checked to lie inside its struct as the
 * target's own sizes say. -EOPNOTSUPP with a reason before 3.14 or when a check fails. */
int pydebug_remote(const unsigned char *buf, size_t len, struct pydebug_remote *ret,
                   struct error *err);

#endif
