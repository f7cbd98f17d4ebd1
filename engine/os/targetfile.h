/* Files a target must open by path: where they go in the target's own mount namespace (its /tmp
 * as it sees it, reached through /proc/PID/root when it is not ours) and making them its user's.
 * Shared by the memory hooks (ring, library copy) and the Python script runner (pyexec). Not a
 * file writer: callers create, fill and unlink the files themselves. */
#ifndef TARGETFILE_H
#define TARGETFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Whether pid opens a path as the calling process does: the same mount namespace and the same
 * root. A chroot in our namespace does not: its /tmp is our ROOT/tmp. */
bool targetfile_same_ns(pid_t pid);
/* The path the target knows a mapped file by, from the one /proc/PID/maps shows us: the kernel
 * writes maps in the reader's view, so a chrooted target's files read ROOT/usr/lib/... there.
 * Cuts off the target's root as we see it (readlink /proc/PID/root; "/" for a container that
 * pivoted into its own namespace, whose maps already read as it sees them) and " (deleted)".
 * -ENAMETOOLONG when buf is too small. */
int targetfile_own_path(pid_t pid, const char *seen, char *buf, size_t len);
/* Where a file the target must open goes: the first of dirs (NULL-terminated, absolute, as the
 * target sees them) that is a directory, as "DIR/NAME" for the target (target_path) and the
 * agent's path to the same file (agent_path). -ENOENT when none is. */
int targetfile_place(pid_t pid, bool same_ns, const char *const *dirs, const char *name,
                     char *target_path, size_t tlen, char *agent_path, size_t alen);
/* Makes the open file fd its user's when the target runs as another user: chown to the target's
 * owner, or else, with a fallback mode other than 0, that mode (readable by anyone until it is
 * unlinked). 0 when the target's user owns it or can open it, else the chown's -errno. */
int targetfile_give(int fd, pid_t pid, mode_t fallback);

#endif
