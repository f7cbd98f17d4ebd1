/* The agent's cache of unwinder state (struct stacks) of live targets: a job gets the idle entry
 * of its target, whatever use it was last lent for, so dumps, profiles, the memory action and
 * the object sources share one copy of the target's tables, symbols and debug information; a
 * second entry is made only while another use's job holds the first, so a minute-long profile
 * never holds up a dump of the same process. Entries are keyed by pid and start time (a reused
 * pid is another process) and lent to one job at a time; the least recently used idle entry is
 * recycled. */
#ifndef UNWINDERS_H
#define UNWINDERS_H

#include "unwind/stacks.h"
#include "os/target.h"

enum unwinders_use { UNWINDERS_DUMP, UNWINDERS_PROFILE, UNWINDERS_MEMORY };

struct unwinder;

/* Lends an idle unwinder of t, creating one when needed; waits while another job of the same
 * target and use holds the only one. -EBUSY when every entry is lent out; stacks_new's
 * errors. */
int unwinders_get(const struct target *t, enum unwinders_use use, struct unwinder **ret);
struct stacks *unwinders_stacks(struct unwinder *u);
/* Gives it back for the next job. */
void unwinders_put(struct unwinder *u);

#endif
