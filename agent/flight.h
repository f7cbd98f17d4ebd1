/* The flight recorder as the agent runs it: one recording at a time, of one target spec, on its
 * own thread, started by `recorder = on` or the `recorder` action and kept across the target's
 * restarts (the spec is resolved again until a process answers it); the window profiles `start`
 * and the stall watch take from its ring; and what P/N/state shows of it. Not the ring or the
 * sampling (engine/cpu/recorder.h), nor the files (actions/start.c). */
#ifndef FLIGHT_H
#define FLIGHT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <json-c/json.h>
#include "cpu/recorder.h"
#include "formats/profile.h"
#include "os/target.h"
#include "run.h"

/* What a window of the ring covers. */
struct flight_window {
    int64_t from_us, to_us;  /* wall clock: the window asked, cut to what the ring covers */
    bool cut;                /* the ring does not reach back to the start asked */
    unsigned frequency;      /* Hz */
    enum recorder_mode mode; /* what the profile took */
    uint64_t states_ns[CPUPROF_NSTATES];
};

/* Records spec with the limits of host's config (recorder_frequency, recorder_minutes,
 * recorder_max_mb) in its recorder_mode. Recording the same spec already: 0, the ring kept
 * (whatever its mode). Another spec: that recording stops and its ring goes first. -errno with
 * a sentence in err. */
int flight_start(struct run_host *host, const char *spec, char *err, size_t errlen);
/* The same in mode (RECORDER_CPU or RECORDER_WALL; 0: as flight_start); 1 when it recorded the
 * same spec in the other mode: that recording stopped and its ring went first. */
int flight_start_mode(struct run_host *host, const char *spec, enum recorder_mode mode, char *err,
                      size_t errlen);
/* Stops recording and frees the ring. -ENOENT when not recording. */
int flight_stop(void);
/* Adds "recorder": {"enabled": false} or what it records (target, mode), since when, in how
 * much memory. */
void flight_describe(struct json_object *o);
/* A profile of [from_us, to_us) (wall clock, microseconds) of the recorded target (spec, or t
 * the process it records now), of thread tid alone when tid > 0: all the ring records (time on
 * a CPU, and in wall mode time off it too). -ENOENT (off), -ESRCH (it records another target),
 * -ENOMEM, with a sentence in err. */
int flight_profile(const char *spec, const struct target *t, int64_t from_us, int64_t to_us,
                   pid_t tid, struct profile **ret, struct flight_window *w, char *err,
                   size_t errlen);
/* The same, of mode: on-CPU time, off-CPU time, or both (recorder_profile; 0: all it records);
 * -EOPNOTSUPP with a sentence when the ring does not record it. */
int flight_profile_mode(const char *spec, const struct target *t, int64_t from_us, int64_t to_us,
                        pid_t tid, enum recorder_mode mode, struct profile **ret,
                        struct flight_window *w, char *err, size_t errlen);
/* "cpu", "off" or "wall", and back (-EINVAL for another word). */
const char *flight_mode_name(enum recorder_mode mode);
int flight_mode_parse(const char *name, enum recorder_mode *ret);

#endif
