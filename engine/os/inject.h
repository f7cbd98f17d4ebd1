/* Calls into a running process from outside, as a debugger's `call` does: one thread is seized
 * with ptrace at a moment when it is blocked in a system call or running its own code (never
 * inside the C library or the dynamic loader, whose locks and state it might hold), made to call
 * functions of the target (dlopen, dlsym, a library's entry point), and put back exactly as it
 * was, registers and interrupted system call included. x86-64 only. Not for the calling process:
 * a thread cannot trace its own process. */
#ifndef INJECT_H
#define INJECT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "os/error.h"

#define INJECT_MAX_ARGS 6
#define INJECT_SCRATCH_MAX 4096      /* bytes of data placed on the thread's stack */
#define INJECT_CALL_TIMEOUT_MS 10000 /* dlopen of a small library takes about 1 ms */
#define INJECT_SETTLE_TRIES 100      /* attempts to catch a thread at a safe point */

struct inject;

/* Seizes one thread of pid at a safe point and saves its state. -EPERM (ptrace refused),
 * -ESRCH, -EAGAIN (no thread was ever at a safe point), -EOPNOTSUPP (not an x86-64 process),
 * -EINVAL (pid is the calling process); in err too (may be NULL), with what was in the way. */
int inject_attach(pid_t pid, struct inject **ret, struct error *err);
/* The thread that was seized. */
pid_t inject_tid(const struct inject *in);
/* Copies len bytes onto the seized thread's stack, below its red zone, for the calls that
 * follow; *ret_addr is their address in the target. -ENOSPC past INJECT_SCRATCH_MAX. */
int inject_push(struct inject *in, const void *data, size_t len, uint64_t *ret_addr);
/* Calls func(args...) in the target and waits for it to return; *ret gets its return value
 * (rax). Signals that arrive meanwhile are delivered. -ETIMEDOUT, -EFAULT (the call crashed;
 * the thread is put back), -ESRCH (the process exited). */
int inject_call(struct inject *in, uint64_t func, const uint64_t *args, size_t nargs,
                uint64_t *ret);
/* Restores the thread and releases it; accepts NULL. Returns the first error of the restore. */
int inject_detach(struct inject *in);

/* Address in pid of the dynamic symbol name of the module mapped from path (as /proc/PID/maps
 * names it), using the default version when several exist. -ENOENT (no such symbol or module). */
int inject_symbol(pid_t pid, const char *path, const char *name, uint64_t *ret);
/* Reads a NUL-terminated string of at most len-1 bytes at addr in pid. */
int inject_read_string(pid_t pid, uint64_t addr, char *buf, size_t len);

#endif
