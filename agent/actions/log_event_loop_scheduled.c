/* The `log_event_loop_scheduled` action. On a Python target (python_exec on), what its running
 * asyncio event loop has scheduled, read from inside (pyscripts/event_loop.py): one record per
 * handle not cancelled, `Scheduled: <TimerHandle when=... cb() at FILE:LINE>`, the timers of
 * loop._scheduled then the handles of loop._ready, each its repr as Home Assistant's Profiler
 * logs it. Where that answer is not available (any other target, python_exec off, no safe point
 * in time, no running loop, a loop of C code such as uvloop), its timerfds, POSIX timers and
 * epoll sets with the fds they watch, read from outside (engine/objects/), with a warning saying
 * why when the target is Python. Not the census (engine/objects/) nor the search (the script). */
#include <string.h>
#include "actions.h"
#include "event_loop.h"
#include "objects/objects.h"
#include "run.h"

#define INSTEAD "these are its timerfds, POSIX timers and epoll sets, seen from outside"

/* A record per handle of the answer: 1, or 0 when the loop keeps its handles out of sight. */
static int report(struct run *run, struct json_object *a)
{
    struct json_object *handles, *h, *v;
    size_t n = event_loop_array(a, "handles", EVENT_LOOP_ITEMS_MAX, &handles), timers = 0;
    char buf[EVENT_LOOP_TEXT_MAX];

    if (json_object_object_get_ex(a, "opaque", &v) && json_object_get_boolean(v)) {
        run_warn(run, "the target's event loop keeps its handles in C code, out of Python's "
                      "sight; " INSTEAD);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        h = json_object_array_get_idx(handles, i);
        json_object_object_get_ex(h, "kind", &v);
        timers += v && !strcmp(json_object_get_string(v), "timer");
        json_object_object_get_ex(h, "repr", &v);
        run_record(run, "Scheduled: %s", event_loop_text(v, "?", buf, sizeof(buf)));
    }
    json_object_object_add(run->summary, "scheduled", json_object_new_uint64(n));
    json_object_object_add(run->summary, "timers", json_object_new_uint64(timers));
    json_object_object_add(run->summary, "ready", json_object_new_uint64(n - timers));
    if (json_object_object_get_ex(a, "cancelled", &v))
        json_object_object_add(run->summary, "cancelled",
                               json_object_new_int64(json_object_get_int64(v)));
    return 1;
}

int action_log_event_loop_scheduled(struct run *run)
{
    struct run_lines lines = {.run = run, .prefix = "Scheduled: "};
    struct json_object *a;
    struct error e;
    int r = event_loop_inside(run, "scheduled", false, INSTEAD, &a);

    if (r < 0)
        return r;
    if (r == 1) {
        r = report(run, a);
        json_object_put(a);
        if (r == 1)
            return 0;
    }
    if (objects_scheduled(PROCFS_ROOT, run->target.pid, run_record_line, &lines, &e) < 0)
        return run_engine_fail_error(run, "listing what is scheduled", &e);
    json_object_object_add(run->summary, "scheduled", json_object_new_int((int)lines.count));
    return 0;
}
