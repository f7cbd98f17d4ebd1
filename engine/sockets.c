/* The sockets a process holds, as Python's socket repr shows them (see sockets.h). The socket
 * inodes come from the fd links; each of the target's network tables is then read once, keeping
 * only rows whose inode is one of them (binary search over the sorted inodes). Not a netstat:
 * sockets of other processes are never described. */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include "procfs.h"
#include "sockets.h"

#define LINE_MAX_BYTES (PATH_MAX + 256)
#define TABLE_ROWS_MAX (1 << 22)    /* rows read per table; later ones stay unknown */
#define FIELDS_MAX 12
#define SUN_PATH_MAX sizeof(((struct sockaddr_un *)0)->sun_path)
#define DESC_MAX 1024               /* a unix path is at most 108 bytes, 4 each when escaped */

enum table_kind { TABLE_INET, TABLE_UNIX, TABLE_NETLINK, TABLE_PACKET };

struct table {
    const char *file;
    enum table_kind kind;
    int family, type;
    int proto;                      /* -1: the local "port" column (raw sockets) */
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
    {"icmp", TABLE_INET, AF_INET, SOCK_DGRAM, IPPROTO_ICMP},      /* ping sockets */
    {"icmp6", TABLE_INET, AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6},
    {"unix", TABLE_UNIX, AF_UNIX, 0, 0},
    {"netlink", TABLE_NETLINK, AF_NETLINK, 0, 0},
    {"packet", TABLE_PACKET, AF_PACKET, 0, 0},
};

struct fdsock {
    int fd;
    uint64_t inode;
};

struct found {
    uint64_t inode;
    char *desc;                     /* "family=..., type=..., ..." once a table row describes it */
};

struct lookup {
    struct found *v;
    size_t n, described;
};

/* A whole field as an unsigned number: digits of base only, at most max. */
static int parse_num(const char *s, int base, uint64_t max, uint64_t *ret)
{
    uint64_t v = 0;

    if (!*s)
        return -EBADMSG;
    for (; *s; s++) {
        unsigned d;
        if (*s >= '0' && *s <= '9')
            d = (unsigned)(*s - '0');
        else if (base == 16 && *s >= 'a' && *s <= 'f')
            d = (unsigned)(*s - 'a' + 10);
        else if (base == 16 && *s >= 'A' && *s <= 'F')
            d = (unsigned)(*s - 'A' + 10);
        else
            return -EBADMSG;
        if (v > (max - d) / (unsigned)base)
            return -EBADMSG;
        v = v * (unsigned)base + d;
    }
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

/* Python's repr of bytes, for an abstract name: b'\x00name'. */
static void fmt_bytes(char *buf, size_t len, const unsigned char *s, size_t n)
{
    bool squote = memchr(s, '\'', n) != NULL, dquote = memchr(s, '"', n) != NULL;
    char quote = squote && !dquote ? '"' : '\'';
    size_t o = 0;

    /* Room for the longest escape, the closing quote and the NUL is checked per byte. */
    if (len < 8)
        return;
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
        else if (c < 0x20 || c >= 0x7f)
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
        fmt_bytes(laddr, sizeof(laddr), raw, n);
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

static int describe(char *line, const struct table *t, const struct lookup *lk,
                    struct found **ret, char *desc, size_t len)
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
        if (rows++ == 0)        /* the header */
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

int sockets_dump(const char *root, pid_t pid,
                 int (*emit)(const char *line, void *userdata), void *userdata)
{
    struct fdsock *socks = NULL;
    struct lookup lk = {0};
    int *fds = NULL;
    char *line = NULL;
    size_t nfds, nsocks = 0;
    int r;

    r = procfs_list_fds(root, pid, &fds, &nfds);
    if (r < 0)
        return r;
    socks = calloc(nfds ? nfds : 1, sizeof(*socks));
    lk.v = calloc(nfds ? nfds : 1, sizeof(*lk.v));
    line = malloc(LINE_MAX_BYTES);
    if (!socks || !lk.v || !line) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < nfds; i++) {
        char link[64];
        uint64_t inode;
        r = procfs_read_fd_link(root, pid, fds[i], link, sizeof(link));
        if (r == -ENOENT || r == -ENAMETOOLONG)  /* closed meanwhile; a long path is no socket */
            continue;
        if (r < 0)
            goto out;
        if (parse_socket_link(link, &inode) < 0)
            continue;
        socks[nsocks].fd = fds[i];
        socks[nsocks].inode = inode;
        lk.v[nsocks].inode = inode;
        nsocks++;
    }
    r = 0;
    /* One entry per inode: dup'ed fds share theirs. */
    qsort(lk.v, nsocks, sizeof(*lk.v), cmp_found);
    for (size_t i = 0; i < nsocks; i++)
        if (lk.n == 0 || lk.v[lk.n - 1].inode != lk.v[i].inode)
            lk.v[lk.n++] = lk.v[i];
    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]) && lk.described < lk.n; i++) {
        r = read_table(root, pid, &tables[i], &lk, line);
        if (r < 0)
            goto out;
    }
    for (size_t i = 0; i < nsocks; i++) {
        struct found *f = bsearch(&(struct found){.inode = socks[i].inode}, lk.v, lk.n,
                                  sizeof(*lk.v), cmp_found);
        if (f && f->desc)
            snprintf(line, LINE_MAX_BYTES, "<socket.socket fd=%d, %s>", socks[i].fd, f->desc);
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
    for (size_t i = 0; i < lk.n; i++)
        free(lk.v[i].desc);
    free(lk.v);
    free(socks);
    free(fds);
    free(line);
    return r;
}
