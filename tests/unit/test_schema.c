/* Tests of the JSON Schema validator: the official draft-07 test suite for every keyword it
 * supports (and refusal of the rest), the action schemas in schemas/ against good and bad
 * payloads with their exact error sentences, the action table against the schemas, and the
 * nesting limits. Run from the repo root. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <setjmp.h> /* with stdarg.h and stddef.h: cmocka.h needs them first */
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "registry.h"
#include "schema.h"

#define SUITE_DIR "/usr/share/json-schema-test-suite/tests/draft7"
#define SCHEMA_DIR "schemas"
#define FIXTURE_DIR "tests/unit/fixtures/schema"

/* One file per keyword the validator enforces; every case of each must pass. */
static const char *const suite_files[] = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "enum",
    "const",
    "default",
    "pattern",
    "patternProperties",
    "boolean_schema",
    "items",
    "additionalItems",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "propertyNames",
};
#define N_SUITE_FILES (sizeof(suite_files) / sizeof(suite_files[0]))

static const char *const actions[] = {
    "start",
    "memory",
    "start_log_objects",
    "stop_log_objects",
    "start_log_object_sources",
    "stop_log_object_sources",
    "dump_log_objects",
    "log_thread_frames",
    "log_event_loop_scheduled",
    "lru_stats",
    "set_asyncio_debug",
    "log_current_tasks",
    "dump_sockets",
    "ping",
    "runs",
    "get_file",
    "recorder",
};
#define N_ACTIONS (sizeof(actions) / sizeof(actions[0]))

struct suite_tally {
    int cases;
    int passed;
    int refused_groups;
};

static struct json_object *parse(const char *text)
{
    struct json_object *o = NULL;
    struct json_tokener *tok = json_tokener_new();

    assert_non_null(tok);
    o = json_tokener_parse_ex(tok, text, (int)strlen(text) + 1);
    if (json_tokener_get_error(tok) != json_tokener_success)
        fail_msg("test payload is not JSON: %s", text);
    json_tokener_free(tok);
    return o;
}

static struct schema *compile_text(const char *text)
{
    struct json_object *doc = parse(text);
    struct schema *s = NULL;
    char err[SCHEMA_ERR_MAX] = "";

    if (schema_compile(doc, &s, err, sizeof(err)) != 0)
        fail_msg("schema %s does not compile: %s", text, err);
    json_object_put(doc);
    return s;
}

static struct json_object *suite_file(const char *file)
{
    struct json_object *doc = json_object_from_file(file);

    if (doc == NULL || !json_object_is_type(doc, json_type_array))
        fail_msg("cannot read test-suite file %s", file);
    return doc;
}

/* Runs every case of one file. With must_compile false a group whose schema is refused counts
 * as refused (its error must name a keyword); a group that compiles must still pass every case. */
static void run_suite_file(const char *file, bool must_compile, struct suite_tally *t)
{
    struct json_object *doc = suite_file(file);

    for (size_t g = 0; g < json_object_array_length(doc); g++) {
        struct json_object *group = json_object_array_get_idx(doc, g), *schema_doc, *tests;
        const char *gdesc = json_object_get_string(json_object_object_get(group, "description"));
        char err[SCHEMA_ERR_MAX] = "";
        struct schema *s = NULL;
        size_t n;

        assert_true(json_object_object_get_ex(group, "schema", &schema_doc));
        assert_true(json_object_object_get_ex(group, "tests", &tests));
        n = json_object_array_length(tests);
        if (schema_compile(schema_doc, &s, err, sizeof(err)) != 0) {
            if (must_compile) {
                printf("FAIL %s: %s: schema refused: %s\n", file, gdesc, err);
                t->cases += (int)n;
            } else {
                if (strstr(err, "keyword '") == NULL || strstr(err, "is not supported") == NULL)
                    fail_msg("%s: %s: refused without naming a keyword: %s", file, gdesc, err);
                t->refused_groups++;
            }
            continue;
        }
        for (size_t i = 0; i < n; i++) {
            struct json_object *test = json_object_array_get_idx(tests, i), *data;
            bool expect = json_object_get_boolean(json_object_object_get(test, "valid"));
            int r;
            assert_true(json_object_object_get_ex(test, "data", &data));
            r = schema_validate(s, data, err, sizeof(err));
            t->cases++;
            if ((r == 0) == expect) {
                t->passed++;
                continue;
            }
            printf("FAIL %s: %s: %s: expected %s, got %s\n", file, gdesc,
                   json_object_get_string(json_object_object_get(test, "description")),
                   expect ? "valid" : "invalid", r == 0 ? "valid" : err);
        }
        schema_free(s);
    }
    json_object_put(doc);
}

static void test_official_suite(void **state)
{
    struct suite_tally t = {0};
    char path[512];
    struct stat st;

    (void)state;
    if (stat(SUITE_DIR, &st) != 0)
        fail_msg("the JSON Schema test suite is missing: %s not found "
                 "(apt-get install json-schema-test-suite)",
                 SUITE_DIR);
    for (size_t i = 0; i < N_SUITE_FILES; i++) {
        snprintf(path, sizeof(path), "%s/%s.json", SUITE_DIR, suite_files[i]);
        run_suite_file(path, true, &t);
    }
    printf("json-schema-test-suite draft7: %d cases in %zu files, %d passed\n", t.cases,
           N_SUITE_FILES, t.passed);
    assert_true(t.cases > 0);
    assert_int_equal(t.passed, t.cases);
}

/* The draft-07 files of keywords the validator does not enforce: each group must be refused
 * with the keyword named, or (when it happens to use only supported keywords) pass. */
static void test_official_suite_refused_keywords(void **state)
{
    struct suite_tally t = {0};
    struct dirent *e;
    DIR *dir = opendir(SUITE_DIR);
    char path[512];

    (void)state;
    if (dir == NULL)
        fail_msg("the JSON Schema test suite is missing: %s not found", SUITE_DIR);
    while ((e = readdir(dir)) != NULL) {
        size_t len = strlen(e->d_name);
        bool supported = false;
        if (len < 6 || strcmp(e->d_name + len - 5, ".json") != 0)
            continue;
        for (size_t i = 0; i < N_SUITE_FILES; i++)
            if (strlen(suite_files[i]) == len - 5 &&
                strncmp(e->d_name, suite_files[i], len - 5) == 0)
                supported = true;
        if (supported)
            continue;
        snprintf(path, sizeof(path), "%s/%s", SUITE_DIR, e->d_name);
        run_suite_file(path, false, &t);
    }
    closedir(dir);
    printf("json-schema-test-suite draft7, other keywords: %d groups refused, %d/%d cases of "
           "accepted groups passed\n",
           t.refused_groups, t.passed, t.cases);
    assert_true(t.refused_groups > 0);
    assert_int_equal(t.passed, t.cases);
}

static struct schema *load_action(const char *action)
{
    char path[256], err[SCHEMA_ERR_MAX] = "";
    struct schema *s = NULL;
    int r;

    snprintf(path, sizeof(path), "%s/%s.json", SCHEMA_DIR, action);
    r = schema_load_file(path, &s, err, sizeof(err));
    if (r != 0)
        fail_msg("%s does not load (%d): %s (tests run from the repository root)", path, r, err);
    return s;
}

static void test_every_schema_file_compiles(void **state)
{
    DIR *dir = opendir(SCHEMA_DIR);
    struct dirent *e;
    size_t found = 0;

    (void)state;
    if (dir == NULL)
        fail_msg("cannot open %s/: run the tests from the repository root", SCHEMA_DIR);
    while ((e = readdir(dir)) != NULL) {
        size_t len = strlen(e->d_name);
        bool known = false;
        char action[256];
        if (len < 6 || strcmp(e->d_name + len - 5, ".json") != 0)
            continue;
        snprintf(action, sizeof(action), "%.*s", (int)(len - 5), e->d_name);
        for (size_t i = 0; i < N_ACTIONS; i++)
            known |= strcmp(actions[i], action) == 0;
        if (!known)
            fail_msg("%s/%s is not the schema of a contract action", SCHEMA_DIR, e->d_name);
        schema_free(load_action(action));
        found++;
    }
    closedir(dir);
    assert_int_equal(found, N_ACTIONS);
}

/* The action table (agent/registry.c) lists exactly the contract's actions, each with its --help
 * text and entry point, admit and release in pairs on long actions only, and every schema loads
 * into it. */
static void test_registry_matches_the_contract(void **state)
{
    const struct registry_action *act;
    char err[SCHEMA_ERR_MAX + PATH_MAX];
    unsigned n;

    (void)state;
    for (size_t i = 0; i < N_ACTIONS; i++)
        if (!registry_known(actions[i]))
            fail_msg("%s is not in the action table", actions[i]);
    for (n = 0; (act = registry_at(n)); n++) {
        if (!act->help || !act->help[0] || !act->run)
            fail_msg("%s: the row lacks its help text or its function", act->name);
        assert_true((act->admit == NULL) == (act->release == NULL));
        assert_true(!act->admit || act->long_running);
        assert_true(!act->profiles || act->long_running);
    }
    assert_int_equal(n, N_ACTIONS);
    assert_false(registry_known("no_such_action"));
    if (registry_load_schemas(SCHEMA_DIR, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    for (n = 0; (act = registry_at(n)); n++)
        assert_ptr_equal(registry_find(act->name), act);
    registry_free_schemas();
    assert_null(registry_find("start"));
}

struct payload_case {
    const char *action;
    const char *payload;
    const char *error; /* NULL when valid */
};

#define TARGET_PATTERN "^(self|pid:[0-9]+|comm:.+|exe:/.+|pidfile:/.+)$"
#define DUMP_PATTERN "^[A-Za-z_][A-Za-z0-9_]*([.][A-Za-z_][A-Za-z0-9_]*)*$"

static const struct payload_case payload_cases[] = {
    {"start", "{}", NULL},
    {"start", "{\"seconds\": 10, \"frequency\": 99}", NULL},
    {"start", "{\"seconds\": 0.001}", NULL},
    {"start", "{\"seconds\": 3600}", NULL},
    {"start", "{\"frequency\": 1}", NULL},
    {"start", "{\"frequency\": 4999}", NULL},
    {"start", "{\"frequency\": 100.0}", NULL},
    {"start", "{\"last\": 300}", NULL},
    {"start", "{\"from\": \"2026-11-24T22:00:00Z\", \"to\": \"2026-11-24T22:05:00Z\"}", NULL},
    {"start", "{\"last\": 0}", "last: must be greater than 0"},
    {"start", "{\"last\": 86401}", "last: must be at most 86400"},
    {"recorder", "{\"enabled\": false}", NULL},
    {"recorder", "{\"enabled\": \"on\"}", "enabled: must be a boolean"},
    {"start", "{\"seconds\": 0}", "seconds: must be greater than 0"},
    {"start", "{\"seconds\": -5}", "seconds: must be greater than 0"},
    {"start", "{\"seconds\": 3600.5}", "seconds: must be at most 3600"},
    {"start", "{\"seconds\": 1e300}", "seconds: must be at most 3600"},
    {"start", "{\"seconds\": \"10\"}", "seconds: must be a number"},
    {"start", "{\"seconds\": null}", "seconds: must be a number"},
    {"start", "{\"seconds\": true}", "seconds: must be a number"},
    {"start", "{\"seconds\": NaN}", "seconds: must be a finite number"},
    {"start", "{\"seconds\": -Infinity}", "seconds: must be a finite number"},
    {"start", "{\"frequency\": 1.5}", "frequency: must be an integer"},
    {"start", "{\"frequency\": 0}", "frequency: must be at least 1"},
    {"start", "{\"frequency\": 5000}", "frequency: must be at most 4999"},
    {"start", "{\"frequency\": 18446744073709551615}", "frequency: must be at most 4999"},
    {"start", "{\"frequency\": -9223372036854775808}", "frequency: must be at least 1"},
    {"start", "{\"foo\": 1}", "unknown field 'foo'"},
    {"start", "{\"seconds\": 5, \"secs\": 5}", "unknown field 'secs'"},
    {"start", "{\"a\": {\"b\": 1}}", "unknown field 'a'"},
    {"start", "[]", "payload: must be an object"},
    {"start", "\"start\"", "payload: must be an object"},
    {"start", "null", "payload: must be an object"},
    {"start", "{\"request_id\": \"abc-17\"}", NULL},
    {"start", "{\"request_id\": \"\"}", NULL},
    {"start", "{\"request_id\": 17}", "request_id: must be a string"},
    {"start", "{\"target\": \"self\"}", NULL},
    {"start", "{\"target\": \"pid:1234\"}", NULL},
    {"start", "{\"target\": \"comm:hass\"}", NULL},
    {"start", "{\"target\": \"exe:/usr/bin/python3\"}", NULL},
    {"start", "{\"target\": \"pidfile:/run/hass.pid\"}", NULL},
    {"start", "{\"target\": \"pid:12x\"}", "target: does not match pattern " TARGET_PATTERN},
    {"start", "{\"target\": \"pid:\"}", "target: does not match pattern " TARGET_PATTERN},
    {"start", "{\"target\": \"selfish\"}", "target: does not match pattern " TARGET_PATTERN},
    {"start", "{\"target\": \"exe:python3\"}", "target: does not match pattern " TARGET_PATTERN},
    {"start", "{\"target\": \"comm:\"}", "target: does not match pattern " TARGET_PATTERN},
    {"start", "{\"target\": \"\"}", "target: must be at least 1 character"},
    {"start", "{\"target\": [\"self\"]}", "target: must be a string"},
    {"memory", "{}", NULL},
    {"memory", "{\"seconds\": 30, \"sample_bytes\": 0}", NULL},
    {"memory", "{\"sample_bytes\": 1073741824}", NULL},
    {"memory", "{\"sample_bytes\": 1073741825}", "sample_bytes: must be at most 1073741824"},
    {"memory", "{\"sample_bytes\": -1}", "sample_bytes: must be at least 0"},
    {"memory", "{\"sample_bytes\": 512.5}", "sample_bytes: must be an integer"},
    {"memory", "{\"seconds\": 0}", "seconds: must be greater than 0"},
    {"memory", "{\"frequency\": 99}", "unknown field 'frequency'"},
    {"start_log_objects", "{}", NULL},
    {"start_log_objects", "{\"scan_interval\": 1}", NULL},
    {"start_log_objects", "{\"scan_interval\": 86400}", NULL},
    {"start_log_objects", "{\"scan_interval\": 0.5}", "scan_interval: must be at least 1"},
    {"start_log_objects", "{\"scan_interval\": 86400.5}", "scan_interval: must be at most 86400"},
    {"start_log_objects", "{\"max_objects\": 5}", "unknown field 'max_objects'"},
    {"stop_log_objects", "{}", NULL},
    {"stop_log_objects", "{\"request_id\": \"x\", \"target\": \"self\"}", NULL},
    {"stop_log_objects", "{\"scan_interval\": 30}", "unknown field 'scan_interval'"},
    {"start_log_object_sources", "{\"scan_interval\": 10, \"max_objects\": 1024}", NULL},
    {"start_log_object_sources", "{\"max_objects\": 0}", "max_objects: must be at least 1"},
    {"start_log_object_sources", "{\"max_objects\": 1025}", "max_objects: must be at most 1024"},
    {"start_log_object_sources", "{\"max_objects\": \"5\"}", "max_objects: must be an integer"},
    {"start_log_object_sources", "{\"scan_interval\": 0}", "scan_interval: must be at least 1"},
    {"stop_log_object_sources", "{}", NULL},
    {"stop_log_object_sources", "{\"max_objects\": 5}", "unknown field 'max_objects'"},
    {"dump_log_objects", "{\"type\": \"pipe\"}", NULL},
    {"dump_log_objects", "{\"type\": \"socket_io\"}", NULL},
    {"dump_log_objects", "{}", "type: required field is missing"},
    {"dump_log_objects", "{\"request_id\": \"r\"}", "type: required field is missing"},
    {"dump_log_objects", "{\"type\": \"\"}", "type: must be at least 1 character"},
    /* Python type names too, dotted or not (objgraph's by_type). */
    {"dump_log_objects", "{\"type\": \"Pipe\"}", NULL},
    {"dump_log_objects", "{\"type\": \"homeassistant.core.State\"}", NULL},
    {"dump_log_objects", "{\"type\": \"a b\"}", "type: does not match pattern " DUMP_PATTERN},
    {"dump_log_objects", "{\"type\": \"a..b\"}", "type: does not match pattern " DUMP_PATTERN},
    {"dump_log_objects", "{\"type\": \"1abc\"}", "type: does not match pattern " DUMP_PATTERN},
    {"dump_log_objects", "{\"type\": \"pipe\\u0000x\"}",
     "type: does not match pattern " DUMP_PATTERN},
    {"dump_log_objects", "{\"type\": \"pipe\\n\"}", "type: does not match pattern " DUMP_PATTERN},
    {"dump_log_objects", "{\"type\": 7}", "type: must be a string"},
    {"dump_log_objects", "{\"type\": \"pipe\", \"max_objects\": 0}",
     "max_objects: must be at least 1"},
    {"dump_log_objects", "{\"type\": \"pipe\", \"kind\": \"x\"}", "unknown field 'kind'"},
    {"log_thread_frames", "{}", NULL},
    {"log_thread_frames", "{\"target\": \"comm:python3\"}", NULL},
    {"log_thread_frames", "{\"seconds\": 1}", "unknown field 'seconds'"},
    {"log_event_loop_scheduled", "{}", NULL},
    {"log_event_loop_scheduled", "{\"x\": 1}", "unknown field 'x'"},
    {"lru_stats", "{}", NULL},
    {"lru_stats", "{\"request_id\": null}", "request_id: must be a string"},
    {"set_asyncio_debug", "{}", NULL},
    {"set_asyncio_debug", "{\"enabled\": false}", NULL},
    {"set_asyncio_debug", "{\"enabled\": true}", NULL},
    {"set_asyncio_debug", "{\"enabled\": \"yes\"}", "enabled: must be a boolean"},
    {"set_asyncio_debug", "{\"enabled\": 1}", "enabled: must be a boolean"},
    {"log_current_tasks", "{}", NULL},
    {"log_current_tasks", "{\"enabled\": true}", "unknown field 'enabled'"},
    {"dump_sockets", "{\"target\": \"pid:1\"}", NULL},
    {"dump_sockets", "{\"target\": \"pid:-1\"}", "target: does not match pattern " TARGET_PATTERN},
    {"ping", "{}", NULL},
    {"ping", "{\"verbose\": true}", "unknown field 'verbose'"},
    {"runs", "{\"limit\": 100, \"action\": \"start\", \"status\": \"interrupted\"}", NULL},
    {"runs", "{\"limit\": 101}", "limit: must be at most 100"},
    {"runs", "{\"status\": \"failed\"}",
     "status: must be one of [\"running\",\"ok\",\"error\",\"interrupted\"]"},
    {"get_file", "{\"name\": \"flamegraph.1732485600123456.svg\"}", NULL},
    {"get_file", "{\"run_id\": 17}", NULL},
    {"get_file", "{\"name\": \"../etc/passwd\"}", "name: does not match pattern ^[A-Za-z0-9._-]+$"},
    {"get_file", "{\"run_id\": \"17\"}", "run_id: must be an integer"},
};

static void test_action_payloads(void **state)
{
    struct schema *schemas[N_ACTIONS];
    int failures = 0;

    (void)state;
    for (size_t i = 0; i < N_ACTIONS; i++)
        schemas[i] = load_action(actions[i]);
    for (size_t i = 0; i < sizeof(payload_cases) / sizeof(payload_cases[0]); i++) {
        const struct payload_case *c = &payload_cases[i];
        struct json_object *payload = parse(c->payload);
        char err[SCHEMA_ERR_MAX] = "";
        size_t a = 0;
        int r;
        while (a < N_ACTIONS && strcmp(actions[a], c->action) != 0)
            a++;
        assert_true(a < N_ACTIONS);
        r = schema_validate(schemas[a], payload, err, sizeof(err));
        if (c->error == NULL ? r != 0 : r != -EINVAL || strcmp(err, c->error) != 0) {
            printf("FAIL %s %s: expected %s, got %d \"%s\"\n", c->action, c->payload,
                   c->error == NULL ? "valid" : c->error, r, err);
            failures++;
        }
        json_object_put(payload);
    }
    /* A type name is bounded (Home Assistant's text entity holds 255): 255 pass, 256 do not. */
    char name[258], json[300], err[SCHEMA_ERR_MAX];
    int r;
    memset(name, 'a', sizeof(name) - 1);
    for (size_t len = 255; len <= 256; len++) {
        name[len] = '\0';
        snprintf(json, sizeof(json), "{\"type\": \"%s\"}", name);
        struct json_object *payload = parse(json);
        size_t a = 0;
        while (strcmp(actions[a], "dump_log_objects") != 0)
            a++;
        r = schema_validate(schemas[a], payload, err, sizeof(err));
        assert_int_equal(r, len == 255 ? 0 : -EINVAL);
        if (r)
            assert_string_equal(err, "type: must be at most 255 characters");
        json_object_put(payload);
        name[len] = 'a';
    }
    for (size_t i = 0; i < N_ACTIONS; i++)
        schema_free(schemas[i]);
    assert_int_equal(failures, 0);
}

/* Every field the contract gives a default has it, and the defaults pass their own schema. */
static void test_action_defaults(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_ACTIONS; i++) {
        struct schema *s = load_action(actions[i]);
        struct json_object *payload = json_object_new_object();
        char err[SCHEMA_ERR_MAX] = "";
        /* The one required field has no default. */
        if (strcmp(actions[i], "dump_log_objects") == 0)
            json_object_object_add(payload, "type", json_object_new_string("pipe"));
        assert_int_equal(schema_apply_defaults(s, payload), 0);
        if (schema_validate(s, payload, err, sizeof(err)) != 0)
            fail_msg("%s: defaults are invalid: %s", actions[i], err);
        json_object_put(payload);
        schema_free(s);
    }

    struct schema *start = load_action("start");
    struct json_object *p = parse("{\"frequency\": 99}"), *v;
    assert_int_equal(schema_apply_defaults(start, p), 0);
    assert_true(json_object_object_get_ex(p, "seconds", &v));
    assert_true(json_object_is_type(v, json_type_double));
    assert_true(json_object_get_double(v) == 60.0);
    assert_true(json_object_object_get_ex(p, "frequency", &v));
    assert_int_equal(json_object_get_int64(v), 99); /* present fields are kept */
    assert_true(json_object_object_get_ex(p, "mode", &v));
    assert_string_equal(json_object_get_string(v), "cpu");
    assert_true(json_object_object_get_ex(p, "formats", &v)); /* an array default */
    assert_int_equal(json_object_array_length(v), 3);
    assert_string_equal(json_object_get_string(json_object_array_get_idx(v, 2)), "flamegraph");
    assert_false(json_object_object_get_ex(p, "request_id", NULL));
    assert_int_equal(json_object_object_length(p), 4);
    json_object_put(p);
    schema_free(start);

    struct schema *set = load_action("set_asyncio_debug");
    p = json_object_new_object();
    assert_int_equal(schema_apply_defaults(set, p), 0);
    assert_true(json_object_object_get_ex(p, "enabled", &v));
    assert_true(json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v));
    json_object_put(p);
    schema_free(set);

    struct schema *sources = load_action("start_log_object_sources");
    p = json_object_new_object();
    assert_int_equal(schema_apply_defaults(sources, p), 0);
    assert_true(json_object_get_double(json_object_object_get(p, "scan_interval")) == 30.0);
    assert_int_equal(json_object_get_int64(json_object_object_get(p, "max_objects")), 5);
    json_object_put(p);
    schema_free(sources);

    struct schema *dump = load_action("dump_log_objects");
    char err[SCHEMA_ERR_MAX] = "";
    p = json_object_new_object();
    assert_int_equal(schema_apply_defaults(dump, p), 0);
    /* `type` has no default; max_objects (Python objects) has. */
    assert_int_equal(json_object_object_length(p), 1);
    assert_int_equal(json_object_get_int64(json_object_object_get(p, "max_objects")), 1000);
    assert_int_equal(schema_validate(dump, p, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "type: required field is missing");
    json_object_put(p);
    schema_free(dump);
}

/* Defaults are deep copies: changing one payload's copy changes neither the schema nor others. */
static void test_defaults_are_deep_copies(void **state)
{
    struct schema *s = compile_text("{\"properties\": {\"list\": {\"default\": {\"x\": [1]}},"
                                    " \"none\": {\"default\": null}, \"plain\": {}}}");
    struct json_object *a = json_object_new_object(), *b = json_object_new_object(), *list, *v;

    (void)state;
    assert_int_equal(schema_apply_defaults(s, a), 0);
    assert_true(json_object_object_get_ex(a, "none", &v));
    assert_null(v);
    assert_false(json_object_object_get_ex(a, "plain", NULL));
    list = json_object_object_get(json_object_object_get(a, "list"), "x");
    assert_int_equal(json_object_array_add(list, json_object_new_int(2)), 0);
    assert_int_equal(schema_apply_defaults(s, b), 0);
    list = json_object_object_get(json_object_object_get(b, "list"), "x");
    assert_int_equal(json_object_array_length(list), 1);
    assert_int_equal(schema_apply_defaults(s, NULL), -EINVAL);
    json_object_put(a);
    json_object_put(b);
    schema_free(s);
}

/* Lengths count code points: 128 two-byte characters fit request_id, 129 do not. */
static void test_lengths_count_code_points(void **state)
{
    struct schema *s = load_action("start");
    char text[1024], err[SCHEMA_ERR_MAX] = "";
    struct json_object *p;
    size_t len;

    (void)state;
    for (int count = 128; count <= 129; count++) {
        len = (size_t)snprintf(text, sizeof(text), "{\"request_id\": \"");
        for (int i = 0; i < count; i++)
            len += (size_t)snprintf(text + len, sizeof(text) - len, "\xc3\xa9");
        snprintf(text + len, sizeof(text) - len, "\"}");
        p = parse(text);
        if (count == 128) {
            assert_int_equal(schema_validate(s, p, err, sizeof(err)), 0);
        } else {
            assert_int_equal(schema_validate(s, p, err, sizeof(err)), -EINVAL);
            assert_string_equal(err, "request_id: must be at most 128 characters");
        }
        json_object_put(p);
    }
    schema_free(s);
}

static void expect_invalid(const char *schema, const char *instance, const char *error)
{
    struct schema *s = compile_text(schema);
    struct json_object *o = parse(instance);
    char err[SCHEMA_ERR_MAX] = "";

    if (schema_validate(s, o, err, sizeof(err)) != -EINVAL || strcmp(err, error) != 0)
        fail_msg("%s against %s: expected \"%s\", got \"%s\"", instance, schema, error, err);
    json_object_put(o);
    schema_free(s);
}

static void expect_valid(const char *schema, const char *instance)
{
    struct schema *s = compile_text(schema);
    struct json_object *o = parse(instance);
    char err[SCHEMA_ERR_MAX] = "";

    if (schema_validate(s, o, err, sizeof(err)) != 0)
        fail_msg("%s against %s: expected valid, got \"%s\"", instance, schema, err);
    json_object_put(o);
    schema_free(s);
}

static void test_messages_and_paths(void **state)
{
    const char *nested = "{\"type\": \"object\", \"additionalProperties\": false, \"properties\":"
                         " {\"a\": {\"type\": \"object\", \"additionalProperties\": false,"
                         " \"properties\": {\"b\": {\"type\": \"integer\"},"
                         " \"l\": {\"items\": {\"type\": [\"string\", \"null\"]}}}}}}";

    (void)state;
    expect_invalid(nested, "{\"a\": {\"b\": \"x\"}}", "a.b: must be an integer");
    expect_invalid(nested, "{\"a\": {\"c\": 1}}", "unknown field 'a.c'");
    expect_invalid(nested, "{\"a\": {\"l\": [\"x\", null, 3]}}",
                   "a.l[2]: must be a string or null");
    expect_invalid(nested, "{\"a\\nb\": 1}", "unknown field 'a?b'");
    expect_valid(nested, "{\"a\": {\"b\": 2.0, \"l\": [\"x\", null]}}");
    expect_invalid("{\"type\": [\"integer\", \"boolean\", \"array\"]}", "1.5",
                   "payload: must be a boolean, an array or an integer");
    expect_invalid("{\"enum\": [\"fast\", \"slow\"]}", "\"medium\"",
                   "payload: must be one of [\"fast\",\"slow\"]");
    expect_valid("{\"enum\": [1, 2]}", "2.0");
    expect_valid("{\"const\": {\"a\": [1, {\"b\": null}]}}", "{\"a\": [1.0, {\"b\": null}]}");
    expect_invalid("{\"const\": {\"a\": [1]}}", "{\"a\": [1], \"b\": 2}",
                   "payload: must be {\"a\":[1]}");
    expect_invalid("{\"exclusiveMaximum\": 0.1}", "0.1", "payload: must be less than 0.1");
    expect_invalid("{\"minimum\": 9007199254740993}", "9007199254740992",
                   "payload: must be at least 9007199254740993");
    expect_invalid("{\"properties\": {\"x\": false}}", "{\"x\": 1}", "x: is not allowed");
    expect_invalid("{\"minLength\": 1}", "\"\"", "payload: must be at least 1 character");
    expect_invalid("{\"uniqueItems\": true}", "[1, \"a\", 1.0]",
                   "payload: must not contain duplicate items (items 0 and 2 are equal)");
    expect_invalid("{\"propertyNames\": {\"pattern\": \"^[a-z]+$\"}}", "{\"ok\": 1, \"No\": 2}",
                   "No (field name): does not match pattern ^[a-z]+$");
    expect_invalid("{\"type\": []}", "1", "payload: is not allowed");
    expect_valid("{\"pattern\": \"^\\u00e9$\"}", "\"\\u00e9\"");
    expect_invalid("{\"pattern\": \"^\\u00e9$\"}", "\"e\"",
                   "payload: does not match pattern ^\u00e9$");
}

static void expect_refused(const char *schema, const char *error)
{
    struct json_object *doc = parse(schema);
    struct schema *s = NULL;
    char err[SCHEMA_ERR_MAX] = "";

    if (schema_compile(doc, &s, err, sizeof(err)) != -EINVAL || strcmp(err, error) != 0)
        fail_msg("schema %s: expected refusal \"%s\", got \"%s\"", schema, error, err);
    assert_null(s);
    json_object_put(doc);
}

static void test_refused_schemas(void **state)
{
    (void)state;
    expect_refused("{\"properties\": {\"x\": {\"oneOf\": [{\"type\": \"string\"}]}}}",
                   "schema #/properties/x: keyword 'oneOf' is not supported");
    expect_refused("{\"$ref\": \"#/definitions/a\"}", "schema #: keyword '$ref' is not supported");
    expect_refused("{\"format\": \"email\"}", "schema #: keyword 'format' is not supported");
    expect_refused("{\"properties\": {\"a/b~\": {\"multipleOf\": 2}}}",
                   "schema #/properties/a~1b~0: keyword 'multipleOf' is not supported");
    expect_refused("{\"items\": [true, {\"if\": true}]}",
                   "schema #/items/1: keyword 'if' is not supported");
    expect_refused("{\"minimum\": \"1\"}", "schema #/minimum: must be a number");
    expect_refused("{\"maxLength\": -1}", "schema #/maxLength: must be a non-negative integer");
    expect_refused("{\"maxLength\": 1.5}", "schema #/maxLength: must be a non-negative integer");
    expect_refused("{\"type\": \"float\"}", "schema #/type: \"float\" is not a type");
    expect_refused("{\"type\": [\"string\", \"string\"]}", "schema #/type: names \"string\" twice");
    expect_refused("{\"required\": [\"a\", \"a\"]}", "schema #/required: names 'a' twice");
    expect_refused("{\"required\": \"a\"}", "schema #/required: must be an array of field names");
    expect_refused("{\"properties\": {\"a\": 1}}",
                   "schema #/properties/a: a schema must be an object or a boolean");
    expect_refused("[]", "schema #: a schema must be an object or a boolean");
    expect_refused("{\"$schema\": \"http://json-schema.org/draft-04/schema#\"}",
                   "schema #/$schema: only draft-07 schemas are supported");
    expect_refused("{\"pattern\": \"a(\"}", "schema #/pattern: pattern 'a(' does not compile: "
                                            "Unmatched ( or \\(");
    expect_refused("{\"pattern\": \"^\\\\d+$\"}",
                   "schema #/pattern: pattern '^\\d+$' uses an escape sequence POSIX reads "
                   "differently, which POSIX regular expressions do not read as ECMA-262 does");
    expect_refused("{\"patternProperties\": {\"a+?\": true}}",
                   "schema #/patternProperties/a+?: pattern 'a+?' uses a lazy quantifier, which "
                   "POSIX regular expressions do not read as ECMA-262 does");
    expect_refused("{\"pattern\": \"[\\\\]]\"}",
                   "schema #/pattern: pattern '[\\]]' uses a backslash inside [...], which POSIX "
                   "regular expressions do not read as ECMA-262 does");
    expect_refused("{\"pattern\": \"^\\u00e9+$\"}",
                   "schema #/pattern: pattern '^\u00e9+$' uses a quantifier on a non-ASCII "
                   "character, which POSIX regular expressions do not read as ECMA-262 does");
    expect_refused("{\"pattern\": \"(?=a)\"}",
                   "schema #/pattern: pattern '(?=a)' uses a (?...) group, which POSIX regular "
                   "expressions do not read as ECMA-262 does");
}

static struct json_object *nest(int levels)
{
    struct json_object *o = json_object_new_int(1);

    for (int i = 0; i < levels; i++) {
        struct json_object *outer = json_object_new_object();
        assert_non_null(outer);
        assert_int_equal(json_object_object_add(outer, i % 2 ? "a" : "b", o), 0);
        o = outer;
    }
    return o;
}

/* A 200-level instance is refused before any recursion over it; 64 levels are fine. */
static void test_deep_instance(void **state)
{
    struct schema *any = compile_text("true"), *start = load_action("start");
    struct schema *open = compile_text("{\"additionalProperties\": {\"$comment\": \"open\"}}");
    struct json_object *deep = nest(200), *ok = nest(64), *over = nest(65);
    char err[SCHEMA_ERR_MAX] = "";

    (void)state;
    assert_int_equal(schema_validate(any, deep, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "payload: nested deeper than 64 levels");
    assert_int_equal(schema_validate(start, deep, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "payload: nested deeper than 64 levels");
    assert_int_equal(schema_validate(open, over, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "payload: nested deeper than 64 levels");
    assert_int_equal(schema_validate(open, ok, err, sizeof(err)), 0);
    assert_int_equal(schema_validate(any, ok, err, sizeof(err)), 0);
    json_object_put(deep);
    json_object_put(ok);
    json_object_put(over);
    schema_free(any);
    schema_free(start);
    schema_free(open);
}

static void test_deep_schema(void **state)
{
    struct json_object *doc = json_object_new_boolean(1);
    struct schema *s = NULL;
    char err[SCHEMA_ERR_MAX] = "";

    (void)state;
    for (int i = 0; i < 200; i++) {
        struct json_object *outer = json_object_new_object();
        assert_int_equal(json_object_object_add(outer, "additionalProperties", doc), 0);
        doc = outer;
    }
    assert_int_equal(schema_compile(doc, &s, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "schema #: nested deeper than 64 levels");
    assert_null(s);
    json_object_put(doc);
}

/* error is the expected message with %s where the fixture's path goes; json-c's own words for a
 * syntax error vary between versions, so those are matched up to "not valid JSON: ". */
static void expect_load_error(const char *file, int code, const char *error)
{
    struct schema *s = NULL;
    char path[256], err[SCHEMA_ERR_MAX] = "", expected[SCHEMA_ERR_MAX];
    const char *syntax;

    snprintf(path, sizeof(path), "%s/%s", FIXTURE_DIR, file);
    snprintf(expected, sizeof(expected), error, path);
    assert_int_equal(schema_load_file(path, &s, err, sizeof(err)), code);
    syntax = strstr(expected, "not valid JSON: ");
    if (syntax != NULL && syntax[16] == '\0' && strncmp(err, expected, strlen(expected)) == 0)
        printf("%s: %s\n", file, err);
    else
        assert_string_equal(err, expected);
    assert_null(s);
}

static void test_load_file_errors(void **state)
{
    struct schema *s = NULL;
    char err[SCHEMA_ERR_MAX] = "";

    (void)state;
    assert_int_equal(schema_load_file(FIXTURE_DIR "/true.json", &s, err, sizeof(err)), 0);
    schema_free(s);
    expect_load_error("missing.json", -ENOENT, "cannot open %s: No such file or directory");
    expect_load_error("truncated.json", -EINVAL, "%s is not valid JSON: ");
    expect_load_error("trailing.json", -EINVAL, "%s is not valid JSON: ");
    expect_load_error("single_quotes.json", -EINVAL, "%s is not valid JSON: ");
    /* A NUL stops json-c's tokener; what follows must not be ignored. */
    expect_load_error("nul.json", -EINVAL, "%s is not valid JSON: unexpected data at byte 18");
    expect_load_error("nan.json", -EINVAL, "%s: schema #/maximum: must be a number");
    expect_load_error("unsupported.json", -EINVAL,
                      "%s: schema #/properties/seconds: keyword 'anyOf' is not supported");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_official_suite),
        cmocka_unit_test(test_official_suite_refused_keywords),
        cmocka_unit_test(test_every_schema_file_compiles),
        cmocka_unit_test(test_registry_matches_the_contract),
        cmocka_unit_test(test_action_payloads),
        cmocka_unit_test(test_action_defaults),
        cmocka_unit_test(test_defaults_are_deep_copies),
        cmocka_unit_test(test_lengths_count_code_points),
        cmocka_unit_test(test_messages_and_paths),
        cmocka_unit_test(test_refused_schemas),
        cmocka_unit_test(test_deep_instance),
        cmocka_unit_test(test_deep_schema),
        cmocka_unit_test(test_load_file_errors),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
