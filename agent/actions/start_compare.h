/* `start`'s compare_to, and the stacks each CPU profile run keeps for it (start_compare.c). Only
 * start.c calls these; the action's entry points are in actions.h. */
#ifndef START_COMPARE_H
#define START_COMPARE_H

struct profile;
struct run;

/* Before any sampling: whether the run compare_to names can be compared with (a finished CPU
 * profile run, not this one, whose stacks are kept). 0 when it can or none is named; else the
 * run is failed with the reason and its negative errno returned. */
int start_compare_check(struct run *run);
/* After the asked files of prof are written in dir: keeps its folded stacks with the run (when
 * it is recorded), and with compare_to writes the differential flame graph and folded file of
 * prof against the earlier run and says what changed in the summary and a log record. A
 * failure to keep the stacks is a warning; a failure to compare fails the run. */
int start_compare_finish(struct run *run, const struct profile *prof, const char *dir);

#endif
