/* The `dump_log_objects` action: `TYPE object in memory: <repr>` for every object of `type` in
 * the target: fds by kind, threads and mappings from /proc; on a Python target, any other type
 * names its Python objects (up to max_objects), listed from inside it (watch.h). Not the census
 * (engine/objects/) nor the script (pyscripts/objects.py). */
#include <stdio.h>
#include <string.h>
#include "actions.h"
#include "objects/objects.h"
#include "run.h"
#include "watch.h"

int action_dump_log_objects(struct run *run)
{
    char prefix[64], known[256] = "";
    struct run_lines lines = {.run = run, .prefix = prefix};
    enum objects_type type;
    struct json_object *v;
    const char *name;
    unsigned max_objects = 1000;
    struct error e;

    json_object_object_get_ex(run->params, "type", &v);
    name = json_object_get_string(v);
    if (json_object_object_get_ex(run->params, "max_objects", &v))
        max_objects = (unsigned)json_object_get_int(v);
    if (objects_type_parse(name, &type) < 0) {
        size_t warned = run->warnings ? json_object_array_length(run->warnings) : 0;
        int r = watch_python_dump(run, name, max_objects);

        if (r != 0)
            return r < 0 ? r : 0;
        for (int t = 0; t < OBJECTS_NTYPES; t++)
            snprintf(known + strlen(known), sizeof(known) - strlen(known), "%s%s", t ? ", " : "",
                     objects_type_name(t));
        /* A Python target whose interpreter did not answer (its warning says why): the name is
         * not unknown, only out of the outside view's reach. */
        if (run->warnings && json_object_array_length(run->warnings) > warned)
            return run_fail(run,
                            "type: %s can only be listed from inside the target, which did not "
                            "answer (see warnings); from outside: %s",
                            name, known);
        return run_fail(run, "type: unknown type '%s'; known types: %s", name, known);
    }
    snprintf(prefix, sizeof(prefix), "%s object in memory: ", objects_type_name(type));
    if (objects_dump(PROCFS_ROOT, run->target.pid, type, run_record_line, &lines, &e) < 0)
        return run_engine_fail_error(run, "object listing", &e);
    json_object_object_add(run->summary, "objects", json_object_new_int((int)lines.count));
    return 0;
}
