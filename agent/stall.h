/* The stall watch as the agent runs it: with stall_seconds > 0, a thread looks at stall_thread
 * of the configured target ten times a second (engine/cpu/stallwatch.h). When a stall begins:
 * a record and a thread dump on P/N/log, a retained `stall` event on P/N/event (Home
 * Assistant's Stall event entity), and a run in the store; when it ends: the flight recorder's
 * profile of the stall becomes that run's files, and a retained `stall_ended` event says how
 * long it lasted. Survives the target's restart, as the recorder does. Not the detection
 * (stallwatch.c), the ring (flight.c) or the writers (actions/start.c). */
#ifndef STALL_H
#define STALL_H

#include <stddef.h>
#include <json-c/json.h>
#include "run.h"

/* The action name of a stall's run in the store: not an action one can send, but one `runs`
 * filters by. */
#define STALL_RUN_ACTION "stall"

/* Starts watching with host's config; nothing when stall_seconds is 0. -errno with err. */
int stall_start(struct run_host *host, struct agent *a, char *err, size_t errlen);
/* Stops watching; stalls still open end as interrupted runs. Accepts not running. */
void stall_stop(void);
/* Adds "stall": {"seconds", "thread", "stalled": [...]} (P/N/state). */
void stall_describe(struct json_object *o);

#endif
