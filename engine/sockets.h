/* The sockets a process holds, described as Python's socket repr does:
 * `<socket.socket fd=7, family=2, type=1, proto=6, laddr=('127.0.0.1', 80), raddr=(...)>`.
 * Sockets come from ROOT/PID/fd (socket:[INODE]); their addresses, type and protocol from the
 * target's own network namespace tables ROOT/PID/net/{tcp,tcp6,udp,udp6,raw,raw6,unix,netlink,
 * packet}. A socket found in no table is still listed, with what is known. */
#ifndef SOCKETS_H
#define SOCKETS_H

#include <stddef.h>
#include <sys/types.h>

/* Calls emit once per socket, in fd order, with the repr line (no newline). Stops and returns
 * emit's value if it is negative. -ESRCH when the process has gone.
 * The line is what Python prints for socket.socket(fileno=FD): family, type and proto are the
 * kernel's (SO_DOMAIN, SO_TYPE, SO_PROTOCOL: proto=6 for TCP, while a Python program's own
 * socket() shows the proto it was given, often 0). What /proc cannot tell:
 * - IPv6 flow info and scope id are printed as 0 (('fe80::1', 22, 0, 0) even if scoped);
 * - unix: laddr is the bound path, unquoted as Python's str() of it; an abstract name is shown
 *   as Python's bytes, b'\x00name', but a NUL inside the name shows as '@' (the kernel's
 *   rendering); an unnamed socket has no laddr; raddr is never shown (no peer in the table);
 * - netlink: type=? (not in the table), laddr=(portid, groups), raddr=(0, 0) assumed;
 * - packet: proto in network order as Python shows it (768 for ETH_P_ALL), no laddr;
 * - a socket in no table (another protocol, a table too big, a row unreadable):
 *   `<socket.socket fd=9, family=?, type=?, proto=?, inode=12345>`. */
int sockets_dump(const char *root, pid_t pid,
                 int (*emit)(const char *line, void *userdata), void *userdata);

#endif
