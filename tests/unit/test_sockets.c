/* Tests of sockets_dump: the table path on a fixture /proc tree with every table kind (garbage
 * rows, an over-long row, dup'ed fds, unknown sockets); the pidfd path on this process's own
 * sockets, checked against what getsockname/getpeername/SO_* say of the real fds, and against a
 * Python process's own reprs; the table path on live sockets, chosen by another root spelling
 * and by a target that may not be attached to. Run from the top of the tree. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/netlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include "os/procfs.h"
#include "objects/sockets.h"
#include "testutil.h"

#include <linux/in6.h> /* after netinet/in.h, to which it defers */

#define FIX "tests/unit/fixtures/proc"
#define LIVE_ROOT "/proc/." /* the same procfs, but not PROCFS_ROOT: the table path */
#define FDS_MAX 32

/* The line of fd, or NULL. */
static const char *line_of(const struct testutil_lines *l, int fd)
{
    char prefix[48];

    snprintf(prefix, sizeof(prefix), "<socket.socket fd=%d, ", fd);
    return testutil_find_prefix(l, prefix);
}

static int fd_of(const char *line)
{
    static const char prefix[] = "<socket.socket fd=";
    char *end;
    long fd;

    assert_int_equal(strncmp(line, prefix, sizeof(prefix) - 1), 0);
    fd = strtol(line + sizeof(prefix) - 1, &end, 10);
    assert_true(*end == ',' && fd >= 0 && fd <= INT_MAX);
    return (int)fd;
}

static bool little_endian(void)
{
    uint32_t one = 1;
    unsigned char c;

    memcpy(&c, &one, 1);
    return c == 1;
}

static void test_fixture(void **state)
{
    /* As an x86-64 kernel writes the tables: fixture addresses are little-endian words. */
    static const char *expect[] = {
        "<socket.socket fd=3, family=2, type=1, proto=6, laddr=('127.0.0.1', 80)>",
        "<socket.socket fd=4, family=2, type=1, proto=6, laddr=('127.0.0.1', 80), "
        "raddr=('127.0.0.1', 5908)>",
        "<socket.socket fd=5, family=10, type=1, proto=6, laddr=('::1', 8080, 0, 0)>",
        "<socket.socket fd=6, family=10, type=1, proto=6, laddr=('::ffff:127.0.0.1', 8080, 0, 0), "
        "raddr=('::ffff:10.0.0.2', 40000, 0, 0)>",
        "<socket.socket fd=7, family=2, type=2, proto=17, laddr=('0.0.0.0', 53)>",
        "<socket.socket fd=8, family=2, type=3, proto=1, laddr=('0.0.0.0', 1)>",
        "<socket.socket fd=9, family=1, type=1, proto=0, laddr=/run/my sock.sock>",
        "<socket.socket fd=10, family=1, type=2, proto=0, laddr=b\"\\x00my'name@x\">",
        "<socket.socket fd=11, family=1, type=5, proto=0>",
        "<socket.socket fd=12, family=16, type=?, proto=0, laddr=(400, 17), raddr=(0, 0)>",
        "<socket.socket fd=13, family=17, type=3, proto=768>",
        "<socket.socket fd=14, family=?, type=?, proto=?, inode=9999>",
        "<socket.socket fd=15, family=2, type=1, proto=6, laddr=('127.0.0.1', 80)>",
        "<socket.socket fd=16, family=?, type=?, proto=?, inode=1012>",
        "<socket.socket fd=17, family=2, type=1, proto=6, laddr=('10.0.0.1', 33000)>",
        "<socket.socket fd=19, family=2, type=2, proto=17, laddr=('127.0.0.1', 53), "
        "raddr=('127.0.0.1', 54)>",
    };
    struct testutil_lines l = {0};
    struct error e;

    (void)state;
    if (!little_endian())
        skip();
    assert_int_equal(sockets_dump(FIX, 400, testutil_collect, &l, NULL), 0);
    for (size_t i = 0; i < l.n && i < sizeof(expect) / sizeof(expect[0]); i++)
        assert_string_equal(l.v[i], expect[i]);
    assert_int_equal(l.n, sizeof(expect) / sizeof(expect[0]));
    testutil_lines_clear(&l);

    l.stop_after = 2;
    assert_int_equal(sockets_dump(FIX, 400, testutil_collect, &l, NULL), -ECANCELED);
    assert_int_equal(l.n, 2);
    testutil_lines_clear(&l);

    /* No sockets, no fd directory, no process. */
    assert_int_equal(sockets_dump(FIX, 100, testutil_collect, &l, NULL), 0);
    assert_int_equal(l.n, 1); /* fd 3 is a socket in no table: 100 has none */
    assert_string_equal(l.v[0], "<socket.socket fd=3, family=?, type=?, proto=?, inode=1234>");
    testutil_lines_clear(&l);
    assert_int_equal(sockets_dump(FIX, 300, testutil_collect, &l, &e), -ENOENT);
    assert_int_equal(e.code, -ENOENT);
    assert_non_null(strstr(e.reason, FIX "/300/fd"));
    assert_int_equal(sockets_dump(FIX, 999, testutil_collect, &l, NULL), -ESRCH);
    assert_int_equal(l.n, 0);
}

/* Python's str() of an address, from the live fd: the reference the dump must match. */
static void fmt_addr(char *buf, size_t len, const struct sockaddr_storage *ss, socklen_t sl)
{
    char host[INET6_ADDRSTRLEN];

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        snprintf(buf, len, "('%s', %u)", host, ntohs(in->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(buf, len, "('%s', %u, %u, %u)", host, ntohs(in6->sin6_port),
                 ntohl(in6->sin6_flowinfo), in6->sin6_scope_id);
    } else if (ss->ss_family == AF_UNIX) {
        const struct sockaddr_un *un = (const void *)ss;
        size_t n = sl - offsetof(struct sockaddr_un, sun_path);
        size_t o = 0;
        if (n == 0) {
            buf[0] = '\0';
        } else if (un->sun_path[0]) {
            snprintf(buf, len, "%.*s", (int)strnlen(un->sun_path, n), un->sun_path);
        } else {
            /* Test names are plain ASCII: only the leading NUL needs escaping. */
            o = (size_t)snprintf(buf, len, "b'\\x00");
            snprintf(buf + o, len - o, "%.*s'", (int)(n - 1), un->sun_path + 1);
        }
    } else if (ss->ss_family == AF_NETLINK) {
        const struct sockaddr_nl *nl = (const void *)ss;
        snprintf(buf, len, "(%u, %u)", nl->nl_pid, nl->nl_groups);
    } else {
        fail_msg("family %d", ss->ss_family);
    }
}

static void expected_repr(int fd, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char laddr[256] = "", raddr[256] = "";
    int dom, type, proto;
    socklen_t il = sizeof(int);

    assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &il), 0);
    assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &il), 0);
    assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &il), 0);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        fmt_addr(laddr, sizeof(laddr), &ss, sl);
    sl = sizeof(ss);
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
        fmt_addr(raddr, sizeof(raddr), &ss, sl);
    snprintf(buf, len, "<socket.socket fd=%d, family=%d, type=%d, proto=%d%s%s%s%s>", fd, dom, type,
             proto, laddr[0] ? ", laddr=" : "", laddr, raddr[0] ? ", raddr=" : "", raddr);
}

/* The line of a socket in no table. */
static void unlisted_repr(int fd, char *buf, size_t len)
{
    struct stat st;

    assert_int_equal(fstat(fd, &st), 0);
    snprintf(buf, len, "<socket.socket fd=%d, family=?, type=?, proto=?, inode=%llu>", fd,
             (unsigned long long)st.st_ino);
}

/* Open fds of this process: duplicates left open would show here. */
static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;

    assert_non_null(d);
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* What the table path shows of a live socket, next to the fd itself. */
enum tables_show { SAME, DIFFERENT, UNLISTED };

struct live {
    int n, fd[FDS_MAX];
    enum tables_show show[FDS_MAX];
};

static void keep(struct live *lv, int fd, enum tables_show show)
{
    assert_true(fd >= 0 && lv->n < FDS_MAX);
    lv->fd[lv->n] = fd;
    lv->show[lv->n++] = show;
}

static int unix_bound(int type, const char *path)
{
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, type, 0);

    assert_true(fd >= 0 && strlen(path) < sizeof(un.sun_path));
    memcpy(un.sun_path, path, strlen(path) + 1);
    unlink(path);
    assert_int_equal(bind(fd, (struct sockaddr *)&un, sizeof(un)), 0);
    return fd;
}

/* IPv6 sockets whose addresses /proc cannot tell: flow info (a flow label leased on a connected
 * UDP socket) and scope id (bound to a link-local multicast group on lo). */
static void live_ipv6(struct live *lv)
{
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    /* Shared with any socket, so that a rerun finds the label it leased still lingering. */
    struct in6_flowlabel_req req = {.flr_label = htonl(0x12345),
                                    .flr_action = IPV6_FL_A_GET,
                                    .flr_share = IPV6_FL_S_ANY,
                                    .flr_flags = IPV6_FL_F_CREATE};
    int l6, c6, a6, fl, sc, on = 1;
    socklen_t sl = sizeof(in6);

    l6 = socket(AF_INET6, SOCK_STREAM, 0);
    if (l6 < 0 || bind(l6, (struct sockaddr *)&in6, sizeof(in6)) < 0) {
        print_message("no IPv6 on ::1: IPv6 part skipped\n");
        if (l6 >= 0)
            close(l6);
        return;
    }
    assert_int_equal(listen(l6, 4), 0);
    assert_int_equal(getsockname(l6, (struct sockaddr *)&in6, &sl), 0);
    c6 = socket(AF_INET6, SOCK_STREAM, 0);
    assert_int_equal(connect(c6, (struct sockaddr *)&in6, sizeof(in6)), 0);
    a6 = accept(l6, NULL, NULL);
    keep(lv, l6, SAME), keep(lv, c6, SAME), keep(lv, a6, SAME);
    keep(lv, socket(AF_INET6, SOCK_DGRAM, 0), UNLISTED);

    fl = socket(AF_INET6, SOCK_DGRAM, 0);
    req.flr_dst = in6.sin6_addr;
    in6.sin6_flowinfo = req.flr_label;
    assert_int_equal(setsockopt(fl, IPPROTO_IPV6, IPV6_FLOWLABEL_MGR, &req, sizeof(req)), 0);
    assert_int_equal(setsockopt(fl, IPPROTO_IPV6, IPV6_FLOWINFO_SEND, &on, sizeof(on)), 0);
    assert_int_equal(connect(fl, (struct sockaddr *)&in6, sizeof(in6)), 0);
    keep(lv, fl, DIFFERENT);

    sc = socket(AF_INET6, SOCK_DGRAM, 0);
    memset(&in6, 0, sizeof(in6));
    in6.sin6_family = AF_INET6;
    in6.sin6_scope_id = if_nametoindex("lo");
    assert_int_equal(inet_pton(AF_INET6, "ff02::1", &in6.sin6_addr), 1);
    assert_int_equal(bind(sc, (struct sockaddr *)&in6, sizeof(in6)), 0);
    keep(lv, sc, DIFFERENT);
}

static void test_live(void **state)
{
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)], lpath[sizeof(path)], expect[512];
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_un un = {.sun_family = AF_UNIX}, abs = {.sun_family = AF_UNIX};
    struct sockaddr_nl nl = {.nl_family = AF_NETLINK};
    socklen_t sl = sizeof(in), abslen;
    int lst, cli, udp, udpc, pair[2], ul, uc, ua, nlb, fds_before;
    struct live lv = {0};
    struct testutil_lines l = {0};

    (void)state;
    lst = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(bind(lst, (struct sockaddr *)&in, sizeof(in)), 0);
    assert_int_equal(listen(lst, 4), 0);
    assert_int_equal(getsockname(lst, (struct sockaddr *)&in, &sl), 0);
    cli = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(connect(cli, (struct sockaddr *)&in, sizeof(in)), 0);
    keep(&lv, lst, SAME), keep(&lv, cli, SAME), keep(&lv, accept(lst, NULL, NULL), SAME);
    udp = socket(AF_INET, SOCK_DGRAM, 0);
    in.sin_port = 0;
    assert_int_equal(bind(udp, (struct sockaddr *)&in, sizeof(in)), 0);
    udpc = socket(AF_INET, SOCK_DGRAM, 0);
    sl = sizeof(in);
    assert_int_equal(getsockname(udp, (struct sockaddr *)&in, &sl), 0);
    assert_int_equal(connect(udpc, (struct sockaddr *)&in, sizeof(in)), 0);
    keep(&lv, udp, SAME), keep(&lv, udpc, SAME);
    /* Never bound: in no table, yet Python shows laddr=('0.0.0.0', 0). */
    keep(&lv, socket(AF_INET, SOCK_DGRAM, 0), UNLISTED);
    keep(&lv, socket(AF_INET, SOCK_STREAM, 0), UNLISTED);
    live_ipv6(&lv);

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
    keep(&lv, pair[0], SAME), keep(&lv, pair[1], SAME);
    snprintf(path, sizeof(path), "/tmp/test_sockets %d.sock", (int)getpid());
    keep(&lv, unix_bound(SOCK_DGRAM, path), SAME);
    ua = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    abslen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
                         (size_t)snprintf(abs.sun_path + 1, sizeof(abs.sun_path) - 1,
                                          "test-sockets-%d", (int)getpid()));
    assert_int_equal(bind(ua, (struct sockaddr *)&abs, abslen), 0);
    keep(&lv, ua, SAME);
    /* The client's peer is the listener's path, which only the socket itself can tell. */
    snprintf(lpath, sizeof(lpath), "/tmp/test_sockets %d.listen", (int)getpid());
    ul = unix_bound(SOCK_STREAM, lpath);
    assert_int_equal(listen(ul, 4), 0);
    uc = socket(AF_UNIX, SOCK_STREAM, 0);
    memcpy(un.sun_path, lpath, strlen(lpath) + 1);
    assert_int_equal(connect(uc, (struct sockaddr *)&un, sizeof(un)), 0);
    keep(&lv, ul, SAME), keep(&lv, uc, DIFFERENT), keep(&lv, accept(ul, NULL, NULL), SAME);
    /* Netlink: an unbound socket is in no table; the table has no socket type. */
    keep(&lv, socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE), UNLISTED);
    nlb = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_ROUTE);
    assert_int_equal(bind(nlb, (struct sockaddr *)&nl, sizeof(nl)), 0);
    keep(&lv, nlb, DIFFERENT);

    fds_before = count_fds();
    assert_int_equal(sockets_dump(PROCFS_ROOT, getpid(), testutil_collect, &l, NULL), 0);
    assert_int_equal(count_fds(), fds_before);
    for (int i = 0; i < lv.n; i++) {
        const char *got = line_of(&l, lv.fd[i]);
        expected_repr(lv.fd[i], expect, sizeof(expect));
        assert_non_null(got);
        assert_string_equal(got, expect);
    }
    /* Lines come in fd order. */
    for (size_t i = 1; i < l.n; i++)
        assert_true(fd_of(l.v[i - 1]) < fd_of(l.v[i]));
    testutil_lines_clear(&l);

    /* The tables, on the same sockets: what they can tell, they tell alike. */
    assert_int_equal(sockets_dump(LIVE_ROOT, getpid(), testutil_collect, &l, NULL), 0);
    for (int i = 0; i < lv.n; i++) {
        const char *got = line_of(&l, lv.fd[i]);
        assert_non_null(got);
        expected_repr(lv.fd[i], expect, sizeof(expect));
        if (lv.show[i] == SAME) {
            assert_string_equal(got, expect);
        } else if (lv.show[i] == DIFFERENT) {
            assert_string_not_equal(got, expect);
        } else {
            unlisted_repr(lv.fd[i], expect, sizeof(expect));
            assert_string_equal(got, expect);
        }
    }
    testutil_lines_clear(&l);

    /* Stopped by emit: no duplicate stays open either. */
    l.stop_after = 3;
    assert_int_equal(sockets_dump(PROCFS_ROOT, getpid(), testutil_collect, &l, NULL), -ECANCELED);
    assert_int_equal(l.n, 3);
    assert_int_equal(count_fds(), fds_before);
    testutil_lines_clear(&l);
    l.stop_after = 0;

    for (int i = 0; i < lv.n; i++)
        close(lv.fd[i]);
    unlink(path);
    unlink(lpath);
    assert_int_equal(sockets_dump(PROCFS_ROOT, getpid(), testutil_collect, &l, NULL), 0);
    for (int i = 0; i < lv.n; i++)
        assert_null(line_of(&l, lv.fd[i]));
    testutil_lines_clear(&l);
}

/* Python describes its own sockets; the dump of that process must say the same, line for line.
 * Protocols are given explicitly, since Python's repr shows the argument of socket(), not the
 * kernel's. Families this host refuses (IPv6, packet sockets without CAP_NET_RAW) drop out. */
static const char py_script[] =
    "import os, socket, struct, sys\n"
    "from socket import *\n"
    "ss = []\n"
    "def add(*a):\n"
    "    s = socket(*a); ss.append(s); return s\n"
    "l = add(AF_INET, SOCK_STREAM, 6); l.bind(('127.0.0.1', 0)); l.listen()\n"
    "c = add(AF_INET, SOCK_STREAM, 6); c.connect(l.getsockname())\n"
    "a, _ = l.accept(); ss.append(socket(fileno=a.detach()))\n"
    "u = add(AF_INET, SOCK_DGRAM, 17); u.bind(('127.0.0.1', 0))\n"
    "v = add(AF_INET, SOCK_DGRAM, 17); v.connect(u.getsockname())\n"
    "add(AF_INET, SOCK_DGRAM, 17); add(AF_INET, SOCK_STREAM, 6)\n"
    "x = add(AF_UNIX, SOCK_DGRAM, 0); x.bind(b'\\0py-test-sockets-' + "
    "str(os.getpid()).encode())\n"
    "path = '/tmp/py test_sockets %d.sock' % os.getpid()\n"
    "ul = add(AF_UNIX, SOCK_STREAM, 0); ul.bind(path); ul.listen()\n"
    "uc = add(AF_UNIX, SOCK_STREAM, 0); uc.connect(path)\n"
    "ua, _ = ul.accept(); ss.append(ua); os.unlink(path)\n"
    "p, q = socketpair(); ss += [p, q]\n"
    "try:\n"
    "    s6 = socket(fileno=create_server(('::1', 0), family=AF_INET6).detach()); ss.append(s6)\n"
    "except OSError:\n"
    "    s6 = None\n"
    "if s6:\n"
    "    m = add(AF_INET6, SOCK_STREAM, 6); m.connect(('::ffff:127.0.0.1', "
    "l.getsockname()[1]))\n"
    "    add(AF_INET6, SOCK_DGRAM, 17)\n"
    "    sc = add(AF_INET6, SOCK_DGRAM, 17); sc.bind(('ff02::1', 0, 0, if_nametoindex('lo')))\n"
    "    f = add(AF_INET6, SOCK_DGRAM, 17)\n"
    "    f.setsockopt(IPPROTO_IPV6, 32, inet_pton(AF_INET6, '::1') + "
    "struct.pack('!I', 0x12345) + struct.pack('=BBHHHI', 0, 255, 1, 0, 0, 0))\n"
    "    f.setsockopt(IPPROTO_IPV6, 33, 1); f.connect(('::1', 9, 0x12345, 0))\n"
    "add(AF_NETLINK, SOCK_RAW, 0); n = add(AF_NETLINK, SOCK_DGRAM, 0); n.bind((0, 0))\n"
    "try:\n"
    "    add(AF_PACKET, SOCK_RAW, 0).bind(('lo', 0))\n"
    "except OSError:\n"
    "    pass\n"
    "for s in ss: print(repr(s))\n"
    "print('end', flush=True)\n"
    "sys.stdin.read()\n";

static void test_python(void **state)
{
    int in[2], out[2], fds_before;
    char buf[16384];
    size_t len = 0;
    struct testutil_lines l = {0};
    size_t checked = 0;
    bool ended = false;
    pid_t pid;
    FILE *f;

    (void)state;
    if (access("/usr/bin/python3", X_OK) < 0)
        skip();
    assert_int_equal(pipe(in), 0);
    assert_int_equal(pipe(out), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[1]);
        close(out[0]);
        execl("/usr/bin/python3", "python3", "-c", py_script, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    f = fdopen(out[0], "r");
    assert_non_null(f);
    while (len < sizeof(buf) - 1 && fgets(buf + len, (int)(sizeof(buf) - len), f)) {
        ended = strcmp(buf + len, "end\n") == 0;
        if (ended)
            break;
        len += strlen(buf + len);
    }
    buf[len] = '\0';
    assert_true(ended);
    fds_before = count_fds();
    assert_int_equal(sockets_dump(PROCFS_ROOT, pid, testutil_collect, &l, NULL), 0);
    assert_int_equal(count_fds(), fds_before);
    for (char *line = buf, *nl; *line; line = nl + 1) {
        const char *got;
        nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = '\0';
        got = line_of(&l, fd_of(line));
        assert_non_null(got);
        assert_string_equal(got, line);
        checked++;
    }
    /* Python's sockets, and no others: its stdin and stdout are pipes. */
    assert_true(checked >= 14);
    assert_int_equal(l.n, checked);
    testutil_lines_clear(&l);
    close(in[1]);
    fclose(f);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    assert_int_equal(sockets_dump(PROCFS_ROOT, pid, testutil_collect, &l, NULL), -ESRCH);
}

/* Takes the capabilities in drop out of this process's effective and permitted sets. */
static int drop_caps(uint64_t drop)
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct d[2];

    if (syscall(SYS_capget, &h, d) < 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        d[i].effective &= ~(uint32_t)(drop >> (32 * i));
        d[i].permitted &= ~(uint32_t)(drop >> (32 * i));
    }
    return (int)syscall(SYS_capset, &h, d);
}

static int write_line(const char *line, void *userdata)
{
    return dprintf(*(int *)userdata, "%s\n", line) < 0 ? -EIO : 0;
}

/* A process that may read another's /proc files but not attach to it (another real uid, no
 * CAP_SYS_PTRACE): pidfd_getfd is refused, and the tables describe the sockets instead. The
 * dump runs in a child, which reports the probe's errno, the lines and the result. */
static void test_refused(void **state)
{
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int hold[2], ready[2], out[2], udp, unbound, probe = -1, rc = 1;
    char buf[4096], expect[512], c;
    struct testutil_lines l = {0};
    pid_t target, dumper;
    size_t len = 0;
    ssize_t n;

    (void)state;
    if (geteuid() != 0)
        skip();
    udp = socket(AF_INET, SOCK_DGRAM, 0);
    assert_int_equal(bind(udp, (struct sockaddr *)&in, sizeof(in)), 0);
    unbound = socket(AF_INET, SOCK_DGRAM, 0);
    assert_true(unbound >= 0);
    assert_int_equal(pipe(hold), 0);
    assert_int_equal(pipe(ready), 0);
    target = fork();
    assert_true(target >= 0);
    if (target == 0) {
        /* Root still, but with nothing a tracer would need CAP_SYS_PTRACE to match. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(hold[1]);
        c = drop_caps(~0ull) == 0 ? 'y' : 'n';
        if (write(ready[1], &c, 1) != 1 || read(hold[0], &c, 1) < 0)
            _exit(1);
        _exit(0);
    }
    close(hold[0]);
    close(ready[1]);
    assert_int_equal(read(ready[0], &c, 1), 1);
    close(ready[0]);
    if (c != 'y') {
        close(hold[1]);
        waitpid(target, NULL, 0);
        skip();
    }
    /* Made after the target is forked, which would otherwise hold it open. */
    assert_int_equal(pipe(out), 0);
    dumper = fork();
    assert_true(dumper >= 0);
    if (dumper == 0) {
        int pidfd, dup;
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(out[0]);
        close(hold[1]);
        if (setresuid(65534, 0, 0) < 0 || drop_caps(1ull << CAP_SYS_PTRACE) < 0)
            _exit(2);
        pidfd = pidfd_open(target, 0);
        dup = pidfd < 0 ? -1 : pidfd_getfd(pidfd, udp, 0);
        dprintf(out[1], "probe=%d\n", dup < 0 ? errno : 0);
        dprintf(out[1], "rc=%d\n", sockets_dump(PROCFS_ROOT, target, write_line, &out[1], NULL));
        _exit(0);
    }
    close(out[1]);
    while (len < sizeof(buf) - 1 && (n = read(out[0], buf + len, sizeof(buf) - 1 - len)) > 0)
        len += (size_t)n;
    buf[len] = '\0';
    close(out[0]);
    close(hold[1]);
    assert_int_equal(waitpid(dumper, NULL, 0), dumper);
    assert_int_equal(waitpid(target, NULL, 0), target);
    for (char *line = buf, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = '\0';
        if (sscanf(line, "probe=%d", &probe) == 1 || sscanf(line, "rc=%d", &rc) == 1)
            continue;
        assert_int_equal(testutil_collect(line, &l), 0);
    }
    if (probe < 0)
        skip(); /* the dumper could not set itself up */
    assert_int_equal(probe, EPERM);
    assert_int_equal(rc, 0);
    expected_repr(udp, expect, sizeof(expect));
    assert_non_null(line_of(&l, udp));
    assert_string_equal(line_of(&l, udp), expect);
    unlisted_repr(unbound, expect, sizeof(expect));
    assert_non_null(line_of(&l, unbound));
    assert_string_equal(line_of(&l, unbound), expect);
    testutil_lines_clear(&l);
    close(udp);
    close(unbound);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture),
        cmocka_unit_test(test_live),
        cmocka_unit_test(test_python),
        cmocka_unit_test(test_refused),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
