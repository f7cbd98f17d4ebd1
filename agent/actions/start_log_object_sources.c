/* The `start_log_object_sources` action: starts the background logger that logs the growth of the
 * target's objects and where up to max_objects new ones per scan came from (watch.c runs it;
 * stop_log_object_sources ends it). */
#include "actions.h"
#include "run.h"
#include "watch.h"

int action_start_log_object_sources(struct run *run)
{
    char err[RUN_ERROR_MAX];
    struct json_object *v;
    double interval = 30.0;
    int max_objects = 5;

    if (json_object_object_get_ex(run->params, "scan_interval", &v))
        interval = json_object_get_double(v);
    if (json_object_object_get_ex(run->params, "max_objects", &v))
        max_objects = json_object_get_int(v);
    if (watch_start_sources(run, interval, (unsigned)max_objects, err, sizeof(err)) < 0)
        return run_fail(run, "%s", err);
    json_object_object_add(run->summary, "scan_interval", run_json_decimal(interval, 3));
    json_object_object_add(run->summary, "max_objects", json_object_new_int(max_objects));
    return 0;
}
