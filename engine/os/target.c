/* Target specs and their resolution (see target.h). comm:/exe: need a scan of every process, so
 * their last resolutions are kept in a small LRU cache, each checked against its one pid (same
 * start time, not a zombie, still matching) before reuse. Not an allow-list. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "os/cachestat.h"
#include "os/error.h"
#include "os/target.h"

#define CACHE_SIZE 64
#define CACHE_ROOT_MAX 128 /* longer roots (only ever test fixtures) bypass the cache */
#define PIDFILE_MAX 64     /* bytes of a pidfile read: its first line must fit */
#define DELETED " (deleted)"

enum spec_kind { SPEC_SELF, SPEC_PID, SPEC_COMM, SPEC_EXE, SPEC_PIDFILE };

struct spec {
    enum spec_kind kind;
    pid_t pid;       /* SPEC_PID */
    const char *arg; /* NAME or PATH, inside the spec string */
};

struct cache_entry {
    unsigned long used; /* LRU clock; 0 marks a free slot */
    char root[CACHE_ROOT_MAX];
    char spec[TARGET_SPEC_MAX];
    struct target t;
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cache_entry cache[CACHE_SIZE];
static unsigned long cache_clock;
CACHESTAT_DEFINE(cache_stat, "targets", CACHE_SIZE)

/* 1..INT_MAX in plain digits, no sign, no leading zero: one spelling per pid, so that allow-lists
 * compare specs as strings. */
static int parse_pid(const char *s, size_t len, pid_t *ret)
{
    long v = 0;

    if (len == 0 || len > 10 || s[0] == '0')
        return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (s[i] - '0');
    }
    if (v > INT_MAX)
        return -EINVAL;
    *ret = (pid_t)v;
    return 0;
}

static int spec_parse(const char *spec, struct spec *ret, struct error *err)
{
    struct spec s = {0};
    size_t len;

    if (!spec)
        return error_set(err, -EINVAL, "no target spec");
    len = strnlen(spec, TARGET_SPEC_MAX);
    if (len == TARGET_SPEC_MAX)
        return error_set(err, -EINVAL, "longer than %d characters", TARGET_SPEC_MAX - 1);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)spec[i] < 0x20 || spec[i] == 0x7f)
            return error_set(err, -EINVAL, "it holds a control character");
    if (strcmp(spec, "self") == 0) {
        s.kind = SPEC_SELF;
    } else if (strncmp(spec, "pid:", 4) == 0) {
        s.kind = SPEC_PID;
        if (parse_pid(spec + 4, len - 4, &s.pid) < 0)
            return error_set(err, -EINVAL,
                             "pid: takes a number from 1 to %d, without sign or leading zero",
                             INT_MAX);
    } else if (strncmp(spec, "comm:", 5) == 0) {
        s.kind = SPEC_COMM;
        s.arg = spec + 5;
    } else if (strncmp(spec, "exe:", 4) == 0) {
        s.kind = SPEC_EXE;
        s.arg = spec + 4;
        /* The kernel's exe links are absolute: nothing else could ever match. */
        if (s.arg[0] != '/')
            return error_set(err, -EINVAL, "exe: takes an absolute path");
    } else if (strncmp(spec, "pidfile:", 8) == 0) {
        s.kind = SPEC_PIDFILE;
        s.arg = spec + 8;
    } else {
        return error_set(err, -EINVAL, "use self, pid:N, comm:NAME, exe:PATH or pidfile:PATH");
    }
    if (s.arg && !s.arg[0])
        return error_set(err, -EINVAL, "nothing after the colon");
    *ret = s;
    return 0;
}

int target_spec_check(const char *spec)
{
    struct spec s;

    return spec_parse(spec, &s, NULL);
}

/* A process that exited but is not reaped yet has gone as far as profiling goes. */
static int read_live(const char *root, pid_t pid, uint64_t *ret_starttime)
{
    char state;
    int r;

    r = procfs_read_state(root, pid, 0, &state);
    if (r < 0)
        return r;
    if (state == 'Z' || state == 'X' || state == 'x')
        return -ESRCH;
    return procfs_read_starttime(root, pid, ret_starttime);
}

/* from: the pid file pid was read from, or NULL. */
static int resolve_pid(const char *root, pid_t pid, const char *from, struct target *ret,
                       struct error *err)
{
    struct target t = {.pid = pid, .matches = 1};
    char state;
    pid_t tgid;
    int r;

    /* /proc/TID resolves for any thread; only a thread group leader is a process. */
    r = procfs_read_tgid(root, pid, &tgid);
    if (r == 0 && tgid != pid)
        return error_set(err, -ESRCH, "%d is a thread of process %d, not a process", (int)pid,
                         (int)tgid);
    if (r == 0)
        r = read_live(root, pid, &t.starttime);
    /* Gone as far as profiling goes, yet still listed: a zombie. */
    if (r == -ESRCH && procfs_read_state(root, pid, 0, &state) == 0)
        return error_set(err, r, "process %d has exited and is not yet reaped", (int)pid);
    if (r == 0)
        r = procfs_read_comm(root, pid, 0, t.name);
    if (r < 0) {
        if (from && r == -ESRCH)
            return error_set(err, r, "%s names pid %d", from, (int)pid);
        return error_set(err, r, NULL);
    }
    *ret = t;
    return 0;
}

static int read_pidfile(const char *path, pid_t *ret, struct error *err)
{
    char buf[PIDFILE_MAX + 1];
    size_t len = 0;
    const char *nl;
    int fd, r = 0;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return error_set(err, -errno, NULL);
    while (len < PIDFILE_MAX) {
        ssize_t n = read(fd, buf + len, PIDFILE_MAX - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = error_set(err, -errno, NULL);
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    nl = memchr(buf, '\n', len);
    if (!nl && len == PIDFILE_MAX) {
        r = error_set(err, -EBADMSG, "the first line of %s is longer than %d bytes", path,
                      PIDFILE_MAX);
        goto out;
    }
    if (parse_pid(buf, nl ? (size_t)(nl - buf) : len, ret) < 0)
        r = error_set(err, -EBADMSG, "the first line of %s is not a pid alone", path);
out:
    close(fd);
    return r;
}

/* Whether pid matches a comm:/exe: spec; its comm in comm on a match. Errors mean "cannot tell"
 * (gone, no access) and the caller treats them as no match. */
static int spec_matches(const char *root, pid_t pid, const struct spec *s,
                        char comm[PROCFS_COMM_MAX], bool *ret)
{
    char buf[PATH_MAX];
    const char *base;
    size_t len;
    int r;

    r = procfs_read_comm(root, pid, 0, comm);
    if (r < 0)
        return r;
    if (s->kind == SPEC_EXE) {
        r = procfs_read_exe(root, pid, buf, sizeof(buf));
        if (r == -ENOENT) { /* kernel threads have no exe */
            *ret = false;
            return 0;
        }
        if (r < 0)
            return r;
        len = strlen(s->arg);
        *ret = strncmp(buf, s->arg, len) == 0 && (!buf[len] || strcmp(buf + len, DELETED) == 0);
        return 0;
    }
    len = strlen(s->arg);
    if (len < PROCFS_COMM_MAX) {
        *ret = strcmp(comm, s->arg) == 0;
        return 0;
    }
    /* comm keeps 15 characters of a longer name; the rest must come from argv[0]. */
    if (strlen(comm) != PROCFS_COMM_MAX - 1 || strncmp(comm, s->arg, PROCFS_COMM_MAX - 1) != 0) {
        *ret = false;
        return 0;
    }
    r = procfs_read_argv0(root, pid, buf, sizeof(buf));
    if (r < 0)
        return r;
    base = strrchr(buf, '/');
    *ret = strcmp(base ? base + 1 : buf, s->arg) == 0;
    return 0;
}

static int scan(const char *root, const struct spec *s, struct target *ret, struct error *err)
{
    struct target best = {0};
    pid_t *pids = NULL, self = getpid();
    size_t n;
    unsigned matches = 0, unreadable = 0;
    int r;

    r = procfs_list_pids(root, &pids, &n);
    if (r < 0)
        return error_set(err, r, "cannot list the processes in %s", root);
    for (size_t i = 0; i < n; i++) {
        struct target t = {.pid = pids[i]};
        bool match;

        if (pids[i] == self)
            continue;
        r = spec_matches(root, pids[i], s, t.name, &match);
        /* Processes the agent may not look into (another user's exe link) could be the one. */
        unreadable += r == -EACCES || r == -EPERM;
        if (r < 0 || !match)
            continue;
        if (read_live(root, pids[i], &t.starttime) < 0)
            continue;
        matches++;
        /* pids ascend, so a tie on start time keeps the smaller pid. */
        if (matches == 1 || t.starttime < best.starttime)
            best = t;
    }
    free(pids);
    if (!matches && unreadable)
        return error_set(err, -ESRCH,
                         "no process has %s %s, and the agent may not read %u of them (another "
                         "user's, without CAP_SYS_PTRACE)",
                         s->kind == SPEC_EXE ? "executable" : "comm", s->arg, unreadable);
    if (!matches)
        return error_set(err, -ESRCH, "no process has %s %s",
                         s->kind == SPEC_EXE ? "executable" : "comm", s->arg);
    best.matches = matches;
    *ret = best;
    return 0;
}

/* The cached process is reused only if it is the very same one and still matches. */
static bool still_valid(const char *root, const struct spec *s, struct target *t)
{
    char comm[PROCFS_COMM_MAX] = "";
    uint64_t starttime;
    bool match;

    if (t->pid == getpid() || read_live(root, t->pid, &starttime) < 0 || starttime != t->starttime)
        return false;
    if (spec_matches(root, t->pid, s, comm, &match) < 0 || !match)
        return false;
    memcpy(t->name, comm, sizeof(comm));
    return true;
}

static struct cache_entry *cache_find(const char *root, const char *spec)
{
    for (size_t i = 0; i < CACHE_SIZE; i++)
        if (cache[i].used && strcmp(cache[i].root, root) == 0 && strcmp(cache[i].spec, spec) == 0)
            return &cache[i];
    return NULL;
}

static void cache_store(const char *root, const char *spec, const struct target *t)
{
    struct cache_entry *e;
    unsigned long size = 0;

    pthread_mutex_lock(&cache_lock);
    e = cache_find(root, spec);
    if (!e) {
        e = &cache[0];
        for (size_t i = 0; i < CACHE_SIZE; i++)
            if (cache[i].used < e->used)
                e = &cache[i];
        snprintf(e->root, sizeof(e->root), "%s", root);
        snprintf(e->spec, sizeof(e->spec), "%s", spec);
    }
    e->t = *t;
    e->used = ++cache_clock;
    for (size_t i = 0; i < CACHE_SIZE; i++)
        size += cache[i].used != 0;
    cachestat_size(&cache_stat, size);
    pthread_mutex_unlock(&cache_lock);
}

static int resolve_cached(const char *root, const char *spec, const struct spec *s,
                          struct target *ret, struct error *err)
{
    struct cache_entry *e;
    struct target t;
    bool cacheable = strlen(root) < CACHE_ROOT_MAX, found = false;
    int r;

    if (cacheable) {
        pthread_mutex_lock(&cache_lock);
        e = cache_find(root, spec);
        if (e) {
            t = e->t;
            found = true;
        }
        pthread_mutex_unlock(&cache_lock);
    }
    /* Checked outside the lock: it reads /proc. */
    if (found && still_valid(root, s, &t)) {
        cachestat_hit(&cache_stat);
        cache_store(root, spec, &t);
        *ret = t;
        return 0;
    }
    if (cacheable)
        cachestat_miss(&cache_stat);
    r = scan(root, s, &t, err);
    if (r < 0)
        return r;
    if (cacheable)
        cache_store(root, spec, &t);
    *ret = t;
    return 0;
}

int target_resolve(const char *root, const char *spec, struct target *ret, struct error *err)
{
    struct spec s;
    pid_t pid = 0;
    int r;

    error_clear(err);
    r = spec_parse(spec, &s, err);
    if (r < 0)
        return r;
    switch (s.kind) {
    case SPEC_SELF:
        return resolve_pid(root, getpid(), NULL, ret, err);
    case SPEC_PID:
        return resolve_pid(root, s.pid, NULL, ret, err);
    case SPEC_PIDFILE:
        r = read_pidfile(s.arg, &pid, err);
        if (r < 0)
            return r;
        return resolve_pid(root, pid, s.arg, ret, err);
    case SPEC_COMM:
    case SPEC_EXE:
        break;
    }
    return resolve_cached(root, spec, &s, ret, err);
}
