/* Hit and miss counters of the engine's and agent's caches, for the lru_stats action.
 * Each cache owns one struct cachestat and registers it once; counting is lock-free. This is not
 * a cache itself: it only keeps the figures that functools' CacheInfo reports. */
#ifndef CACHESTAT_H
#define CACHESTAT_H

#include <stddef.h>
#include <stdatomic.h>

struct cachestat {
    const char *name; /* e.g. "symbols", shown in `Cache stats for NAME:` */
    atomic_ulong hits;
    atomic_ulong misses;
    atomic_ulong currsize;
    unsigned long maxsize;  /* 0: unbounded */
    struct cachestat *next; /* registry link, owned by cachestat.c */
};

/* Defines a static struct cachestat `var` and registers it before main, so lru_stats lists every
 * cache from the first call, used yet or not. */
#define CACHESTAT_DEFINE(var, cache_name, cache_maxsize)                                           \
    static struct cachestat var = {.name = cache_name, .maxsize = cache_maxsize};                  \
    __attribute__((constructor)) static void var##_register(void)                                  \
    {                                                                                              \
        cachestat_register(&var);                                                                  \
    }

/* Adds c to the registry once; later calls with the same c do nothing. Thread-safe. */
void cachestat_register(struct cachestat *c);
static inline void cachestat_hit(struct cachestat *c)
{
    atomic_fetch_add(&c->hits, 1);
}
static inline void cachestat_miss(struct cachestat *c)
{
    atomic_fetch_add(&c->misses, 1);
}
static inline void cachestat_size(struct cachestat *c, unsigned long n)
{
    atomic_store(&c->currsize, n);
}
/* Calls fn for every registered cache, in registration order. */
void cachestat_foreach(void (*fn)(const struct cachestat *c, void *userdata), void *userdata);

#endif
