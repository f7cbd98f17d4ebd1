/* The `runs` action: the last runs recorded in the run store, newest first, filtered by action
 * and status. Not the store (store.c). */
#include <string.h>
#include "actions.h"
#include "run.h"
#include "stall.h"
#include "store.h"

static struct json_object *text_or_null(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

static int add_run_row(const struct store_row *row, void *userdata)
{
    struct json_object *list = userdata, *o = json_object_new_object(), *files;

    json_object_object_add(o, "run_id", json_object_new_int64(row->id));
    if (row->request_id)
        json_object_object_add(
            o, "request_id", json_object_new_string_len(row->request_id, (int)row->request_id_len));
    json_object_object_add(o, "action", text_or_null(row->action));
    json_object_object_add(o, "status", text_or_null(row->status));
    json_object_object_add(o, "started", text_or_null(row->started));
    json_object_object_add(o, "finished", text_or_null(row->finished));
    if (row->target_spec) {
        struct json_object *t = json_object_new_object();

        json_object_object_add(t, "spec", json_object_new_string(row->target_spec));
        json_object_object_add(t, "pid",
                               row->target_pid > 0 ? json_object_new_int(row->target_pid) : NULL);
        json_object_object_add(o, "target", t);
    } else {
        json_object_object_add(o, "target", NULL);
    }
    files = row->files ? json_tokener_parse(row->files) : NULL;
    if (!json_object_is_type(files, json_type_array)) {
        json_object_put(files);
        files = json_object_new_array();
    }
    json_object_object_add(o, "files", files);
    json_object_object_add(o, "error", text_or_null(row->error));
    json_object_array_add(list, o);
    return 0;
}

int action_runs(struct run *run)
{
    struct store *st = run->host->store;
    struct store_query q = {.exclude_id = run->id};
    struct json_object *v, *list;
    int r;

    if (!st)
        return run_fail(run, "runs: there is no run database (`run` mode, or it could not be "
                             "opened at start: see the agent's log)");
    if (json_object_object_get_ex(run->params, "limit", &v))
        q.limit = (unsigned)json_object_get_int(v);
    if (json_object_object_get_ex(run->params, "action", &v)) {
        q.action = json_object_get_string(v);
        if (!run->host->known_action(q.action) && strcmp(q.action, STALL_RUN_ACTION) != 0)
            return run_fail(run, "action: unknown action '%s' (runs are of an action, or '%s')",
                            q.action, STALL_RUN_ACTION);
    }
    if (json_object_object_get_ex(run->params, "status", &v))
        q.status = json_object_get_string(v);
    list = json_object_new_array();
    r = store_runs_list(st, &q, add_run_row, list);
    if (r < 0) {
        json_object_put(list);
        return run_fail(run, "cannot read the run database %s: %s", run->host->config->database,
                        store_errmsg(st));
    }
    json_object_object_add(run->summary, "runs", list);
    return 0;
}
