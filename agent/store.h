/* The run store: one SQLite row per command received, valid or not, in WAL mode so readers
 * (sqlite3, `runs` queries) never block the agent. The schema version is PRAGMA user_version.
 * Runs a crash left `running` are marked `interrupted` when the store is opened. Version 2 adds
 * the `settings` table: named JSON values (the agent's defaults that Home Assistant sets).
 * The `stacks` table, a CPU profile run's folded stacks (zlib-compressed) kept for a later run
 * to compare with (`start`'s compare_to), came without a new version: it only adds, and its
 * trigger deletes a run's stacks with the run, so an agent that knows nothing of it still opens
 * the database and still takes the stacks along when it expires runs. */
#ifndef STORE_H
#define STORE_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#define STORE_SCHEMA_VERSION 2

struct store;

struct store_run {
    const char *request_id; /* may be NULL, and hold U+0000 */
    size_t request_id_len;
    const char *action;
    const char *params;      /* JSON text or NULL */
    const char *target_spec; /* NULL when no target was resolved */
    pid_t target_pid;
    const char *status; /* running, ok, error, interrupted */
    const char *error;
    const char *files;    /* JSON array text or NULL */
    const char *summary;  /* JSON object text or NULL */
    const char *warnings; /* JSON array text or NULL */
    int64_t started_us, finished_us;
};

/* Opens or creates the database. ret_interrupted: how many runs were marked interrupted. On
 * failure err holds a sentence naming the file and SQLite's reason: -EBADMSG when the file is
 * not a database or is damaged, -EBUSY when another process holds a lock on it. */
int store_open(const char *path, struct store **ret, unsigned *ret_interrupted, char *err,
               size_t errlen);
void store_close(struct store *s);
/* Whether the file at the store's path is still the database it has open (same device and
 * inode): 0 when it is (or cannot be told). When it was deleted or replaced, closes it, opens the
 * path afresh (a new database, or the one put there) and returns 1 with what happened in what
 * ("was deleted"); a negative errno when that fails (SQLite's reason in store_errmsg), the store
 * then kept in memory until a later check can open the file. Thread-safe. */
int store_check_file(struct store *s, char *what, size_t len);
/* Inserts a run (usually status running) and returns its id. Thread-safe. */
int store_run_insert(struct store *s, const struct store_run *run, int64_t *ret_id);
/* Writes every field of run over the row id. Thread-safe. */
int store_run_update(struct store *s, int64_t id, const struct store_run *run);
/* Marks every running row interrupted (a clean stop with jobs still running). */
int store_interrupt_running(struct store *s, int64_t finished_us, unsigned *ret_count);
/* One stored run, as store_runs_list reads it back; the strings (NULL when the column is) are
 * valid only during the callback. */
struct store_row {
    int64_t id;
    const char *request_id, *action, *target_spec, *status, *error;
    size_t request_id_len;
    const char *started, *finished; /* ISO 8601, as in results */
    const char *files;              /* JSON array text */
    pid_t target_pid;               /* 0 when none was recorded */
};

#define STORE_LIST_MAX 100

/* Which runs store_runs_list reads: id (0: any) but not exclude_id, action and status (NULL:
 * any), at most limit (1..STORE_LIST_MAX). */
struct store_query {
    int64_t id, exclude_id;
    const char *action, *status;
    unsigned limit;
};

/* Calls fn for each run matching q, newest first, under the store's lock (fn must not call the
 * store). Stops at fn's first negative return and returns it. Thread-safe. */
int store_runs_list(struct store *s, const struct store_query *q,
                    int (*fn)(const struct store_row *row, void *userdata), void *userdata);
/* A named setting (JSON text) into value (len bytes). -ENOENT when never set, -EMSGSIZE when it
 * does not fit. Thread-safe. */
int store_setting_get(struct store *s, const char *name, char *value, size_t len);
/* Stores value under name, or deletes the setting when value is NULL. Thread-safe. */
int store_setting_set(struct store *s, const char *name, const char *value);
/* What is said of a run's kept stacks (its folded text aside). */
struct store_stacks {
    char mode[8];          /* the profile's mode: cpu, wall, off */
    uint64_t samples;      /* all its samples */
    uint64_t stacks, kept; /* its distinct stacks, and those the text has as lines of their own */
    size_t len;            /* the text's length */
};

/* Keeps the folded stacks of run run_id (text, info->len bytes), compressed, in place of any it
 * had. -ENOENT when there is no such run, -EFBIG when zlib cannot take that much at once.
 * Thread-safe. */
int store_stacks_put(struct store *s, int64_t run_id, const char *text,
                     const struct store_stacks *info);
/* What run_id's kept stacks are, into *ret_info, and when ret_text is not NULL the text itself
 * (malloc'd, NUL-terminated). -ENOENT when the run kept none, -EFBIG when the text is longer
 * than max_len, -EBADMSG when what is stored does not inflate to it. Thread-safe. */
int store_stacks_get(struct store *s, int64_t run_id, size_t max_len, char **ret_text,
                     struct store_stacks *ret_info);
/* Deletes the stacks of the oldest runs until those left take at most max_bytes. ret_count:
 * of how many runs. Thread-safe. */
int store_stacks_trim(struct store *s, uint64_t max_bytes, unsigned *ret_count);
/* Renames a damaged database (and its -wal and -shm files) to PATH.corrupt.T, T the time in
 * microseconds, so a new one can be created in its place; ret_path gets the new name. */
int store_set_aside(const char *path, int64_t now_us, char *ret_path, size_t len);
/* Deletes finished runs started before before_us. ret_count: how many. Thread-safe. */
int store_expire(struct store *s, int64_t before_us, unsigned *ret_count);
/* Takes the deleted file path out of every run that lists it and adds a warning saying why.
 * ret_count: how many runs listed it. Thread-safe. */
int store_file_removed(struct store *s, const char *path, const char *why, unsigned *ret_count);
/* SQLite's message for the last failure, for the agent's log. */
const char *store_errmsg(struct store *s);

#endif
