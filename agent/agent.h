/* The agent: configuration, schemas, the run store, running jobs and where output goes, and the
 * pipeline every command goes through. One struct agent per process; the MQTT session and the
 * `run` command are two front ends that feed it commands (agent_command) and carry its output
 * away (struct run_output). Not the actions (actions/, listed in registry.c) nor what they call
 * on their run (run.h). */
#ifndef AGENT_H
#define AGENT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <json-c/json.h>
#include "config.h"
#include "run.h"

#define AGENT_RATE_SLOTS 32 /* actions with a rate bucket: more than there are */

struct registry_action;
struct retention;

/* rate_limit's token bucket of one action: up to rate_limit commands at once, refilled at
 * rate_limit a minute. */
struct agent_rate {
    const struct registry_action *action;
    double tokens;
    int64_t at_us; /* monotonic time tokens was computed for */
};

struct agent {
    struct run_host
        host; /* what its runs see; host.lock also guards last_result, defaults, rates */
    struct retention *retention; /* the daemon's hourly clean-up; NULL in `run` mode */
    pthread_cond_t jobs_done;
    struct json_object *last_result;
    /* {"ACTION": {"FIELD": value}}: what a command that omits FIELD gets instead of its schema
     * default (the settings Home Assistant's number and text entities set). */
    struct json_object *defaults;
    struct agent_rate rates[AGENT_RATE_SLOTS];
};

/* Loads the schemas and, for the daemon (use_store), opens the store and applies retention once
 * and then hourly. A damaged database is set aside and a new one created; one locked by another
 * process leaves the agent without a store (logged), answering commands all the same. err gets
 * one sentence on failure. */
int agent_init(struct agent *a, struct config *c, bool use_store, const struct run_output *out,
               char *err, size_t errlen);
void agent_destroy(struct agent *a);
/* Handles one command: always produces exactly one result through out.result, at once or, for
 * long actions, from a job thread. reply may be NULL; its contents are copied. */
void agent_command(struct agent *a, const char *action, const void *payload, size_t len,
                   const struct reply_to *reply);
/* Waits up to timeout_ms for running jobs, first asking them to stop early when cancel is set.
 * Returns how many still run. */
unsigned agent_wait_jobs(struct agent *a, bool cancel, int timeout_ms);
/* JSON text for P/N/state. Caller frees. */
char *agent_state_json(struct agent *a);
/* Writes the row of a run the agent began by itself (a stall): inserted the first time, run->id
 * set, updated after. */
void agent_store_run(struct run *run, const char *status);
/* Makes value (owned from here on; NULL removes it) the default of action's field for commands
 * that omit the field. The caller has validated it against the action's schema. */
void agent_set_default(struct agent *a, const char *action, const char *field,
                       struct json_object *value);

#endif
