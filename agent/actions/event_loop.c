/* The event-loop actions' common part (see event_loop.h). */
#include <stdio.h>
#include <string.h>
#include "event_loop.h"
#include "inside.h"
#include "run.h"

#define MAX_STACK 32         /* frames of a task's print_stack */
#define MAX_BYTES (3u << 20) /* of the script's answer: under PYEXEC_OUTPUT_MAX */
#define MAX_OBJECTS 20000000 /* objects looked at for a loop not on the script's thread */
#define MAX_LOOPS 16         /* running loops it acts on */
#define BUDGET_MAX_S 2.0     /* the most it may hold the target's interpreter */
#define TYPE_MAX 256         /* bytes of a loop's type name in the summary */

size_t event_loop_array(struct json_object *a, const char *key, size_t max,
                        struct json_object **ret)
{
    struct json_object *v = NULL;

    json_object_object_get_ex(a, key, &v);
    if (!json_object_is_type(v, json_type_array)) {
        *ret = NULL;
        return 0;
    }
    *ret = v;
    size_t n = json_object_array_length(v);
    return n < max ? n : max;
}

const char *event_loop_text(struct json_object *o, const char *none, char *buf, size_t len)
{
    const char *s = json_object_is_type(o, json_type_string) ? json_object_get_string(o) : NULL;
    if (!s || !len)
        return none;
    size_t n = strlen(s);
    if (n >= len) {
        /* Back to the start of the character the cut falls in: records are UTF-8. */
        n = len - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    for (size_t i = 0; i < n; i++)
        buf[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    buf[n] = '\0';
    return buf;
}

/* The loops' types in the summary; how many there are. */
static size_t loops_summary(struct run *run, struct json_object *a)
{
    struct json_object *loops, *types = json_object_new_array(), *type;
    size_t n = event_loop_array(a, "loops", MAX_LOOPS, &loops);
    char buf[TYPE_MAX];

    for (size_t i = 0; i < n; i++) {
        json_object_object_get_ex(json_object_array_get_idx(loops, i), "type", &type);
        json_object_array_add(types,
                              json_object_new_string(event_loop_text(type, "?", buf, sizeof(buf))));
    }
    json_object_object_add(run->summary, "loops", types);
    return n;
}

int event_loop_inside(struct run *run, const char *op, bool enabled, const char *instead,
                      struct json_object **ret)
{
    struct json_object *a, *v;
    char input[384];
    double budget = run->host->config->python_timeout / 4.0;

    *ret = NULL;
    if (budget > BUDGET_MAX_S)
        budget = BUDGET_MAX_S;
    snprintf(input, sizeof(input),
             "{\"op\": \"%s\", \"enabled\": %s, \"max_items\": %d, \"max_repr\": %d, "
             "\"max_stack\": %d, \"max_bytes\": %u, \"max_objects\": %d, \"max_loops\": %d, "
             "\"budget_s\": %.2f}",
             op, enabled ? "true" : "false", EVENT_LOOP_ITEMS_MAX, EVENT_LOOP_REPR_MAX, MAX_STACK,
             MAX_BYTES, MAX_OBJECTS, MAX_LOOPS, budget);
    int r = inside_run(run, "event_loop", input, instead, &a);
    if (r <= 0)
        return r;
    if (json_object_object_get_ex(a, "objects_scanned", &v) && json_object_get_int64(v) > 0)
        json_object_object_add(run->summary, "objects_scanned",
                               json_object_new_int64(json_object_get_int64(v)));
    if (json_object_object_get_ex(a, "stopped", &v) && v)
        run_warn(run, "the search inside the target %s", json_object_get_string(v));
    if (loops_summary(run, a) == 0) {
        bool has_asyncio =
            json_object_object_get_ex(a, "asyncio", &v) && json_object_get_boolean(v);

        run_warn(run, "the target has no running asyncio event loop%s; %s",
                 has_asyncio ? "" : " (it has not imported asyncio)", instead);
        json_object_put(a);
        return 0;
    }
    *ret = a;
    return 1;
}
