/* libFuzzer target over the readers of /proc files a profiled process controls the content of:
 * maps, stat, status, comm, cmdline, fdinfo, timers and the /proc/PID/net tables. Every reader
 * takes the /proc root as a parameter, so the input is served from a fixture tree on tmpfs, and
 * each reader runs through its public entry (procfs_*, objects_*, sockets_dump) exactly as the
 * agent calls it: no parser is reached around its file handling. Not a test of what the kernel
 * writes: the fixtures around the fuzzed file (fd links, tasks) are fixed.
 *
 * Input: one selector byte, then the file's content. The selector picks the file (and so the
 * readers run); every fixture file of the tree is a hard link to one data file, rewritten per
 * input, except the net tables, of which only the selected one exists. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "objects/objects.h"
#include "objects/sockets.h"
#include "os/procfs.h"
#include "fuzzcheck.h"

#define PID 4242
#define TID 4243
#define REPR_MAX 4096                    /* objects.c: one repr, cut past it */
#define SOCKET_LINE_MAX (PATH_MAX + 256) /* sockets.c: LINE_MAX_BYTES */
#define MAPS_LINE_MAX (PATH_MAX + 256)   /* procfs.c */

/* The fds of the fixture process: every kind objects.c tells apart, and sockets whose inodes the
 * net table seeds use (a dup'ed one, the largest inode, one past 32 bits). */
static const struct {
    int fd;
    const char *link;
} fds[] = {
    {3, "/var/log/fuzz.log"},
    {4, "pipe:[7001]"},
    {5, "pipe:[7001]"},
    {6, "anon_inode:[eventfd]"},
    {7, "anon_inode:[timerfd]"},
    {8, "anon_inode:[eventpoll]"},
    {9, "anon_inode:[signalfd]"},
    {10, "anon_inode:inotify"},
    {11, "anon_inode:[io_uring]"},
    {12, "socket:[1]"},
    {13, "socket:[2]"},
    {14, "socket:[12345]"},
    {15, "socket:[12345]"},
    {16, "socket:[18446744073709551615]"},
    {17, "socket:[4294967296]"},
};
#define NFDS (sizeof(fds) / sizeof(fds[0]))
#define NSOCKETS 6

/* sockets.c's table names, in its order. */
static const char *const net_tables[] = {
    "tcp",  "tcp6", "udp",   "udp6", "udplite", "udplite6", "raw",
    "raw6", "icmp", "icmp6", "unix", "netlink", "packet",
};
#define NTABLES (sizeof(net_tables) / sizeof(net_tables[0]))

enum kind {
    K_MAPS,
    K_STAT,
    K_STATUS,
    K_COMM,
    K_CMDLINE,
    K_FDINFO,
    K_NET,
    NKINDS = K_NET + NTABLES
};

static char root[PATH_MAX];
static char data_path[PATH_MAX];
static int data_fd = -1;

static void path_of(char *buf, const char *rel)
{
    int n = snprintf(buf, PATH_MAX, "%s/%d/%s", root, PID, rel);

    CHECK(n > 0 && n < PATH_MAX, "path too long");
}

static void link_data(const char *rel)
{
    char p[PATH_MAX];

    path_of(p, rel);
    CHECK(link(data_path, p) == 0, "link %s: %s", p, strerror(errno));
}

static void make_dir(const char *rel)
{
    char p[PATH_MAX];

    path_of(p, rel);
    CHECK(mkdir(p, 0700) == 0, "mkdir %s: %s", p, strerror(errno));
}

static int remove_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void remove_root(void)
{
    nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char p[PATH_MAX], rel[64];
    struct stat st;

    (void)argc;
    (void)argv;
    /* tmpfs: the data file is rewritten on every input. */
    snprintf(root, sizeof(root), "%s/fuzz_procfs.XXXXXX",
             stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp");
    CHECK(mkdtemp(root), "mkdtemp: %s", strerror(errno));
    atexit(remove_root);
    snprintf(data_path, sizeof(data_path), "%s/data", root);
    data_fd = open(data_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    CHECK(data_fd >= 0, "%s: %s", data_path, strerror(errno));
    snprintf(p, sizeof(p), "%s/%d", root, PID);
    CHECK(mkdir(p, 0700) == 0, "mkdir %s: %s", p, strerror(errno));
    make_dir("task");
    make_dir("fd");
    make_dir("fdinfo");
    make_dir("net");
    link_data("maps");
    link_data("stat");
    link_data("status");
    link_data("comm");
    link_data("cmdline");
    link_data("timers");
    for (int tid = PID; tid <= TID; tid++) {
        snprintf(rel, sizeof(rel), "task/%d", tid);
        make_dir(rel);
        snprintf(rel, sizeof(rel), "task/%d/stat", tid);
        link_data(rel);
        snprintf(rel, sizeof(rel), "task/%d/comm", tid);
        link_data(rel);
    }
    for (size_t i = 0; i < NFDS; i++) {
        snprintf(rel, sizeof(rel), "fd/%d", fds[i].fd);
        path_of(p, rel);
        CHECK(symlink(fds[i].link, p) == 0, "symlink %s: %s", p, strerror(errno));
        snprintf(rel, sizeof(rel), "fdinfo/%d", fds[i].fd);
        link_data(rel);
    }
    return 0;
}

static void check_errno(const char *what, int r)
{
    CHECK(r < 0 && r > -4096, "%s returned %d", what, r);
}

/* What a malformed file may make a reader return: it is the file's fault, never an I/O one. */
static void check_content_error(const char *what, int r)
{
    check_errno(what, r);
    CHECK(r == -EBADMSG || r == -E2BIG || r == -ENOMEM, "%s: %d (%s) for a bad file", what, r,
          strerror(-r));
}

/* procfs_parse_u64 against a plain reference on the same bytes. */
static void check_parse_u64(const char *text)
{
    static const int bases[] = {10, 16};

    for (size_t b = 0; b < 2; b++) {
        const char *p = text;
        uint64_t v = 0, ref = 0;
        unsigned digits = 0;
        bool ok = true;
        int r = procfs_parse_u64(&p, bases[b], 20, &v);

        for (const char *q = text;; q++) {
            int d = *q >= '0' && *q <= '9'                     ? *q - '0'
                    : bases[b] == 16 && *q >= 'a' && *q <= 'f' ? *q - 'a' + 10
                    : bases[b] == 16 && *q >= 'A' && *q <= 'F' ? *q - 'A' + 10
                                                               : -1;
            if (d < 0)
                break;
            if (++digits > 20 || ref > (UINT64_MAX - (uint64_t)d) / (uint64_t)bases[b])
                ok = false;
            else
                ref = ref * (uint64_t)bases[b] + (uint64_t)d;
        }
        ok = ok && digits > 0;
        CHECK((r == 0) == ok, "procfs_parse_u64 base %d: %d, reference %s", bases[b], r,
              ok ? "accepts" : "refuses");
        if (ok)
            CHECK(v == ref && p == text + digits, "procfs_parse_u64 base %d: value or end wrong",
                  bases[b]);
    }
}

static void run_maps(const char *text, size_t len)
{
    struct procfs_map *maps = NULL;
    size_t n = 0, lines = 0;
    const char *line = text;
    struct objects_count count;
    int r;

    r = procfs_read_maps(root, PID, &maps, &n);
    if (r < 0) {
        check_content_error("procfs_read_maps", r);
        return;
    }
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    /* Accepted: every line one entry, no NUL, nothing after the last newline. */
    CHECK(n == lines && strlen(text) == len && (len == 0 || text[len - 1] == '\n'),
          "%zu maps from %zu lines", n, lines);
    for (size_t i = 0; i < n; i++) {
        const struct procfs_map *m = &maps[i];
        const char *end = strchr(line, '\n');
        size_t plen;

        CHECK(m->start <= m->end, "map %zu ends before it starts", i);
        CHECK(m->perms[4] == '\0' && strspn(m->perms, "rwxps-") == 4, "map %zu perms '%.5s'", i,
              m->perms);
        CHECK(m->path, "map %zu without path", i);
        plen = strlen(m->path);
        /* The path is the line's tail, kept whole, with no padding in front. */
        CHECK(plen < MAPS_LINE_MAX && plen <= (size_t)(end - line) && m->path[0] != ' ' &&
                  memcmp(end - plen, m->path, plen) == 0,
              "map %zu path '%s' is not the end of its line", i, m->path);
        line = end + 1;
    }
    procfs_maps_free(maps, n);
    /* The census reads the same maps through objects.c. */
    r = objects_count(root, PID, &count, NULL);
    CHECK(r == 0, "objects_count: %d after maps were accepted", r);
    CHECK(count.n[OBJECTS_MAPPING] == lines && count.n[OBJECTS_THREAD] == 2,
          "objects_count: %llu maps, %llu threads", (unsigned long long)count.n[OBJECTS_MAPPING],
          (unsigned long long)count.n[OBJECTS_THREAD]);
}

static void run_stat(const char *text, size_t len)
{
    const char *paren = strrchr(text, ')');
    uint64_t start;
    char state;
    int r;

    r = procfs_read_starttime(root, PID, &start);
    if (r < 0)
        check_content_error("procfs_read_starttime", r);
    r = procfs_read_state(root, PID, TID, &state);
    if (r < 0) {
        check_content_error("procfs_read_state", r);
    } else {
        /* Accepted: no NUL, and the state is the letter after the last ')'. */
        CHECK(strlen(text) == len && paren && paren[1] == ' ' && state == paren[2],
              "state '%c' is not the one after the comm", state);
    }
}

static void run_status(const char *text, size_t len)
{
    pid_t tgid;
    int r = procfs_read_tgid(root, PID, &tgid);

    (void)len;
    if (r < 0) {
        check_content_error("procfs_read_tgid", r);
        return;
    }
    CHECK(tgid > 0 && strstr(text, "Tgid:"), "tgid %d", (int)tgid);
}

static int count_emit(const char *repr, void *userdata)
{
    size_t n = strlen(repr);

    CHECK(n > 1 && n < REPR_MAX && repr[0] == '<' && repr[n - 1] == '>', "repr '%s'", repr);
    (*(size_t *)userdata)++;
    return 0;
}

static void run_comm(const char *text, size_t len)
{
    char comm[PROCFS_COMM_MAX];
    size_t emitted = 0;
    int r;

    memset(comm, 'x', sizeof(comm));
    r = procfs_read_comm(root, PID, 0, comm);
    if (r < 0) {
        check_content_error("procfs_read_comm", r);
    } else {
        CHECK(memchr(comm, '\0', sizeof(comm)), "comm not terminated");
        CHECK(strlen(comm) + 1 == len && memcmp(comm, text, len - 1) == 0 && text[len - 1] == '\n',
              "comm '%s' is not the file less its newline", comm);
    }
    r = procfs_read_comm(root, PID, TID, comm);
    if (r < 0)
        check_content_error("procfs_read_comm (task)", r);
    /* Both task files hold the same text: a thread list has both or neither. */
    r = objects_dump(root, PID, OBJECTS_THREAD, count_emit, &emitted, NULL);
    if (r < 0)
        check_content_error("objects_dump threads", r);
    else
        CHECK(emitted == 2, "%zu threads dumped", emitted);
}

static void run_cmdline(const char *text, size_t len)
{
    static const size_t lens[] = {1, 16, PATH_MAX};
    size_t first = strnlen(text, len);

    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        char *buf = malloc(lens[i]);
        int r;

        CHECK(buf, "out of memory");
        r = procfs_read_argv0(root, PID, buf, lens[i]);
        if (r < 0) {
            CHECK(r == -ENAMETOOLONG && (first >= lens[i] || first >= PATH_MAX),
                  "procfs_read_argv0 (%zu): %d for argv[0] of %zu bytes", lens[i], r, first);
        } else {
            CHECK(strnlen(buf, lens[i]) == first && memcmp(buf, text, first) == 0,
                  "argv0 is not the first string");
        }
        free(buf);
    }
}

static size_t fds_of(enum objects_type t)
{
    size_t n = 0;

    for (size_t i = 0; i < NFDS; i++) {
        const char *l = fds[i].link;
        bool match = t == OBJECTS_FILE       ? l[0] == '/'
                     : t == OBJECTS_PIPE     ? strncmp(l, "pipe:", 5) == 0
                     : t == OBJECTS_EVENTFD  ? strcmp(l, "anon_inode:[eventfd]") == 0
                     : t == OBJECTS_TIMERFD  ? strcmp(l, "anon_inode:[timerfd]") == 0
                     : t == OBJECTS_EPOLL    ? strcmp(l, "anon_inode:[eventpoll]") == 0
                     : t == OBJECTS_SIGNALFD ? strcmp(l, "anon_inode:[signalfd]") == 0
                     : t == OBJECTS_INOTIFY  ? strcmp(l, "anon_inode:inotify") == 0
                     : t == OBJECTS_OTHER_FD ? strcmp(l, "anon_inode:[io_uring]") == 0
                                             : false;
        n += match;
    }
    return n;
}

static void run_fdinfo(void)
{
    static const enum objects_type types[] = {
        OBJECTS_FILE,  OBJECTS_PIPE,     OBJECTS_EVENTFD, OBJECTS_TIMERFD,
        OBJECTS_EPOLL, OBJECTS_SIGNALFD, OBJECTS_INOTIFY, OBJECTS_OTHER_FD,
    };
    size_t emitted;
    int r;

    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        emitted = 0;
        r = objects_dump(root, PID, types[i], count_emit, &emitted, NULL);
        /* A fdinfo that does not fit its kind is an fd closed and reused: skipped, no error. */
        CHECK(r == 0, "objects_dump %s: %d", objects_type_name(types[i]), r);
        /* A pipe with no readable flags is left out; the others too when malformed. */
        CHECK(emitted <= fds_of(types[i]), "objects_dump %s: %zu reprs for %zu fds",
              objects_type_name(types[i]), emitted, fds_of(types[i]));
        if (types[i] == OBJECTS_EPOLL || types[i] == OBJECTS_INOTIFY ||
            types[i] == OBJECTS_OTHER_FD)
            CHECK(emitted == fds_of(types[i]), "objects_dump %s: an fd left out",
                  objects_type_name(types[i]));
    }
    emitted = 0;
    r = objects_scheduled(root, PID, count_emit, &emitted, NULL);
    CHECK(r == 0, "objects_scheduled: %d", r);
}

struct socket_lines {
    size_t n;
    int last_fd;
};

static int socket_emit(const char *line, void *userdata)
{
    struct socket_lines *s = userdata;
    size_t n = strlen(line);
    const char *p = line + strlen("<socket.socket fd=");
    char *end;
    long fd;

    CHECK(n < SOCKET_LINE_MAX && strncmp(line, "<socket.socket fd=", 18) == 0 &&
              line[n - 1] == '>' && !strchr(line, '\n'),
          "socket line '%s'", line);
    fd = strtol(p, &end, 10);
    CHECK(end != p && *end == ',' && fd > s->last_fd, "socket line '%s' out of fd order", line);
    /* Unknown sockets say so and give their inode, nothing else; a described one starts with
     * its family's number (a unix path after it is the target's text, anything goes there). */
    p = end + 2;
    if (strncmp(p, "family=?", 8) == 0) {
        const char *ino = p + strlen("family=?, type=?, proto=?, inode=");
        CHECK(strncmp(p, "family=?, type=?, proto=?, inode=", ino - p) == 0 &&
                  strspn(ino, "0123456789") == strlen(ino) - 1,
              "unknown socket line '%s'", line);
    } else {
        CHECK(strncmp(p, "family=", 7) == 0 && p[7] >= '1' && p[7] <= '9',
              "socket line '%s' has no family", line);
    }
    s->last_fd = (int)fd;
    s->n++;
    return 0;
}

static void run_net(size_t table)
{
    struct socket_lines seen = {0, -1};
    char rel[64], p[PATH_MAX];
    int r;

    snprintf(rel, sizeof(rel), "net/%s", net_tables[table]);
    link_data(rel);
    r = sockets_dump(root, PID, socket_emit, &seen, NULL);
    path_of(p, rel);
    CHECK(unlink(p) == 0, "unlink %s: %s", p, strerror(errno));
    CHECK(r == 0, "sockets_dump: %d", r);
    CHECK(seen.n == NSOCKETS, "%zu socket lines for %d sockets", seen.n, NSOCKETS);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned kind;
    size_t len;
    char *text;

    if (size == 0)
        return 0;
    kind = data[0] % NKINDS;
    len = size - 1;
    CHECK(ftruncate(data_fd, 0) == 0 && pwrite(data_fd, data + 1, len, 0) == (ssize_t)len, "%s: %s",
          data_path, strerror(errno));
    /* The content as a string, for the checks: the readers see the file, NULs included. */
    text = malloc(len + 1);
    CHECK(text, "out of memory");
    memcpy(text, data + 1, len);
    text[len] = '\0';
    check_parse_u64(text);
    switch (kind) {
    case K_MAPS:
        run_maps(text, len);
        break;
    case K_STAT:
        run_stat(text, len);
        break;
    case K_STATUS:
        run_status(text, len);
        break;
    case K_COMM:
        run_comm(text, len);
        break;
    case K_CMDLINE:
        run_cmdline(text, len);
        break;
    case K_FDINFO:
        run_fdinfo();
        break;
    default:
        run_net(kind - K_NET);
        break;
    }
    free(text);
    return 0;
}
