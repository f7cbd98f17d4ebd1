/* The sockets a process holds, described as Python's socket repr does:
 * `<socket.socket fd=7, family=2, type=1, proto=6, laddr=('127.0.0.1', 80), raddr=(...)>`.
 * Sockets come from ROOT/PID/fd (socket:[INODE]). Each is asked directly, through a duplicate
 * taken with pidfd_getfd(2) and closed at once; where that is refused, its addresses, type and
 * protocol come from the target's own network namespace tables ROOT/PID/net/{tcp,tcp6,udp,udp6,
 * raw,raw6,unix,netlink,packet}. A socket found nowhere is still listed, with what is known. */
#ifndef SOCKETS_H
#define SOCKETS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "os/error.h"

/* Calls emit once per socket, in fd order, with the repr line (no newline). Stops and returns
 * emit's value if it is negative. -ESRCH when the process has gone; an fd that cannot be read
 * (err names it); -ENOMEM. err may be NULL.
 *
 * The line is what Python prints for socket.socket(fileno=FD): family, type and proto are the
 * kernel's (SO_DOMAIN, SO_TYPE, SO_PROTOCOL: proto=6 for TCP, 0 for a packet socket, while a
 * Python program's own socket() shows the proto it was given, often 0).
 *
 * Asking the socket (root is exactly PROCFS_ROOT, and the caller may ptrace-attach to pid, e.g.
 * root with CAP_SYS_PTRACE, Linux >= 5.6) gives Python's line: getsockname as laddr and
 * getpeername as raddr, each left out when it fails or is empty. AF_INET ('a.b.c.d', port);
 * AF_INET6 ('addr', port, flowinfo, scope_id); AF_UNIX the path unquoted (raw bytes, where
 * Python would decode them), an abstract name as bytes, b'\x00name'; AF_NETLINK (portid,
 * groups); AF_VSOCK (cid, port); AF_PACKET (ifname, proto, pkttype, hatype, b'hwaddr'). Other
 * families show no addresses (Python shows some of them).
 *
 * The tables (any other root, even another path to the same procfs; or pidfd_getfd refused,
 * for that fd or, on EPERM/ENOSYS, the whole process) tell less:
 * - sockets never bound (an unbound UDP or TCP socket, an unbound netlink socket) are in none;
 * - IPv6 flow info and scope id are printed as 0 (('fe80::1', 22, 0, 0) even if scoped);
 * - unix: laddr is the bound path, unquoted; an abstract name is shown as bytes but a NUL inside
 *   the name shows as '@' (the kernel's rendering); raddr is never shown (no peer in the table);
 * - netlink: type=? (not in the table), laddr=(portid, groups), raddr=(0, 0) assumed;
 * - packet: proto as given to socket(), in network order (768 for ETH_P_ALL), no laddr;
 * - a socket in no table (another protocol, a table too big, a row unreadable):
 *   `<socket.socket fd=9, family=?, type=?, proto=?, inode=12345>`. */
int sockets_dump(const char *root, pid_t pid, int (*emit)(const char *line, void *userdata),
                 void *userdata, struct error *err);

/* The peer of the unix SOCK_STREAM socket with this inode, asked of sock_diag (UNIX_DIAG_PEER,
 * as `ss -x` does) in the agent's own network namespace: a socket of a target in another one is
 * not found. 0 and *ret_peer, the peer's inode; -ENOENT when there is no such socket, it is not a
 * connected stream socket, has no peer, or the kernel has no unix_diag; -errno when sock_diag
 * cannot be asked. */
int sockets_unix_peer(uint64_t inode, uint64_t *ret_peer);

#endif
