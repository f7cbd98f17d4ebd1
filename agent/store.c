/* SQLite run store (see store.h). All access goes through one connection under a mutex: runs are
 * written a few times per command, far below what contention would cost. SQLite result codes
 * are translated to negative errno here and nowhere else. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sqlite3.h>
#include <zlib.h>
#include "clock.h"
#include "store.h"

#define STORE_BUSY_MS 1000

struct store {
    sqlite3 *db;
    sqlite3_stmt *insert, *update;
    pthread_mutex_t lock;
    char errmsg[256];
    char path[PATH_MAX];
    dev_t dev; /* the file open, to notice it deleted or replaced; 0 and 0 for the stand-in */
    ino_t ino; /* in memory used while no file can be opened */
};

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS runs ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " request_id TEXT,"
    " action TEXT NOT NULL,"
    " params TEXT,"
    " target_spec TEXT,"
    " target_pid INTEGER,"
    " status TEXT NOT NULL CHECK (status IN ('running','ok','error','interrupted')),"
    " error TEXT,"
    " started TEXT NOT NULL,"
    " finished TEXT,"
    " files TEXT,"
    " summary TEXT,"
    " warnings TEXT);"
    "CREATE INDEX IF NOT EXISTS runs_status ON runs(status);"
    "CREATE INDEX IF NOT EXISTS runs_action ON runs(action);";

static const char settings_sql[] =
    "CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);";

/* A run's stacks go with it, however it is deleted (retention, or by hand with sqlite3). */
static const char stacks_sql[] =
    "CREATE TABLE IF NOT EXISTS stacks ("
    " run_id INTEGER PRIMARY KEY,"
    " mode TEXT NOT NULL,"
    " samples INTEGER NOT NULL,"
    " stacks INTEGER NOT NULL,"
    " kept INTEGER NOT NULL,"
    " length INTEGER NOT NULL,"
    " folded BLOB NOT NULL);"
    "CREATE TRIGGER IF NOT EXISTS runs_delete_stacks AFTER DELETE ON runs "
    "BEGIN DELETE FROM stacks WHERE run_id = old.id; END;";

static int errno_of(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
        return 0;
    case SQLITE_NOMEM:
        return -ENOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
        return -EACCES;
    case SQLITE_FULL:
        return -ENOSPC;
    case SQLITE_CANTOPEN:
        return -ENOENT;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return -EBADMSG;
    default:
        return -EIO;
    }
}

static int fail(struct store *s, int rc)
{
    snprintf(s->errmsg, sizeof(s->errmsg), "%s", sqlite3_errmsg(s->db));
    return errno_of(rc);
}

const char *store_errmsg(struct store *s)
{
    return s->errmsg;
}

static int exec_int(sqlite3 *db, const char *sql, int *ret)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *ret = sqlite3_column_int(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

static int migrate(struct store *s)
{
    int version = 0, rc;

    rc = exec_int(s->db, "PRAGMA user_version", &version);
    if (rc != SQLITE_OK)
        return rc;
    if (version > STORE_SCHEMA_VERSION) {
        snprintf(s->errmsg, sizeof(s->errmsg),
                 "its schema version %d is newer than this agent's (%d)", version,
                 STORE_SCHEMA_VERSION);
        return SQLITE_MISMATCH;
    }
    rc = sqlite3_exec(s->db, schema_sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return rc;
    /* The stacks table, what compare_to compares with: no new version (store.h). */
    rc = sqlite3_exec(s->db, stacks_sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return rc;
    /* 1 -> 2: the settings table, the values Home Assistant's number and text entities set. */
    rc = sqlite3_exec(s->db, settings_sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK || version == STORE_SCHEMA_VERSION)
        return rc;
    return sqlite3_exec(s->db, "PRAGMA user_version = 2", NULL, NULL, NULL);
}

/* The end of a statement that changes rows, its step's rc in hand, under s->lock: 0 with the
 * rows changed in *ret_count (when asked); st finalized and the lock released either way. */
static int changed_rows(struct store *s, sqlite3_stmt *st, int rc, unsigned *ret_count)
{
    int r = 0;

    if (rc == SQLITE_DONE) {
        if (ret_count)
            *ret_count = (unsigned)sqlite3_changes(s->db);
    } else {
        r = fail(s, rc);
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* A lookup's step: 0 on its row, -ENOENT when there is none, else the store's error. */
static int row_found(struct store *s, int rc)
{
    if (rc == SQLITE_ROW)
        return 0;
    return rc == SQLITE_DONE ? -ENOENT : fail(s, rc);
}

int store_interrupt_running(struct store *s, int64_t finished_us, unsigned *ret_count)
{
    char stamp[CLOCK_ISO_MAX];
    sqlite3_stmt *st = NULL;
    int rc;

    clock_iso8601(finished_us, stamp, sizeof(stamp));
    pthread_mutex_lock(&s->lock);
    rc = sqlite3_prepare_v2(s->db,
                            "UPDATE runs SET status = 'interrupted', finished = ?1, error = "
                            "coalesce(error, 'the agent stopped before the run finished') "
                            "WHERE status = 'running'",
                            -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, stamp, -1, SQLITE_TRANSIENT);
        rc = sqlite3_step(st);
    }
    return changed_rows(s, st, rc, ret_count);
}

/* Opens path as s->db with its statements; SQLite's code on failure (s->errmsg may say more). */
static int open_db(struct store *s, const char *path)
{
    struct stat st;
    int rc;

    rc = sqlite3_open_v2(path, &s->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
    if (rc != SQLITE_OK)
        return rc;
    /* Commands wait for the store on the network thread: a lock held elsewhere costs each one
     * this long before its run goes unrecorded (and its result says so). */
    sqlite3_busy_timeout(s->db, STORE_BUSY_MS);
    rc = sqlite3_exec(s->db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;", NULL, NULL,
                      NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = migrate(s);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_prepare_v2(s->db,
                            "INSERT INTO runs (request_id, action, params, target_spec, "
                            "target_pid, status, error, started, finished, files, summary, "
                            "warnings) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                            -1, &s->insert, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_prepare_v2(s->db,
                            "UPDATE runs SET request_id = ?1, action = ?2, params = ?3, "
                            "target_spec = ?4, target_pid = ?5, status = ?6, error = ?7, "
                            "started = ?8, finished = ?9, files = ?10, summary = ?11, "
                            "warnings = ?12 WHERE id = ?13",
                            -1, &s->update, NULL);
    if (rc != SQLITE_OK)
        return rc;
    s->dev = 0;
    s->ino = 0;
    if (stat(path, &st) == 0) {
        s->dev = st.st_dev;
        s->ino = st.st_ino;
    }
    return SQLITE_OK;
}

static void close_db(struct store *s)
{
    sqlite3_finalize(s->insert);
    sqlite3_finalize(s->update);
    sqlite3_close(s->db);
    s->insert = s->update = NULL;
    s->db = NULL;
}

int store_open(const char *path, struct store **ret, unsigned *ret_interrupted, char *err,
               size_t errlen)
{
    struct store *s;
    int rc, r;

    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    pthread_mutex_init(&s->lock, NULL);
    if (strlen(path) >= sizeof(s->path)) {
        snprintf(err, errlen, "cannot use the run database %s: the path is too long", path);
        store_close(s);
        return -ENAMETOOLONG;
    }
    snprintf(s->path, sizeof(s->path), "%s", path);
    rc = open_db(s, path);
    if (rc != SQLITE_OK)
        goto fail;
    r = store_interrupt_running(s, clock_realtime_us(), ret_interrupted);
    if (r < 0) {
        snprintf(err, errlen, "cannot use the run database %s: %s", path, s->errmsg);
        store_close(s);
        return r;
    }
    *ret = s;
    return 0;
fail:
    if (!s->errmsg[0])
        snprintf(s->errmsg, sizeof(s->errmsg), "%s",
                 s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
    snprintf(err, errlen, "cannot use the run database %s: %s", path, s->errmsg);
    r = errno_of(rc);
    store_close(s);
    return r ? r : -EIO;
}

int store_check_file(struct store *s, char *what, size_t len)
{
    struct stat st;
    int rc, r = 1;
    bool there;

    pthread_mutex_lock(&s->lock);
    there = stat(s->path, &st) == 0;
    if ((there && st.st_dev == s->dev && st.st_ino == s->ino) || (!there && errno != ENOENT)) {
        r = 0;
        goto out;
    }
    snprintf(what, len, "%s",
             !s->dev && !s->ino ? "could not be opened"
             : there            ? "was replaced by another file"
                                : "was deleted");
    /* Closed first: the old connection's WAL and shared-memory files sit at the same paths. */
    close_db(s);
    s->errmsg[0] = '\0';
    rc = open_db(s, s->path);
    if (rc != SQLITE_OK) {
        if (!s->errmsg[0])
            snprintf(s->errmsg, sizeof(s->errmsg), "%s",
                     s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        close_db(s);
        r = errno_of(rc);
        /* Runs are still recorded, and listed by `runs`, until a file can be opened. */
        open_db(s, ":memory:");
        s->dev = 0;
        s->ino = 0;
    }
out:
    pthread_mutex_unlock(&s->lock);
    return r;
}

void store_close(struct store *s)
{
    if (!s)
        return;
    close_db(s);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static void bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

static void bind_run(sqlite3_stmt *st, const struct store_run *run)
{
    char started[CLOCK_ISO_MAX], finished[CLOCK_ISO_MAX];

    clock_iso8601(run->started_us, started, sizeof(started));
    if (run->request_id)
        sqlite3_bind_text(st, 1, run->request_id, (int)run->request_id_len, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, 1);
    bind_text(st, 2, run->action);
    bind_text(st, 3, run->params);
    bind_text(st, 4, run->target_spec);
    if (run->target_spec && run->target_pid > 0)
        sqlite3_bind_int64(st, 5, run->target_pid);
    else
        sqlite3_bind_null(st, 5);
    bind_text(st, 6, run->status);
    bind_text(st, 7, run->error);
    bind_text(st, 8, started);
    if (run->finished_us) {
        clock_iso8601(run->finished_us, finished, sizeof(finished));
        bind_text(st, 9, finished);
    } else {
        sqlite3_bind_null(st, 9);
    }
    bind_text(st, 10, run->files);
    bind_text(st, 11, run->summary);
    bind_text(st, 12, run->warnings);
}

int store_run_insert(struct store *s, const struct store_run *run, int64_t *ret_id)
{
    int rc, r = 0;

    pthread_mutex_lock(&s->lock);
    sqlite3_reset(s->insert);
    sqlite3_clear_bindings(s->insert);
    bind_run(s->insert, run);
    rc = sqlite3_step(s->insert);
    if (rc != SQLITE_DONE)
        r = fail(s, rc);
    else
        *ret_id = sqlite3_last_insert_rowid(s->db);
    sqlite3_reset(s->insert);
    pthread_mutex_unlock(&s->lock);
    return r;
}

int store_run_update(struct store *s, int64_t id, const struct store_run *run)
{
    int rc, r = 0;

    pthread_mutex_lock(&s->lock);
    sqlite3_reset(s->update);
    sqlite3_clear_bindings(s->update);
    bind_run(s->update, run);
    sqlite3_bind_int64(s->update, 13, id);
    rc = sqlite3_step(s->update);
    if (rc != SQLITE_DONE)
        r = fail(s, rc);
    sqlite3_reset(s->update);
    pthread_mutex_unlock(&s->lock);
    return r;
}

static const char *column_text(sqlite3_stmt *st, int i)
{
    return (const char *)sqlite3_column_text(st, i);
}

int store_runs_list(struct store *s, const struct store_query *q,
                    int (*fn)(const struct store_row *row, void *userdata), void *userdata)
{
    sqlite3_stmt *st = NULL;
    int rc, r = 0;

    if (q->limit < 1 || q->limit > STORE_LIST_MAX)
        return -EINVAL;
    pthread_mutex_lock(&s->lock);
    rc = sqlite3_prepare_v2(s->db,
                            "SELECT id, request_id, action, target_spec, target_pid, status, "
                            "error, started, finished, files FROM runs WHERE (?1 = 0 OR id = ?1) "
                            "AND id != ?2 AND (?3 IS NULL OR action = ?3) AND "
                            "(?4 IS NULL OR status = ?4) ORDER BY id DESC LIMIT ?5",
                            -1, &st, NULL);
    if (rc != SQLITE_OK) {
        r = fail(s, rc);
        goto out;
    }
    sqlite3_bind_int64(st, 1, q->id);
    sqlite3_bind_int64(st, 2, q->exclude_id);
    bind_text(st, 3, q->action);
    bind_text(st, 4, q->status);
    sqlite3_bind_int(st, 5, (int)q->limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_row row = {
            .id = sqlite3_column_int64(st, 0),
            .request_id = column_text(st, 1),
            .request_id_len = (size_t)sqlite3_column_bytes(st, 1),
            .action = column_text(st, 2),
            .target_spec = column_text(st, 3),
            .target_pid = (pid_t)sqlite3_column_int(st, 4),
            .status = column_text(st, 5),
            .error = column_text(st, 6),
            .started = column_text(st, 7),
            .finished = column_text(st, 8),
            .files = column_text(st, 9),
        };

        r = fn(&row, userdata);
        if (r < 0)
            goto out;
    }
    if (rc != SQLITE_DONE)
        r = fail(s, rc);
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->lock);
    return r;
}

int store_setting_get(struct store *s, const char *name, char *value, size_t len)
{
    sqlite3_stmt *st = NULL;
    const unsigned char *text;
    int rc, r;

    pthread_mutex_lock(&s->lock);
    rc = sqlite3_prepare_v2(s->db, "SELECT value FROM settings WHERE name = ?1", -1, &st, NULL);
    if (rc != SQLITE_OK) {
        r = fail(s, rc);
        goto out;
    }
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    rc = sqlite3_step(st);
    r = row_found(s, rc);
    if (r < 0)
        goto out;
    text = sqlite3_column_text(st, 0);
    if (!text || (size_t)sqlite3_column_bytes(st, 0) >= len) {
        r = -EMSGSIZE;
        goto out;
    }
    snprintf(value, len, "%s", (const char *)text);
    r = 0;
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->lock);
    return r;
}

int store_setting_set(struct store *s, const char *name, const char *value)
{
    sqlite3_stmt *st = NULL;
    int rc, r = 0;

    pthread_mutex_lock(&s->lock);
    if (value)
        rc = sqlite3_prepare_v2(s->db,
                                "INSERT INTO settings (name, value) VALUES (?1, ?2) "
                                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                                -1, &st, NULL);
    else
        rc = sqlite3_prepare_v2(s->db, "DELETE FROM settings WHERE name = ?1", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
        if (value)
            sqlite3_bind_text(st, 2, value, -1, SQLITE_TRANSIENT);
        rc = sqlite3_step(st);
    }
    if (rc != SQLITE_DONE)
        r = fail(s, rc);
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->lock);
    return r;
}

int store_set_aside(const char *path, int64_t now_us, char *ret_path, size_t len)
{
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    char aside[PATH_MAX], from[PATH_MAX + 8], to[PATH_MAX + 8];

    if (snprintf(aside, sizeof(aside), "%s.corrupt.%lld", path, (long long)now_us) >=
        (int)sizeof(aside))
        return -ENAMETOOLONG;
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        snprintf(from, sizeof(from), "%s%s", path, suffixes[i]);
        snprintf(to, sizeof(to), "%s%s", aside, suffixes[i]);
        if (rename(from, to) < 0 && (i == 0 || errno != ENOENT))
            return -errno;
    }
    snprintf(ret_path, len, "%s", aside);
    return 0;
}

static int exec_stamp(struct store *s, const char *sql, const char *a, const char *b,
                      unsigned *ret_count)
{
    sqlite3_stmt *st = NULL;
    int rc;

    pthread_mutex_lock(&s->lock);
    rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        bind_text(st, 1, a);
        if (b)
            bind_text(st, 2, b);
        rc = sqlite3_step(st);
    }
    return changed_rows(s, st, rc, ret_count);
}

int store_expire(struct store *s, int64_t before_us, unsigned *ret_count)
{
    char stamp[CLOCK_ISO_MAX];

    /* The stamps are fixed-width ISO 8601 in UTC: text order is time order. */
    clock_iso8601(before_us, stamp, sizeof(stamp));
    return exec_stamp(s, "DELETE FROM runs WHERE status != 'running' AND started < ?1", stamp, NULL,
                      ret_count);
}

int store_file_removed(struct store *s, const char *path, const char *why, unsigned *ret_count)
{
    return exec_stamp(s,
                      "UPDATE runs SET files = (SELECT json_group_array(value) FROM "
                      "json_each(runs.files) WHERE value != ?1), warnings = "
                      "json_insert(coalesce(warnings, '[]'), '$[#]', ?2) WHERE files IS NOT NULL "
                      "AND json_valid(files) AND EXISTS (SELECT 1 FROM json_each(runs.files) "
                      "WHERE value = ?1)",
                      path, why, ret_count);
}

int store_stacks_put(struct store *s, int64_t run_id, const char *text,
                     const struct store_stacks *info)
{
    uLongf zlen = compressBound((uLong)info->len);
    unsigned char *z = NULL;
    sqlite3_stmt *st = NULL;
    unsigned n = 0;
    int rc, r;

    /* uLong is 32 bits on some ABIs: a text it cannot count is refused, not cut. */
    if ((size_t)(uLong)info->len != info->len || (size_t)zlen > INT_MAX)
        return -EFBIG;
    z = malloc(zlen ? zlen : 1);
    if (!z)
        return -ENOMEM;
    /* Compressed before the lock is taken: the store is not held while zlib works. */
    if (compress2(z, &zlen, (const Bytef *)text, (uLong)info->len, Z_DEFAULT_COMPRESSION) != Z_OK) {
        free(z);
        return -ENOMEM;
    }
    pthread_mutex_lock(&s->lock);
    rc = sqlite3_prepare_v2(s->db,
                            "INSERT OR REPLACE INTO stacks (run_id, mode, samples, stacks, kept, "
                            "length, folded) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS "
                            "(SELECT 1 FROM runs WHERE id = ?1)",
                            -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, run_id);
        sqlite3_bind_text(st, 2, info->mode, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)info->samples);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)info->stacks);
        sqlite3_bind_int64(st, 5, (sqlite3_int64)info->kept);
        sqlite3_bind_int64(st, 6, (sqlite3_int64)info->len);
        sqlite3_bind_blob(st, 7, z, (int)zlen, SQLITE_STATIC);
        rc = sqlite3_step(st);
    }
    r = changed_rows(s, st, rc, &n);
    free(z);
    /* No row inserted: the run it belongs to is gone. */
    return r == 0 && n == 0 ? -ENOENT : r;
}

/* The stored blob of n bytes into the text of len bytes in *ret (malloc'd). */
static int inflate_stacks(const void *blob, int n, size_t len, char **ret)
{
    uLongf out = (uLongf)len;
    char *text = malloc(len + 1);

    if (!text)
        return -ENOMEM;
    if (!blob || n <= 0 || uncompress((Bytef *)text, &out, blob, (uLong)n) != Z_OK ||
        (size_t)out != len) {
        free(text);
        return -EBADMSG;
    }
    text[len] = '\0';
    *ret = text;
    return 0;
}

int store_stacks_get(struct store *s, int64_t run_id, size_t max_len, char **ret_text,
                     struct store_stacks *ret_info)
{
    struct store_stacks info = {0};
    sqlite3_stmt *st = NULL;
    const unsigned char *mode;
    sqlite3_int64 len;
    int rc, r;

    pthread_mutex_lock(&s->lock);
    rc = sqlite3_prepare_v2(s->db,
                            "SELECT mode, samples, stacks, kept, length, folded FROM stacks "
                            "WHERE run_id = ?1",
                            -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, run_id);
        rc = sqlite3_step(st);
    }
    r = row_found(s, rc);
    if (r < 0)
        goto out;
    mode = sqlite3_column_text(st, 0);
    snprintf(info.mode, sizeof(info.mode), "%s", mode ? (const char *)mode : "");
    info.samples = (uint64_t)sqlite3_column_int64(st, 1);
    info.stacks = (uint64_t)sqlite3_column_int64(st, 2);
    info.kept = (uint64_t)sqlite3_column_int64(st, 3);
    len = sqlite3_column_int64(st, 4);
    r = 0;
    if (len < 0 || (uint64_t)len > max_len) {
        r = -EFBIG;
        goto out;
    }
    info.len = (size_t)len;
    if (ret_text)
        r = inflate_stacks(sqlite3_column_blob(st, 5), sqlite3_column_bytes(st, 5), info.len,
                           ret_text);
    if (r == 0)
        *ret_info = info;
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->lock);
    return r;
}

int store_stacks_trim(struct store *s, uint64_t max_bytes, unsigned *ret_count)
{
    sqlite3_stmt *st = NULL;
    int rc;

    pthread_mutex_lock(&s->lock);
    rc = sqlite3_prepare_v2(s->db,
                            "DELETE FROM stacks WHERE run_id IN (SELECT run_id FROM (SELECT "
                            "run_id, sum(length(folded)) OVER (ORDER BY run_id DESC) AS upto "
                            "FROM stacks) WHERE upto > ?1)",
                            -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, max_bytes > INT64_MAX ? INT64_MAX : (sqlite3_int64)max_bytes);
        rc = sqlite3_step(st);
    }
    return changed_rows(s, st, rc, ret_count);
}
