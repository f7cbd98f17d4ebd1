/* The action table: one row per action with everything the rest of the agent needs to know about
 * it: its name, its --help lines, how Home Assistant shows it, how the pipeline runs it and the
 * files it writes. Dispatch (agent.c), --help (main.c), discovery (discovery.c) and retention
 * (retention.c) loop over it; nothing else lists the actions. Not the actions themselves
 * (actions/) nor their payloads (schemas/ACTION.json, compiled here at start). */
#ifndef REGISTRY_H
#define REGISTRY_H

#include <stdbool.h>
#include <stddef.h>

struct run;
struct schema;

/* A Home Assistant number (with unit), select (unit NULL, a field whose schema lists its values
 * in an enum) or text (unit NULL) entity that sets the default of one field of the action, on
 * P/N/set/ID. */
struct registry_setting {
    const char *id, *field, *title, *unit;
};

/* A Home Assistant switch. With off, ON and OFF on P/N/set/ID run this action and off; without,
 * they send this action {"enabled": true} and {"enabled": false}. state is the Jinja test of
 * P/N/state that means ON. */
struct registry_switch {
    const char *id, *title, *off, *state;
};

/* Another Home Assistant button of the action, sending it a fixed payload. */
struct registry_preset {
    const char *id, *title, *payload;
};

/* An output file name: prefix, the run's start T in microseconds, suffix. */
struct registry_output {
    const char *prefix, *suffix;
};

struct registry_action {
    const char *name;
    const char *help;   /* --help: payload and what it does; lines separated by '\n' */
    const char *button; /* the Home Assistant button's title; NULL: no button */
    const struct registry_setting *settings; /* ended by an id of NULL; NULL: none */
    const struct registry_switch *toggle;    /* NULL: none */
    const struct registry_preset *presets;   /* ended by an id of NULL; NULL: none */
    const struct registry_output *outputs;   /* ended by a prefix of NULL; NULL: writes none */
    bool needs_target;                       /* resolve the target before running */
    bool long_running;                       /* run in a job thread, not on the network thread */
    bool profiles;                           /* P/N/state's "profiling" while it runs */
    int (*run)(struct run *run);
    /* Optional: called on the network thread, in arrival order, before a long action's job
     * starts; a failure (run_fail) answers the command at once. release undoes it after the job,
     * or when the job could not start. */
    int (*admit)(struct run *run);
    void (*release)(struct run *run);
    struct schema *schema; /* compiled at start by registry_load_schemas */
};

/* Compiles schemas/NAME.json for every action. Fails, naming the file, on any schema that is
 * missing or that the validator cannot enforce. */
int registry_load_schemas(const char *dir, char *err, size_t errlen);
void registry_free_schemas(void);
/* The action named name whose schema is loaded, or NULL. Counts a schema-cache hit. */
const struct registry_action *registry_find(const char *name);
/* act's schema for a check outside a command (a setting), counted as a schema-cache hit. */
const struct schema *registry_schema(const struct registry_action *act);
/* Whether name is an action of the table; counts nothing. */
bool registry_known(const char *name);
/* The i-th row in table order, NULL past the last: for loops. */
const struct registry_action *registry_at(unsigned i);

#endif
