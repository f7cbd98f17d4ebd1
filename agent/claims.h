/* One long action per target at a time: a run claims its target on the network thread, in
 * arrival order, and gives it back when its job ends. Two CPU profiles (or two allocation
 * profiles) of one process would double its cost and split nothing useful. */
#ifndef CLAIMS_H
#define CLAIMS_H

#include <pthread.h>
#include "run.h"

struct claim {
    pid_t pid;
    uint64_t starttime;
    int64_t run_id;
};

struct claims {
    const char *what; /* "a CPU profile": names the run in the refusal */
    pthread_mutex_t lock;
    struct claim slot[CONFIG_MAX_JOBS];
};

#define CLAIMS_INIT(what)                                                                          \
    {                                                                                              \
        (what), PTHREAD_MUTEX_INITIALIZER,                                                         \
        {                                                                                          \
            {                                                                                      \
                0, 0, 0                                                                            \
            }                                                                                      \
        }                                                                                          \
    }

/* Claims run's target, or fails run naming the run that has it. */
int claims_take(struct claims *c, struct run *run);
void claims_drop(struct claims *c, struct run *run);

#endif
