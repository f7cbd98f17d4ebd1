/* The `set_asyncio_debug` action. On a Python target (python_exec on), the debug mode of its
 * running asyncio event loop, set from inside (pyscripts/event_loop.py) with loop.set_debug() as
 * Home Assistant's Profiler does: asyncio then logs every callback slower than
 * loop.slow_callback_duration to the target's own logging. The summary says so ("switched":
 * "target"). On any other target, with none configured (self), and where the target cannot run
 * the script (a warning says why), the agent's own debug mode instead, asyncio's loop debug for
 * the agent: while on, the MQTT session times every dispatch and warns of one that holds the
 * network loop too long (mqtt.c). The two are separate modes: P/N/state's debug is the
 * agent's, its target_debug what the action last set the target's loops to, and the Home
 * Assistant switch shows the target's once it has one. */
#include "actions.h"
#include "event_loop.h"
#include "run.h"

/* The target's loops: a record as the Profiler logs it, the loops' new states in the summary. */
static void report(struct run *run, struct json_object *a, bool on)
{
    struct json_object *loops, *v, *states = json_object_new_array();
    size_t n = event_loop_array(a, "loops", EVENT_LOOP_ITEMS_MAX, &loops), unchanged = 0;

    run_record(run, "Setting asyncio debug to %s", on ? "True" : "False");
    for (size_t i = 0; i < n; i++) {
        bool now = json_object_object_get_ex(json_object_array_get_idx(loops, i), "debug", &v) &&
                   json_object_get_boolean(v);
        unchanged += now != on;
        json_object_array_add(states, json_object_new_boolean(now));
    }
    if (unchanged)
        run_warn(run, "%zu of the target's %zu event loops kept their debug mode", unchanged, n);
    json_object_object_add(run->summary, "switched", json_object_new_string("target"));
    atomic_store(&run->host->target_debug, on && unchanged < n);
    json_object_object_add(run->summary, "debug", states);
}

int action_set_asyncio_debug(struct run *run)
{
    struct json_object *v, *a;
    bool on = true;

    if (json_object_object_get_ex(run->params, "enabled", &v))
        on = json_object_get_boolean(v);
    int r = event_loop_inside(run, "set_debug", on,
                              "the agent's own debug mode was switched instead", &a);
    if (r < 0)
        return r;
    json_object_object_add(run->summary, "enabled", json_object_new_boolean(on));
    if (r == 1) {
        report(run, a, on);
        json_object_put(a);
        return 0;
    }
    atomic_store(&run->host->debug, on);
    if (on)
        run_record(run,
                   "The agent's own event loop debug mode enabled: every dispatch is logged with "
                   "its duration, and anything that holds the network loop longer than %d ms is "
                   "logged as a warning",
                   RUN_SLOW_CALLBACK_US / 1000);
    else
        run_record(run, "The agent's own event loop debug mode disabled");
    return 0;
}
