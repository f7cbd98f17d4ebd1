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

/* The layout of the interpreter whose _PyRuntime starts with the len bytes of buf. -EOPNOTSUPP
 * with a reason for no cookie, a version before 3.13, a free-threaded build, or offsets that
 * fail the checks (a shape of _Py_DebugOffsets not known here). */
int pydebug_layout(const unsigned char *buf, size_t len, struct pylayout *ret, struct error *err);

#endif
