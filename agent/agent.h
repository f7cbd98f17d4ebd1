/* The agent: configuration, schemas, the run store, running jobs and where output goes. One
 * struct agent per process; the MQTT session and the `run` command are two front ends that feed
 * it commands (agent_command) and carry its output away (struct agent_output). */
#ifndef AGENT_H
#define AGENT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <json-c/json.h>
#include "config.h"
#include "os/target.h"

#define AGENT_REQUEST_ID_MAX 128
#define AGENT_ERROR_MAX 512
#define AGENT_MAX_JOBS CONFIG_MAX_JOBS /* max_jobs' ceiling */
#define AGENT_SLOW_CALLBACK_US 100000  /* asyncio's slow_callback_duration */
#define AGENT_RATE_SLOTS 32            /* actions with a rate bucket: more than there are */
/* Compact JSON, with '/' left alone: results carry paths. */
#define AGENT_JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

struct agent;
struct action;
struct retention;
struct store;

/* Where a result must also go: an MQTT 5 response topic and its correlation data. */
struct reply_to {
    char *topic;
    void *correlation;
    int correlation_len;
};

/* One command, from arrival to result. */
struct run {
    struct agent *agent;
    int64_t id; /* 0 when the store is not in use or failed */
    char action_name[64];
    const struct action *action;
    bool has_request_id;
    char request_id[AGENT_REQUEST_ID_MAX * 4 + 1]; /* 128 characters of up to 4 UTF-8 bytes */
    struct json_object *params;                    /* the validated payload, defaults applied */
    char target_spec[TARGET_SPEC_MAX];
    bool has_target;
    struct target target;
    int64_t started_us, finished_us, started_mono_us;
    bool ok;
    char error[AGENT_ERROR_MAX];
    struct json_object *files, *summary, *warnings;
    struct reply_to reply;
    atomic_int cancel; /* set on a clean stop: long actions end early */
    pthread_t thread;
    struct run *next; /* in agent->jobs while a job thread runs it */
};

struct agent_output {
    /* One log record of an action (may span lines). */
    void (*record)(struct run *run, const char *text, void *userdata);
    /* The run's result as JSON text. */
    void (*result)(struct run *run, const char *json, void *userdata);
    /* JSON progress of a long run. May be NULL. */
    void (*progress)(struct run *run, const char *json, void *userdata);
    /* Publishes a file's bytes on P/N/file/NAME (QoS 1, not retained); name is one topic level.
     * Returns 0 or a negative errno. NULL where there is no broker (`run` mode). */
    int (*file)(struct run *run, const char *name, const void *data, size_t len, void *userdata);
    /* Something shown in P/N/state changed. May be NULL. */
    void (*state_changed)(struct agent *a, void *userdata);
    void *userdata;
};

/* rate_limit's token bucket of one action: up to rate_limit commands at once, refilled at
 * rate_limit a minute. */
struct agent_rate {
    const struct action *action;
    double tokens;
    int64_t at_us; /* monotonic time tokens was computed for */
};

struct agent {
    struct config *config;
    struct store *store;         /* NULL in `run` mode, or when it cannot be opened */
    struct retention *retention; /* the daemon's hourly clean-up; NULL in `run` mode */
    struct agent_output out;
    atomic_bool debug; /* set_asyncio_debug */
    int64_t started_mono_us;
    pthread_mutex_t lock; /* guards jobs, njobs, last_result */
    pthread_cond_t jobs_done;
    struct run *jobs;
    unsigned njobs;
    struct json_object *last_result;
    /* {"ACTION": {"FIELD": value}}: what a command that omits FIELD gets instead of its schema
     * default (the settings Home Assistant's number and text entities set). Guarded by lock. */
    struct json_object *defaults;
    struct agent_rate rates[AGENT_RATE_SLOTS]; /* guarded by lock */
};

/* Loads the schemas and, for the daemon (use_store), opens the store and applies retention once
 * and then hourly. A damaged database is set aside and a new one created; one locked by another
 * process leaves the agent without a store (logged), answering commands all the same. err gets
 * one sentence on failure. */
int agent_init(struct agent *a, struct config *c, bool use_store, const struct agent_output *out,
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
/* Makes value (owned from here on; NULL removes it) the default of action's field for commands
 * that omit the field. The caller has validated it against the action's schema. */
void agent_set_default(struct agent *a, const char *action, const char *field,
                       struct json_object *value);

/* For actions: emit one log record of the run. */
void run_record(struct run *run, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A JSON number printed with `decimals` digits after the point, not as a binary fraction. */
struct json_object *json_decimal(double v, int decimals);
/* For actions: publish progress (JSON text) of a long run. */
void run_progress(struct run *run, const char *json);
/* For actions: set the error sentence (the run's status becomes error). Returns -EINVAL so an
 * action can `return run_fail(...)`. */
int run_fail(struct run *run, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* For actions that write files: output_dir, created when missing, as an absolute path in dir
 * (PATH_MAX bytes); fails the run with the reason otherwise. */
int run_output_dir(struct run *run, char *dir);
void run_warn(struct run *run, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
