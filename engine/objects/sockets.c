/* The sockets a process holds, as Python's socket repr shows them (see sockets.h). Each socket
 * fd is duplicated into this process through a pidfd and asked directly, as Python would ask it;
 * where that is refused, the socket inodes from the fd links are looked up in the target's
 * network tables instead, each table read once (binary search over the sorted inodes). Not a
 * netstat: sockets of other processes are never described. */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <linux/inet_diag.h>
#include <linux/vm_sockets.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "os/error.h"
#include "os/procfs.h"
#include "objects/sockets.h"

#define LINE_MAX_BYTES (PATH_MAX + 256)
#define TABLE_ROWS_MAX (1 << 22) /* rows read per table; later ones stay unknown */
#define FIELDS_MAX 12
#define SUN_PATH_MAX sizeof(((struct sockaddr_un *)0)->sun_path)
#define HWADDR_MAX 32 /* the kernel's MAX_ADDR_LEN */
#define DESC_MAX 1024 /* a unix path is at most 108 bytes, 4 each when escaped */

enum table_kind { TABLE_INET, TABLE_UNIX, TABLE_NETLINK, TABLE_PACKET };

struct table {
    const char *file;
    enum table_kind kind;
    int family, type;
    int proto; /* -1: the local "port" column (raw sockets) */
};

static const struct table tables[] = {
    {"tcp", TABLE_INET, AF_INET, SOCK_STREAM, IPPROTO_TCP},
    {"tcp6", TABLE_INET, AF_INET6, SOCK_STREAM, IPPROTO_TCP},
    {"udp", TABLE_INET, AF_INET, SOCK_DGRAM, IPPROTO_UDP},
    {"udp6", TABLE_INET, AF_INET6, SOCK_DGRAM, IPPROTO_UDP},
    {"udplite", TABLE_INET, AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE},
    {"udplite6", TABLE_INET, AF_INET6, SOCK_DGRAM, IPPROTO_UDPLITE},
    {"raw", TABLE_INET, AF_INET, SOCK_RAW, -1},
    {"raw6", TABLE_INET, AF_INET6, SOCK_RAW, -1},
    {"icmp", TABLE_INET, AF_INET, SOCK_DGRAM, IPPROTO_ICMP}, /* ping sockets */
    {"icmp6", TABLE_INET, AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6},
    {"unix", TABLE_UNIX, AF_UNIX, 0, 0},
    {"netlink", TABLE_NETLINK, AF_NETLINK, 0, 0},
    {"packet", TABLE_PACKET, AF_PACKET, 0, 0},
};

struct fdsock {
    int fd;
    uint64_t inode;
    char *desc; /* "family=..., ..." from the socket itself, or NULL */
};

struct found {
    uint64_t inode;
    char *desc; /* "family=..., type=..., ..." once a table row describes it */
};

struct lookup {
    struct found *v;
    size_t n, described;
};

/* A whole field as an unsigned number: digits of base only, at most max. */
static int parse_num(const char *s, int base, uint64_t max, uint64_t *ret)
{
    uint64_t v;

    if (procfs_parse_u64(&s, base, 64, &v) < 0 || *s || v > max)
        return -EBADMSG;
    *ret = v;
    return 0;
}

/* Up to max space-separated fields, split in place. *rest is what follows the single space
 * after the last field taken (a unix socket's path, which may itself start with a space). */
static size_t split(char *s, char **fields, size_t max, char **rest)
{
    size_t n = 0;

    while (n < max) {
        while (*s == ' ')
            s++;
        if (!*s)
            break;
        fields[n++] = s;
        while (*s && *s != ' ')
            s++;
        if (*s)
            *s++ = '\0';
    }
    *rest = s;
    return n;
}

/* "0100007F:0035": the kernel prints each 32-bit word of the address as a host-order integer,
 * so parsing words back and storing them in host order restores the network-order bytes. */
static int parse_inet_addr(char *s, int family, char *ret, size_t len, unsigned *ret_port)
{
    size_t words = family == AF_INET ? 1 : 4;
    unsigned char addr[16];
    char *colon = strchr(s, ':');
    uint64_t v;

    if (!colon || (size_t)(colon - s) != words * 8 || strlen(colon + 1) != 4)
        return -EBADMSG;
    for (size_t i = 0; i < words; i++) {
        char word[9];
        uint32_t w;
        memcpy(word, s + 8 * i, 8);
        word[8] = '\0';
        if (parse_num(word, 16, UINT32_MAX, &v) < 0)
            return -EBADMSG;
        w = (uint32_t)v;
        memcpy(addr + 4 * i, &w, 4);
    }
    if (parse_num(colon + 1, 16, UINT16_MAX, &v) < 0 ||
        !inet_ntop(family, addr, ret, (socklen_t)len))
        return -EBADMSG;
    *ret_port = (unsigned)v;
    return 0;
}

/* Python's str() of an address tuple; scope id and flow info are not in /proc, hence 0, 0. */
static void fmt_inet(char *buf, size_t len, int family, const char *host, unsigned port)
{
    if (family == AF_INET)
        snprintf(buf, len, "('%s', %u)", host, port);
    else
        snprintf(buf, len, "('%s', %u, 0, 0)", host, port);
}

static int cmp_found(const void *a, const void *b)
{
    uint64_t x = ((const struct found *)a)->inode, y = ((const struct found *)b)->inode;
    return (x > y) - (x < y);
}

/* The entry for inode if one of our fds holds it and no table described it yet. */
static struct found *wanted(const struct lookup *lk, uint64_t inode)
{
    struct found key = {.inode = inode}, *f;

    f = bsearch(&key, lk->v, lk->n, sizeof(*lk->v), cmp_found);
    return f && !f->desc ? f : NULL;
}

/* getpeername fails without a remote port, and in CLOSE or SYN_SENT (inet_getname); UDP and raw
 * sockets are CLOSE until connected, and raw ones never have a remote port. */
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7

/* sl local remote st tx:rx tr:when retrnsmt uid timeout inode ... */
static int describe_inet(char *line, const struct table *t, const struct lookup *lk,
                         struct found **ret, char *desc, size_t len)
{
    char *f[FIELDS_MAX], *rest, lhost[INET6_ADDRSTRLEN], rhost[INET6_ADDRSTRLEN];
    char laddr[INET6_ADDRSTRLEN + 32], raddr[INET6_ADDRSTRLEN + 32] = "";
    unsigned lport, rport;
    uint64_t inode, st;
    struct found *hit;
    int proto;

    if (split(line, f, 10, &rest) != 10 || parse_num(f[9], 10, UINT64_MAX, &inode) < 0)
        return -EBADMSG;
    hit = wanted(lk, inode);
    if (!hit)
        return 0;
    if (parse_inet_addr(f[1], t->family, lhost, sizeof(lhost), &lport) < 0 ||
        parse_inet_addr(f[2], t->family, rhost, sizeof(rhost), &rport) < 0 ||
        parse_num(f[3], 16, 0xff, &st) < 0)
        return -EBADMSG;
    proto = t->proto < 0 ? (int)lport : t->proto;
    fmt_inet(laddr, sizeof(laddr), t->family, lhost, lport);
    if (rport && st != TCP_SYN_SENT && st != TCP_CLOSE)
        fmt_inet(raddr, sizeof(raddr), t->family, rhost, rport);
    snprintf(desc, len, "family=%d, type=%d, proto=%d, laddr=%s%s%s", t->family, t->type, proto,
             laddr, raddr[0] ? ", raddr=" : "", raddr);
    *ret = hit;
    return 0;
}

/* Python's repr() of bytes (b'\x00name', an abstract unix name) or of a str (an interface
 * name): quotes and escapes as Python picks them. A str's bytes from 0x80 up are passed on as
 * they are, standing for the characters Python would decode from them. */
static void fmt_repr(char *buf, size_t len, const unsigned char *s, size_t n, bool bytes)
{
    bool squote = memchr(s, '\'', n) != NULL, dquote = memchr(s, '"', n) != NULL;
    char quote = squote && !dquote ? '"' : '\'';
    size_t o = 0;

    /* Room for the longest escape, the closing quote and the NUL is checked per byte. */
    if (len < 8)
        return;
    if (bytes)
        buf[o++] = 'b';
    buf[o++] = quote;
    for (size_t i = 0; i < n && o + 6 < len; i++) {
        unsigned char c = s[i];
        if (c == (unsigned char)quote || c == '\\')
            o += (size_t)snprintf(buf + o, len - o, "\\%c", c);
        else if (c == '\t')
            o += (size_t)snprintf(buf + o, len - o, "\\t");
        else if (c == '\n')
            o += (size_t)snprintf(buf + o, len - o, "\\n");
        else if (c == '\r')
            o += (size_t)snprintf(buf + o, len - o, "\\r");
        else if (c < 0x20 || c == 0x7f || (bytes && c > 0x7f))
            o += (size_t)snprintf(buf + o, len - o, "\\x%02x", c);
        else
            buf[o++] = (char)c;
    }
    buf[o++] = quote;
    buf[o] = '\0';
}

/* Num RefCount Protocol Flags Type St Inode [Path] */
static int describe_unix(char *line, const struct lookup *lk, struct found **ret, char *desc,
                         size_t len)
{
    char *f[FIELDS_MAX], *path, laddr[DESC_MAX / 2];
    uint64_t inode, type;
    struct found *hit;

    if (split(line, f, 7, &path) != 7 || parse_num(f[6], 10, UINT64_MAX, &inode) < 0)
        return -EBADMSG;
    hit = wanted(lk, inode);
    if (!hit)
        return 0;
    if (parse_num(f[4], 16, 0xffff, &type) < 0 || strlen(path) > SUN_PATH_MAX)
        return -EBADMSG;
    /* The kernel shows an abstract name's leading NUL (and any other NUL in it) as '@'; Python
     * shows an unnamed socket's empty address not at all, a path as plain text. */
    if (path[0] == '@') {
        unsigned char raw[SUN_PATH_MAX];
        size_t n = strlen(path);
        raw[0] = '\0';
        memcpy(raw + 1, path + 1, n - 1);
        fmt_repr(laddr, sizeof(laddr), raw, n, true);
    } else {
        snprintf(laddr, sizeof(laddr), "%s", path);
    }
    snprintf(desc, len, "family=%d, type=%d, proto=0%s%s", AF_UNIX, (int)type,
             laddr[0] ? ", laddr=" : "", laddr);
    *ret = hit;
    return 0;
}

/* sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode */
static int describe_netlink(char *line, const struct lookup *lk, struct found **ret, char *desc,
                            size_t len)
{
    char *f[FIELDS_MAX], *rest;
    uint64_t inode, proto, portid, groups;
    struct found *hit;

    if (split(line, f, 10, &rest) != 10 || parse_num(f[9], 10, UINT64_MAX, &inode) < 0)
        return -EBADMSG;
    hit = wanted(lk, inode);
    if (!hit)
        return 0;
    if (parse_num(f[1], 10, INT32_MAX, &proto) < 0 ||
        parse_num(f[2], 10, UINT32_MAX, &portid) < 0 ||
        parse_num(f[3], 16, UINT32_MAX, &groups) < 0)
        return -EBADMSG;
    /* The table has no socket type (SOCK_RAW and SOCK_DGRAM are alike) and no peer; netlink's
     * getpeername never fails, and a socket not connected elsewhere has the kernel, (0, 0). */
    snprintf(desc, len, "family=%d, type=?, proto=%d, laddr=(%u, %u), raddr=(0, 0)", AF_NETLINK,
             (int)proto, (unsigned)portid, (unsigned)groups);
    *ret = hit;
    return 0;
}

/* sk RefCnt Type Proto Iface R Rmem User Inode */
static int describe_packet(char *line, const struct lookup *lk, struct found **ret, char *desc,
                           size_t len)
{
    char *f[FIELDS_MAX], *rest;
    uint64_t inode, type, proto;
    struct found *hit;

    if (split(line, f, 9, &rest) != 9 || parse_num(f[8], 10, UINT64_MAX, &inode) < 0)
        return -EBADMSG;
    hit = wanted(lk, inode);
    if (!hit)
        return 0;
    if (parse_num(f[2], 10, INT32_MAX, &type) < 0 || parse_num(f[3], 16, UINT16_MAX, &proto) < 0)
        return -EBADMSG;
    /* The table shows the protocol in host order; the socket (and so Python) keeps it in network
     * order, as passed to socket(). The address needs the interface name: left out. */
    snprintf(desc, len, "family=%d, type=%d, proto=%u", AF_PACKET, (int)type,
             (unsigned)htons((uint16_t)proto));
    *ret = hit;
    return 0;
}

static int describe(char *line, const struct table *t, const struct lookup *lk, struct found **ret,
                    char *desc, size_t len)
{
    switch (t->kind) {
    case TABLE_INET:
        return describe_inet(line, t, lk, ret, desc, len);
    case TABLE_UNIX:
        return describe_unix(line, lk, ret, desc, len);
    case TABLE_NETLINK:
        return describe_netlink(line, lk, ret, desc, len);
    case TABLE_PACKET:
        return describe_packet(line, lk, ret, desc, len);
    }
    return -EINVAL;
}

/* Describes the wanted sockets found in one table. A missing table (no IPv6, an old kernel) or
 * a malformed row is skipped: those sockets stay unknown. */
static int read_table(const char *root, pid_t pid, const struct table *t, struct lookup *lk,
                      char *line)
{
    char path[PATH_MAX], desc[DESC_MAX];
    FILE *f;
    size_t rows = 0;
    bool skip = false;
    int r = 0;

    snprintf(path, sizeof(path), "%s/%d/net/%s", root, (int)pid, t->file);
    f = fopen(path, "re");
    if (!f)
        return errno == ENOMEM ? -ENOMEM : 0;
    while (lk->described < lk->n && rows < TABLE_ROWS_MAX && fgets(line, LINE_MAX_BYTES, f)) {
        struct found *hit = NULL;
        size_t n = strlen(line);
        bool whole = n > 0 && line[n - 1] == '\n';

        /* An over-long line is dropped with all its pieces. */
        if (skip || !whole) {
            skip = !whole;
            continue;
        }
        line[n - 1] = '\0';
        if (rows++ == 0) /* the header */
            continue;
        if (describe(line, t, lk, &hit, desc, sizeof(desc)) < 0 || !hit)
            continue;
        hit->desc = strdup(desc);
        if (!hit->desc) {
            r = -ENOMEM;
            goto out;
        }
        lk->described++;
    }
out:
    fclose(f);
    return r;
}

/* What getsockname/getpeername may write: the buffer is zeroed first, as Python's is, so fields
 * past a short address read as 0, as they do for Python. */
union sockaddr_any {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
    struct sockaddr_un un;
    struct sockaddr_nl nl;
    struct sockaddr_ll ll;
    struct sockaddr_vm vm;
    struct sockaddr_storage ss;
};

/* Python's str() of the address makesockaddr builds; "" where Python shows none: an empty unix
 * name (falsy), a family whose addresses this does not decode. fd is the socket, for the name of
 * a packet socket's interface in its own network namespace. */
static void fmt_sockaddr(int fd, const union sockaddr_any *a, socklen_t n, char *buf, size_t len)
{
    char host[INET6_ADDRSTRLEN];
    size_t pn;

    buf[0] = '\0';
    if (n == 0) /* Python's None */
        return;
    switch (a->sa.sa_family) {
    case AF_INET:
        if (inet_ntop(AF_INET, &a->in.sin_addr, host, sizeof(host)))
            snprintf(buf, len, "('%s', %u)", host, ntohs(a->in.sin_port));
        break;
    case AF_INET6:
        if (inet_ntop(AF_INET6, &a->in6.sin6_addr, host, sizeof(host)))
            snprintf(buf, len, "('%s', %u, %u, %u)", host, ntohs(a->in6.sin6_port),
                     (unsigned)ntohl(a->in6.sin6_flowinfo), (unsigned)a->in6.sin6_scope_id);
        break;
    case AF_UNIX:
        /* Linux: a name starting with NUL is abstract, bytes of the returned length; any other
         * is a NUL-terminated path, which Python shows as str() does, unquoted. */
        pn = n > offsetof(struct sockaddr_un, sun_path) ? n - offsetof(struct sockaddr_un, sun_path)
                                                        : 0;
        if (pn > SUN_PATH_MAX)
            pn = SUN_PATH_MAX;
        if (pn > 0 && a->un.sun_path[0] == '\0')
            fmt_repr(buf, len, (const unsigned char *)a->un.sun_path, pn, true);
        else
            snprintf(buf, len, "%.*s", (int)strnlen(a->un.sun_path, SUN_PATH_MAX), a->un.sun_path);
        break;
    case AF_NETLINK:
        snprintf(buf, len, "(%u, %u)", (unsigned)a->nl.nl_pid, (unsigned)a->nl.nl_groups);
        break;
    case AF_VSOCK:
        snprintf(buf, len, "(%u, %u)", (unsigned)a->vm.svm_cid, (unsigned)a->vm.svm_port);
        break;
    case AF_PACKET: {
        /* (ifname, proto, pkttype, hatype, hwaddr); the hardware address is cut to what was
         * returned, where Python trusts sll_halen. */
        size_t room = 0, halen;
        struct ifreq ifr = {.ifr_ifindex = a->ll.sll_ifindex};
        char ifname[4 * IFNAMSIZ + 4], hw[4 * HWADDR_MAX + 4];

        if (n > offsetof(struct sockaddr_ll, sll_addr))
            room = n - offsetof(struct sockaddr_ll, sll_addr);
        halen = a->ll.sll_halen < room ? a->ll.sll_halen : room;
        if (halen > HWADDR_MAX)
            halen = HWADDR_MAX;
        if (a->ll.sll_ifindex == 0 || ioctl(fd, SIOCGIFNAME, &ifr) < 0)
            ifr.ifr_name[0] = '\0';
        fmt_repr(ifname, sizeof(ifname), (const unsigned char *)ifr.ifr_name,
                 strnlen(ifr.ifr_name, IFNAMSIZ), false);
        fmt_repr(hw, sizeof(hw), (const unsigned char *)a + offsetof(struct sockaddr_ll, sll_addr),
                 halen, true);
        snprintf(buf, len, "(%s, %u, %u, %u, %s)", ifname, (unsigned)ntohs(a->ll.sll_protocol),
                 (unsigned)a->ll.sll_pkttype, (unsigned)a->ll.sll_hatype, hw);
        break;
    }
    default:
        break;
    }
}

/* The repr fields of a socket this process holds, as socket.socket(fileno=fd) shows them.
 * -ENOTSOCK when fd is no socket. */
static int describe_socket(int fd, char *desc, size_t len)
{
    char laddr[DESC_MAX / 2], raddr[DESC_MAX / 2];
    union sockaddr_any a;
    int family, type, proto;
    socklen_t n = sizeof(int);

    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &n) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &n) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &n) < 0)
        return -errno;
    /* Python leaves an address out when asking fails (an unconnected peer) and when it is
     * falsy. */
    memset(&a, 0, sizeof(a));
    n = sizeof(a);
    laddr[0] = '\0';
    if (getsockname(fd, &a.sa, &n) == 0)
        fmt_sockaddr(fd, &a, n, laddr, sizeof(laddr));
    memset(&a, 0, sizeof(a));
    n = sizeof(a);
    raddr[0] = '\0';
    if (getpeername(fd, &a.sa, &n) == 0)
        fmt_sockaddr(fd, &a, n, raddr, sizeof(raddr));
    snprintf(desc, len, "family=%d, type=%d, proto=%d%s%s%s%s", family, type, proto,
             laddr[0] ? ", laddr=" : "", laddr, raddr[0] ? ", raddr=" : "", raddr);
    return 0;
}

/* Describes fd of the pidfd's process through a duplicate, closed before returning. -EBADF or
 * -ENOTSOCK when the fd was closed or replaced meanwhile, -ESRCH when the process is gone,
 * -EPERM when it may not be inspected so. */
static int describe_remote(int pidfd, int fd, char *desc, size_t len)
{
    int dup, r;

    dup = pidfd_getfd(pidfd, fd, 0);
    if (dup < 0)
        return -errno;
    r = describe_socket(dup, desc, len);
    close(dup);
    return r;
}

/* "socket:[1234]" */
static int parse_socket_link(const char *link, uint64_t *ret)
{
    char num[24];
    size_t n = strlen(link);

    if (n < 10 || n - 9 >= sizeof(num) || strncmp(link, "socket:[", 8) != 0 || link[n - 1] != ']')
        return -EINVAL;
    memcpy(num, link + 8, n - 9);
    num[n - 9] = '\0';
    return parse_num(num, 10, UINT64_MAX, ret);
}

int sockets_dump(const char *root, pid_t pid, int (*emit)(const char *line, void *userdata),
                 void *userdata, struct error *err)
{
    struct fdsock *socks = NULL;
    struct lookup lk = {0};
    int *fds = NULL, pidfd = -1;
    char *line = NULL, desc[DESC_MAX];
    size_t nfds, nsocks = 0, nwanted = 0;
    int r;

    /* Opened before the fds are listed, so that both are of one process: should the pid be
     * reused later, the pidfd reaches nothing (-ESRCH), never the newcomer's fds. */
    if (strcmp(root, PROCFS_ROOT) == 0)
        pidfd = pidfd_open(pid, 0);
    error_clear(err);
    r = procfs_list_fds(root, pid, &fds, &nfds);
    if (r < 0) {
        if (r != -ESRCH && r != -ENOMEM)
            error_set(err, r, "cannot read %s/%d/fd: %s", root, (int)pid, strerror(-r));
        goto out;
    }
    socks = calloc(nfds ? nfds : 1, sizeof(*socks));
    lk.v = calloc(nfds ? nfds : 1, sizeof(*lk.v));
    line = malloc(LINE_MAX_BYTES);
    if (!socks || !lk.v || !line) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < nfds; i++) {
        struct fdsock *s = &socks[nsocks];
        char link[64];
        r = procfs_read_fd_link(root, pid, fds[i], link, sizeof(link));
        if (r == -ENOENT || r == -ENAMETOOLONG) /* closed meanwhile; a long path is no socket */
            continue;
        if (r < 0) {
            if (r != -ESRCH && r != -ENOMEM)
                error_set(err, r, "cannot read %s/%d/fd/%d: %s", root, (int)pid, fds[i],
                          strerror(-r));
            goto out;
        }
        if (parse_socket_link(link, &s->inode) < 0)
            continue;
        s->fd = fds[i];
        if (pidfd >= 0) {
            r = describe_remote(pidfd, fds[i], desc, sizeof(desc));
            if (r == -EBADF || r == -ENOTSOCK)
                continue;
            if (r == -ESRCH)
                goto out;
            /* Refused for the process as a whole: the tables, for this fd and the rest. Any
             * other failure (no fd free here) leaves just this one to the tables. */
            if (r == -EPERM || r == -ENOSYS) {
                close(pidfd);
                pidfd = -1;
            } else if (r == 0) {
                s->desc = strdup(desc);
                if (!s->desc) {
                    r = -ENOMEM;
                    goto out;
                }
            }
        }
        if (!s->desc)
            lk.v[nwanted++].inode = s->inode;
        nsocks++;
    }
    r = 0;
    /* One entry per inode: dup'ed fds share theirs. */
    if (nwanted > 1)
        qsort(lk.v, nwanted, sizeof(*lk.v), cmp_found);
    for (size_t i = 0; i < nwanted; i++)
        if (lk.n == 0 || lk.v[lk.n - 1].inode != lk.v[i].inode)
            lk.v[lk.n++] = lk.v[i];
    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]) && lk.described < lk.n; i++) {
        r = read_table(root, pid, &tables[i], &lk, line);
        if (r < 0)
            goto out;
    }
    for (size_t i = 0; i < nsocks; i++) {
        const char *d = socks[i].desc;
        if (!d) {
            struct found *f = bsearch(&(struct found){.inode = socks[i].inode}, lk.v, lk.n,
                                      sizeof(*lk.v), cmp_found);
            d = f ? f->desc : NULL;
        }
        if (d)
            snprintf(line, LINE_MAX_BYTES, "<socket.socket fd=%d, %s>", socks[i].fd, d);
        else
            snprintf(line, LINE_MAX_BYTES,
                     "<socket.socket fd=%d, family=?, type=?, proto=?, inode=%llu>", socks[i].fd,
                     (unsigned long long)socks[i].inode);
        r = emit(line, userdata);
        if (r < 0)
            goto out;
    }
    r = 0;
out:
    if (r < 0)
        error_fill(err, r);
    if (pidfd >= 0)
        close(pidfd);
    for (size_t i = 0; i < lk.n; i++)
        free(lk.v[i].desc);
    for (size_t i = 0; i < nsocks; i++)
        free(socks[i].desc);
    free(lk.v);
    free(socks);
    free(fds);
    free(line);
    return r;
}

int sockets_unix_peer(uint64_t inode, uint64_t *ret_peer)
{
    struct {
        struct nlmsghdr nlh;
        struct unix_diag_req req;
    } ask = {
        .nlh = {.nlmsg_len = sizeof(ask),
                .nlmsg_type = SOCK_DIAG_BY_FAMILY,
                .nlmsg_flags = NLM_F_REQUEST},
        .req = {.sdiag_family = AF_UNIX,
                .udiag_states = UINT32_MAX,
                .udiag_ino = (uint32_t)inode,
                .udiag_show = UDIAG_SHOW_PEER,
                .udiag_cookie = {INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE}},
    };
    union {
        struct nlmsghdr nlh;
        char buf[512];
    } reply;
    int fd, r = -ENOENT;

    if (inode == 0 || inode > UINT32_MAX)
        return -ENOENT; /* unix_diag's inodes are 32 bits */
    fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0)
        return -errno;
    if (send(fd, &ask, sizeof(ask), 0) < 0) {
        r = -errno;
        goto out;
    }
    /* The kernel answers an exact lookup within send: the reply is queued already. */
    ssize_t len = recv(fd, &reply, sizeof(reply), MSG_DONTWAIT);
    if (len < 0) {
        r = -errno;
        goto out;
    }
    const struct nlmsghdr *h = &reply.nlh;
    if (!NLMSG_OK(h, (size_t)len))
        goto out;
    /* An NLMSG_ERROR (no such socket, or no unix_diag in the kernel) fails the type check. */
    const struct unix_diag_msg *m = NLMSG_DATA(h);
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(*m)) ||
        m->udiag_ino != (uint32_t)inode || m->udiag_type != SOCK_STREAM)
        goto out;
    int left = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof(*m)));
    for (const struct rtattr *a = (const struct rtattr *)(m + 1); RTA_OK(a, left);
         a = RTA_NEXT(a, left)) {
        uint32_t peer;
        if (a->rta_type != UNIX_DIAG_PEER || RTA_PAYLOAD(a) < sizeof(peer))
            continue;
        memcpy(&peer, RTA_DATA(a), sizeof(peer));
        if (peer) {
            *ret_peer = peer;
            r = 0;
        }
        break;
    }
out:
    close(fd);
    return r;
}
