/* The `log_event_loop_scheduled` action: what the target has scheduled, one record each: its
 * timerfds, POSIX timers and epoll sets with the fds they watch. Not the census
 * (engine/objects/). */
#include "actions.h"
#include "objects/objects.h"
#include "run.h"

int action_log_event_loop_scheduled(struct run *run)
{
    struct run_lines lines = {.run = run, .prefix = "Scheduled: "};
    struct error e;

    if (objects_scheduled(PROCFS_ROOT, run->target.pid, run_record_line, &lines, &e) < 0)
        return run_engine_fail_error(run, "listing what is scheduled", &e);
    json_object_object_add(run->summary, "scheduled", json_object_new_int((int)lines.count));
    return 0;
}
