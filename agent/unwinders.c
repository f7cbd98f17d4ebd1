/* Unwinder state lent to jobs (see unwinders.h). A fixed table: small, and lookups are rare
 * (once per job), so a linear scan under one mutex is the simple right choice. */
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

static bool matches(const struct unwinder *u, const struct target *t, enum unwinders_use use)
{
    return u->stacks && u->pid == t->pid && u->starttime == t->starttime && u->use == use;
}

int unwinders_get(const struct target *t, enum unwinders_use use, struct unwinder **ret)
{
    struct unwinder *u, *victim;
    unsigned long used = 0;
    int r = 0;

    pthread_mutex_lock(&lock);
    for (;;) {
        u = victim = NULL;
        for (int i = 0; i < UNWINDERS_MAX; i++) {
            struct unwinder *c = &table[i];

            if (matches(c, t, use))
                u = c;
            else if (!c->lent && (!victim || (victim->stacks &&
                                              (!c->stacks || c->last_used < victim->last_used))))
                victim = c;
        }
        if (!u || !u->lent)
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
        victim->use = use;
        u = victim;
    }
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
