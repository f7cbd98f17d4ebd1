/* Target specs (`self`, `pid:N`, `comm:NAME`, `exe:PATH`, `pidfile:PATH`) and their resolution
 * to a live process. A spec is resolved at every command, so a restarted service is found again;
 * the last resolution of each spec is cached and checked (same pid, same start time) before
 * reuse. Allow-listing is the agent's business, not this module's. */
#ifndef TARGET_H
#define TARGET_H

#include <stdint.h>
#include <sys/types.h>
#include "os/error.h"
#include "os/procfs.h"

#define TARGET_SPEC_MAX 256

struct target {
    pid_t pid;
    uint64_t starttime;         /* from /proc/PID/stat, tells a reused pid from the same one */
    char name[PROCFS_COMM_MAX]; /* comm of the main thread */
    unsigned matches;           /* processes that matched comm:/exe: (the oldest is chosen) */
};

/* 0 if spec has a valid form, -EINVAL if not. Does not look at processes. */
int target_spec_check(const char *spec);
/* Resolve spec against ROOT (PROCFS_ROOT in real use). -EINVAL: bad spec; -ESRCH: no process
 * matches or it has gone; -ENOENT/-EACCES: the pidfile cannot be read. `self` is the calling
 * process. The agent's own process is never matched by comm:/exe:.
 * More precisely: pid:N is 1..INT_MAX in digits without leading zero (one spelling per pid);
 * a thread id or a zombie is -ESRCH. comm:NAME matches /proc/PID/comm exactly; a NAME longer
 * than 15 characters matches a comm equal to its first 15 only if argv[0]'s basename is NAME.
 * exe:PATH (absolute) matches the exe link, with or without a " (deleted)" suffix.
 * pidfile:PATH: the first line must be the pid alone, else -EBADMSG.
 * comm:/exe: results are cached per (root, spec), 64 of them, LRU, as the "targets" cachestat;
 * a hit rechecks that one pid (start time, state, match) instead of scanning every process, so
 * on a hit `matches` is the count from the scan that found the cached process. Thread-safe.
 * err (may be NULL) gets the code and, where the errno does not say it, why: which part of the
 * spec is malformed, that no process has that comm or executable (and how many the agent could
 * not read), that a pid is a thread or a zombie, or which pid a pid file names. */
int target_resolve(const char *root, const char *spec, struct target *ret, struct error *err);

#endif
