/* Unwinder state lent to jobs (see unwinders.h). A fixed table: small, and lookups are rare
 * (once per job), so a linear scan under one mutex is the simple right choice. An entry's use
 * is the one it was last lent for. An entry holds a target's tables and debug information (10
 * MiB for a process whose libc has its debug file installed), so what is idle is kept once per
 * live target: the second entry made while another job held the first goes when it is given
 * back, and the entries of processes that have exited go at the next lookup. What they held is
 * given back to the system at once (malloc_trim): freed, it stayed resident in the job threads'
 * malloc arenas, and the agent's RSS after a busy hour said nothing about what it holds. */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include "os/cachestat.h"
#include "os/procfs.h"
#include "unwinders.h"

#define UNWINDERS_MAX 16

struct unwinder {
    pid_t pid;
    uint64_t starttime;
    enum unwinders_use use;
    uint64_t last_used;
    bool lent;
    struct stacks *stacks;
};

static struct unwinder table[UNWINDERS_MAX];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t returned = PTHREAD_COND_INITIALIZER;
static uint64_t use_clock;
CACHESTAT_DEFINE(unwinder_stats, "unwinders", UNWINDERS_MAX)

static bool same_target(const struct unwinder *u, const struct target *t)
{
    return u->stacks && u->pid == t->pid && u->starttime == t->starttime;
}

/* Whether the process an entry was made for still runs (the same pid, started at the same time). */
static bool alive(const struct unwinder *u)
{
    uint64_t starttime;

    return procfs_read_starttime(PROCFS_ROOT, u->pid, &starttime) == 0 && starttime == u->starttime;
}

/* The entries that hold state, for lru_stats' currsize. Called locked. */
static void note_size(void)
{
    unsigned long used = 0;

    for (int i = 0; i < UNWINDERS_MAX; i++)
        used += table[i].stacks != NULL;
    cachestat_size(&unwinder_stats, used);
}

/* Frees stacks taken out of the table, unlocked, and returns the pages to the system. */
static void drop(struct stacks **gone, size_t n)
{
    if (n == 0)
        return;
    while (n > 0)
        stacks_free(gone[--n]);
    malloc_trim(0);
}

/* Takes the stacks of the idle entries of processes that have exited, into gone (called locked;
 * freed by the caller once unlocked: freeing debug information takes a while). */
static size_t take_dead(struct stacks *gone[UNWINDERS_MAX])
{
    size_t n = 0;

    for (int i = 0; i < UNWINDERS_MAX; i++) {
        struct unwinder *c = &table[i];

        if (c->stacks && !c->lent && !alive(c)) {
            gone[n++] = c->stacks;
            c->stacks = NULL;
        }
    }
    return n;
}

int unwinders_get(const struct target *t, enum unwinders_use use, struct unwinder **ret)
{
    struct stacks *gone[UNWINDERS_MAX];
    struct unwinder *u, *victim;
    size_t ngone;
    int r = 0;

    pthread_mutex_lock(&lock);
    ngone = take_dead(gone);
    for (;;) {
        bool busy = false;

        u = victim = NULL;
        for (int i = 0; i < UNWINDERS_MAX; i++) {
            struct unwinder *c = &table[i];

            if (same_target(c, t) && !c->lent && (!u || c->use == use))
                u = c;
            else if (same_target(c, t) && c->lent && c->use == use)
                busy = true;
            else if (!c->lent && (!victim || (victim->stacks &&
                                              (!c->stacks || c->last_used < victim->last_used))))
                victim = c;
        }
        /* The warm state of the same use is worth the wait; another use's running job (a
         * minute-long profile) is not: that one gets an entry of its own. */
        if (u || !busy)
            break;
        pthread_cond_wait(&returned, &lock);
    }
    if (u) {
        cachestat_hit(&unwinder_stats);
    } else if (!victim) {
        r = -EBUSY;
        goto out;
    } else {
        cachestat_miss(&unwinder_stats);
        stacks_free(victim->stacks);
        victim->stacks = NULL;
        r = stacks_new(t->pid, &victim->stacks);
        if (r < 0)
            goto out;
        victim->pid = t->pid;
        victim->starttime = t->starttime;
        u = victim;
    }
    u->use = use;
    u->lent = true;
    u->last_used = ++use_clock;
    *ret = u;
out:
    note_size();
    pthread_mutex_unlock(&lock);
    drop(gone, ngone);
    return r;
}

struct stacks *unwinders_stacks(struct unwinder *u)
{
    return u->stacks;
}

void unwinders_put(struct unwinder *u)
{
    struct target self = {.pid = u->pid, .starttime = u->starttime};
    struct stacks *spare = NULL;

    pthread_mutex_lock(&lock);
    u->lent = false;
    /* Another idle entry of the same process: this one was made while that one was lent, and
     * one copy is enough now. */
    for (int i = 0; i < UNWINDERS_MAX && !spare; i++) {
        struct unwinder *c = &table[i];

        if (c != u && !c->lent && same_target(c, &self)) {
            spare = u->stacks;
            u->stacks = NULL;
        }
    }
    note_size();
    pthread_cond_broadcast(&returned);
    pthread_mutex_unlock(&lock);
    drop(&spare, spare != NULL);
}
