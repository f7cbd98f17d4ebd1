/* The `start_log_objects` action: starts the background logger that logs the growth of the
 * target's objects every scan_interval seconds (watch.c runs it; stop_log_objects ends it). */
#include "actions.h"
#include "run.h"
#include "watch.h"

int action_start_log_objects(struct run *run)
{
    char err[RUN_ERROR_MAX];
    struct json_object *v;
    double interval = 30.0;

    if (json_object_object_get_ex(run->params, "scan_interval", &v))
        interval = json_object_get_double(v);
    if (watch_start_objects(run, interval, err, sizeof(err)) < 0)
        return run_fail(run, "%s", err);
    json_object_object_add(run->summary, "scan_interval", run_json_decimal(interval, 3));
    return 0;
}
