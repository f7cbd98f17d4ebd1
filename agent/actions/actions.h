/* Every action's entry points, one file each in this folder, named after the action. An action
 * reads run->params (validated against schemas/ACTION.json, defaults applied) and run->target,
 * emits records with run_record and fails with run_fail, or run_engine_fail_error for an engine
 * error (run.h); it returns 0 or what those return. Which actions exist, and how each is run, is
 * the table's business (registry.c), not this header's. */
#ifndef ACTIONS_H
#define ACTIONS_H

#include <stdbool.h>
#include <sys/types.h>

struct profile;
struct run;

int action_log_thread_frames(struct run *run);
/* The same, and a copy of thread tid's record into *ret_text (left alone when there is none):
 * the stall watch's dump. */
int action_log_thread_frames_of(struct run *run, pid_t tid, char **ret_text);
int action_dump_sockets(struct run *run);
int action_lru_stats(struct run *run);
int action_log_current_tasks(struct run *run);
int action_set_asyncio_debug(struct run *run);
/* start and memory claim their target (one profile of each kind per process at a time). */
int action_start(struct run *run);
int action_start_admit(struct run *run);
void action_start_release(struct run *run);
/* start over a window of the flight recorder ("last", "from"/"to"): start_window.c. */
bool action_start_is_window(const struct run *run);
int action_start_window(struct run *run);
/* The files start writes (the `formats` of run->params) of a profile of seconds, and its top
 * functions in the summary: for profiles of the recorder's ring too. */
int action_start_write(struct run *run, const struct profile *prof, double seconds);
int action_start_log_objects(struct run *run);
int action_stop_log_objects(struct run *run);
int action_dump_log_objects(struct run *run);
int action_log_event_loop_scheduled(struct run *run);
int action_start_log_object_sources(struct run *run);
int action_stop_log_object_sources(struct run *run);
int action_memory(struct run *run);
int action_memory_admit(struct run *run);
void action_memory_release(struct run *run);
int action_ping(struct run *run);
int action_runs(struct run *run);
int action_get_file(struct run *run);
int action_recorder(struct run *run);

#endif
