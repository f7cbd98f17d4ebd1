/* The actions: the contract's thirteen and the fleet ones (ping, runs, get_file), their names,
 * which ones run off the network thread, and their implementations. An action reads run->params
 * (validated against schemas/ACTION.json, defaults applied) and run->target, emits records with
 * run_record and fails with run_fail. */
#ifndef ACTION_H
#define ACTION_H

#include <stdbool.h>
#include "agent.h"

struct schema;

struct action {
    const char *name;
    bool needs_target; /* resolve the target before running */
    bool long_running; /* run in a job thread, not on the network thread */
    int (*run)(struct run *run);
    struct schema *schema; /* compiled at start by action_load_schemas */
    /* Optional: called on the network thread, in arrival order, before a long action's job
     * starts; a failure (run_fail) answers the command at once. release undoes it after the job,
     * or when the job could not start. */
    int (*admit)(struct run *run);
    void (*release)(struct run *run);
};

/* Compiles schemas/NAME.json for every action. Fails, naming the file, on any schema that is
 * missing or that the validator cannot enforce. */
int action_load_schemas(const char *dir, char *err, size_t errlen);
void action_free_schemas(void);
/* The action named name, or NULL. Counts a schema-cache hit or miss. */
const struct action *action_find(const char *name);
/* Fails run with the sentence for an engine error r (-ESRCH, -EPERM, ...) of the step `what`. */
int action_engine_fail(struct run *run, const char *what, int r);
/* For --help and tests: NULL-terminated list of names. */
const char *action_name(unsigned i);

#endif
