/* The `set_asyncio_debug` action: the agent's debug mode, asyncio's loop debug: while on, the MQTT
 * session times every dispatch and warns of one that holds the network loop too long (mqtt.c). */
#include "actions.h"
#include "run.h"

int action_set_asyncio_debug(struct run *run)
{
    struct json_object *v;
    bool on = true;

    if (json_object_object_get_ex(run->params, "enabled", &v))
        on = json_object_get_boolean(v);
    atomic_store(&run->host->debug, on);
    if (on)
        run_record(run,
                   "Event loop debug mode enabled: every dispatch is logged with its "
                   "duration, and anything that holds the network loop longer than %d ms is "
                   "logged as a warning",
                   RUN_SLOW_CALLBACK_US / 1000);
    else
        run_record(run, "Event loop debug mode disabled");
    json_object_object_add(run->summary, "enabled", json_object_new_boolean(on));
    return 0;
}
