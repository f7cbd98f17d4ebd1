/* What the three event-loop actions (log_event_loop_scheduled, set_asyncio_debug,
 * log_current_tasks) share on a Python target: pyscripts/event_loop.py run inside it (inside.h)
 * with one operation and the limits they all use, the loops it found in the summary, and a
 * target with no running asyncio event loop answered from outside, as one that cannot run the
 * script is. Not the records each action makes of the answer. */
#ifndef EVENT_LOOP_H
#define EVENT_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <json-c/json.h>

struct run;

#define EVENT_LOOP_ITEMS_MAX 10000 /* handles or tasks the script reports */
#define EVENT_LOOP_REPR_MAX 4096   /* characters of one repr or stack line the script keeps */
/* Bytes a record needs for one such text: UTF-8 is at most 4 per character, and "..." marks
 * a cut. */
#define EVENT_LOOP_TEXT_MAX (EVENT_LOOP_REPR_MAX * 4 + 8)

/* Runs op ("scheduled", "set_debug" with enabled, "tasks") in run's target. 1: *ret is the
 * answer (json_object_put it), summary "loops" lists the running loops' types. 0: answer from
 * outside, with a warning ending in instead when the target is Python (as inside_run, and when it
 * has no running event loop). Negative: the run failed. */
int event_loop_inside(struct run *run, const char *op, bool enabled, const char *instead,
                      struct json_object **ret);
/* The answer's array under key (NULL: none) and its length, at most max. */
size_t event_loop_array(struct json_object *a, const char *key, size_t max,
                        struct json_object **ret);
/* A string from the target for a record, in buf: cut at a character's boundary, control
 * characters replaced by '?' so that no text can forge a line; none when o is not a string. */
const char *event_loop_text(struct json_object *o, const char *none, char *buf, size_t len);

#endif
