/* Target claims of long actions (see claims.h). */
#include "claims.h"

int claims_take(struct claims *c, struct run *run)
{
    struct claim *free_slot = NULL;
    int r = 0;

    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < CONFIG_MAX_JOBS; i++) {
        struct claim *a = &c->slot[i];

        if (a->pid == run->target.pid && a->starttime == run->target.starttime) {
            r = run_fail(run,
                         "%s of process %d is already running (run %lld); wait for its "
                         "result",
                         c->what, (int)a->pid, (long long)a->run_id);
            goto out;
        }
        if (!a->pid && !free_slot)
            free_slot = a;
    }
    if (!free_slot) {
        r = run_fail(run, "too many runs of this kind at once");
        goto out;
    }
    free_slot->pid = run->target.pid;
    free_slot->starttime = run->target.starttime;
    free_slot->run_id = run->id;
out:
    pthread_mutex_unlock(&c->lock);
    return r;
}

void claims_drop(struct claims *c, struct run *run)
{
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < CONFIG_MAX_JOBS; i++)
        if (c->slot[i].pid == run->target.pid && c->slot[i].starttime == run->target.starttime)
            c->slot[i].pid = 0;
    pthread_mutex_unlock(&c->lock);
}
