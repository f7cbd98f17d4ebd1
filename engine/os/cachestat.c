/* The registry of cache counters (see cachestat.h). A singly linked list appended under a mutex;
 * caches live for the whole process, so entries are never removed. */
#include <pthread.h>
#include "os/cachestat.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct cachestat *head;
static struct cachestat **tail = &head;

void cachestat_register(struct cachestat *c)
{
    pthread_mutex_lock(&lock);
    for (struct cachestat *i = head; i; i = i->next)
        if (i == c)
            goto out;
    c->next = NULL;
    *tail = c;
    tail = &c->next;
out:
    pthread_mutex_unlock(&lock);
}

void cachestat_foreach(void (*fn)(const struct cachestat *c, void *userdata), void *userdata)
{
    pthread_mutex_lock(&lock);
    for (struct cachestat *i = head; i; i = i->next)
        fn(i, userdata);
    pthread_mutex_unlock(&lock);
}
