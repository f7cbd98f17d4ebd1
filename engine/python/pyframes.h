/* Python-level stacks of a running CPython process, read from outside with process_vm_readv
 * only: finds the interpreter (a mapped libpython3.X.so or a static interpreter in the
 * executable) by its `_PyRuntime` symbol, picks the layout of its version (pylayout.h: tables for
 * 3.11 and 3.12, the target's own _Py_DebugOffsets from 3.13 on, pydebug.h) and walks every
 * thread state's frame chain (pywalk.h). Thread ids are the caller's (host) ids, also for a
 * target in another PID namespace. Not a native unwinder and not a sampler: callers decide when
 * to read and whether to stop the target around the read (nothing here needs ptrace). Default
 * (GIL) builds of CPython 3.11 to 3.15 on x86-64. */
#ifndef PYFRAMES_H
#define PYFRAMES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "os/error.h"
#include "python/pylayout.h"
#include "unwind/stacks.h"

#define PYFRAMES_MAX_THREADS 4096         /* thread states read per call, all interpreters */
#define PYFRAMES_MAX_INTERPS 256          /* interpreters (main + subinterpreters) walked */
#define PYFRAMES_MAX_FRAMES 512           /* frames kept per thread; deeper stacks are truncated */
#define PYFRAMES_STR_MAX 1024             /* bytes kept of a file or function name, NUL included */
#define PYFRAMES_LINETABLE_MAX (1u << 20) /* larger co_linetable objects are not decoded */
#define PYFRAMES_VERSION_MAX 32
#define PYFRAMES_NAME_MAX 128 /* bytes kept of a thread's name, NUL included */
#define PYFRAMES_EVAL_FUNC "_PyEval_EvalFrameDefault"

struct pyframes_frame {
    char *filename;    /* co_filename, UTF-8 */
    char *funcname;    /* co_qualname, UTF-8 */
    int line;          /* of the current instruction; 0 when unknown */
    int firstlineno;   /* co_firstlineno */
    bool is_entry;     /* the first frame of a _PyEval_EvalFrameDefault call (3.11's is_entry;
                          3.12 on: the frame next to the shim frame that call pushed) */
    uint64_t entry_at; /* 3.12 on, of an entry frame: the address of that shim frame, which
                          lives on the C stack of the eval-loop call running this frame and
                          the ones inside it; 0 when unknown */
};

struct pyframes_thread {
    pid_t tid;           /* the OS thread (native_thread_id), as the caller's /proc names it */
    uint64_t pthread_id; /* thread_id: the thread's pthread_t */
    /* threading.Thread.name (threading._active[pthread_id]._name), cut to fit; "" when the
     * thread has none (not started by threading) or it cannot be read. pyframes_read only. */
    char name[PYFRAMES_NAME_MAX];
    bool holds_gil;  /* holds the GIL (3.11: the runtime's current thread state; 3.12
                        on: last_holder of its interpreter's GIL, while locked) */
    bool truncated;  /* frames stop early: a limit was hit, or the target
                        changed under us (what is listed was checked) */
    uint64_t tstate; /* its PyThreadState in the target (for a sampler reading frames itself) */
    size_t nframes;
    struct pyframes_frame *frames; /* innermost first */
};

struct pyframes;
struct pywalk;
struct procfs_map;

/* Finds the interpreter of pid and caches its addresses and layout. version (may be NULL) gets
 * the interpreter's version ("3.11.2", or "3.10" from a module name) whenever one was found, on
 * success and on -EOPNOTSUPP alike, else "". -ENOENT: no CPython in pid; -EOPNOTSUPP: a CPython
 * that cannot be read here (its version and why in err: too old, free-threaded, a layout not
 * known); -ESRCH: pid is gone; -ENOMEM; open/read errors passed through. err may be NULL. */
int pyframes_attach(pid_t pid, char *version, size_t version_len, struct pyframes **ret,
                    struct error *err);
void pyframes_free(struct pyframes *p);
/* The walker of p's runtime, for readers of other interpreter state (pytasks.h); owned by p. */
struct pywalk *pyframes_walker(struct pyframes *p);
/* The file behind map m of process pid, opened read-only: through /proc/PID/map_files (the very
 * file mapped) or else by its path under the target's root, checked by inode. An fd, or -ESTALE
 * when another file has that path now, or the open's -errno. */
int pyframes_open_mapped(pid_t pid, const struct procfs_map *m);
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

/* One _PyInterpreterFrame as copied by a reader that does not decode (the sampler's in-kernel
 * copier): its address, code object (masked as the layout says), instruction pointer and
 * owner. */
struct pyframes_raw_frame {
    uint64_t code, instr, addr; /* addr: of the frame itself */
    uint8_t owner;
    bool is_entry; /* 3.11's field; later versions mark entries with shim frames */
};

/* The interpreter's file (libpython or the executable), as /proc/PID/maps names it. */
const char *pyframes_module(const struct pyframes *p);
/* Where the main interpreter's GIL lies in the target, [*ret_lo, *ret_hi): a thread blocked
 * on a futex in there waits for the GIL. -ENOENT when it cannot be told. */
int pyframes_gil_range(const struct pyframes *p, uint64_t *ret_lo, uint64_t *ret_hi);
/* The layout p reads the target with (for such a reader). */
const struct pylayout *pyframes_layout(const struct pyframes *p);
/* The Python stack of thread tid from raw frames (innermost first, shim frames included), as
 * pyframes_read_tid gives it: names and lines read from the code objects now. A frame that no
 * longer decodes (its code object freed meanwhile) ends the stack as truncated; truncated says
 * the raw copy itself stopped early. Free with pyframes_thread_clear. */
int pyframes_decode(struct pyframes *p, pid_t tid, const struct pyframes_raw_frame *raw, size_t n,
                    bool truncated, struct pyframes_thread *ret);

/* The contract's frame line: `  File "FILE", line N, in FUNC`. -ENAMETOOLONG when buf is too
 * small (buf then holds the truncated line). */
int pyframes_format_frame(const struct pyframes_frame *f, char *buf, size_t len);

/* Whether func names the eval loop: _PyEval_EvalFrameDefault, or a part of it the compiler
 * split off (_PyEval_EvalFrameDefault.cold). */
bool pyframes_is_eval(const char *func);

/* One thread's stack as a reader wants it: native frames, with the native frame of each
 * eval-loop call replaced by the Python frames it runs (innermost first, like both inputs).
 * With the native frames' sp (the unwinder's), a run of Python frames finds its eval-loop call
 * by where that call's shim frame lies (3.12 on), whatever the call's symbol; otherwise by the
 * name (pyframes_is_eval). Python frames left over when the native stack ends early go at the
 * outer end. The result's strings point into native and py, which must outlive it; free() it. */
int pyframes_merge(const struct stacks_thread *native, const struct pyframes_thread *py,
                   struct stacks_thread **ret);

#endif
