/* Retention (see retention.h). A file's age is the T in its name, the run's start in
 * microseconds, not its mtime: a copied or touched file keeps its place in line. Files of one run
 * share T and go together. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include "clock.h"
#include "log.h"
#include "registry.h"
#include "retention.h"
#include "store.h"

/* The runs' kept stacks (compare_to's) take at most this much of the database, compressed:
 * the oldest runs' go first. About a thousand runs of a busy service. */
#define RETENTION_STACKS_MAX_BYTES ((uint64_t)64 << 20)
/* One pass looks at this many of our files at most, so its memory is bounded; a directory with
 * more is worked through over several passes. */
#define RETENTION_MAX_FILES 100000
#define AGENT_COMM "profiler-agent"

struct retention {
    const struct config *c;
    struct store *store;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool stop;
};

struct entry {
    long long t;
    uint64_t size;
    char name[NAME_MAX + 1];
};

/* T when name (its first len bytes) is one of the output names of the action table. */
static bool output_name(const char *name, size_t len, long long *ret_t)
{
    const struct registry_action *act;

    for (unsigned a = 0; (act = registry_at(a)); a++)
        for (const struct registry_output *o = act->outputs; o && o->prefix; o++) {
            size_t pl = strlen(o->prefix), sl = strlen(o->suffix), nd;
            long long t = 0;

            if (len <= pl + sl || strncmp(name, o->prefix, pl) != 0 ||
                strncmp(name + len - sl, o->suffix, sl) != 0)
                continue;
            nd = len - pl - sl;
            if (nd > 18)
                continue;
            size_t k = 0;

            for (; k < nd && name[pl + k] >= '0' && name[pl + k] <= '9'; k++)
                t = t * 10 + (name[pl + k] - '0');
            /* Not all digits: perhaps a name with a longer suffix of the same prefix
             * ("flamegraph.T.diff.svg" after "flamegraph.T.svg"). */
            if (k < nd)
                continue;
            *ret_t = t;
            return true;
        }
    return false;
}

/* True when pid is a live profiler-agent (which may be writing the temporary file). */
static bool agent_alive(long pid)
{
    char path[64], comm[32] = "";
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
    f = fopen(path, "re");
    if (!f)
        return errno != ENOENT;
    if (!fgets(comm, sizeof(comm), f))
        comm[0] = '\0';
    fclose(f);
    comm[strcspn(comm, "\n")] = '\0';
    return strcmp(comm, AGENT_COMM) == 0;
}

/* NAME.tmp.PID with NAME one of ours and PID no longer a running agent. */
static bool stale_tmp(const char *name)
{
    const char *dot = strstr(name, ".tmp."), *p;
    long long t;
    long pid = 0;

    if (!dot || !output_name(name, (size_t)(dot - name), &t))
        return false;
    p = dot + 5;
    if (!*p || strlen(p) > 9)
        return false;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        pid = pid * 10 + (*p - '0');
    }
    return pid > 0 && pid != (long)getpid() && !agent_alive(pid);
}

static int by_time(const void *x, const void *y)
{
    const struct entry *a = x, *b = y;

    return a->t < b->t ? -1 : a->t > b->t;
}

/* Reads our files in output_dir into *ret (oldest first), removing stale temporary files. */
static int scan(int dfd, struct entry **ret, size_t *ret_n, struct retention_stats *st)
{
    struct entry *list = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    DIR *d;
    int fd = dup(dfd);

    if (fd < 0)
        return -errno;
    d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -errno;
    }
    while ((de = readdir(d)) && n < RETENTION_MAX_FILES) {
        struct stat sb;
        long long t;

        if (stale_tmp(de->d_name)) {
            if (unlinkat(dfd, de->d_name, 0) == 0)
                st->stale_tmp++;
            continue;
        }
        if (!output_name(de->d_name, strlen(de->d_name), &t))
            continue;
        if (fstatat(dfd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(sb.st_mode))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            struct entry *p = realloc(list, ncap * sizeof(*list));

            if (!p) {
                free(list);
                closedir(d);
                return -ENOMEM;
            }
            list = p;
            cap = ncap;
        }
        list[n].t = t;
        list[n].size = (uint64_t)sb.st_size;
        snprintf(list[n].name, sizeof(list[n].name), "%s", de->d_name);
        n++;
    }
    closedir(d);
    if (n)
        qsort(list, n, sizeof(*list), by_time);
    *ret = list;
    *ret_n = n;
    return 0;
}

static void remove_file(const struct config *c, struct store *store, int dfd, const char *dir,
                        const struct entry *e, const char *why, struct retention_stats *st,
                        bool capped)
{
    char path[PATH_MAX + NAME_MAX + 2];

    if (unlinkat(dfd, e->name, 0) < 0) {
        if (errno != ENOENT)
            log_warning("retention: cannot delete %s/%s: %s", dir, e->name, strerror(errno));
        return;
    }
    st->removed_bytes += e->size;
    if (capped)
        st->capped_files++;
    else
        st->expired_files++;
    snprintf(path, sizeof(path), "%s/%s", dir, e->name);
    if (store && capped && store_file_removed(store, path, why, NULL) < 0)
        log_warning("retention: cannot note the deletion of %s in the database %s: %s", path,
                    c->database, store_errmsg(store));
}

int retention_apply(const struct config *c, struct store *store, struct retention_stats *ret)
{
    struct retention_stats st = {0};
    int64_t now = clock_realtime_us(), cutoff = 0;
    struct entry *list = NULL;
    char dir[PATH_MAX], why[160];
    uint64_t total = 0;
    size_t n = 0, i;
    unsigned trimmed = 0;
    int dfd, r;

    if (!realpath(c->output_dir, dir))
        return errno == ENOENT ? 0 : -errno;
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    r = scan(dfd, &list, &n, &st);
    if (r < 0)
        goto out;
    if (c->retention_days > 0)
        cutoff = now - (int64_t)c->retention_days * 86400 * 1000000;
    for (i = 0; i < n; i++)
        if (list[i].t < cutoff)
            remove_file(c, store, dfd, dir, &list[i], NULL, &st, false);
        else
            total += list[i].size;
    snprintf(why, sizeof(why),
             "a file of this run was deleted to keep output_dir under "
             "retention_max_bytes (%lld)",
             c->retention_max_bytes);
    for (i = 0; i < n && c->retention_max_bytes > 0 && total > (uint64_t)c->retention_max_bytes;
         i++) {
        long long t = list[i].t;

        if (t < cutoff)
            continue;
        /* The whole run: a profile without its flame graph is no use to keep. */
        for (; i < n && list[i].t == t; i++) {
            total -= list[i].size;
            remove_file(c, store, dfd, dir, &list[i], why, &st, true);
        }
        i--;
    }
    st.kept_bytes = total;
    /* An expired run's stacks go with its row (store.c's trigger). */
    if (store && cutoff && store_expire(store, cutoff, &st.expired_runs) < 0)
        log_warning("retention: cannot delete old runs from the database %s: %s", c->database,
                    store_errmsg(store));
    if (store && store_stacks_trim(store, RETENTION_STACKS_MAX_BYTES, &trimmed) < 0)
        log_warning("retention: cannot delete old stacks from the database %s: %s", c->database,
                    store_errmsg(store));
    else if (trimmed)
        log_info("retention: deleted the kept stacks of the %u oldest run(s), to keep them under "
                 "%llu bytes: those runs can no longer be compared with (compare_to)",
                 trimmed, (unsigned long long)RETENTION_STACKS_MAX_BYTES);
    if (st.expired_files || st.capped_files || st.stale_tmp || st.expired_runs)
        log_info("retention: deleted %u file(s) older than %d days, %u more to stay under %lld "
                 "bytes (%llu bytes in all), %u stale temporary file(s) and %u old run(s); "
                 "%llu bytes of results kept",
                 st.expired_files, c->retention_days, st.capped_files, c->retention_max_bytes,
                 (unsigned long long)st.removed_bytes, st.stale_tmp, st.expired_runs,
                 (unsigned long long)st.kept_bytes);
    if (ret)
        *ret = st;
out:
    free(list);
    close(dfd);
    return r;
}

static void *retention_main(void *arg)
{
    struct retention *rt = arg;
    struct timespec deadline;
    int r;

    pthread_mutex_lock(&rt->lock);
    while (!rt->stop) {
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += RETENTION_INTERVAL_S;
        while (!rt->stop && pthread_cond_timedwait(&rt->wake, &rt->lock, &deadline) != ETIMEDOUT)
            ;
        if (rt->stop)
            break;
        pthread_mutex_unlock(&rt->lock);
        r = retention_apply(rt->c, rt->store, NULL);
        if (r < 0)
            log_warning("retention: cannot go through output_dir %s: %s", rt->c->output_dir,
                        strerror(-r));
        pthread_mutex_lock(&rt->lock);
    }
    pthread_mutex_unlock(&rt->lock);
    return NULL;
}

int retention_start(const struct config *c, struct store *store, struct retention **ret)
{
    struct retention *rt = calloc(1, sizeof(*rt));
    pthread_condattr_t attr;
    int r;

    if (!rt)
        return -ENOMEM;
    rt->c = c;
    rt->store = store;
    pthread_mutex_init(&rt->lock, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&rt->wake, &attr);
    pthread_condattr_destroy(&attr);
    r = pthread_create(&rt->thread, NULL, retention_main, rt);
    if (r != 0) {
        pthread_cond_destroy(&rt->wake);
        pthread_mutex_destroy(&rt->lock);
        free(rt);
        return -r;
    }
    *ret = rt;
    return 0;
}

void retention_stop(struct retention *rt)
{
    if (!rt)
        return;
    pthread_mutex_lock(&rt->lock);
    rt->stop = true;
    pthread_cond_signal(&rt->wake);
    pthread_mutex_unlock(&rt->lock);
    pthread_join(rt->thread, NULL);
    pthread_cond_destroy(&rt->wake);
    pthread_mutex_destroy(&rt->lock);
    free(rt);
}
