/* The action table and the actions that need no engine of their own: the schemas are compiled
 * here at start and looked up per command (the "schemas" cache of lru_stats). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include "action.h"
#include "os/cachestat.h"
#include "clock.h"
#include "loggers.h"
#include "schema.h"

int action_start(struct run *run);
int action_start_admit(struct run *run);
void action_start_release(struct run *run);
int action_memory(struct run *run);
int action_memory_admit(struct run *run);
void action_memory_release(struct run *run);
int action_log_thread_frames(struct run *run);
int action_start_log_objects(struct run *run);
int action_stop_log_objects(struct run *run);
int action_start_log_object_sources(struct run *run);
int action_stop_log_object_sources(struct run *run);
int action_dump_log_objects(struct run *run);
int action_log_event_loop_scheduled(struct run *run);
int action_dump_sockets(struct run *run);
int action_lru_stats(struct run *run);
int action_log_current_tasks(struct run *run);
int action_set_asyncio_debug(struct run *run);
int action_ping(struct run *run);
int action_runs(struct run *run);
int action_get_file(struct run *run);

static struct action actions[] = {
    {.name = "start",
     .needs_target = true,
     .long_running = true,
     .run = action_start,
     .admit = action_start_admit,
     .release = action_start_release},
    {.name = "memory",
     .needs_target = true,
     .long_running = true,
     .run = action_memory,
     .admit = action_memory_admit,
     .release = action_memory_release},
    {.name = "start_log_objects", .needs_target = true, .run = action_start_log_objects},
    {.name = "stop_log_objects", .run = action_stop_log_objects},
    {.name = "start_log_object_sources",
     .needs_target = true,
     .run = action_start_log_object_sources},
    {.name = "stop_log_object_sources", .run = action_stop_log_object_sources},
    {.name = "dump_log_objects",
     .needs_target = true,
     .long_running = true,
     .run = action_dump_log_objects},
    {.name = "log_thread_frames",
     .needs_target = true,
     .long_running = true,
     .run = action_log_thread_frames},
    {.name = "log_event_loop_scheduled",
     .needs_target = true,
     .long_running = true,
     .run = action_log_event_loop_scheduled},
    {.name = "lru_stats", .run = action_lru_stats},
    {.name = "set_asyncio_debug", .run = action_set_asyncio_debug},
    {.name = "log_current_tasks", .run = action_log_current_tasks},
    {.name = "dump_sockets",
     .needs_target = true,
     .long_running = true,
     .run = action_dump_sockets},
    {.name = "ping", .run = action_ping},
    {.name = "runs", .run = action_runs},
    {.name = "get_file", .long_running = true, .run = action_get_file},
};

#define NACTIONS (sizeof(actions) / sizeof(actions[0]))

CACHESTAT_DEFINE(schema_stats, "schemas", NACTIONS)

int action_load_schemas(const char *dir, char *err, size_t errlen)
{
    char path[PATH_MAX], why[SCHEMA_ERR_MAX];
    unsigned loaded = 0;
    int r;

    for (size_t i = 0; i < NACTIONS; i++) {
        snprintf(path, sizeof(path), "%s/%s.json", dir, actions[i].name);
        r = schema_load_file(path, &actions[i].schema, why, sizeof(why));
        if (r < 0) {
            snprintf(err, errlen, "cannot use schema %s: %s", path, why);
            action_free_schemas();
            return r;
        }
        cachestat_miss(&schema_stats);
        loaded++;
    }
    cachestat_size(&schema_stats, loaded);
    return 0;
}

void action_free_schemas(void)
{
    for (size_t i = 0; i < NACTIONS; i++) {
        schema_free(actions[i].schema);
        actions[i].schema = NULL;
    }
    cachestat_size(&schema_stats, 0);
}

const struct action *action_find(const char *name)
{
    for (size_t i = 0; i < NACTIONS; i++)
        if (strcmp(actions[i].name, name) == 0 && actions[i].schema) {
            cachestat_hit(&schema_stats);
            return &actions[i];
        }
    return NULL;
}

const char *action_name(unsigned i)
{
    return i < NACTIONS ? actions[i].name : NULL;
}

static void print_cache(const struct cachestat *c, void *userdata)
{
    struct run *run = userdata;
    char maxsize[32];

    if (c->maxsize)
        snprintf(maxsize, sizeof(maxsize), "%lu", c->maxsize);
    else
        snprintf(maxsize, sizeof(maxsize), "None");
    run_record(run, "Cache stats for %s: CacheInfo(hits=%lu, misses=%lu, maxsize=%s, currsize=%lu)",
               c->name, atomic_load(&c->hits), atomic_load(&c->misses), maxsize,
               atomic_load(&c->currsize));
}

int action_lru_stats(struct run *run)
{
    cachestat_foreach(print_cache, run);
    return 0;
}

static void record_task(const char *line, void *userdata)
{
    run_record(userdata, "%s", line);
}

int action_log_current_tasks(struct run *run)
{
    struct agent *a = run->agent;
    int64_t now = clock_monotonic_us();
    unsigned n = 1;

    run_record(run, "Task: <run %lld %s target=%s elapsed=%.3fs (this command)>",
               (long long)run->id, run->action_name, run->target_spec,
               (double)(now - run->started_mono_us) / 1e6);
    pthread_mutex_lock(&a->lock);
    for (struct run *j = a->jobs; j; j = j->next, n++) {
        char pid[32] = "";

        if (j->has_target)
            snprintf(pid, sizeof(pid), " pid=%d", (int)j->target.pid);
        run_record(run, "Task: <run %lld %s target=%s%s elapsed=%.3fs>", (long long)j->id,
                   j->action_name, j->target_spec, pid, (double)(now - j->started_mono_us) / 1e6);
    }
    pthread_mutex_unlock(&a->lock);
    loggers_tasks(record_task, run);
    json_object_object_add(run->summary, "tasks", json_object_new_int((int)n));
    return 0;
}

int action_set_asyncio_debug(struct run *run)
{
    struct json_object *v;
    bool on = true;

    if (json_object_object_get_ex(run->params, "enabled", &v))
        on = json_object_get_boolean(v);
    atomic_store(&run->agent->debug, on);
    if (on)
        run_record(run,
                   "Event loop debug mode enabled: every dispatch is logged with its "
                   "duration, and anything that holds the network loop longer than %d ms is "
                   "logged as a warning",
                   AGENT_SLOW_CALLBACK_US / 1000);
    else
        run_record(run, "Event loop debug mode disabled");
    json_object_object_add(run->summary, "enabled", json_object_new_boolean(on));
    return 0;
}
