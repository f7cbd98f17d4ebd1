/* The command pipeline (see agent.h): size check, JSON parse, action lookup, schema validation,
 * target check and resolution, run row, then the action inline or in a job thread, and exactly
 * one result. Errors are decided and worded here, once; the engine only returns codes. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "actions/actions.h"
#include "agent.h"
#include "clock.h"
#include "flight.h"
#include "log.h"
#include "memrelease.h"
#include "privs.h"
#include "registry.h"
#include "retention.h"
#include "schema.h"
#include "stall.h"
#include "store.h"
#include "watch.h"

/* The schemas are flat, so anything deeper is refused before parsing, with a clear error rather
 * than validated. */
#define PAYLOAD_MAX_DEPTH 32

/* json-c spends about 1 KB on every object it builds (a hash table of 16 slots) and 50 bytes on
 * every number, so 16 MiB of `[{"k":1},...]` became 900 MB of heap before the schema could say
 * no. The largest command the schemas allow has a few dozen values; a payload with more is
 * refused before json-c sees it. */
#define PAYLOAD_MAX_VALUES 4096

/* Opens the run store. A damaged file is moved aside for a new one (the runs it held are lost
 * to `runs`, not to the user, who keeps the file); a file another process keeps locked leaves the
 * agent without a store, since a profiler that answers is worth more than its history. */
static int open_store(struct agent *a, char *err, size_t errlen)
{
    const char *db = a->host.config->database;
    unsigned interrupted = 0;
    char aside[PATH_MAX];
    int r;

    r = store_open(db, &a->host.store, &interrupted, err, errlen);
    if (r == -EBADMSG) {
        log_error("%s", err);
        r = store_set_aside(db, clock_realtime_us(), aside, sizeof(aside));
        if (r < 0) {
            snprintf(err, errlen, "the run database %s is damaged and cannot be moved aside: %s",
                     db, strerror(-r));
            return r;
        }
        log_error("moved the damaged run database %s to %s; starting a new one", db, aside);
        r = store_open(db, &a->host.store, &interrupted, err, errlen);
    }
    if (r == -EBUSY) {
        log_error("%s; another process holds a lock on it, so runs are not recorded until the "
                  "agent is restarted",
                  err);
        a->host.store = NULL;
        return 0;
    }
    if (r < 0)
        return r;
    if (interrupted)
        log_warning("%u run(s) left running by an earlier agent were marked interrupted",
                    interrupted);
    return 0;
}

int agent_init(struct agent *a, struct config *c, bool use_store, const struct run_output *out,
               char *err, size_t errlen)
{
    int r;

    memset(a, 0, sizeof(*a));
    a->host.config = c;
    a->host.out = *out;
    a->host.started_mono_us = clock_monotonic_us();
    atomic_init(&a->host.target_debug, -1);
    a->host.known_action = registry_known;
    pthread_mutex_init(&a->host.lock, NULL);
    pthread_cond_init(&a->jobs_done, NULL);
    r = registry_load_schemas(c->schema_dir, err, errlen);
    if (r < 0)
        return r;
    if (!use_store)
        return 0;
    r = open_store(a, err, errlen);
    if (r < 0) {
        registry_free_schemas();
        return r;
    }
    r = retention_apply(c, a->host.store, NULL);
    if (r < 0)
        log_warning("retention: cannot go through output_dir %s: %s", c->output_dir, strerror(-r));
    r = retention_start(c, a->host.store, &a->retention);
    if (r < 0)
        log_warning("retention: cannot start its thread (%s); old runs are removed only at start",
                    strerror(-r));
    return 0;
}

void agent_destroy(struct agent *a)
{
    memrelease_shutdown();
    retention_stop(a->retention);
    store_close(a->host.store);
    registry_free_schemas();
    json_object_put(a->last_result);
    json_object_put(a->defaults);
    pthread_cond_destroy(&a->jobs_done);
    pthread_mutex_destroy(&a->host.lock);
}

/* JSON text must be UTF-8 (RFC 8259), and results carry payload strings back to subscribers that
 * decode them strictly; json-c's own check lets overlong forms, surrogates and code points above
 * U+10FFFF through. */
static bool utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < n) {
        uint32_t cp;
        size_t len;

        if (p[i] < 0x80) {
            i++;
            continue;
        }
        if (p[i] >= 0xc2 && p[i] <= 0xdf)
            len = 2, cp = p[i] & 0x1f;
        else if (p[i] >= 0xe0 && p[i] <= 0xef)
            len = 3, cp = p[i] & 0x0f;
        else if (p[i] >= 0xf0 && p[i] <= 0xf4)
            len = 4, cp = p[i] & 0x07;
        else
            return false;
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

/* Counts, outside strings, the values of the JSON text p (one per container opened and one more
 * per comma: a valid text has that many, give or take one) and how deep its containers nest, so
 * that a payload json-c would spend too much on is refused before json-c sees it. An invalid
 * text is refused by json-c after. */
static void json_shape(const char *p, size_t len, size_t *values, int *depth)
{
    int d = 0;

    *values = 0;
    *depth = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '"') {
            for (i++; i < len && p[i] != '"'; i++)
                if (p[i] == '\\')
                    i++;
        } else if (p[i] == '{' || p[i] == '[') {
            ++*values;
            if (++d > *depth)
                *depth = d;
        } else if (p[i] == '}' || p[i] == ']') {
            d--;
        } else if (p[i] == ',') {
            ++*values;
        }
    }
}

static size_t utf8_chars(const char *s, size_t len)
{
    size_t n = 0;

    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xc0) != 0x80;
    return n;
}

/* The request_id, when a string json-c decoded is one: at most RUN_REQUEST_ID_MAX characters,
 * kept byte for byte (U+0000 included) so the result echoes it exactly. */
static void take_id(struct run *run, struct json_object *v)
{
    const char *s = json_object_get_string(v);
    size_t n = (size_t)json_object_get_string_len(v);

    if (!json_object_is_type(v, json_type_string) || n >= sizeof(run->request_id) ||
        utf8_chars(s, n) > RUN_REQUEST_ID_MAX || !utf8_valid(s, n))
        return;
    memcpy(run->request_id, s, n);
    run->request_id[n] = '\0';
    run->request_id_len = n;
    run->has_request_id = true;
}

/* Finds a top-level "request_id" string in a payload json-c could not parse (too deep, broken
 * later on), so that even a rejected command can be matched to its result. Only a well-formed
 * string of at most RUN_REQUEST_ID_MAX characters is taken. */
static void scan_request_id(struct run *run, const char *p, size_t len)
{
    int depth = 0;
    bool expect_key = false;

    for (size_t i = 0; i < len; i++) {
        char ch = p[i];
        size_t start, j;

        if (ch == '{') {
            depth++;
            expect_key = depth == 1;
        } else if (ch == '[') {
            depth++;
        } else if (ch == '}' || ch == ']') {
            depth--;
        } else if (ch == ',') {
            expect_key = depth == 1;
        } else if (ch == '"') {
            start = i;
            for (j = i + 1; j < len && p[j] != '"'; j++)
                if (p[j] == '\\')
                    j++;
            if (j >= len)
                return;
            i = j;
            if (!(expect_key && depth == 1 && j - start - 1 == 10 &&
                  memcmp(p + start + 1, "request_id", 10) == 0)) {
                expect_key = false;
                continue;
            }
            expect_key = false;
            for (j = i + 1; j < len && strchr(" \t\r\n", p[j]); j++)
                ;
            if (j >= len || p[j] != ':')
                return;
            for (j++; j < len && strchr(" \t\r\n", p[j]); j++)
                ;
            if (j >= len || p[j] != '"')
                return;
            start = j;
            for (j = start + 1; j < len && p[j] != '"' && j - start < 6 * RUN_REQUEST_ID_MAX; j++)
                if (p[j] == '\\')
                    j++;
            if (j >= len || p[j] != '"')
                return;
            {
                char *tok = strndup(p + start, j - start + 1);
                struct json_object *s = tok ? json_tokener_parse(tok) : NULL;

                if (s)
                    take_id(run, s);
                json_object_put(s);
                free(tok);
                return;
            }
        }
    }
}

/* A topic level cut to fit action_name may end inside a UTF-8 sequence; the result must stay
 * valid UTF-8, so the partial character goes. */
static void utf8_trim_partial(char *s)
{
    size_t n = strlen(s), start = n;

    while (start > 0 && ((unsigned char)s[start - 1] & 0xc0) == 0x80)
        start--;
    if (start > 0 && ((unsigned char)s[start - 1] & 0x80)) {
        unsigned char lead = (unsigned char)s[start - 1];
        size_t want = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;

        if (n - (start - 1) < want)
            s[start - 1] = '\0';
    }
}

static void take_request_id(struct run *run, struct json_object *obj)
{
    struct json_object *v;

    if (json_object_object_get_ex(obj, "request_id", &v))
        take_id(run, v);
}

static struct json_object *run_result(struct run *run)
{
    struct json_object *o = json_object_new_object();
    char stamp[CLOCK_ISO_MAX];

    json_object_object_add(o, "run_id", run->id ? json_object_new_int64(run->id) : NULL);
    if (run->has_request_id)
        json_object_object_add(
            o, "request_id", json_object_new_string_len(run->request_id, (int)run->request_id_len));
    json_object_object_add(o, "action", json_object_new_string(run->action_name));
    json_object_object_add(o, "status", json_object_new_string(run->ok ? "ok" : "error"));
    if (!run->ok)
        json_object_object_add(o, "error", json_object_new_string(run->error));
    if (run->has_target) {
        struct json_object *t = json_object_new_object();

        json_object_object_add(t, "spec", json_object_new_string(run->target_spec));
        json_object_object_add(t, "pid", json_object_new_int(run->target.pid));
        json_object_object_add(t, "name", json_object_new_string(run->target.name));
        json_object_object_add(o, "target", t);
    }
    clock_iso8601(run->started_us, stamp, sizeof(stamp));
    json_object_object_add(o, "started", json_object_new_string(stamp));
    clock_iso8601(run->finished_us, stamp, sizeof(stamp));
    json_object_object_add(o, "finished", json_object_new_string(stamp));
    json_object_object_add(o, "files", json_object_get(run->files));
    json_object_object_add(o, "summary", json_object_get(run->summary));
    if (run->warnings)
        json_object_object_add(o, "warnings", json_object_get(run->warnings));
    return o;
}

/* Before a run is recorded: a database deleted or replaced under the agent would take runs that
 * no one can ever read again; the store opens the path afresh, and the run says so. */
static void check_store_file(struct run *run)
{
    const char *db = run->host->config->database;
    char what[64], text[PATH_MAX + 512];
    int r = store_check_file(run->host->store, what, sizeof(what));

    if (r == 0)
        return;
    if (r > 0)
        snprintf(text, sizeof(text),
                 "the run database %s %s while the agent was running: runs are recorded in a new "
                 "one there from now on, and `runs` lists only those",
                 db, what);
    else
        snprintf(text, sizeof(text),
                 "the run database %s %s and cannot be created again (%s): runs are kept in "
                 "memory until it can",
                 db, what, store_errmsg(run->host->store));
    log_msg(r > 0 ? CONFIG_LOG_WARNING : CONFIG_LOG_ERROR, "%s", text);
    run_warn(run, "%s", text);
}

static void store_write(struct run *run, const char *status, bool insert)
{
    struct store *st = run->host->store;
    struct store_run row = {
        .request_id = run->has_request_id ? run->request_id : NULL,
        .request_id_len = run->request_id_len,
        .action = run->action_name,
        .params = run->params ? json_object_to_json_string_ext(run->params, RUN_JSON_FLAGS) : NULL,
        .target_spec = run->has_target ? run->target_spec : NULL,
        .target_pid = run->has_target ? run->target.pid : 0,
        .status = status,
        .error = run->ok || !run->error[0] ? NULL : run->error,
        .files = json_object_to_json_string_ext(run->files, RUN_JSON_FLAGS),
        .summary = json_object_to_json_string_ext(run->summary, RUN_JSON_FLAGS),
        .warnings =
            run->warnings ? json_object_to_json_string_ext(run->warnings, RUN_JSON_FLAGS) : NULL,
        .started_us = run->started_us,
        .finished_us = run->finished_us,
    };
    int r;

    if (!st)
        return;
    if (insert) {
        check_store_file(run);
        r = store_run_insert(st, &row, &run->id);
    } else if (run->id)
        r = store_run_update(st, run->id, &row);
    else
        return;
    if (r < 0) {
        log_error("cannot record run of %s in the database %s: %s", run->action_name,
                  run->host->config->database, store_errmsg(st));
        /* The first row is written again at the end; only the last word goes to the user. */
        if (strcmp(status, "running") != 0)
            run_warn(run, "the run is not recorded in the database %s: %s",
                     run->host->config->database, store_errmsg(st));
    }
}

void agent_store_run(struct run *run, const char *status)
{
    store_write(run, status, run->id == 0);
}

static void run_free(struct run *run)
{
    json_object_put(run->params);
    json_object_put(run->files);
    json_object_put(run->summary);
    json_object_put(run->warnings);
    free(run->reply.topic);
    free(run->reply.correlation);
    free(run);
}

/* A failed run on a process someone else traces (gdb, strace) is most likely failed by it: a
 * process has one tracer, and a debugger may keep it stopped. Say who, unless the error did. */
static void note_tracer(struct run *run)
{
    char name[64], who[96];
    pid_t tracer = privs_tracer(run->target.pid, name, sizeof(name));

    if (tracer <= 0)
        return;
    snprintf(who, sizeof(who), "traced by %s (pid %d)", name, (int)tracer);
    if (!strstr(run->error, who))
        run_warn(run,
                 "process %d is being %s: a process has one tracer at a time, and a "
                 "debugger may keep it stopped; detach it and try again",
                 (int)run->target.pid, who);
}

/* Records the outcome, publishes the one result and frees the run. */
static void run_finish(struct run *run)
{
    struct agent *a = run->agent;
    struct json_object *result, *kept = NULL;
    bool interrupted = atomic_load(&run->cancel) && run->ok;

    run->finished_us = clock_realtime_us();
    if (!run->ok && run->has_target)
        note_tracer(run);
    if (!run->id)
        store_write(run, run->ok ? "ok" : "error", true);
    else
        store_write(run, interrupted ? "interrupted" : run->ok ? "ok" : "error", false);
    result = run_result(run);
    a->host.out.result(run, json_object_to_json_string_ext(result, RUN_JSON_FLAGS),
                       a->host.out.userdata);
    /* The result shares the run's files, summary and warnings, which this thread drops with the
     * run, while the next run to finish drops last_result from its own thread: json-c counts
     * references without atomics, and the two drops lost one now and then (a leak LeakSanitizer
     * saw at exit in about 1 run of 10 of test_hostile). What is kept is a copy of its own. */
    if (json_object_deep_copy(result, &kept, NULL) < 0)
        kept = NULL;
    json_object_put(result);
    pthread_mutex_lock(&a->host.lock);
    json_object_put(a->last_result);
    a->last_result = kept;
    pthread_mutex_unlock(&a->host.lock);
    if (a->host.out.state_changed)
        a->host.out.state_changed(a, a->host.out.userdata);
    run_free(run);
}

/* `start` over a window answers from the recorder's samples, taken before the command came: a
 * target that has gone since (crashed, stopped, its pidfile removed) still has its last minutes
 * there, and those are what one asks for after a crash. */
static bool window_of_gone_target(const struct run *run, const struct error *e)
{
    return (e->code == -ESRCH || e->code == -ENOENT) && strcmp(run->action_name, "start") == 0 &&
           action_start_is_window(run);
}

static int resolve_target(struct run *run)
{
    const char *spec = run->target_spec;
    char what[TARGET_SPEC_MAX + 8], words[RUN_ERROR_MAX];
    struct error e;

    if (target_resolve(PROCFS_ROOT, spec, &run->target, &e) < 0) {
        if (window_of_gone_target(run, &e)) {
            run_warn(run, "target %s: %s; the profile is the recorder's, of before it went", spec,
                     run_target_error(&e, words, sizeof(words)));
            memset(&run->target, 0, sizeof(run->target));
            return 0;
        }
        snprintf(what, sizeof(what), "target %s", spec);
        return run_engine_fail_error(run, what, &e);
    }
    run->has_target = true;
    if (run->target.matches > 1)
        run_warn(run, "%s matched %u processes; chose the oldest, pid %d", spec,
                 run->target.matches, (int)run->target.pid);
    return 0;
}

static void *job_main(void *arg)
{
    struct run *run = arg;
    struct agent *a = run->agent;
    struct run **p;

    if (run->action->run(run) == 0)
        run->ok = true;
    if (run->action->release)
        run->action->release(run);
    pthread_mutex_lock(&a->host.lock);
    for (p = &a->host.jobs; *p; p = &(*p)->next)
        if (*p == run) {
            *p = run->next;
            break;
        }
    pthread_mutex_unlock(&a->host.lock);
    /* Out of the list, so the state it publishes no longer shows it, but still counted: a stop
     * waiting for jobs must not tear the agent down while this thread records and answers. */
    run_finish(run);
    pthread_mutex_lock(&a->host.lock);
    a->host.njobs--;
    pthread_cond_broadcast(&a->jobs_done);
    pthread_mutex_unlock(&a->host.lock);
    return NULL;
}

static int start_job(struct run *run)
{
    struct agent *a = run->agent;
    pthread_attr_t attr;
    int r;

    pthread_mutex_lock(&a->host.lock);
    if (a->host.njobs >= (unsigned)a->host.config->max_jobs) {
        pthread_mutex_unlock(&a->host.lock);
        return run_fail(run,
                        "too many jobs running (max_jobs is %d); try again when one "
                        "finishes",
                        a->host.config->max_jobs);
    }
    run->next = a->host.jobs;
    a->host.jobs = run;
    a->host.njobs++;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    r = pthread_create(&run->thread, &attr, job_main, run);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        a->host.jobs = run->next;
        a->host.njobs--;
        pthread_mutex_unlock(&a->host.lock);
        return run_fail(run, "cannot start a job thread: %s", strerror(r));
    }
    pthread_mutex_unlock(&a->host.lock);
    return 0;
}

/* rate_limit: a command of an action whose bucket is empty is refused; the bucket holds a
 * minute's worth, so a burst up to the limit passes and a flood is held to it. */
static int take_token(struct run *run)
{
    struct agent *a = run->agent;
    int limit = a->host.config->rate_limit;
    int64_t now = clock_monotonic_us();
    struct agent_rate *b = NULL;
    double wait_s = 0;

    if (limit <= 0)
        return 0;
    pthread_mutex_lock(&a->host.lock);
    for (size_t i = 0; i < AGENT_RATE_SLOTS && !b; i++)
        if (a->rates[i].action == run->action || !a->rates[i].action)
            b = &a->rates[i];
    if (b && !b->action) {
        b->action = run->action;
        b->tokens = limit;
        b->at_us = now;
    }
    if (b) {
        b->tokens += (double)(now - b->at_us) * limit / 60e6;
        if (b->tokens > limit)
            b->tokens = limit;
        b->at_us = now;
        if (b->tokens >= 1)
            b->tokens -= 1;
        else
            wait_s = (1 - b->tokens) * 60.0 / limit;
    }
    pthread_mutex_unlock(&a->host.lock);
    if (wait_s > 0)
        return run_fail(run,
                        "rate limit: more than %d %s commands a minute (rate_limit); try "
                        "again in %.1f s",
                        limit, run->action_name, wait_s);
    return 0;
}

/* Fields of obj the command left out get the action's settings (agent_set_default), before the
 * schema sees it: a setting may stand in for a required field, such as dump_log_objects' type. */
static int apply_settings(struct agent *a, const char *action, struct json_object *obj)
{
    struct json_object *fields, *copy;
    int r = 0;

    pthread_mutex_lock(&a->host.lock);
    if (!a->defaults || !json_object_object_get_ex(a->defaults, action, &fields))
        goto out;
    json_object_object_foreach(fields, key, value)
    {
        if (json_object_object_get_ex(obj, key, NULL))
            continue;
        copy = NULL;
        /* A copy: json-c's reference counts are not shared safely between threads. */
        if (json_object_deep_copy(value, &copy, NULL) < 0) {
            r = -ENOMEM;
            goto out;
        }
        json_object_object_add(obj, key, copy);
    }
out:
    pthread_mutex_unlock(&a->host.lock);
    return r;
}

void agent_set_default(struct agent *a, const char *action, const char *field,
                       struct json_object *value)
{
    struct json_object *fields;

    pthread_mutex_lock(&a->host.lock);
    if (!a->defaults)
        a->defaults = json_object_new_object();
    if (!json_object_object_get_ex(a->defaults, action, &fields)) {
        fields = json_object_new_object();
        json_object_object_add(a->defaults, action, fields);
    }
    if (value)
        json_object_object_add(fields, field, value);
    else
        json_object_object_del(fields, field);
    pthread_mutex_unlock(&a->host.lock);
}

/* Everything before the action runs. Returns 0 when the action may run. */
static int prepare(struct run *run, const void *payload, size_t len)
{
    struct agent *a = run->agent;
    struct json_object *obj = NULL, *v;
    struct json_tokener *tok;
    char err[SCHEMA_ERR_MAX];
    enum json_tokener_error jerr;
    size_t values;
    int depth, r;

    if (len > (size_t)a->host.config->max_payload_bytes) {
        scan_request_id(run, payload, len);
        return run_fail(run, "payload is %zu bytes, larger than max_payload_bytes (%ld)", len,
                        a->host.config->max_payload_bytes);
    }
    if (!utf8_valid(payload, len)) {
        scan_request_id(run, payload, len);
        return run_fail(run, "payload is not valid JSON: it is not valid UTF-8");
    }
    json_shape(payload, len, &values, &depth);
    if (depth > PAYLOAD_MAX_DEPTH) {
        scan_request_id(run, payload, len);
        return run_fail(run, "payload is nested more than %d levels deep", PAYLOAD_MAX_DEPTH);
    }
    if (values > PAYLOAD_MAX_VALUES) {
        scan_request_id(run, payload, len);
        return run_fail(run, "payload holds more than %d JSON values; no command needs so many",
                        PAYLOAD_MAX_VALUES);
    }
    if (len == 0) {
        obj = json_object_new_object();
    } else {
        /* json-c refuses a text as deep as its limit; json_shape has refused deeper ones. */
        tok = json_tokener_new_ex(PAYLOAD_MAX_DEPTH + 1);
        if (!tok)
            return run_fail(run, "out of memory");
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
        obj = json_tokener_parse_ex(tok, payload, (int)len);
        jerr = json_tokener_get_error(tok);
        if (jerr == json_tokener_success && json_tokener_get_parse_end(tok) < len) {
            const char *rest = (const char *)payload + json_tokener_get_parse_end(tok);
            size_t n = len - json_tokener_get_parse_end(tok);

            while (n && strchr(" \t\r\n", *rest)) {
                rest++;
                n--;
            }
            if (n)
                jerr = json_tokener_error_parse_unexpected;
        }
        json_tokener_free(tok);
        if (jerr != json_tokener_success || !obj) {
            json_object_put(obj);
            scan_request_id(run, payload, len);
            if (jerr == json_tokener_continue)
                return run_fail(run, "payload is not valid JSON: it ends too early");
            return run_fail(run, "payload is not valid JSON: %s", json_tokener_error_desc(jerr));
        }
    }
    if (!json_object_is_type(obj, json_type_object)) {
        json_object_put(obj);
        return run_fail(run, "payload must be a JSON object");
    }
    run->params = obj;
    take_request_id(run, obj);
    run->action = registry_find(run->action_name);
    if (!run->action)
        return run_fail(run, "unknown action '%s'", run->action_name);
    r = take_token(run);
    if (r < 0)
        return r;
    r = apply_settings(a, run->action_name, obj);
    if (r < 0)
        return run_fail(run, "cannot apply settings: %s", strerror(-r));
    if (schema_validate(run->action->schema, obj, err, sizeof(err)) < 0)
        return run_fail(run, "%s", err);
    r = schema_apply_defaults(run->action->schema, obj);
    if (r < 0)
        return run_fail(run, "cannot apply defaults: %s", strerror(-r));
    if (json_object_object_get_ex(obj, "target", &v)) {
        /* Cut to fit, it could name another allowed target, or end inside a UTF-8 sequence. */
        if ((size_t)json_object_get_string_len(v) >= sizeof(run->target_spec))
            return run_fail(run, "target: must be at most %zu bytes", sizeof(run->target_spec) - 1);
        snprintf(run->target_spec, sizeof(run->target_spec), "%s", json_object_get_string(v));
        if (!config_target_allowed(a->host.config, run->target_spec))
            return run_fail(run, "target %s is not allowed", run->target_spec);
    } else {
        snprintf(run->target_spec, sizeof(run->target_spec), "%s", a->host.config->target);
    }
    if (run->action->needs_target)
        return resolve_target(run);
    return 0;
}

void agent_command(struct agent *a, const char *action, const void *payload, size_t len,
                   const struct reply_to *reply)
{
    struct run *run = calloc(1, sizeof(*run));

    if (!run) {
        log_error("out of memory: dropped a command for %s", action);
        return;
    }
    run->agent = a;
    run->host = &a->host;
    run->started_us = clock_realtime_us();
    run->started_mono_us = clock_monotonic_us();
    run->files = json_object_new_array();
    run->summary = json_object_new_object();
    snprintf(run->action_name, sizeof(run->action_name), "%s", action);
    utf8_trim_partial(run->action_name);
    if (reply && reply->topic) {
        run->reply.topic = strdup(reply->topic);
        if (reply->correlation_len > 0) {
            run->reply.correlation = malloc((size_t)reply->correlation_len);
            if (run->reply.correlation) {
                memcpy(run->reply.correlation, reply->correlation, (size_t)reply->correlation_len);
                run->reply.correlation_len = reply->correlation_len;
            }
        }
    }
    if (prepare(run, payload, len) < 0)
        goto finish;
    store_write(run, "running", true);
    if (run->action->long_running) {
        if (run->action->admit && run->action->admit(run) < 0)
            goto finish;
        if (start_job(run) == 0) {
            if (a->host.out.state_changed)
                a->host.out.state_changed(a, a->host.out.userdata);
            return;
        }
        if (run->action->release)
            run->action->release(run);
        goto finish;
    }
    if (run->action->run(run) == 0)
        run->ok = true;
finish:
    run_finish(run);
}

unsigned agent_wait_jobs(struct agent *a, bool cancel, int timeout_ms)
{
    struct timespec deadline;
    unsigned left;

    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&a->host.lock);
    for (struct run *r = a->host.jobs; cancel && r; r = r->next)
        atomic_store(&r->cancel, 1);
    while (a->host.njobs > 0)
        if (pthread_cond_timedwait(&a->jobs_done, &a->host.lock, &deadline) != 0)
            break;
    left = a->host.njobs;
    pthread_mutex_unlock(&a->host.lock);
    return left;
}

char *agent_state_json(struct agent *a)
{
    static const char *const last_keys[] = {"status", "run_id", "action", "error", "files"};
    struct json_object *o = json_object_new_object(), *jobs = json_object_new_array();
    struct json_object *loggers = json_object_new_array();
    struct json_object *last = json_object_new_object(), *settings = NULL, *v;
    int64_t now = clock_monotonic_us();
    char stamp[CLOCK_ISO_MAX];
    bool profiling = false;
    char *text;

    watch_describe(loggers);
    flight_describe(o);
    stall_describe(o);
    /* When this was published: subscribers that cannot rely on the status topic's last will (on
     * another node of a cluster) tell a silent agent by it. */
    clock_iso8601(clock_realtime_us(), stamp, sizeof(stamp));
    json_object_object_add(o, "last_seen", json_object_new_string(stamp));
    if (a->host.out.connection)
        a->host.out.connection(o, a->host.out.userdata);
    pthread_mutex_lock(&a->host.lock);
    for (struct run *r = a->host.jobs; r; r = r->next) {
        struct json_object *j = json_object_new_object();

        json_object_object_add(j, "run_id", json_object_new_int64(r->id));
        json_object_object_add(j, "action", json_object_new_string(r->action_name));
        json_object_object_add(j, "target", json_object_new_string(r->target_spec));
        json_object_object_add(j, "elapsed",
                               run_json_decimal((double)(now - r->started_mono_us) / 1e6, 3));
        json_object_array_add(jobs, j);
        profiling |= r->action->profiles;
    }
    json_object_object_add(o, "node", json_object_new_string(a->host.config->node_id));
    json_object_object_add(o, "jobs", jobs);
    json_object_object_add(o, "loggers", loggers);
    json_object_object_add(o, "debug", json_object_new_boolean(atomic_load(&a->host.debug)));
    int target_debug = atomic_load(&a->host.target_debug);
    json_object_object_add(o, "target_debug",
                           target_debug < 0 ? NULL : json_object_new_boolean(target_debug));
    /* A copy, not a reference: json-c counts references without atomics and caches a string
     * in each object it prints, and this state is printed and dropped after the unlock while a
     * job thread may replace and drop last_result. A shared reference lost a decrement now and
     * then (a leak LeakSanitizer saw at exit). */
    struct json_object *result = NULL;
    if (a->last_result)
        json_object_deep_copy(a->last_result, &result, NULL);
    json_object_object_add(o, "last_result", result);
    /* The last result cut to what a Home Assistant sensor shows, present before any run. */
    json_object_object_add(last, "status", json_object_new_string("none"));
    for (size_t i = 0; i < sizeof(last_keys) / sizeof(last_keys[0]); i++) {
        struct json_object *copy = NULL;

        if (!a->last_result || !json_object_object_get_ex(a->last_result, last_keys[i], &v))
            continue;
        if (v && json_object_deep_copy(v, &copy, NULL) < 0)
            continue;
        json_object_object_add(last, last_keys[i], copy);
    }
    json_object_object_add(o, "last", last);
    json_object_object_add(o, "running", json_object_new_int((int)json_object_array_length(jobs)));
    json_object_object_add(o, "profiling", json_object_new_boolean(profiling));
    if (a->defaults)
        json_object_deep_copy(a->defaults, &settings, NULL);
    json_object_object_add(o, "settings", settings ? settings : json_object_new_object());
    pthread_mutex_unlock(&a->host.lock);
    text = strdup(json_object_to_json_string_ext(o, RUN_JSON_FLAGS));
    json_object_put(o);
    return text;
}
