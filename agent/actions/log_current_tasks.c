/* The `log_current_tasks` action: the agent's own work, one record each: this command, the runs on
 * job threads and the background object loggers. */
#include <stdio.h>
#include "actions.h"
#include "clock.h"
#include "run.h"
#include "watch.h"

int action_log_current_tasks(struct run *run)
{
    struct run_host *h = run->host;
    struct run_lines loggers = {.run = run, .prefix = ""};
    int64_t now = clock_monotonic_us();
    unsigned n = 1;

    run_record(run, "Task: <run %lld %s target=%s elapsed=%.3fs (this command)>",
               (long long)run->id, run->action_name, run->target_spec,
               (double)(now - run->started_mono_us) / 1e6);
    pthread_mutex_lock(&h->lock);
    for (struct run *j = h->jobs; j; j = j->next, n++) {
        char pid[32] = "";

        if (j->has_target)
            snprintf(pid, sizeof(pid), " pid=%d", (int)j->target.pid);
        run_record(run, "Task: <run %lld %s target=%s%s elapsed=%.3fs>", (long long)j->id,
                   j->action_name, j->target_spec, pid, (double)(now - j->started_mono_us) / 1e6);
    }
    pthread_mutex_unlock(&h->lock);
    watch_tasks(run_record_line, &loggers);
    json_object_object_add(run->summary, "tasks", json_object_new_int((int)n));
    return 0;
}
