/* Unwinder state lent to jobs (see unwinders.h). A fixed table: small, and lookups are rare
 * (once per job), so a linear scan under one mutex is the simple right choice. An entry's use
 * is the one it was last lent for. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include "os/cachestat.h"
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

int unwinders_get(const struct target *t, enum unwinders_use use, struct unwinder **ret)
{
    struct unwinder *u, *victim;
    unsigned long used = 0;
    int r = 0;

    pthread_mutex_lock(&lock);
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
    for (int i = 0; i < UNWINDERS_MAX; i++)
        used += table[i].stacks != NULL;
    cachestat_size(&unwinder_stats, used);
    *ret = u;
out:
    pthread_mutex_unlock(&lock);
    return r;
}

struct stacks *unwinders_stacks(struct unwinder *u)
{
    return u->stacks;
}

void unwinders_put(struct unwinder *u)
{
    pthread_mutex_lock(&lock);
    u->lent = false;
    pthread_cond_broadcast(&returned);
    pthread_mutex_unlock(&lock);
}
