/* Python-level stacks of a running CPython process, read from outside with process_vm_readv
 * only: finds the interpreter (a mapped libpython3.X.so or a static interpreter in the
 * executable) by its `_PyRuntime` symbol, then walks every thread state's frame chain. Not a
 * native unwinder and not a sampler: callers decide when to read and whether to stop the target
 * around the read (nothing here needs ptrace). Supports CPython 3.11 (known struct layouts). */
#ifndef PYFRAMES_H
#define PYFRAMES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "unwind/stacks.h"

#define PYFRAMES_MAX_THREADS 4096         /* thread states read per call, all interpreters */
#define PYFRAMES_MAX_INTERPS 256          /* interpreters (main + subinterpreters) walked */
#define PYFRAMES_MAX_FRAMES 512           /* frames kept per thread; deeper stacks are truncated */
#define PYFRAMES_STR_MAX 1024             /* bytes kept of a file or function name, NUL included */
#define PYFRAMES_LINETABLE_MAX (1u << 20) /* larger co_linetable objects are not decoded */
#define PYFRAMES_VERSION_MAX 32
#define PYFRAMES_EVAL_FUNC "_PyEval_EvalFrameDefault"

struct pyframes_frame {
    char *filename;  /* co_filename, UTF-8 */
    char *funcname;  /* co_qualname, UTF-8 */
    int line;        /* of the current instruction; 0 when unknown */
    int firstlineno; /* co_firstlineno */
    bool is_entry;   /* the first frame of a _PyEval_EvalFrameDefault call */
};

struct pyframes_thread {
    pid_t tid;           /* the OS thread (native_thread_id) */
    uint64_t pthread_id; /* thread_id: the thread's pthread_t */
    bool holds_gil;      /* the runtime's current thread state is this one */
    bool truncated;      /* frames stop early: a limit was hit, or the target
                            changed under us (what is listed was checked) */
    size_t nframes;
    struct pyframes_frame *frames; /* innermost first */
};

struct pyframes;

/* Finds the interpreter of pid and caches its addresses. version (may be NULL) gets the
 * interpreter's version ("3.11.2", or "3.10" from a module name) whenever one was found, on
 * success and on -EOPNOTSUPP alike, else "". -ENOENT: no CPython in pid; -EOPNOTSUPP: a CPython
 * whose layout is unknown here; -ESRCH: pid is gone; -ENOMEM; open/read errors passed through. */
int pyframes_open(pid_t pid, char *version, size_t version_len, struct pyframes **ret);
void pyframes_free(struct pyframes *p);
/* "3.11.2": the version of the interpreter p reads. */
const char *pyframes_version(const struct pyframes *p);

/* One pass over every Python thread state of the target, in the interpreter's list order
 * (newest first). Free the result with pyframes_threads_free. A target that changes or exits
 * during the pass gives threads marked truncated, or fewer threads; -ESRCH when it is gone
 * before anything could be read, -EFAULT when the runtime state itself is unreadable. */
int pyframes_read(struct pyframes *p, struct pyframes_thread **ret, size_t *ret_n);
/* The Python stack of the one thread tid, as pyframes_read gives it (free its frames with
 * pyframes_thread_clear). -ENOENT when no thread state has that tid. */
int pyframes_read_tid(struct pyframes *p, pid_t tid, struct pyframes_thread *ret);
void pyframes_thread_clear(struct pyframes_thread *t);
void pyframes_threads_free(struct pyframes_thread *threads, size_t n);

/* The contract's frame line: `  File "FILE", line N, in FUNC`. -ENAMETOOLONG when buf is too
 * small (buf then holds the truncated line). */
int pyframes_format_frame(const struct pyframes_frame *f, char *buf, size_t len);

/* One thread's stack as a reader wants it: native frames, with each native
 * _PyEval_EvalFrameDefault frame replaced by the Python frames it runs (innermost first, like
 * both inputs). Python frames left over when the native stack ends early go at the outer end.
 * The result's strings point into native and py, which must outlive it; free() it. */
int pyframes_merge(const struct stacks_thread *native, const struct pyframes_thread *py,
                   struct stacks_thread **ret);

#endif
