/* How the engine says why something failed. Every engine entry point that can fail takes a
 * struct error *, fills it and returns the same negative errno; the agent turns it into one
 * sentence a user understands in one place (agent/run.c). A reason is written for that user: what
 * was tried and what was in the way, never a function name alone. The same struct carries why a
 * degraded path was taken (perf_event refused, so ptrace snapshots) when the run still succeeds.
 * Not a log: nothing here prints. */
#ifndef ERROR_H
#define ERROR_H

#define ERROR_REASON_MAX 512

struct error {
    int code;                      /* a negative errno; 0 when nothing failed */
    char reason[ERROR_REASON_MAX]; /* "" when the errno alone says it */
};

/* Sets e (when not NULL) to code and the formatted reason (fmt may be NULL: no reason). Returns
 * code, so a failing path can `return error_set(err, -ENOENT, "...")`. */
int error_set(struct error *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Empties e (when not NULL). */
void error_clear(struct error *e);
/* For an entry point's exit: sets e to code with no reason unless a deeper call already filled
 * it (the deeper reason is the specific one). Returns code. */
int error_fill(struct error *e, int code);

#endif
