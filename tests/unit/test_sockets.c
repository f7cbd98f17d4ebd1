/* Tests of sockets_dump: a fixture /proc tree with every table kind (garbage rows, an over-long
 * row, dup'ed fds, unknown sockets), this process's own live sockets checked against what
 * getsockname/getpeername/SO_* say of the real fds, and a Python process's own reprs. Run from
 * the top of the tree. */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
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
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include "procfs.h"
#include "sockets.h"

#define FIX "tests/unit/fixtures/proc"
#define LINES_MAX 256

struct lines {
    size_t n;
    char *v[LINES_MAX];
    int stop_after;                 /* emit returns -ECANCELED after that many; 0: never */
};

static int collect(const char *line, void *userdata)
{
    struct lines *l = userdata;

    assert_true(l->n < LINES_MAX);
    l->v[l->n] = strdup(line);
    assert_non_null(l->v[l->n]);
    l->n++;
    return l->stop_after && (int)l->n == l->stop_after ? -ECANCELED : 0;
}

static void lines_free(struct lines *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    l->n = 0;
}

/* The line of fd, or NULL. */
static const char *line_of(const struct lines *l, int fd)
{
    char prefix[48];

    snprintf(prefix, sizeof(prefix), "<socket.socket fd=%d, ", fd);
    for (size_t i = 0; i < l->n; i++)
        if (strncmp(l->v[i], prefix, strlen(prefix)) == 0)
            return l->v[i];
    return NULL;
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
    struct lines l = {0};

    (void)state;
    if (!little_endian())
        skip();
    assert_int_equal(sockets_dump(FIX, 400, collect, &l), 0);
    for (size_t i = 0; i < l.n && i < sizeof(expect) / sizeof(expect[0]); i++)
        assert_string_equal(l.v[i], expect[i]);
    assert_int_equal(l.n, sizeof(expect) / sizeof(expect[0]));
    lines_free(&l);

    l.stop_after = 2;
    assert_int_equal(sockets_dump(FIX, 400, collect, &l), -ECANCELED);
    assert_int_equal(l.n, 2);
    lines_free(&l);

    /* No sockets, no fd directory, no process. */
    assert_int_equal(sockets_dump(FIX, 100, collect, &l), 0);
    assert_int_equal(l.n, 1);   /* fd 3 is a socket in no table: 100 has none */
    assert_string_equal(l.v[0], "<socket.socket fd=3, family=?, type=?, proto=?, inode=1234>");
    lines_free(&l);
    assert_int_equal(sockets_dump(FIX, 300, collect, &l), -ENOENT);
    assert_int_equal(sockets_dump(FIX, 999, collect, &l), -ESRCH);
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
    snprintf(buf, len, "<socket.socket fd=%d, family=%d, type=%d, proto=%d%s%s%s%s>", fd, dom,
             type, proto, laddr[0] ? ", laddr=" : "", laddr, raddr[0] ? ", raddr=" : "", raddr);
}

static void test_live(void **state)
{
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)], expect[512];
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    struct sockaddr_un un = {.sun_family = AF_UNIX}, abs = {.sun_family = AF_UNIX};
    socklen_t sl = sizeof(in);
    int fds[16], n = 0, lst, cli, srv, udp, udpc, l6 = -1, c6 = -1, a6 = -1, pair[2], ub, ua;
    struct lines l = {0};
    socklen_t abslen;

    (void)state;
    lst = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(bind(lst, (struct sockaddr *)&in, sizeof(in)), 0);
    assert_int_equal(listen(lst, 4), 0);
    assert_int_equal(getsockname(lst, (struct sockaddr *)&in, &sl), 0);
    cli = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(connect(cli, (struct sockaddr *)&in, sizeof(in)), 0);
    srv = accept(lst, NULL, NULL);
    assert_true(srv >= 0);
    udp = socket(AF_INET, SOCK_DGRAM, 0);
    in.sin_port = 0;
    assert_int_equal(bind(udp, (struct sockaddr *)&in, sizeof(in)), 0);
    udpc = socket(AF_INET, SOCK_DGRAM, 0);
    sl = sizeof(in);
    assert_int_equal(getsockname(udp, (struct sockaddr *)&in, &sl), 0);
    assert_int_equal(connect(udpc, (struct sockaddr *)&in, sizeof(in)), 0);
    fds[n++] = lst, fds[n++] = cli, fds[n++] = srv, fds[n++] = udp, fds[n++] = udpc;

    /* IPv6 on ::1, unless this host has none. */
    l6 = socket(AF_INET6, SOCK_STREAM, 0);
    if (l6 >= 0 && bind(l6, (struct sockaddr *)&in6, sizeof(in6)) == 0) {
        sl = sizeof(in6);
        assert_int_equal(listen(l6, 4), 0);
        assert_int_equal(getsockname(l6, (struct sockaddr *)&in6, &sl), 0);
        c6 = socket(AF_INET6, SOCK_STREAM, 0);
        assert_int_equal(connect(c6, (struct sockaddr *)&in6, sizeof(in6)), 0);
        a6 = accept(l6, NULL, NULL);
        assert_true(a6 >= 0);
        fds[n++] = l6, fds[n++] = c6, fds[n++] = a6;
    } else {
        print_message("no IPv6 on ::1: IPv6 part skipped\n");
    }

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
    ub = socket(AF_UNIX, SOCK_DGRAM, 0);
    snprintf(path, sizeof(path), "/tmp/test_sockets %d.sock", (int)getpid());
    unlink(path);
    memcpy(un.sun_path, path, strlen(path) + 1);
    assert_int_equal(bind(ub, (struct sockaddr *)&un, sizeof(un)), 0);
    ua = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    abslen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
                         (size_t)snprintf(abs.sun_path + 1, sizeof(abs.sun_path) - 1,
                                          "test-sockets-%d", (int)getpid()));
    assert_int_equal(bind(ua, (struct sockaddr *)&abs, abslen), 0);
    fds[n++] = pair[0], fds[n++] = pair[1], fds[n++] = ub, fds[n++] = ua;

    assert_int_equal(sockets_dump(PROCFS_ROOT, getpid(), collect, &l), 0);
    for (int i = 0; i < n; i++) {
        const char *got = line_of(&l, fds[i]);
        expected_repr(fds[i], expect, sizeof(expect));
        assert_non_null(got);
        assert_string_equal(got, expect);
    }
    /* Lines come in fd order. */
    for (size_t i = 1; i < l.n; i++)
        assert_true(fd_of(l.v[i - 1]) < fd_of(l.v[i]));
    lines_free(&l);

    for (int i = 0; i < n; i++)
        close(fds[i]);
    unlink(path);
    assert_int_equal(sockets_dump(PROCFS_ROOT, getpid(), collect, &l), 0);
    for (int i = 0; i < n; i++)
        assert_null(line_of(&l, fds[i]));
    lines_free(&l);
}

/* Python describes its own sockets; the dump of that process must say the same. Protocols are
 * given explicitly, since Python's repr shows the argument of socket(), not the kernel's. */
static const char py_script[] =
    "import socket, sys\n"
    "ss = []\n"
    "def add(*a):\n"
    "    s = socket.socket(*a); ss.append(s); return s\n"
    "l = add(socket.AF_INET, socket.SOCK_STREAM, 6); l.bind(('127.0.0.1', 0)); l.listen()\n"
    "c = add(socket.AF_INET, socket.SOCK_STREAM, 6); c.connect(l.getsockname())\n"
    "a, _ = l.accept(); ss.append(socket.socket(fileno=a.detach()))\n"
    "u = add(socket.AF_INET, socket.SOCK_DGRAM, 17); u.bind(('127.0.0.1', 0))\n"
    "v = add(socket.AF_INET, socket.SOCK_DGRAM, 17); v.connect(u.getsockname())\n"
    "try:\n"
    "    s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, 6); s6.bind(('::1', 0))\n"
    "    s6.listen(); ss.append(s6)\n"
    "    m = add(socket.AF_INET6, socket.SOCK_STREAM, 6); m.connect(('::ffff:127.0.0.1', "
    "l.getsockname()[1]))\n"
    "except OSError:\n"
    "    pass\n"
    "x = add(socket.AF_UNIX, socket.SOCK_DGRAM, 0); x.bind(b'\\0py-test-sockets-' + "
    "str(len(ss)).encode() + str(__import__('os').getpid()).encode())\n"
    "p, q = socket.socketpair(); ss += [p, q]\n"
    "for s in ss: print(repr(s))\n"
    "print('end', flush=True)\n"
    "sys.stdin.read()\n";

static void test_python(void **state)
{
    int in[2], out[2];
    char buf[8192];
    size_t len = 0;
    struct lines l = {0};
    int checked = 0;
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
        if (strcmp(buf + len, "end\n") == 0)
            break;
        len += strlen(buf + len);
    }
    buf[len] = '\0';
    assert_int_equal(sockets_dump(PROCFS_ROOT, pid, collect, &l), 0);
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
    assert_true(checked >= 8);
    lines_free(&l);
    close(in[1]);
    fclose(f);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    assert_int_equal(sockets_dump(PROCFS_ROOT, pid, collect, &l), -ESRCH);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture),
        cmocka_unit_test(test_live),
        cmocka_unit_test(test_python),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
