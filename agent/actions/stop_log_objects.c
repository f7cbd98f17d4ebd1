/* The `stop_log_objects` action: ends what start_log_objects started (watch.c). */
#include "actions.h"
#include "run.h"
#include "watch.h"

int action_stop_log_objects(struct run *run)
{
    if (watch_stop_objects() < 0)
        return run_fail(run, "Object logging not running");
    return 0;
}
