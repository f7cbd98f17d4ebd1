/* The action table (see registry.h). The schemas are compiled here at start and looked up per
 * command: the "schemas" cache of lru_stats. Adding an action: schemas/NAME.json,
 * actions/NAME.c, a row here, a test. */
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include "actions/actions.h"
#include "os/cachestat.h"
#include "registry.h"
#include "schema.h"

/* In --help order. */
static struct registry_action actions[] = {
    {.name = "log_thread_frames",
     .help = "log every thread's stack (ptrace snapshot, offline unwind)",
     .button = "Thread frames",
     .needs_target = true,
     .long_running = true,
     .run = action_log_thread_frames},
    {.name = "dump_sockets",
     .help = "log the target's sockets in Python's socket repr",
     .button = "Sockets",
     .needs_target = true,
     .long_running = true,
     .run = action_dump_sockets},
    {.name = "lru_stats",
     .help = "log hit/miss statistics of the target's functools.lru_cache\n"
             "and lru-dict caches, read inside a Python target at a safe\n"
             "point (python_exec); else the agent's own caches",
     .button = "Cache statistics",
     .needs_target = true,
     /* Waiting up to python_timeout for the target's safe point: not on the network thread. */
     .long_running = true,
     .run = action_lru_stats},
    {.name = "log_current_tasks",
     .help = "log the target's asyncio tasks with their stacks: read from\n"
             "outside on Python 3.14 on, from inside on 3.11-3.13\n"
             "(python_exec); else the agent's running jobs",
     .button = "Current tasks",
     .needs_target = true,
     /* Thousands of tasks are many reads of the target, or a wait for its safe point: not on
      * the network thread. */
     .long_running = true,
     .run = action_log_current_tasks},
    {.name = "set_asyncio_debug",
     .help = "{\"enabled\": true|false}: a Python target's event loop debug\n"
             "mode (python_exec); else the agent's: time every dispatch,\n"
             "warn when one holds the network loop longer than 100 ms",
     .toggle = &(const struct registry_switch){.id = "debug",
                                               .title = "Debug mode",
                                               /* The target's loops once switched. */
                                               .state = "(value_json.target_debug if "
                                                        "value_json.target_debug is not none "
                                                        "else value_json.debug)"},
     .needs_target = true,
     /* Waiting up to python_timeout for the target's safe point: not on the network thread. */
     .long_running = true,
     .run = action_set_asyncio_debug},
    {.name = "start",
     .help = "{\"seconds\": 60, \"frequency\": 199, \"mode\": \"cpu\"}: CPU\n"
             "profile of the target (mode wall: wall-clock time, waiting\n"
             "included; off: only the time blocked, by where); writes\n"
             "profile.T.cprof (pstats), callgrind.out.T and flamegraph.T.svg\n"
             "in output_dir, progress on P/N/progress; \"formats\": [...]\n"
             "picks files, also collapsed, pprof, speedscope;\n"
             "{\"last\": 300} or {\"from\": ISO, \"to\": ISO}: the same files at once,\n"
             "from the flight recorder's samples of that window (also of a\n"
             "target that has exited since); \"compare_to\": RUN_ID adds a\n"
             "differential flame graph against that earlier run",
     .button = "CPU profile",
     .presets = (const struct registry_preset[]){{"profile_last_5_minutes",
                                                  "Profile the last 5 minutes", "{\"last\": 300}"},
                                                 {NULL, NULL, NULL}},
     .settings =
         (const struct registry_setting[]){
             {"start_seconds", "seconds", "CPU profile seconds", "s"},
             {"start_frequency", "frequency", "CPU profile frequency", "Hz"},
             {"start_mode", "mode", "CPU profile mode", NULL},
             {NULL, NULL, NULL, NULL}},
     .outputs = (const struct registry_output[]){{"profile.", ".cprof"},
                                                 {"callgrind.out.", ""},
                                                 {"flamegraph.", ".svg"},
                                                 {"profile.", ".collapsed"},
                                                 {"profile.", ".pb.gz"},
                                                 {"profile.", ".speedscope.json"},
                                                 {"flamegraph.", ".diff.svg"},
                                                 {"profile.", ".diff.folded"},
                                                 {NULL, NULL}},
     .needs_target = true,
     .long_running = true,
     .profiles = true,
     .run = action_start,
     .admit = action_start_admit,
     .release = action_start_release},
    {.name = "recorder",
     .help = "{\"enabled\": true|false, \"mode\": \"cpu\"|\"wall\"}: the flight\n"
             "recorder, the target sampled all the time at recorder_frequency,\n"
             "the last recorder_minutes kept for start {\"last\": S}; wall also\n"
             "keeps where threads blocked, for \"mode\": \"off\" (state: P/N/state)",
     .toggle = &(const struct registry_switch){.id = "recorder",
                                               .title = "Flight recorder",
                                               .state = "value_json.recorder.enabled"},
     .run = action_recorder},
    {.name = "start_log_objects",
     .help = "{\"scan_interval\": 30}: every interval, log the growth of\n"
             "the target's objects (fds by kind, threads, mappings; on a\n"
             "Python target its Python objects by type too)",
     .toggle =
         &(const struct registry_switch){
             .id = "object_logging",
             .title = "Object logging",
             .off = "stop_log_objects",
             .state = "value_json.loggers | selectattr('logger', 'equalto', 'objects') | list"},
     .needs_target = true,
     .run = action_start_log_objects},
    {.name = "stop_log_objects", .help = "stop it", .run = action_stop_log_objects},
    {.name = "dump_log_objects",
     .help = "{\"type\": \"pipe\", \"max_objects\": 1000}: log every object of\n"
             "that type (on a Python target also a Python type: dict, Widget)",
     .button = "Dump objects",
     .settings = (const struct registry_setting[]){{"dump_type", "type", "Object type", NULL},
                                                   {NULL, NULL, NULL, NULL}},
     .needs_target = true,
     .long_running = true,
     .run = action_dump_log_objects},
    {.name = "log_event_loop_scheduled",
     .help = "log what a Python target's event loop has scheduled, read\n"
             "from inside (python_exec); else the target's timerfds, POSIX\n"
             "timers and epoll sets",
     .button = "Scheduled events",
     .needs_target = true,
     .long_running = true,
     .run = action_log_event_loop_scheduled},
    {.name = "start_log_object_sources",
     .help = "{\"scan_interval\": 30, \"max_objects\": 5}: growth, and\n"
             "where up to max_objects new objects per scan came from (on a\n"
             "Python target also the referrers holding new Python objects)",
     .toggle = &(const struct registry_switch){.id = "object_source_logging",
                                               .title = "Object source logging",
                                               .off = "stop_log_object_sources",
                                               .state = "value_json.loggers | selectattr('logger', "
                                                        "'equalto', 'object_sources') | list"},
     .needs_target = true,
     .run = action_start_log_object_sources},
    {.name = "stop_log_object_sources", .help = "stop it", .run = action_stop_log_object_sources},
    {.name = "memory",
     .help = "{\"seconds\": 60, \"sample_bytes\": 0}: allocation profile;\n"
             "writes heap_profile.T.hpy and massif.out.T in output_dir; on a\n"
             "Python target the .hpy is its heap by kind, the native sites\n"
             "go to heap_native.T.hpy, and tracemalloc's largest live\n"
             "tracebacks of the run are logged (\"tracemalloc\": false: not)",
     .button = "Memory profile",
     .settings =
         (const struct registry_setting[]){
             {"memory_seconds", "seconds", "Memory profile seconds", "s"},
             {"memory_sample_bytes", "sample_bytes", "Memory sample bytes", "B"},
             {NULL, NULL, NULL, NULL}},
     .outputs = (const struct registry_output[]){{"heap_profile.", ".hpy"},
                                                 {"heap_native.", ".hpy"},
                                                 {"massif.out.", ""},
                                                 {NULL, NULL}},
     .needs_target = true,
     .long_running = true,
     .profiles = true,
     .run = action_memory,
     .admit = action_memory_admit,
     .release = action_memory_release},
    {.name = "ping",
     .help = "version, node, target and its pid, uptime, and whether\n"
             "perf_event, uprobes and ptrace work here (and why not)",
     .run = action_ping},
    {.name = "runs",
     .help = "{\"limit\": 10, \"action\": ..., \"status\": ...}: the last runs\n"
             "from the database, newest first",
     .run = action_runs},
    {.name = "get_file",
     .help = "{\"run_id\": N} or {\"name\": FILE}: publish a run's files, or\n"
             "one file of output_dir, on P/N/file/NAME (max_file_bytes)",
     .long_running = true,
     .run = action_get_file},
};

#define NACTIONS (sizeof(actions) / sizeof(actions[0]))

CACHESTAT_DEFINE(schema_stats, "schemas", NACTIONS)

int registry_load_schemas(const char *dir, char *err, size_t errlen)
{
    char path[PATH_MAX], why[SCHEMA_ERR_MAX];
    unsigned loaded = 0;
    int r;

    for (size_t i = 0; i < NACTIONS; i++) {
        snprintf(path, sizeof(path), "%s/%s.json", dir, actions[i].name);
        r = schema_load_file(path, &actions[i].schema, why, sizeof(why));
        if (r < 0) {
            snprintf(err, errlen, "cannot use schema %s: %s", path, why);
            registry_free_schemas();
            return r;
        }
        cachestat_miss(&schema_stats);
        loaded++;
    }
    cachestat_size(&schema_stats, loaded);
    return 0;
}

void registry_free_schemas(void)
{
    for (size_t i = 0; i < NACTIONS; i++) {
        schema_free(actions[i].schema);
        actions[i].schema = NULL;
    }
    cachestat_size(&schema_stats, 0);
}

const struct registry_action *registry_find(const char *name)
{
    for (size_t i = 0; i < NACTIONS; i++)
        if (strcmp(actions[i].name, name) == 0 && actions[i].schema) {
            cachestat_hit(&schema_stats);
            return &actions[i];
        }
    return NULL;
}

const struct schema *registry_schema(const struct registry_action *act)
{
    cachestat_hit(&schema_stats);
    return act->schema;
}

bool registry_known(const char *name)
{
    for (size_t i = 0; i < NACTIONS; i++)
        if (strcmp(actions[i].name, name) == 0)
            return true;
    return false;
}

const struct registry_action *registry_at(unsigned i)
{
    return i < NACTIONS ? &actions[i] : NULL;
}
