/* Answers from inside a Python target: runs one of the scripts the agent ships (pyscripts/) in
 * the run's target through engine/python/pyexec.h, with the agent's settings (python_exec,
 * python_timeout) and the run's cancel flag, and hands back the script's JSON answer. Says in
 * the run's warnings why it could not, so the action can answer from outside instead. Not the
 * scripts, nor the records an action makes of an answer. */
#ifndef INSIDE_H
#define INSIDE_H

#include <json-c/json.h>

struct run;

/* Runs pyscripts/SCRIPT.py (script: "lru_stats") in run's target with input (JSON text, data only).
 * 1: *ret is the script's answer (a JSON object; json_object_put it) and the summary has python,
 * method, thread, wait_ms and held_ms. 0: answer from outside: silently when the target is not
 * Python, is the agent itself or python_exec is off; else with a warning that says why and ends
 * with instead ("these are the agent's own caches"). Negative: the run failed (the target
 * exited; the script raised, its traceback recorded; its answer was not JSON). */
int inside_run(struct run *run, const char *script, const char *input, const char *instead,
               struct json_object **ret);

#endif
