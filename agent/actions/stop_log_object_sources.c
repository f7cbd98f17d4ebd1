/* The `stop_log_object_sources` action: ends what start_log_object_sources started (watch.c). */
#include "actions.h"
#include "run.h"
#include "watch.h"

int action_stop_log_object_sources(struct run *run)
{
    if (watch_stop_sources() < 0)
        return run_fail(run, "Object source logging not running");
    return 0;
}
