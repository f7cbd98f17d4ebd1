/* Readers of /proc/PID files the engine needs: threads, names, start times, memory maps and
 * file descriptors. Plain parsers: no caching, no ptrace. Every function takes the /proc root
 * so unit tests can point it at fixture trees; pass PROCFS_ROOT ("/proc") in real use. */
#ifndef PROCFS_H
#define PROCFS_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#define PROCFS_ROOT "/proc"
#define PROCFS_COMM_MAX 16        /* TASK_COMM_LEN, including the NUL */
#define PROCFS_IDS_MAX (1 << 22)  /* pids or tids listed: the kernel's PID_MAX_LIMIT */
#define PROCFS_FDS_MAX (1 << 20)  /* fds listed: the default fs.nr_open */
#define PROCFS_MAPS_MAX (1 << 20) /* maps entries read */

/* Errors common to all: -EINVAL for pid <= 0 (or tid < 0); -ESRCH when ROOT/PID (or its task
 * TID) does not exist; -ENOENT when it does but the file does not (a kernel thread's exe, a
 * closed fd); -EACCES and other open/read errors passed through; -EBADMSG for content the
 * kernel would not write; -E2BIG past the limits above; -ENAMETOOLONG when buf is too small. */

struct procfs_map {
    uint64_t start, end, offset;
    uint64_t inode;
    unsigned dev_major, dev_minor;
    char perms[5]; /* "r-xp" */
    char *path;    /* "" for anonymous; "[stack]", "[vdso]", ...; malloc'd;
                    * as the kernel prints it, " (deleted)" suffix included */
};

/* Strict unsigned parser for /proc text: digits of base (10 or 16) only, no sign or space, at
 * most maxdigits, no overflow; -EBADMSG otherwise. *p is advanced past the digits. */
int procfs_parse_u64(const char **p, int base, unsigned maxdigits, uint64_t *ret);
/* The head of ROOT/PID/FILE (ROOT/PID/task/TID/FILE when tid is not 0): one read of at most
 * size - 1 bytes into buf, NUL-terminated, its length in *ret_len. For files the kernel generates
 * in one go (status, syscall) whose first bytes are all a caller needs. -ESRCH when gone. */
int procfs_read_head(const char *root, pid_t pid, pid_t tid, const char *file, char *buf,
                     size_t size, size_t *ret_len);
/* Thread ids of pid, from ROOT/PID/task, ascending. *ret_tids is malloc'd. -ESRCH when gone. */
int procfs_list_tasks(const char *root, pid_t pid, pid_t **ret_tids, size_t *ret_n);
/* Name from ROOT/PID/task/TID/comm (or ROOT/PID/comm when tid is 0), newline stripped. */
int procfs_read_comm(const char *root, pid_t pid, pid_t tid, char ret[PROCFS_COMM_MAX]);
/* Field 22 of ROOT/PID/stat (clock ticks since boot), parsed past the last ')' of comm. */
int procfs_read_starttime(const char *root, pid_t pid, uint64_t *ret);
/* True when pid has exited: no /proc entry, no threads left, or only its main thread as a
 * zombie (or dead) that its parent has not reaped yet. */
bool procfs_process_gone(const char *root, pid_t pid);
/* Thread state letter (field 3 of stat): 'R', 'S', 'D', 'T', 't', 'Z', ... */
int procfs_read_state(const char *root, pid_t pid, pid_t tid, char *ret);
/* ROOT/PID/maps, in file order. Free with procfs_maps_free. */
int procfs_read_maps(const char *root, pid_t pid, struct procfs_map **ret, size_t *ret_n);
void procfs_maps_free(struct procfs_map *maps, size_t n);
/* Bytes resident in the [heap] mapping (the brk heap: malloc's main arena), from the Rss line of
 * its entry in ROOT/PID/smaps; 0 when there is no such mapping. */
int procfs_read_heap_rss(const char *root, pid_t pid, uint64_t *ret);
/* The target of ROOT/PID/exe, or of /proc/PID/fd/FD ("socket:[1234]", "pipe:[5]", paths). */
int procfs_read_exe(const char *root, pid_t pid, char *buf, size_t len);
int procfs_read_fd_link(const char *root, pid_t pid, int fd, char *buf, size_t len);
/* Open fd numbers of pid, ascending. *ret_fds is malloc'd. */
int procfs_list_fds(const char *root, pid_t pid, int **ret_fds, size_t *ret_n);
/* All process ids in ROOT, ascending. */
int procfs_list_pids(const char *root, pid_t **ret_pids, size_t *ret_n);
/* Tgid of ROOT/PID/status: equals pid for a process, differs for a thread id (which /proc also
 * resolves, though it does not list it). */
int procfs_read_tgid(const char *root, pid_t pid, pid_t *ret);
/* argv[0] from ROOT/PID/cmdline, NUL-terminated ("" for kernel threads and zombies). A process
 * that rewrote its command line without NULs gives all of it (-ENAMETOOLONG past PATH_MAX). */
int procfs_read_argv0(const char *root, pid_t pid, char *buf, size_t len);

#endif
