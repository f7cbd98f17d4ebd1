/* One command's run as the actions see it: struct run, what the agent lends every run (struct
 * run_host: config, store, where output goes, the running jobs), and the calls an action makes to
 * emit records, progress and warnings and to fail with one sentence, engine errors included. Not
 * the pipeline that creates, validates and answers a run (agent.c), nor the action table
 * (registry.c). */
#ifndef RUN_H
#define RUN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <json-c/json.h>
#include "config.h"
#include "os/error.h"
#include "os/target.h"

#define RUN_REQUEST_ID_MAX 128
#define RUN_ERROR_MAX 512
#define RUN_SLOW_CALLBACK_US 100000 /* asyncio's slow_callback_duration, for debug mode */
/* Compact JSON, with '/' left alone: results carry paths. */
#define RUN_JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

struct agent;
struct registry_action;
struct run;
struct store;

/* Where a result must also go: an MQTT 5 response topic and its correlation data. */
struct reply_to {
    char *topic;
    void *correlation;
    int correlation_len;
};

/* Where the agent's output goes: the MQTT session, or stdout for the `run` command. */
struct run_output {
    /* One log record of an action (may span lines); run is NULL for a background logger's. */
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
    /* An event of the agent's own (a stall) as JSON text on P/N/event. May be NULL. */
    void (*event)(const char *json, bool retain, void *userdata);
    /* Adds `broker` to into: the broker in use, the MQTT version and since when (ping and state
     * show it). May be NULL. */
    void (*connection)(struct json_object *into, void *userdata);
    void *userdata;
};

/* What one agent lends every run it hosts; part of struct agent, set up by agent_init. */
struct run_host {
    struct config *config;
    struct store *store; /* NULL in `run` mode, or when it cannot be opened */
    struct run_output out;
    atomic_bool debug;       /* set_asyncio_debug on the agent itself */
    atomic_int target_debug; /* what it last set a target's loops to: 1, 0, -1 never */
    int64_t started_mono_us;
    /* Whether name is an action of the table (runs checks its filter with it). */
    bool (*known_action)(const char *name);
    pthread_mutex_t lock; /* guards jobs and njobs, and the agent's own shared state */
    struct run *jobs;
    unsigned njobs;
};

/* One command, from arrival to result. */
struct run {
    struct agent *agent;
    struct run_host *host;
    int64_t id; /* 0 when the store is not in use or failed */
    char action_name[64];
    const struct registry_action *action;
    bool has_request_id;
    char request_id[RUN_REQUEST_ID_MAX * 4 + 1]; /* 128 characters of up to 4 UTF-8 bytes */
    size_t request_id_len;                       /* it may hold U+0000 */
    struct json_object *params;                  /* the validated payload, defaults applied */
    char target_spec[TARGET_SPEC_MAX];
    bool has_target;
    struct target target;
    int64_t started_us, finished_us, started_mono_us;
    bool ok;
    char error[RUN_ERROR_MAX];
    struct json_object *files, *summary, *warnings;
    struct reply_to reply;
    atomic_int cancel; /* set on a clean stop: long actions end early */
    pthread_t thread;
    struct run *next; /* in host->jobs while a job thread runs it */
};

/* Emits one log record of the run. */
void run_record(struct run *run, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* For engine listers that yield one line at a time: records prefix + line and counts it. */
struct run_lines {
    struct run *run;
    const char *prefix;
    unsigned count;
};
int run_record_line(const char *line, void *userdata);
/* Publishes progress (JSON text) of a long run. */
void run_progress(struct run *run, const char *json);
/* Sets the error sentence (the run's status becomes error). Returns -EINVAL so an action can
 * `return run_fail(...)`. */
int run_fail(struct run *run, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Fails run with the sentence for the engine error e of the step `what` ("thread dump"): the
 * errno's words (-ESRCH: the target exited; -EPERM: why the agent may not trace it, ...) with
 * e's reason added, or in place of strerror, when not empty. The one place engine errors become
 * words. Before the target is resolved (what: "target SPEC"), the words are run_target_error's.
 * Returns -EINVAL. */
int run_engine_fail_error(struct run *run, const char *what, const struct error *e);
/* The same for an engine call that returns a bare errno r (no reason). */
int run_engine_fail(struct run *run, const char *what, int r);
/* What target_resolve's error e says about a spec ("no such process is running", "not a valid
 * target spec: ...") into buf; returns buf. For a caller that reports it without failing. */
const char *run_target_error(const struct error *e, char *buf, size_t len);
/* Adds a warning to the result. */
void run_warn(struct run *run, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* For actions that write files: output_dir, created when missing, as an absolute path in dir
 * (PATH_MAX bytes); fails the run with the reason otherwise. */
int run_output_dir(struct run *run, char *dir);
/* A file shipped with the agent (the hook library, a Python script): NAME in the executable's
 * folder plus each of rel[0..nrel) (a build tree, an installed tree unpacked anywhere), else in
 * installed (where `make install` put it). The first readable one goes to buf; -ENOENT (buf
 * then names the installed path) or -ENAMETOOLONG. */
int run_shipped_file(const char *name, const char *const *rel, size_t nrel, const char *installed,
                     char *buf, size_t len);
/* A JSON number printed with `decimals` digits after the point, not as a binary fraction. */
struct json_object *run_json_decimal(double v, int decimals);

#endif
