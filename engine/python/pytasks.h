/* The asyncio tasks of a running CPython process, read from outside with process_vm_readv only,
 * as `python3.14 -m asyncio ps PID` reads them: from 3.14 on, the _asyncio module publishes its
 * TaskObj offsets (_Py_AsyncioModuleDebugOffsets, a ".AsyncioDebug" section of the executable or
 * of the _asyncio extension), and every thread state and interpreter keeps its tasks in a linked
 * list. For each task: name, state, its coroutine chain and the tasks that await it, and its
 * repr as asyncio's Task.__repr__ writes it. Not for 3.11-3.13 (-EOPNOTSUPP: their TaskObj
 * layout is private and their task sets are weak sets of Python objects), and nothing here
 * stops or calls into the target. */
#ifndef PYTASKS_H
#define PYTASKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "os/error.h"
#include "python/pyframes.h"
#include "python/pywalk.h"

#define PYTASKS_MAX_TASKS 10000  /* tasks read per call */
#define PYTASKS_MAX_DEPTH 64     /* coroutines followed down one task's await chain */
#define PYTASKS_MAX_AWAITERS 256 /* tasks listed as awaiting one task */
#define PYTASKS_NAME_MAX 256     /* bytes kept of a task's name, NUL included */
#define PYTASKS_REPR_MAX 2048    /* bytes kept of a task's repr, NUL included */

enum pytasks_state { PYTASKS_PENDING, PYTASKS_CANCELLED, PYTASKS_FINISHED };

struct pytasks_task {
    uint64_t id;  /* the Task object's address: asyncio ps's task id */
    pid_t tid;    /* native id (the target's) of the thread whose list holds it; 0: the
                     interpreter's list (tasks of threads that have exited) */
    bool running; /* the task its thread is running now */
    char name[PYTASKS_NAME_MAX];
    enum pytasks_state state;
    char *repr; /* "<Task pending name='...' coro=<...> wait_for=<...>>", cut to fit; NULL
                   when the task object itself could not be read (truncated is set) */
    /* The coroutine chain the task runs, innermost first (asyncio ps's coroutine stack). */
    size_t nstack;
    struct pyframes_frame *stack;
    /* The ids of the tasks awaiting it (its awaited-by set, as TaskGroup and gather record it). */
    size_t nawaiters;
    uint64_t *awaiters;
    bool truncated; /* a limit was hit or the target changed under us: what is listed was read */
};

/* Every task of every thread and interpreter of the interpreter p reads (pid's). Free the result
 * with pytasks_free. -EOPNOTSUPP with the reason for a version before 3.14 or offsets that fail
 * the checks; -ENOENT when the target has not loaded _asyncio; -ESRCH when it is gone; -ENOMEM.
 * A target that changes during the pass gives fewer tasks or tasks marked truncated. */
int pytasks_read(struct pyframes *p, pid_t pid, struct pytasks_task **ret, size_t *ret_n,
                 struct error *err);
/* The same from a walker over any memory (pywalk.h's reader: tests and the fuzzer feed it an
 * image), with _AsyncioDebug's address given: a 3.14 or later layout, or -EOPNOTSUPP. */
int pytasks_walk(struct pywalk *w, uint64_t debug_addr, struct pytasks_task **ret, size_t *ret_n,
                 struct error *err);
void pytasks_free(struct pytasks_task *tasks, size_t n);

#endif
