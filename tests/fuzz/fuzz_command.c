/* libFuzzer target over the whole command path without a broker: one input is a topic level
 * (the action) and a payload, handed to agent_command as the MQTT session would; the output
 * callbacks check what every subscriber relies on. Not a test of what the actions find: the
 * configured target never resolves, so no profile, logger or job over another process starts.
 *
 * Input: ACTION '\n' PAYLOAD. An action a broker would not deliver (empty, not UTF-8, with '/',
 * '+', '#' or NUL) is skipped, as mqtt.c never sees it. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <json-c/json.h>

#include "agent.h"
#include "config.h"
#include "log.h"
#include "fuzzcheck.h"

#ifndef FUZZ_SCHEMA_DIR
#define FUZZ_SCHEMA_DIR "schemas"
#endif
#define MAX_PAYLOAD 2048 /* below libFuzzer's -max_len, so both sides get fuzzed */
#define PAYLOAD_DEPTH 32 /* agent.c's PAYLOAD_MAX_DEPTH */
#define REQUEST_ID_CHARS 128
#define JOB_WAIT_MS 10000
/* A spec no process matches: every action that needs a target stops before it runs. */
#define UNREACHABLE_PID "pid:2147483647"
#define SAMPLE_FILE "profile.1.cprof"

/* What one command produced, written by the callbacks (a job thread among them). */
struct observed {
    pthread_mutex_t lock;
    unsigned results;
    char *result;
};

static struct config config;
static struct agent agent;
static struct observed seen = {.lock = PTHREAD_MUTEX_INITIALIZER};
static char workdir[] = "/tmp/fuzz_command.XXXXXX";

/* Strict UTF-8 as Python's bytes.decode and MQTT need it: no overlong forms, no surrogates,
 * nothing above U+10FFFF. NUL is rejected too when nul_ok is false (MQTT topics). */
static bool utf8_valid(const unsigned char *s, size_t n, bool nul_ok)
{
    size_t i = 0;

    while (i < n) {
        unsigned char c = s[i];
        uint32_t cp;
        size_t len;

        if (c < 0x80) {
            if (c == 0 && !nul_ok)
                return false;
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            len = 2, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            len = 3, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            len = 4, cp = c & 0x07;
        else
            return false;
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

static size_t utf8_chars(const char *s, size_t n)
{
    size_t chars = 0;

    for (size_t i = 0; i < n; i++)
        chars += ((unsigned char)s[i] & 0xc0) != 0x80;
    return chars;
}

/* Parses text as one JSON value and nothing after it but white space, as prepare() does. */
static struct json_object *parse_whole(const char *text, size_t len, int flags)
{
    struct json_tokener *tok = json_tokener_new_ex(PAYLOAD_DEPTH);
    struct json_object *obj;
    size_t end;

    CHECK(tok, "out of memory");
    json_tokener_set_flags(tok, flags);
    obj = json_tokener_parse_ex(tok, text, (int)len);
    if (json_tokener_get_error(tok) != json_tokener_success) {
        json_object_put(obj);
        obj = NULL;
    }
    end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    for (; obj && end < len; end++)
        if (!strchr(" \t\r\n", text[end]) || text[end] == '\0') {
            json_object_put(obj);
            obj = NULL;
        }
    return obj;
}

/* The request_id a subscriber can read in payload, as the contract defines it, or NULL. */
static char *readable_request_id(const char *payload, size_t len)
{
    struct json_object *obj, *v;
    char *rid = NULL;

    if (len == 0 || len > MAX_PAYLOAD)
        return NULL;
    obj = parse_whole(payload, len, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    if (obj && json_object_is_type(obj, json_type_object) &&
        json_object_object_get_ex(obj, "request_id", &v) &&
        json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v);
        size_t n = (size_t)json_object_get_string_len(v);

        /* The contract counts characters; struct run holds 128 bytes today (reported), so
         * an id is held to both until that buffer grows. */
        if (utf8_valid((const unsigned char *)s, n, false) &&
            utf8_chars(s, n) <= REQUEST_ID_CHARS && n < sizeof(((struct run *)0)->request_id))
            rid = strdup(s);
    }
    json_object_put(obj);
    return rid;
}

/* Everything a result must be, whatever the command was. */
static void check_result(const char *json, const char *action, const char *rid)
{
    size_t len = strlen(json);
    struct json_object *o, *v;
    const char *s;

    CHECK(utf8_valid((const unsigned char *)json, len, false), "result is not UTF-8: %s", json);
    o = parse_whole(json, len, JSON_TOKENER_STRICT);
    CHECK(o && json_object_is_type(o, json_type_object), "result is not a JSON object: %s", json);
    CHECK(json_object_object_get_ex(o, "action", &v) && json_object_is_type(v, json_type_string),
          "result without action: %s", json);
    s = json_object_get_string(v);
    CHECK(strlen(s) < 64 && strncmp(s, action, strlen(s)) == 0 && (*s || !*action),
          "result names action '%s' for '%s'", s, action);
    CHECK(json_object_object_get_ex(o, "status", &v) && json_object_is_type(v, json_type_string),
          "result without status: %s", json);
    s = json_object_get_string(v);
    CHECK(!strcmp(s, "ok") || !strcmp(s, "error"), "status '%s'", s);
    if (!strcmp(s, "error")) {
        CHECK(json_object_object_get_ex(o, "error", &v) && json_object_is_type(v, json_type_string),
              "error result without error: %s", json);
        s = json_object_get_string(v);
        CHECK(strspn(s, " \t\r\n") < strlen(s), "blank error text: %s", json);
    }
    if (rid)
        CHECK(json_object_object_get_ex(o, "request_id", &v) &&
                  json_object_is_type(v, json_type_string) &&
                  !strcmp(json_object_get_string(v), rid),
              "request_id '%s' not echoed: %s", rid, json);
    if (json_object_object_get_ex(o, "request_id", &v)) {
        CHECK(json_object_is_type(v, json_type_string), "request_id not a string: %s", json);
        CHECK(utf8_chars(json_object_get_string(v), (size_t)json_object_get_string_len(v)) <=
                  REQUEST_ID_CHARS,
              "request_id longer than %d characters: %s", REQUEST_ID_CHARS, json);
    }
    CHECK(json_object_object_get_ex(o, "files", &v) && json_object_is_type(v, json_type_array),
          "result without files: %s", json);
    CHECK(json_object_object_get_ex(o, "summary", &v) && json_object_is_type(v, json_type_object),
          "result without summary: %s", json);
    json_object_put(o);
}

static void on_record(struct run *run, const char *text, void *userdata)
{
    (void)run;
    (void)userdata;
    CHECK(text && utf8_valid((const unsigned char *)text, strlen(text), false),
          "log record is not UTF-8");
}

static void on_result(struct run *run, const char *json, void *userdata)
{
    struct observed *o = userdata;

    (void)run;
    pthread_mutex_lock(&o->lock);
    o->results++;
    free(o->result);
    o->result = strdup(json);
    pthread_mutex_unlock(&o->lock);
}

static void on_progress(struct run *run, const char *json, void *userdata)
{
    struct json_object *o = parse_whole(json, strlen(json), JSON_TOKENER_STRICT);

    (void)run;
    (void)userdata;
    CHECK(o, "progress is not JSON: %s", json);
    json_object_put(o);
}

static int on_file(struct run *run, const char *name, const void *data, size_t len, void *userdata)
{
    (void)run;
    (void)data;
    (void)len;
    (void)userdata;
    CHECK(*name && !strpbrk(name, "/+#"), "file name '%s' is not one topic level", name);
    return 0;
}

static void on_state_changed(struct agent *a, void *userdata)
{
    char *text = agent_state_json(a);
    struct json_object *o;

    (void)userdata;
    CHECK(text, "no state");
    CHECK(utf8_valid((const unsigned char *)text, strlen(text), false), "state is not UTF-8");
    o = parse_whole(text, strlen(text), JSON_TOKENER_STRICT);
    CHECK(o && json_object_is_type(o, json_type_object), "state is not a JSON object: %s", text);
    json_object_put(o);
    free(text);
}

/* The scratch directory goes at exit; what a crash leaves behind is only a small file. */
static void remove_workdir(void)
{
    char path[PATH_MAX];

    snprintf(path, sizeof(path), "%s/profiles/%s", workdir, SAMPLE_FILE);
    unlink(path);
    snprintf(path, sizeof(path), "%s/profiles", workdir);
    rmdir(path);
    rmdir(workdir);
}

static void set(const char *key, const char *value)
{
    char err[CONFIG_ERR_MAX];

    CHECK(config_set(&config, key, value, err, sizeof(err)) == 0, "config: %s", err);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const struct run_output out = {
        .record = on_record,
        .result = on_result,
        .progress = on_progress,
        .file = on_file,
        .state_changed = on_state_changed,
        .userdata = &seen,
    };
    char path[PATH_MAX], err[CONFIG_ERR_MAX], value[32];
    int fd;

    (void)argc;
    (void)argv;
    CHECK(mkdtemp(workdir), "mkdtemp: %s", strerror(errno));
    atexit(remove_workdir);
    config_defaults(&config);
    snprintf(path, sizeof(path), "%s/profiles", workdir);
    set("output_dir", path);
    set("target", UNREACHABLE_PID);
    snprintf(path, sizeof(path), "pidfile:%s/none.pid, pid:2147483646", workdir);
    set("allowed_targets", path);
    snprintf(value, sizeof(value), "%d", MAX_PAYLOAD);
    set("max_payload_bytes", value);
    set("schema_dir", FUZZ_SCHEMA_DIR);
    /* Past a minute's worth, every command would stop at the rate limit, before the schema. */
    set("rate_limit", "0");
    CHECK(config_finish(&config, err, sizeof(err)) == 0, "config: %s", err);
    log_set_level(CONFIG_LOG_ERROR);
    CHECK(agent_init(&agent, &config, false, &out, err, sizeof(err)) == 0, "agent: %s", err);
    /* One file get_file can find by name, so its publishing path runs too. */
    snprintf(path, sizeof(path), "%s/profiles", workdir);
    CHECK(mkdir(path, 0750) == 0, "mkdir %s: %s", path, strerror(errno));
    snprintf(path, sizeof(path), "%s/profiles/%s", workdir, SAMPLE_FILE);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    CHECK(fd >= 0 && write(fd, "fuzz\n", 5) == 5 && close(fd) == 0, "%s: %s", path,
          strerror(errno));
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t alen = nl ? (size_t)(nl - data) : size;
    const char *payload = nl ? (const char *)nl + 1 : "";
    size_t plen = nl ? size - alen - 1 : 0;
    struct reply_to reply = {.topic = "fuzz/reply", .correlation = "c", .correlation_len = 1};
    char action[1024], *rid, *result;
    unsigned results;

    if (alen == 0 || alen >= sizeof(action) || memchr(data, '/', alen) || memchr(data, '+', alen) ||
        memchr(data, '#', alen) || !utf8_valid(data, alen, false))
        return 0;
    memcpy(action, data, alen);
    action[alen] = '\0';
    rid = readable_request_id(payload, plen);
    agent_command(&agent, action, payload, plen, &reply);
    CHECK(agent_wait_jobs(&agent, false, JOB_WAIT_MS) == 0, "a job still runs after %d ms",
          JOB_WAIT_MS);
    pthread_mutex_lock(&seen.lock);
    results = seen.results;
    result = seen.result;
    seen.results = 0;
    seen.result = NULL;
    pthread_mutex_unlock(&seen.lock);
    CHECK(results == 1, "%u results for one command", results);
    check_result(result, action, rid);
    free(result);
    free(rid);
    return 0;
}
