/* A census of a process's kernel-visible objects, for the object-growth actions: file
 * descriptors by kind (pipe, socket, eventfd, timerfd, epoll, signalfd, inotify, file, and
 * "other"), threads and memory mappings; a repr of each object for dump_log_objects; and what the
 * process has scheduled (timerfds, POSIX timers, epoll sets and what they watch) for
 * log_event_loop_scheduled; the self-pipes of its event loops, for waking them. Everything comes
 * from /proc/PID (and sock_diag, for a unix socket's peer): no ptrace, nothing injected. */
#ifndef OBJECTS_H
#define OBJECTS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "os/error.h"

enum objects_type {
    OBJECTS_PIPE,
    OBJECTS_SOCKET,
    OBJECTS_EVENTFD,
    OBJECTS_TIMERFD,
    OBJECTS_EPOLL,
    OBJECTS_SIGNALFD,
    OBJECTS_INOTIFY,
    OBJECTS_FILE,
    OBJECTS_OTHER_FD,
    OBJECTS_THREAD,
    OBJECTS_MAPPING,
    OBJECTS_NTYPES
};

struct objects_count {
    uint64_t n[OBJECTS_NTYPES];
};

/* "pipe", "socket", "eventfd", "timerfd", "epoll", "signalfd", "inotify", "file", "other",
 * "thread", "mapping". */
const char *objects_type_name(enum objects_type t);
/* -EINVAL for an unknown name. */
int objects_type_parse(const char *name, enum objects_type *ret);

/* Errors of the functions below: -ESRCH when pid has gone; a /proc file that cannot be read
 * (-EACCES, -EBADMSG, ...; err names it); -ENOMEM; or emit's negative return. err may be NULL. */

/* Counts every object of pid. Cheap enough to run every second on a process with 10,000 fds
 * (one readlink per fd, no fdinfo reads). */
int objects_count(const char *root, pid_t pid, struct objects_count *ret, struct error *err);

/* Calls emit with the repr of every live object of type t, e.g.
 * `<pipe fd=5 inode=12345 read end, other end: pid 42 fd 6>`,
 * `<socket fd=7 ...>` (as sockets_dump writes it), `<file fd=3 path=/var/log/x.log pos=4096
 * flags=O_WRONLY|O_APPEND>`, `<eventfd fd=9 count=0>`, `<timerfd fd=8 clock=monotonic
 * next=6.438s interval=7s>`, `<epoll fd=4 watching 3 fds>`, `<thread tid=12 name=worker
 * state=S>`, `<mapping 7f00..-7f01.. r-xp /usr/lib/libc.so.6>`. Stops at emit's negative
 * return. -EINVAL for an unknown t. */
int objects_dump(const char *root, pid_t pid, enum objects_type t,
                 int (*emit)(const char *repr, void *userdata), void *userdata, struct error *err);

/* Calls emit with one repr per scheduled item: every timerfd
 * `<timerfd fd=8 clock=monotonic next=6.438s interval=7s>` (next: time to expiry, "disarmed"
 * when not armed), every POSIX timer from ROOT/PID/timers `<posix timer id=0 clock=realtime
 * notify=signal/14 ...>`, and every epoll set with the fds it watches and their events
 * `<epoll fd=4 watches fd=8 (timerfd) events=EPOLLIN, fd=5 (pipe) events=EPOLLIN|EPOLLET>`. */
int objects_scheduled(const char *root, pid_t pid, int (*emit)(const char *repr, void *userdata),
                      void *userdata, struct error *err);

struct objects_selfpipe {
    int fd;       /* the write end, in pid */
    uint64_t ino; /* its socket's inode: a duplicate taken later must still have it */
};

/* The write ends of pid's self-pipes, as asyncio's selector loop keeps one (loop._csock): a unix
 * SOCK_STREAM socket of pid whose peer, also pid's, is watched by one of pid's epoll sets while
 * it is watched by none. Up to max into ret, ascending by their peer's fd; *ret_n how many.
 * Peers are asked of sock_diag (sockets_unix_peer), so a target in another network namespace has
 * none found. Only finds them: writing to one is the caller's decision. */
int objects_selfpipes(const char *root, pid_t pid, struct objects_selfpipe *ret, size_t max,
                      size_t *ret_n, struct error *err);

#endif
