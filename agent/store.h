/* The run store: one SQLite row per command received, valid or not, in WAL mode so readers
 * (sqlite3, `runs` queries) never block the agent. The schema version is PRAGMA user_version.
 * Runs a crash left `running` are marked `interrupted` when the store is opened. */
#ifndef STORE_H
#define STORE_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#define STORE_SCHEMA_VERSION 1

struct store;

struct store_run {
    const char *request_id;     /* may be NULL */
    const char *action;
    const char *params;         /* JSON text or NULL */
    const char *target_spec;    /* NULL when no target was resolved */
    pid_t target_pid;
    const char *status;         /* running, ok, error, interrupted */
    const char *error;
    const char *files;          /* JSON array text or NULL */
    const char *summary;        /* JSON object text or NULL */
    const char *warnings;       /* JSON array text or NULL */
    int64_t started_us, finished_us;
};

/* Opens or creates the database. ret_interrupted: how many runs were marked interrupted. On
 * failure err holds a sentence naming the file and SQLite's reason. */
int store_open(const char *path, struct store **ret, unsigned *ret_interrupted, char *err,
               size_t errlen);
void store_close(struct store *s);
/* Inserts a run (usually status running) and returns its id. Thread-safe. */
int store_run_insert(struct store *s, const struct store_run *run, int64_t *ret_id);
/* Writes every field of run over the row id. Thread-safe. */
int store_run_update(struct store *s, int64_t id, const struct store_run *run);
/* Marks every running row interrupted (a clean stop with jobs still running). */
int store_interrupt_running(struct store *s, int64_t finished_us, unsigned *ret_count);
/* SQLite's message for the last failure, for the agent's log. */
const char *store_errmsg(struct store *s);

#endif
