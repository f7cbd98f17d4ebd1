/* Unmapping the ring an allocation profile leaves in its target (engine/memory/memprof.h's
 * memprof_release): the hooks keep it mapped after a run, since a thread may still be inside one,
 * so RELEASE_GRACE_S after the run one thread of the agent's own makes one more short call into
 * the target, unless another run of it started first (its hooks replace the ring), or at once
 * when the agent stops. Not the run (actions/memory.c), not the hooks (engine/memory/hook/). */
#ifndef MEMRELEASE_H
#define MEMRELEASE_H

#include "os/target.h"

/* After a run of t, whatever its outcome: its ring (this run's, or the last one's when this run
 * did not start the hooks) is unmapped RELEASE_GRACE_S from now. */
void memrelease_schedule(const struct target *t);
/* A run of t was admitted: its hooks replace the last ring, which is no longer released. */
void memrelease_cancel(const struct target *t);
/* Before a run calls into t: one tracer at a time, so a release under way ends first. */
void memrelease_wait(const struct target *t);
/* The agent stops: what is left is released as soon as the hooks accept it, then the thread ends
 * (an agent made again in the same process starts it again). */
void memrelease_shutdown(void);

#endif
