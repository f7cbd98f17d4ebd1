/* Retention of old runs: result files in output_dir and rows of the run store older than
 * retention_days go, then the oldest files until the rest fit in retention_max_bytes; applied
 * when the daemon starts and hourly after, by a thread of its own. It also removes the temporary
 * files (NAME.tmp.PID) of agents that died while writing. Only files named as the agent names
 * its output are ever touched, nothing else in output_dir. */
#ifndef RETENTION_H
#define RETENTION_H

#include <stdint.h>
#include "config.h"

#define RETENTION_INTERVAL_S 3600

struct retention;
struct store;

struct retention_stats {
    unsigned expired_files, capped_files, stale_tmp, expired_runs;
    uint64_t removed_bytes, kept_bytes;
};

/* One pass over c's output_dir and store (which may be NULL). Logs what it removed. */
int retention_apply(const struct config *c, struct store *store, struct retention_stats *ret);
/* Starts the thread that calls retention_apply every RETENTION_INTERVAL_S. */
int retention_start(const struct config *c, struct store *store, struct retention **ret);
/* Stops and joins the thread. Accepts NULL. */
void retention_stop(struct retention *r);

#endif
