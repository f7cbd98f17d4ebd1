/* The stall watch: whether chosen threads of a process keep coming back to their wait. Each
 * look reads /proc/PID/task/TID/syscall of the watched threads (no stop, no ptrace): a thread
 * seen waiting is fine; one not seen waiting for stall_ns, though it was seen waiting before,
 * is stalled (running on a CPU all along, or blocked in another call such as read) until it is
 * seen waiting again. A thread once seen in epoll_wait, poll or select is an event loop, and
 * only those are its waits; for any other thread a futex wait (not on the GIL: that thread
 * runs Python) or a sleep is one too. Looks are the caller's to time: a wait shorter than the
 * gap between two looks can go unseen. Not the dump of the stalled thread, nor its profile. */
#ifndef STALLWATCH_H
#define STALLWATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "os/error.h"
#include "os/procfs.h"

#define STALLWATCH_THREADS_MAX 256   /* threads watched at once: the first ones by tid */
#define STALLWATCH_MAIN "MainThread" /* the main thread (Python's name for it) */
#define STALLWATCH_ALL "all"
#define STALLWATCH_REFRESH_NS 1000000000ull /* threads listed again this often */

enum stallwatch_kind { STALLWATCH_BEGUN, STALLWATCH_ENDED };

struct stallwatch_event {
    enum stallwatch_kind kind;
    pid_t tid;
    char name[PROCFS_COMM_MAX];
    uint64_t since_ns; /* the last look that saw it waiting: the stall began after it */
    uint64_t until_ns; /* ENDED: the look that saw it back, or the process gone */
    long syscall;      /* what it was in at its last stalled look: a call number, -1 running */
    bool gone;         /* ENDED because the thread or the process went */
};

struct stallwatch;

/* Watches thread (STALLWATCH_MAIN, STALLWATCH_ALL, or a thread name: its comm) of pid, under
 * root (/proc, or a fixture tree). [gil_lo, gil_hi): a CPython target's GIL (0, 0: none).
 * stall_ns > 0. -EINVAL (err says why), -ENOMEM. */
int stallwatch_new(const char *root, pid_t pid, const char *thread, uint64_t stall_ns,
                   uint64_t gil_lo, uint64_t gil_hi, struct stallwatch **ret, struct error *err);
void stallwatch_free(struct stallwatch *w);
/* One look at now_ns (CLOCK_MONOTONIC, not before the last): the stalls that began or ended
 * since the last look go to out[0..max) (more stay for the next look), *ret_n how many.
 * -ESRCH once the process is gone and the stalls open then were given as ended. */
int stallwatch_check(struct stallwatch *w, uint64_t now_ns, struct stallwatch_event *out,
                     size_t max, size_t *ret_n);
/* A system call's name ("read"), or NULL for one the watch does not name. */
const char *stallwatch_syscall_name(long nr);

#endif
