/* Runs one of the agent's own Python scripts inside a CPython target, on one of its threads at a
 * point where the interpreter is between bytecodes and holds the GIL, and hands back the JSON the
 * script wrote. 3.14 on: the PEP 768 protocol sys.remote_exec speaks (the script's path into the
 * chosen thread state's debugger fields, then the pending flag and the eval-breaker bit). 3.11 to
 * 3.13: Py_AddPendingCall(PyRun_SimpleString, text) called in the target through ptrace
 * (memory/inject.h), so the main thread runs it. The script, its input and its output are files
 * in the target's own /tmp (its mount namespace), named at random, its user's, mode 0600, and
 * removed on every path. Not a way to run arbitrary code: the caller names a script it ships,
 * and data reaches it only as the JSON input file. Default (GIL) builds, x86-64. */
#ifndef PYEXEC_H
#define PYEXEC_H

#include <stdatomic.h>
#include <stddef.h>
#include <sys/types.h>
#include "os/error.h"

#define PYEXEC_OUTPUT_MAX (4u << 20) /* bytes of the script's answer read back */
#define PYEXEC_SCRIPT_MAX (1u << 20) /* bytes of a shipped script, and of a prelude */
#define PYEXEC_TIMEOUT_MAX_MS 300000
#define PYEXEC_WAKES 3     /* calls of a request's wake, at most */
#define PYEXEC_WAKE_MS 100 /* between two of them */

struct pyexec_request {
    const char *script;  /* the shipped script's path (the agent's view) */
    const char *prelude; /* may be NULL: a shipped file placed before the script (the common
                          * main() that calls the script's work) */
    const char *input;   /* JSON text the script reads as data */
    int timeout_ms;      /* to reach a safe point and finish, 1..PYEXEC_TIMEOUT_MAX_MS */
    atomic_int *cancel;  /* may be NULL: set, the request is withdrawn at once */
    /* May be NULL. Called once the request is queued, then every PYEXEC_WAKE_MS while the script
     * has not started, PYEXEC_WAKES times at most: a thread blocked waiting (an idle event loop)
     * checks no eval breaker until something wakes it. The caller knows what may wake pid
     * without harm (engine/python does not read its fds); it must not block. */
    void (*wake)(pid_t pid, void *userdata);
    void *wake_userdata;
};

struct pyexec_result {
    char *output;       /* the script's JSON answer, NUL-terminated; free() it */
    unsigned minor;     /* the target's Python 3.MINOR */
    const char *method; /* "remote_exec" (PEP 768) or "pending_call" */
    pid_t tid;          /* the thread asked to run it (the agent's view of its id) */
    double wait_ms;     /* from the request to the answer */
};

/* Runs req->script inside pid. -ENOENT: no CPython in pid (ret untouched, err empty);
 * -EOPNOTSUPP: a CPython that cannot take the request (a version or build without the means,
 * remote debugging disabled; the reason in err); -ETIMEDOUT: no safe point was reached in time
 * (the request was withdrawn); -ECANCELED; -ESRCH: pid exited; -EBUSY: another debugger's
 * request is pending; -EPERM: ptrace or the files were refused. On failure nothing is left
 * behind in the target but what a late run cannot use (see pyexec.c). */
int pyexec_run(pid_t pid, const struct pyexec_request *req, struct pyexec_result *ret,
               struct error *err);

#endif
