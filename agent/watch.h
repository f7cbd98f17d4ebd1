/* Background object logging: loggers started by a command and stopped by another: object-growth
 * logging (start_log_objects / stop_log_objects) and object-source logging
 * (start_log_object_sources / stop_log_object_sources). A logger scans the target every
 * scan_interval seconds on its own thread and logs objgraph's growth form; the source logger also
 * traces the system calls that create objects and logs where up to max_objects of the new ones came
 * from. On a Python target each scan also counts its Python objects from inside (objgraph's
 * growth of Python types in the same record) and the source logger names the referrers that hold
 * new ones. A logger ends by itself, saying so, when the target exits. One of each kind per agent,
 * as the Profiler has. Not the census or the tracer (engine/objects/), nor the script
 * (pyscripts/objects.py). */
#ifndef WATCH_H
#define WATCH_H

#include <json-c/json.h>
#include "run.h"

/* Starts object logging of run's target, its records going where run's go. -EEXIST when already
 * started (err says so). */
int watch_start_objects(struct run *run, double interval, char *err, size_t errlen);
/* -ENOENT when not running. */
int watch_stop_objects(void);
/* Starts object-source logging of run's target: growth as watch_start_objects, then for up to
 * max_objects new objects per scan a `New object: TYPE <repr> from:` record with the creating
 * thread's stack. -EEXIST when already started; the tracing errors of objsrc_open (err says
 * why, and what the agent needs). */
int watch_start_sources(struct run *run, double interval, unsigned max_objects, char *err,
                        size_t errlen);
/* -ENOENT when not running. */
int watch_stop_sources(void);
/* dump_log_objects on a Python target: a `TYPE object in memory: <repr>` record for up to
 * max_objects Python objects of type (a name as type(o).__name__ gives it, or module-qualified,
 * `homeassistant.core.State`), counted from inside the target. As inside_run: 1 answered, 0 when
 * it cannot be (not Python; else a warning says why), negative when the run failed. */
int watch_python_dump(struct run *run, const char *type, unsigned max_objects);
/* Adds a JSON object per active logger to array (for P/N/state), or calls fn with a task line. */
void watch_describe(struct json_object *array);
void watch_tasks(int (*fn)(const char *line, void *userdata), void *userdata);
/* Stops every logger (agent stop). */
void watch_stop_all(void);

#endif
