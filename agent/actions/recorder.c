/* The `recorder` action: the flight recorder on ({"enabled": true}, of the command's target
 * spec, which need not be running yet; "mode" cpu or wall, else what it records already, else
 * recorder_mode) or off, answered with what it then records. The Home Assistant switch sends
 * both. Not the recorder (flight.c). */
#include <errno.h>
#include "actions.h"
#include "flight.h"
#include "run.h"

int action_recorder(struct run *run)
{
    struct json_object *v, *state = json_object_new_object(), *rec;
    char err[RUN_ERROR_MAX];
    enum recorder_mode mode = 0;
    bool on = true;
    int r = 0;

    if (json_object_object_get_ex(run->params, "enabled", &v))
        on = json_object_get_boolean(v);
    /* The schema allows cpu and wall only: off is a profile's choice, not a recording's. */
    if (json_object_object_get_ex(run->params, "mode", &v) &&
        flight_mode_parse(json_object_get_string(v), &mode) < 0)
        return run_fail(run, "mode: cpu or wall");
    if (on) {
        r = flight_start_mode(run->host, run->target_spec, mode, err, sizeof(err));
        if (r < 0)
            r = run_fail(run, "%s", err);
        else if (r > 0)
            run_warn(run, "the recorder started over in %s mode: what it had recorded is gone",
                     flight_mode_name(mode));
        r = r > 0 ? 0 : r;
    } else if (flight_stop() == -ENOENT) {
        run_warn(run, "the recorder was off");
    }
    flight_describe(state);
    if (json_object_object_get_ex(state, "recorder", &rec)) {
        json_object_object_foreach(rec, key, val)
        {
            json_object_object_add(run->summary, key, json_object_get(val));
        }
    }
    json_object_put(state);
    return r;
}
