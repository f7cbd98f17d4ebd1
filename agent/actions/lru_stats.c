/* The `lru_stats` action: hit/miss counters of the agent's caches, one record each, in the form of
 * Python's functools CacheInfo. The caches register themselves (engine/os/cachestat.h). */
#include <stdio.h>
#include "actions.h"
#include "os/cachestat.h"
#include "run.h"

static void print_cache(const struct cachestat *c, void *userdata)
{
    struct run *run = userdata;
    char maxsize[32];

    if (c->maxsize)
        snprintf(maxsize, sizeof(maxsize), "%lu", c->maxsize);
    else
        snprintf(maxsize, sizeof(maxsize), "None");
    run_record(run, "Cache stats for %s: CacheInfo(hits=%lu, misses=%lu, maxsize=%s, currsize=%lu)",
               c->name, atomic_load(&c->hits), atomic_load(&c->misses), maxsize,
               atomic_load(&c->currsize));
}

int action_lru_stats(struct run *run)
{
    cachestat_foreach(print_cache, run);
    return 0;
}
