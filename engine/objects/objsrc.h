/* Where a process's objects come from: the system calls that create file descriptors, threads
 * and mappings, traced on every thread of a target with a perf_event syscall-exit tracepoint
 * that carries the user registers and a copy of the user stack, for unwinding later with
 * stacks_unwind_regs. Not a census (objects.h counts what exists) and not an unwinder. */
#ifndef OBJSRC_H
#define OBJSRC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "objects/objects.h"
#include "os/error.h"

#define OBJSRC_NREGS 17         /* libunwind's x86-64 numbering, as stacks.h takes */
#define OBJSRC_STACK_BYTES 8192 /* user stack copied per event */

struct objsrc_event {
    pid_t tid;              /* the creating thread */
    uint64_t time_ns;       /* CLOCK_MONOTONIC */
    const char *syscall;    /* "pipe2", "openat", "clone3", "mmap", ... (static) */
    enum objects_type type; /* what it made; OBJECTS_OTHER_FD with any_fd_type
                               set for dup*, fcntl: any kind of fd */
    bool any_fd_type;
    int fds[2];         /* fd objects: the new fd(s); fds[1] is -1 unless the
                           call makes two (pipe, socketpair); -1 if unreadable */
    pid_t new_tid;      /* OBJECTS_THREAD */
    uint64_t addr, len; /* OBJECTS_MAPPING */
    uint64_t regs[OBJSRC_NREGS];
    uint64_t stack_addr;        /* target address of stack[0] (the stack pointer) */
    const unsigned char *stack; /* valid during the callback only */
    size_t stack_len;
};

struct objsrc_stats {
    uint64_t events; /* handed out */
    uint64_t lost;   /* dropped by the kernel (ring full) or malformed */
    size_t threads;  /* threads with events of their own */
};

struct objsrc;

/* Starts tracing pid's threads (and those they create). -ENOENT: no syscall tracepoints here
 * (no tracefs with raw_syscalls:sys_exit, and mounting it failed); -EACCES/-EPERM: not allowed
 * to read tracefs or open the events (needs root, or CAP_PERFMON and read access to tracefs);
 * -ESRCH: pid has gone; -EMFILE: too many threads x CPUs for the fd limit; -EBADMSG: the
 * tracepoint's id or format cannot be read. err (may be NULL) says which tracefs file, which
 * thread's perf_event_open or which limit was in the way. */
int objsrc_open(pid_t pid, struct objsrc **ret, struct error *err);
/* A descriptor that polls readable when events wait (for the caller's own poll). */
int objsrc_fd(const struct objsrc *s);
/* Waits up to timeout_ms (0: not at all) for events, then hands every pending one to cb in
 * arrival order per CPU. Threads that appeared uncovered are picked up about once a second.
 * A negative return of cb stops and is returned. -ESRCH once the target has exited and all its
 * events were handed out; a new thread that cannot be traced (err says which, and why). err may
 * be NULL. */
int objsrc_poll(struct objsrc *s, int timeout_ms,
                int (*cb)(const struct objsrc_event *ev, void *userdata), void *userdata,
                struct error *err);
void objsrc_stats(const struct objsrc *s, struct objsrc_stats *ret);
void objsrc_close(struct objsrc *s);

#endif
