/* Home Assistant discovery and the settings behind its entities (see discovery.h). The config is
 * built once at start, with Home Assistant's abbreviated keys; each component carries `~` = P/N
 * so its topics read `~/state`, `~/set/NAME`. Ranges, lengths and defaults come from the action
 * schemas, never from numbers written here. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>
#include "clock.h"
#include "discovery.h"
#include "log.h"
#include "objects/objects.h"
#include "registry.h"
#include "schema.h"
#include "store.h"

#define TOPIC_MAX 512
#define ID_MAX 160
#define SETTING_TEXT_MAX 256   /* a setting's payload, and its stored JSON text */
#define BIRTH_DELAY_MIN_MS 500 /* spreads a fleet's answers to one birth message */
#define BIRTH_DELAY_MAX_MS 3000
/* Beyond half a heartbeat more: how late a heartbeat may be before its sensors expire. */
#define EXPIRY_MARGIN_S 5
#define JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

struct discovery {
    struct config *c;
    struct agent *a;
    int (*publish)(void *userdata, const char *topic, const void *payload, size_t len, bool retain);
    void *userdata;
    char t_config[TOPIC_MAX], t_birth[TOPIC_MAX], t_event[TOPIC_MAX];
    char *config; /* the payload; NULL when discovery is off */
    pthread_mutex_t lock;
    pthread_cond_t wake; /* timed on CLOCK_MONOTONIC */
    int64_t due_us;      /* when the birth re-publication is due; 0: none */
    bool stopping;
    bool thread_started;
    pthread_t thread;
};

/* Home Assistant takes [a-zA-Z0-9_-] in discovery topics and ids; node_id may hold more. */
static void safe_id(const char *in, char *out, size_t len)
{
    size_t i;

    for (i = 0; in[i] && i + 1 < len; i++) {
        char ch = in[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '_' || ch == '-';

        out[i] = ok ? ch : '_';
    }
    out[i] = '\0';
}

static void add_str(struct json_object *o, const char *key, const char *value)
{
    json_object_object_add(o, key, json_object_new_string(value));
}

/* The property `field` of schemas/ACTION.json, NULL when absent. Caller puts doc. */
static struct json_object *schema_property(const char *dir, const char *action, const char *field,
                                           struct json_object **doc)
{
    char path[PATH_MAX];
    struct json_object *props, *p;

    snprintf(path, sizeof(path), "%s/%s.json", dir, action);
    *doc = json_object_from_file(path);
    if (!*doc || !json_object_object_get_ex(*doc, "properties", &props) ||
        !json_object_object_get_ex(props, field, &p))
        return NULL;
    return p;
}

/* Adds a Home Assistant number's min, max and step from the field's schema: whole steps, so an
 * exclusive minimum of 0 becomes 1. */
static int add_range(struct json_object *o, const char *dir, const struct registry_action *act,
                     const struct registry_setting *s)
{
    struct json_object *doc, *p = schema_property(dir, act->name, s->field, &doc), *v;
    double min = 0, max = 0;
    bool has_min = false, has_max = false;
    int r = -EINVAL;

    if (!p)
        goto out;
    if (json_object_object_get_ex(p, "minimum", &v)) {
        min = json_object_get_double(v);
        has_min = true;
    } else if (json_object_object_get_ex(p, "exclusiveMinimum", &v)) {
        min = floor(json_object_get_double(v)) + 1;
        has_min = true;
    }
    if (json_object_object_get_ex(p, "maximum", &v)) {
        max = json_object_get_double(v);
        has_max = true;
    } else if (json_object_object_get_ex(p, "exclusiveMaximum", &v)) {
        max = ceil(json_object_get_double(v)) - 1;
        has_max = true;
    }
    if (!has_min || !has_max)
        goto out;
    json_object_object_add(o, "min", json_object_new_int64((int64_t)min));
    json_object_object_add(o, "max", json_object_new_int64((int64_t)max));
    json_object_object_add(o, "step", json_object_new_int(1));
    r = 0;
out:
    json_object_put(doc);
    return r;
}

/* The text entity's max from the field's maxLength, and a pattern of the known object types. */
static int add_text_rules(struct json_object *o, const char *dir, const struct registry_action *act,
                          const struct registry_setting *s)
{
    struct json_object *doc, *p = schema_property(dir, act->name, s->field, &doc), *v;
    char pattern[512];
    size_t n;
    int r = -EINVAL;

    if (!p || !json_object_object_get_ex(p, "maxLength", &v))
        goto out;
    json_object_object_add(o, "min", json_object_new_int(0));
    json_object_object_add(o, "max", json_object_new_int(json_object_get_int(v)));
    /* Empty is allowed: it clears the setting. */
    n = (size_t)snprintf(pattern, sizeof(pattern), "^(");
    for (int t = 0; t < OBJECTS_NTYPES && n < sizeof(pattern); t++)
        n += (size_t)snprintf(pattern + n, sizeof(pattern) - n, "%s%s", t ? "|" : "",
                              objects_type_name((enum objects_type)t));
    if (n >= sizeof(pattern) - 4)
        goto out;
    snprintf(pattern + n, sizeof(pattern) - n, ")?$");
    add_str(o, "ptrn", pattern);
    r = 0;
out:
    json_object_put(doc);
    return r;
}

static struct json_object *component(struct json_object *cmps, const char *platform,
                                     const char *key, const char *name, const char *uid_prefix,
                                     const char *base)
{
    struct json_object *o = json_object_new_object();
    char uid[ID_MAX];

    snprintf(uid, sizeof(uid), "%s_%s", uid_prefix, key);
    add_str(o, "p", platform);
    add_str(o, "name", name);
    add_str(o, "uniq_id", uid);
    add_str(o, "~", base);
    /* Commands are QoS 1 (the contract). Per component: Home Assistant does not pass a device's
     * qos down to its components. */
    json_object_object_add(o, "qos", json_object_new_int(1));
    json_object_object_add(cmps, key, o);
    return o;
}

static void add_state(struct json_object *o, const char *value_template)
{
    add_str(o, "stat_t", "~/state");
    add_str(o, "val_tpl", value_template);
}

/* A sensor's value turns unavailable when no state came for a heartbeat and a margin: the status
 * topic's last will cannot say so when the agent's broker node died with it (a will is published
 * by the node that held the connection). Only sensors and binary sensors have the option. */
static void add_expiry(const struct config *c, struct json_object *o)
{
    if (c->heartbeat_seconds > 0)
        json_object_object_add(
            o, "exp_aft",
            json_object_new_int(c->heartbeat_seconds + c->heartbeat_seconds / 2 + EXPIRY_MARGIN_S));
}

static int build_config(struct discovery *d, char *err, size_t errlen)
{
    struct config *c = d->c;
    struct json_object *root = json_object_new_object(), *cmps = json_object_new_object();
    struct json_object *dev = json_object_new_object(), *origin = json_object_new_object();
    struct json_object *avty = json_object_new_array(), *av = json_object_new_object();
    struct json_object *ids = json_object_new_array(), *o, *types;
    const struct registry_action *act;
    const struct registry_setting *s;
    char node[sizeof(c->node_id)], uid_prefix[ID_MAX], text[TOPIC_MAX];
    char base[sizeof(c->topic_prefix) + sizeof(c->node_id)];
    int r = 0;

    safe_id(c->node_id, node, sizeof(node));
    snprintf(uid_prefix, sizeof(uid_prefix), "profiler_agent_%s", node);
    snprintf(base, sizeof(base), "%s/%s", c->topic_prefix, c->node_id);

    json_object_array_add(ids, json_object_new_string(uid_prefix));
    json_object_object_add(dev, "ids", ids);
    snprintf(text, sizeof(text), "Profiler %s", c->node_id);
    add_str(dev, "name", text);
    add_str(dev, "mf", "profiler-agent");
    add_str(dev, "mdl", "profiler-agent");
    add_str(dev, "sw", PROFILER_AGENT_VERSION);
    json_object_object_add(root, "dev", dev);
    add_str(origin, "name", "profiler-agent");
    add_str(origin, "sw", PROFILER_AGENT_VERSION);
    json_object_object_add(root, "o", origin);
    snprintf(text, sizeof(text), "%s/status", base);
    add_str(av, "t", text);
    add_str(av, "pl_avail", "online");
    add_str(av, "pl_not_avail", "offline");
    json_object_array_add(avty, av);
    json_object_object_add(root, "avty", avty);

    for (unsigned i = 0; (act = registry_at(i)); i++) {
        if (!act->button)
            continue;
        o = component(cmps, "button", act->name, act->button, uid_prefix, base);
        snprintf(text, sizeof(text), "~/%s", act->name);
        add_str(o, "cmd_t", text);
        add_str(o, "pl_prs", "{}");
    }
    for (unsigned i = 0; (act = registry_at(i)); i++)
        for (const struct registry_preset *p = act->presets; p && p->id; p++) {
            o = component(cmps, "button", p->id, p->title, uid_prefix, base);
            snprintf(text, sizeof(text), "~/%s", act->name);
            add_str(o, "cmd_t", text);
            add_str(o, "pl_prs", p->payload);
        }
    for (unsigned i = 0; (act = registry_at(i)); i++)
        for (s = act->settings; s && s->id && r == 0; s++) {
            /* A field the schema gives a list of values for is a select of them. */
            struct json_object *doc, *p = schema_property(c->schema_dir, act->name, s->field, &doc);
            struct json_object *options = NULL;
            bool select = !s->unit && p && json_object_object_get_ex(p, "enum", &options);
            o = component(cmps,
                          s->unit  ? "number"
                          : select ? "select"
                                   : "text",
                          s->id, s->title, uid_prefix, base);
            snprintf(text, sizeof(text), "~/set/%s", s->id);
            add_str(o, "cmd_t", text);
            if (s->unit || select)
                snprintf(text, sizeof(text), "{{ value_json.settings.%s.%s }}", act->name,
                         s->field);
            else
                snprintf(text, sizeof(text), "{{ value_json.settings.%s.%s | default('') }}",
                         act->name, s->field);
            add_state(o, text);
            add_str(o, "ent_cat", "config");
            if (s->unit) {
                add_str(o, "mode", "box");
                add_str(o, "unit_of_meas", s->unit);
                r = add_range(o, c->schema_dir, act, s);
            } else if (select) {
                json_object_object_add(o, "ops", json_object_get(options));
            } else {
                r = add_text_rules(o, c->schema_dir, act, s);
            }
            json_object_put(doc);
            if (r < 0)
                snprintf(err, errlen,
                         "cannot describe setting %s: schemas/%s.json has no usable "
                         "range for %s",
                         s->id, act->name, s->field);
        }
    for (unsigned i = 0; (act = registry_at(i)); i++) {
        const struct registry_switch *sw = act->toggle;

        if (!sw)
            continue;
        o = component(cmps, "switch", sw->id, sw->title, uid_prefix, base);
        if (sw->off) {
            snprintf(text, sizeof(text), "~/set/%s", sw->id);
            add_str(o, "cmd_t", text);
            add_str(o, "pl_on", "ON");
            add_str(o, "pl_off", "OFF");
        } else {
            /* No helper topic: its on and off payloads are commands of the action. */
            snprintf(text, sizeof(text), "~/%s", act->name);
            add_str(o, "cmd_t", text);
            add_str(o, "pl_on", "{\"enabled\": true}");
            add_str(o, "pl_off", "{\"enabled\": false}");
            add_str(o, "stat_on", "ON");
            add_str(o, "stat_off", "OFF");
        }
        snprintf(text, sizeof(text), "{{ 'ON' if %s else 'OFF' }}", sw->state);
        add_state(o, text);
        if (!sw->off)
            add_str(o, "ent_cat", "config");
    }

    o = component(cmps, "sensor", "last_run", "Last run", uid_prefix, base);
    add_state(o, "{{ value_json.last.status }}");
    add_str(o, "json_attr_t", "~/state");
    add_str(o, "json_attr_tpl", "{{ value_json.last | tojson }}");
    add_str(o, "ic", "mdi:history");
    add_expiry(c, o);
    o = component(cmps, "sensor", "running_jobs", "Running jobs", uid_prefix, base);
    add_state(o, "{{ value_json.running }}");
    add_str(o, "stat_cla", "measurement");
    add_str(o, "ic", "mdi:progress-clock");
    add_expiry(c, o);
    o = component(cmps, "binary_sensor", "profiling", "Profiling", uid_prefix, base);
    add_state(o, "{{ 'ON' if value_json.profiling else 'OFF' }}");
    add_str(o, "dev_cla", "running");
    add_expiry(c, o);
    /* Two event entities share P/N/event: each takes its own types, the other's are empty
     * payloads to it (ignored), not invalid ones (a warning in Home Assistant's log). */
    o = component(cmps, "event", "run", "Run", uid_prefix, base);
    add_str(o, "stat_t", "~/event");
    add_str(o, "val_tpl", "{{ value if value_json.event_type in ['finished', 'failed'] else '' }}");
    types = json_object_new_array();
    json_object_array_add(types, json_object_new_string("finished"));
    json_object_array_add(types, json_object_new_string("failed"));
    json_object_object_add(o, "evt_typ", types);
    o = component(cmps, "event", "stall", "Stall", uid_prefix, base);
    add_str(o, "stat_t", "~/event");
    add_str(o, "val_tpl",
            "{{ value if value_json.event_type in ['stall', 'stall_ended'] else '' }}");
    add_str(o, "ic", "mdi:timer-sand-paused");
    types = json_object_new_array();
    json_object_array_add(types, json_object_new_string("stall"));
    json_object_array_add(types, json_object_new_string("stall_ended"));
    json_object_object_add(o, "evt_typ", types);

    json_object_object_add(root, "cmps", cmps);
    if (r == 0) {
        d->config = strdup(json_object_to_json_string_ext(root, JSON_FLAGS));
        if (!d->config)
            r = -ENOMEM;
    }
    json_object_put(root);
    return r;
}

/* 0 when value is a valid `field` of the setting's action (its schema decides), else -EINVAL with
 * the schema's sentence in err. The text must also name an object type the agent knows. */
static int check_setting(const struct registry_action *act, const struct registry_setting *s,
                         struct json_object *value, char *err, size_t errlen)
{
    struct json_object *obj;
    enum objects_type t;
    int r;

    obj = json_object_new_object();
    json_object_object_add(obj, s->field, json_object_get(value));
    r = schema_validate(registry_schema(act), obj, err, errlen);
    json_object_put(obj);
    if (r == 0 && !s->unit && objects_type_parse(json_object_get_string(value), &t) < 0) {
        snprintf(err, errlen, "%s: unknown type '%s'", s->field, json_object_get_string(value));
        r = -EINVAL;
    }
    return r;
}

/* A number as Home Assistant sends it ("30", "30.0", "0.5"); whole values become integers so an
 * integer field takes them. */
static int parse_number(const char *text, struct json_object **ret)
{
    char *end;
    double v;

    if (!*text || strspn(text, "0123456789+-.eE") != strlen(text))
        return -EINVAL;
    errno = 0;
    v = strtod(text, &end);
    if (*end || errno || !isfinite(v))
        return -EINVAL;
    if (v == floor(v) && fabs(v) < 9007199254740992.0)
        *ret = json_object_new_int64((int64_t)v);
    else
        *ret = json_object_new_double(v);
    return 0;
}

/* The schema's default of the setting's field, or NULL (the text has none). */
static struct json_object *schema_default(const struct registry_action *act,
                                          const struct registry_setting *s)
{
    struct json_object *obj = json_object_new_object(), *v = NULL;

    if (schema_apply_defaults(registry_schema(act), obj) == 0 &&
        json_object_object_get_ex(obj, s->field, &v))
        json_object_get(v);
    else
        v = NULL;
    json_object_put(obj);
    return v;
}

static struct json_object *stored_setting(struct discovery *d, const struct registry_action *act,
                                          const struct registry_setting *s)
{
    struct store *st = d->a->host.store;
    char text[SETTING_TEXT_MAX], err[SCHEMA_ERR_MAX];
    struct json_object *v;

    if (!st || store_setting_get(st, s->id, text, sizeof(text)) < 0)
        return NULL;
    v = json_tokener_parse(text);
    if (!v || check_setting(act, s, v, err, sizeof(err)) < 0) {
        log_warning("the stored setting %s (%.64s) is no longer valid%s%s; using the default",
                    s->id, text, v ? ": " : "", v ? err : "");
        json_object_put(v);
        return NULL;
    }
    return v;
}

static void publish_config(struct discovery *d)
{
    const char *payload = d->config ? d->config : "";
    int r = d->publish(d->userdata, d->t_config, payload, strlen(payload), true);

    if (r < 0)
        log_warning("cannot publish the Home Assistant discovery config on %s: %s", d->t_config,
                    strerror(-r));
}

static void *birth_thread(void *arg)
{
    struct discovery *d = arg;
    struct timespec ts;
    int64_t now;

    pthread_mutex_lock(&d->lock);
    while (!d->stopping) {
        if (!d->due_us) {
            pthread_cond_wait(&d->wake, &d->lock);
            continue;
        }
        now = clock_monotonic_us();
        if (now < d->due_us) {
            ts.tv_sec = (time_t)(d->due_us / 1000000);
            ts.tv_nsec = (long)(d->due_us % 1000000) * 1000;
            pthread_cond_timedwait(&d->wake, &d->lock, &ts);
            continue;
        }
        d->due_us = 0;
        pthread_mutex_unlock(&d->lock);
        publish_config(d);
        pthread_mutex_lock(&d->lock);
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

int discovery_new(struct config *c, struct agent *a,
                  int (*publish)(void *userdata, const char *topic, const void *payload, size_t len,
                                 bool retain),
                  void *userdata, struct discovery **ret, char *err, size_t errlen)
{
    struct discovery *d = calloc(1, sizeof(*d));
    const struct registry_action *act;
    const struct registry_setting *s;
    pthread_condattr_t attr;
    char node[sizeof(c->node_id)];
    int r;

    if (!d)
        return -ENOMEM;
    d->c = c;
    d->a = a;
    d->publish = publish;
    d->userdata = userdata;
    pthread_mutex_init(&d->lock, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&d->wake, &attr);
    pthread_condattr_destroy(&attr);
    safe_id(c->node_id, node, sizeof(node));
    snprintf(d->t_config, TOPIC_MAX, "%s/device/%s/config", c->discovery_prefix, node);
    snprintf(d->t_birth, TOPIC_MAX, "%s/status", c->discovery_prefix);
    snprintf(d->t_event, TOPIC_MAX, "%s/%s/event", c->topic_prefix, c->node_id);
    for (unsigned i = 0; (act = registry_at(i)); i++)
        for (s = act->settings; s && s->id; s++) {
            struct json_object *v = stored_setting(d, act, s);

            if (!v)
                v = schema_default(act, s);
            agent_set_default(a, act->name, s->field, v);
        }
    if (c->discovery) {
        r = build_config(d, err, errlen);
        if (r < 0)
            goto fail;
    }
    r = -pthread_create(&d->thread, NULL, birth_thread, d);
    if (r < 0) {
        snprintf(err, errlen, "cannot start the discovery thread: %s", strerror(-r));
        goto fail;
    }
    d->thread_started = true;
    *ret = d;
    return 0;
fail:
    discovery_free(d);
    return r;
}

void discovery_free(struct discovery *d)
{
    if (!d)
        return;
    if (d->thread_started) {
        pthread_mutex_lock(&d->lock);
        d->stopping = true;
        pthread_cond_signal(&d->wake);
        pthread_mutex_unlock(&d->lock);
        pthread_join(d->thread, NULL);
    }
    free(d->config);
    pthread_cond_destroy(&d->wake);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

const char *discovery_birth_topic(const struct discovery *d)
{
    return d->c->discovery ? d->t_birth : NULL;
}

void discovery_connected(struct discovery *d)
{
    publish_config(d);
}

void discovery_heartbeat(struct discovery *d)
{
    if (d->config && d->c->heartbeat_discovery)
        publish_config(d);
}

static unsigned random_ms(unsigned lo, unsigned hi)
{
    unsigned v;

    if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
        v = (unsigned)clock_monotonic_us();
    return lo + v % (hi - lo + 1);
}

void discovery_birth(struct discovery *d, const void *payload, size_t len)
{
    if (!d->config || len != 6 || memcmp(payload, "online", 6) != 0)
        return;
    pthread_mutex_lock(&d->lock);
    /* A second birth before the first is answered changes nothing: one publication covers both. */
    if (!d->due_us) {
        d->due_us = clock_monotonic_us() +
                    (int64_t)random_ms(BIRTH_DELAY_MIN_MS, BIRTH_DELAY_MAX_MS) * 1000;
        pthread_cond_signal(&d->wake);
    }
    pthread_mutex_unlock(&d->lock);
}

static void set_toggle(struct discovery *d, const struct registry_action *act, const char *value)
{
    if (strcmp(value, "ON") == 0)
        agent_command(d->a, act->name, "", 0, NULL);
    else if (strcmp(value, "OFF") == 0)
        agent_command(d->a, act->toggle->off, "", 0, NULL);
    else
        log_warning("set/%s: expected ON or OFF, not '%.32s'; ignored", act->toggle->id, value);
}

static void set_setting(struct discovery *d, const struct registry_action *act,
                        const struct registry_setting *s, const char *value)
{
    char err[SCHEMA_ERR_MAX];
    const char *json;
    struct json_object *v = NULL;
    int r;

    if (!s->unit && !*value) {
        /* An empty text clears the setting: dump_log_objects needs its type again. */
        json = NULL;
    } else {
        if (s->unit) {
            if (parse_number(value, &v) < 0) {
                log_warning("set/%s: '%.32s' is not a number; ignored", s->id, value);
                return;
            }
        } else {
            v = json_object_new_string(value);
        }
        if (check_setting(act, s, v, err, sizeof(err)) < 0) {
            log_warning("set/%s: %s; ignored", s->id, err);
            json_object_put(v);
            return;
        }
        json = json_object_to_json_string_ext(v, JSON_FLAGS);
    }
    if (d->a->host.store) {
        r = store_setting_set(d->a->host.store, s->id, json);
        if (r < 0)
            log_error("cannot save setting %s in the database %s: %s", s->id, d->c->database,
                      store_errmsg(d->a->host.store));
    }
    log_info("setting %s is now %s", s->id, json ? json : "unset");
    agent_set_default(d->a, act->name, s->field, v);
    if (d->a->host.out.state_changed)
        d->a->host.out.state_changed(d->a, d->a->host.out.userdata);
}

void discovery_set(struct discovery *d, const char *name, const void *payload, size_t len)
{
    const struct registry_action *act;
    const struct registry_setting *s;
    char value[SETTING_TEXT_MAX];
    size_t start = 0;

    /* An empty message has no payload buffer at all. */
    if (len > 0 && (len >= sizeof(value) || memchr(payload, '\0', len))) {
        log_warning("set/%.64s: the value must be text of at most %d bytes; ignored", name,
                    SETTING_TEXT_MAX - 1);
        return;
    }
    if (len > 0)
        memcpy(value, payload, len);
    value[len] = '\0';
    while (len > 0 && strchr(" \t\r\n", value[len - 1]))
        value[--len] = '\0';
    while (value[start] && strchr(" \t\r\n", value[start]))
        start++;
    for (unsigned i = 0; (act = registry_at(i)); i++) {
        if (act->toggle && act->toggle->off && strcmp(name, act->toggle->id) == 0) {
            set_toggle(d, act, value + start);
            return;
        }
        for (s = act->settings; s && s->id; s++)
            if (strcmp(name, s->id) == 0) {
                set_setting(d, act, s, value + start);
                return;
            }
    }
    log_warning("set/%.64s: no such setting; ignored", name);
}

void discovery_run_finished(struct discovery *d, const struct run *run)
{
    struct json_object *o;
    const char *text;
    int r;

    if (!run->action || !run->action->long_running)
        return;
    o = json_object_new_object();
    add_str(o, "event_type", run->ok ? "finished" : "failed");
    json_object_object_add(o, "run_id", run->id ? json_object_new_int64(run->id) : NULL);
    add_str(o, "action", run->action_name);
    json_object_object_add(o, "files", json_object_get(run->files));
    if (!run->ok)
        add_str(o, "error", run->error);
    text = json_object_to_json_string_ext(o, JSON_FLAGS);
    r = d->publish(d->userdata, d->t_event, text, strlen(text), false);
    if (r < 0)
        log_warning("cannot publish the event of run %lld on %s: %s", (long long)run->id,
                    d->t_event, strerror(-r));
    json_object_put(o);
}
