/* Configuration parsing (see config.h). One table describes every key: its type, where it goes
 * and its bounds, so the file, the flags and --help cannot disagree. */
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "config.h"
#include "os/target.h"

#define CONFIG_LINE_MAX 8192
#define CONFIG_LINES_MAX 10000

enum key_type {
    KEY_STR,
    KEY_INT,
    KEY_LONG,
    KEY_BOOL,
    KEY_LEVEL,
    KEY_VERSION,
    KEY_BROKERS,
    KEY_RECORDER_MODE
};

struct key {
    const char *name;
    enum key_type type;
    size_t offset;
    size_t size;        /* of a string field */
    long long min, max; /* of an integer */
};

#define STR(f) KEY_STR, offsetof(struct config, f), sizeof(((struct config *)0)->f), 0, 0
#define INT(f, lo, hi) KEY_INT, offsetof(struct config, f), 0, lo, hi
#define LONG(f, lo, hi)                                                                            \
    KEY_LONG, offsetof(struct config, f), sizeof(((struct config *)0)->f), lo, hi

static const struct key keys[] = {
    {"broker", KEY_BROKERS, offsetof(struct config, broker), sizeof(((struct config *)0)->broker),
     0, 0},
    {"broker_host", STR(broker_host)},
    {"broker_port", INT(broker_port, 1, 65535)},
    {"username", STR(username)},
    {"password", STR(password)},
    {"password_file", STR(password_file)},
    {"tls_ca_file", STR(tls_ca_file)},
    {"tls_cert_file", STR(tls_cert_file)},
    {"tls_key_file", STR(tls_key_file)},
    {"client_id", STR(client_id)},
    {"keepalive", INT(keepalive, 5, 3600)},
    {"mqtt_version", KEY_VERSION, offsetof(struct config, mqtt_version), 0, 0, 0},
    {"heartbeat_seconds", INT(heartbeat_seconds, 0, 86400)},
    {"heartbeat_discovery", KEY_BOOL, offsetof(struct config, heartbeat_discovery), 0, 0, 0},
    {"node_id", STR(node_id)},
    {"topic_prefix", STR(topic_prefix)},
    {"discovery", KEY_BOOL, offsetof(struct config, discovery), 0, 0, 0},
    {"discovery_prefix", STR(discovery_prefix)},
    {"output_dir", STR(output_dir)},
    {"database", STR(database)},
    {"target", STR(target)},
    {"allowed_targets", STR(allowed_targets)},
    {"max_payload_bytes", LONG(max_payload_bytes, 64, 16 << 20)},
    {"max_file_bytes", LONG(max_file_bytes, 1024, 128 << 20)},
    {"max_jobs", INT(max_jobs, 1, CONFIG_MAX_JOBS)},
    {"rate_limit", INT(rate_limit, 0, 60000)},
    {"retention_days", INT(retention_days, 0, 36500)},
    {"retention_max_bytes", LONG(retention_max_bytes, 0, 1LL << 50)},
    {"schema_dir", STR(schema_dir)},
    {"log_level", KEY_LEVEL, offsetof(struct config, log_level), 0, 0, 0},
    {"python_exec", KEY_BOOL, offsetof(struct config, python_exec), 0, 0, 0},
    {"python_timeout", INT(python_timeout, 1, 300)},
    {"recorder", KEY_BOOL, offsetof(struct config, recorder), 0, 0, 0},
    {"recorder_frequency", INT(recorder_frequency, 1, 999)},
    {"recorder_minutes", INT(recorder_minutes, 1, 1440)},
    {"recorder_max_mb", INT(recorder_max_mb, 1, 4096)},
    {"recorder_mode", KEY_RECORDER_MODE, offsetof(struct config, recorder_mode), 0, 0, 0},
    {"stall_seconds", INT(stall_seconds, 0, 3600)},
    {"stall_thread", STR(stall_thread)},
};

const char *const config_keys[] = {
    "broker",
    "broker_host",
    "broker_port",
    "username",
    "password",
    "password_file",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "client_id",
    "keepalive",
    "mqtt_version",
    "heartbeat_seconds",
    "heartbeat_discovery",
    "node_id",
    "topic_prefix",
    "discovery",
    "discovery_prefix",
    "output_dir",
    "database",
    "target",
    "allowed_targets",
    "max_payload_bytes",
    "max_file_bytes",
    "max_jobs",
    "rate_limit",
    "retention_days",
    "retention_max_bytes",
    "schema_dir",
    "log_level",
    "python_exec",
    "python_timeout",
    "recorder",
    "recorder_frequency",
    "recorder_minutes",
    "recorder_max_mb",
    "recorder_mode",
    "stall_seconds",
    "stall_thread",
    NULL,
};

static const char *const level_names[] = {"debug", "info", "warning", "error"};

/* Topic levels must not carry MQTT wildcards or separators the agent did not put there. */
static bool topic_level_ok(const char *s, bool allow_slash)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (*s == '+' || *s == '#' || (!allow_slash && *s == '/'))
            return false;
    return true;
}

static void node_id_from_host(char *out, size_t len)
{
    char host[256] = "";
    size_t n = 0;

    if (gethostname(host, sizeof(host) - 1) != 0)
        host[0] = '\0';
    for (const char *p = host; *p && n + 1 < len; p++) {
        char ch = (char)tolower((unsigned char)*p);
        if (isalnum((unsigned char)ch) || ch == '_' || ch == '-')
            out[n++] = ch;
    }
    if (n == 0)
        n = (size_t)snprintf(out, len, "agent");
    out[n] = '\0';
}

void config_defaults(struct config *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->broker_host, sizeof(c->broker_host), "127.0.0.1");
    c->broker_port = 1883;
    c->keepalive = 60;
    c->mqtt_version = 5;
    c->heartbeat_seconds = 60;
    node_id_from_host(c->node_id, sizeof(c->node_id));
    snprintf(c->topic_prefix, sizeof(c->topic_prefix), "profiler");
    c->discovery = true;
    snprintf(c->discovery_prefix, sizeof(c->discovery_prefix), "homeassistant");
    snprintf(c->output_dir, sizeof(c->output_dir), "./profiles");
    snprintf(c->database, sizeof(c->database), "./profiler-agent.db");
    snprintf(c->target, sizeof(c->target), "self");
    c->max_payload_bytes = 65536;
    c->max_file_bytes = 8 << 20;
    c->max_jobs = 4;
    c->rate_limit = 60;
    c->retention_days = 30;
    c->retention_max_bytes = 1LL << 30;
    c->log_level = CONFIG_LOG_INFO;
    c->python_exec = true;
    c->python_timeout = 10;
    c->recorder_frequency = 19;
    c->recorder_minutes = 10;
    c->recorder_max_mb = 16;
    c->recorder_mode = CONFIG_RECORDER_CPU;
    snprintf(c->stall_thread, sizeof(c->stall_thread), "MainThread");
}

static int parse_long(const char *value, long long min, long long max, long long *ret)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(value, &end, 10);
    if (errno || end == value || *end || v < min || v > max)
        return -EINVAL;
    *ret = v;
    return 0;
}

static char *trim(char *s)
{
    char *end;

    while (isspace((unsigned char)*s))
        s++;
    end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}

/* One entry of `broker` (len bytes at text): HOST, HOST:PORT, [V6ADDR] or [V6ADDR]:PORT, with
 * default_port when it names none. */
static int parse_broker(const char *text, size_t len, int default_port, struct config_broker *ret,
                        char *err, size_t errlen)
{
    char entry[CONFIG_STR_MAX + 16], *e, *end, *port = NULL;
    long long v = default_port;

    if (len >= sizeof(entry)) {
        snprintf(err, errlen, "broker: an entry is longer than %zu characters", sizeof(entry) - 1);
        return -EINVAL;
    }
    memcpy(entry, text, len);
    entry[len] = '\0';
    e = trim(entry);
    if (!*e) {
        snprintf(err, errlen, "broker: an empty entry (write HOST[:PORT], HOST[:PORT], ...)");
        return -EINVAL;
    }
    if (*e == '[') {
        end = strchr(e, ']');
        if (!end || end == e + 1 || (end[1] && end[1] != ':')) {
            snprintf(err, errlen, "broker: expected [ADDRESS]:PORT, got '%s'", e);
            return -EINVAL;
        }
        if (end[1] == ':')
            port = end + 2;
        *end = '\0';
        e++;
    } else {
        end = strchr(e, ':');
        if (end && strchr(end + 1, ':')) {
            snprintf(err, errlen, "broker: write an IPv6 address as [ADDRESS]:PORT, got '%s'", e);
            return -EINVAL;
        }
        if (end) {
            *end = '\0';
            port = end + 1;
        }
    }
    if (!*e || strpbrk(e, " \t,[]")) {
        snprintf(err, errlen, "broker: '%.*s' is not HOST[:PORT]", (int)len, text);
        return -EINVAL;
    }
    if (port && parse_long(port, 1, 65535, &v) < 0) {
        snprintf(err, errlen, "broker: the port of '%s' must be an integer from 1 to 65535", e);
        return -EINVAL;
    }
    if (strlen(e) >= sizeof(ret->host)) {
        snprintf(err, errlen, "broker: a host name is longer than %zu characters",
                 sizeof(ret->host) - 1);
        return -EINVAL;
    }
    snprintf(ret->host, sizeof(ret->host), "%s", e);
    ret->port = (int)v;
    return 0;
}

/* `broker`: entries separated by commas, at most CONFIG_MAX_BROKERS. Returns how many. */
static int parse_brokers(const char *text, int default_port, struct config_broker *list, char *err,
                         size_t errlen)
{
    int n = 0, r;

    for (const char *p = text;; p++) {
        size_t len = strcspn(p, ",");

        if (n == CONFIG_MAX_BROKERS) {
            snprintf(err, errlen, "broker: at most %d brokers", CONFIG_MAX_BROKERS);
            return -EINVAL;
        }
        r = parse_broker(p, len, default_port, &list[n++], err, errlen);
        if (r < 0)
            return r;
        p += len;
        if (!*p)
            return n;
    }
}

int config_set(struct config *c, const char *key, const char *value, char *err, size_t errlen)
{
    const struct key *k = NULL;
    char *field;
    long long v;

    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (strcmp(keys[i].name, key) == 0)
            k = &keys[i];
    if (!k) {
        snprintf(err, errlen, "unknown key '%s'", key);
        return -ENOENT;
    }
    field = (char *)c + k->offset;
    switch (k->type) {
    case KEY_STR:
        if (strlen(value) >= k->size) {
            snprintf(err, errlen, "%s: must be at most %zu characters", key, k->size - 1);
            return -EINVAL;
        }
        snprintf(field, k->size, "%s", value);
        return 0;
    case KEY_INT:
    case KEY_LONG:
        if (parse_long(value, k->min, k->max, &v) < 0) {
            snprintf(err, errlen, "%s: must be an integer from %lld to %lld", key, k->min, k->max);
            return -EINVAL;
        }
        if (k->type == KEY_INT)
            *(int *)field = (int)v;
        else if (k->size == sizeof(long long))
            *(long long *)field = v;
        else
            *(long *)field = (long)v;
        return 0;
    case KEY_BOOL:
        if (!strcmp(value, "on") || !strcmp(value, "true") || !strcmp(value, "yes") ||
            !strcmp(value, "1"))
            *(bool *)field = true;
        else if (!strcmp(value, "off") || !strcmp(value, "false") || !strcmp(value, "no") ||
                 !strcmp(value, "0"))
            *(bool *)field = false;
        else {
            snprintf(err, errlen, "%s: must be on or off", key);
            return -EINVAL;
        }
        return 0;
    case KEY_LEVEL:
        for (int i = 0; i < 4; i++)
            if (strcmp(value, level_names[i]) == 0) {
                c->log_level = i;
                return 0;
            }
        snprintf(err, errlen, "%s: must be debug, info, warning or error", key);
        return -EINVAL;
    case KEY_RECORDER_MODE:
        if (strcmp(value, "cpu") == 0)
            c->recorder_mode = CONFIG_RECORDER_CPU;
        else if (strcmp(value, "wall") == 0)
            c->recorder_mode = CONFIG_RECORDER_WALL;
        else {
            snprintf(err, errlen, "%s: must be cpu or wall", key);
            return -EINVAL;
        }
        return 0;
    case KEY_VERSION:
        if (strcmp(value, "5") == 0)
            c->mqtt_version = 5;
        else if (strcmp(value, "3.1.1") == 0)
            c->mqtt_version = 4;
        else {
            snprintf(err, errlen, "%s: must be 5 or 3.1.1", key);
            return -EINVAL;
        }
        return 0;
    case KEY_BROKERS: {
        struct config_broker list[CONFIG_MAX_BROKERS];

        /* Checked now, for an error with its line; the ports left out are known at the end. */
        if (*value && parse_brokers(value, 1, list, err, errlen) < 0)
            return -EINVAL;
        if (strlen(value) >= k->size) {
            snprintf(err, errlen, "%s: must be at most %zu characters", key, k->size - 1);
            return -EINVAL;
        }
        snprintf(field, k->size, "%s", value);
        return 0;
    }
    }
    return -EINVAL;
}

int config_load_file(struct config *c, const char *path, char *err, size_t errlen)
{
    char line[CONFIG_LINE_MAX], msg[CONFIG_ERR_MAX];
    unsigned lineno = 0;
    FILE *f;
    int r = 0;

    f = fopen(path, "re");
    if (!f) {
        r = -errno;
        snprintf(err, errlen, "cannot read config file %s: %s", path, strerror(-r));
        return r;
    }
    while (fgets(line, sizeof(line), f)) {
        char *hash, *eq, *key, *value;

        if (++lineno > CONFIG_LINES_MAX || (!strchr(line, '\n') && !feof(f))) {
            snprintf(err, errlen, "%s:%u: line too long or file too large", path, lineno);
            r = -EINVAL;
            goto out;
        }
        hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        key = trim(line);
        if (!*key)
            continue;
        eq = strchr(key, '=');
        if (!eq) {
            snprintf(err, errlen, "%s:%u: expected 'key = value'", path, lineno);
            r = -EINVAL;
            goto out;
        }
        *eq = '\0';
        value = trim(eq + 1);
        key = trim(key);
        r = config_set(c, key, value, msg, sizeof(msg));
        if (r < 0) {
            snprintf(err, errlen, "%s:%u: %s", path, lineno, msg);
            goto out;
        }
    }
out:
    fclose(f);
    return r;
}

static int read_password_file(struct config *c, char *err, size_t errlen)
{
    char buf[CONFIG_STR_MAX + 2];
    size_t n;
    FILE *f;
    int r = 0;

    f = fopen(c->password_file, "re");
    if (!f) {
        r = -errno;
        snprintf(err, errlen, "password_file: cannot read %s: %s", c->password_file, strerror(-r));
        return r;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    n = strlen(buf);
    if (n >= sizeof(c->password)) {
        snprintf(err, errlen, "password_file: the password is longer than %zu characters",
                 sizeof(c->password) - 1);
        r = -EINVAL;
        goto out;
    }
    memcpy(c->password, buf, n + 1);
out:
    fclose(f);
    return r;
}

/* The broker list from `broker`, else broker_host:broker_port; `broker` becomes its normal form,
 * the one the log and ping show. */
static int finish_brokers(struct config *c, char *err, size_t errlen)
{
    size_t n = 0;
    int count = 1;

    if (c->broker[0]) {
        count = parse_brokers(c->broker, c->broker_port, c->brokers, err, errlen);
        if (count < 0)
            return count;
    } else {
        if (!c->broker_host[0]) {
            snprintf(err, errlen, "broker_host: empty: name the broker (or list them in broker)");
            return -EINVAL;
        }
        snprintf(c->brokers[0].host, sizeof(c->brokers[0].host), "%s", c->broker_host);
        c->brokers[0].port = c->broker_port;
    }
    c->nbrokers = count;
    c->broker[0] = '\0';
    for (int i = 0; i < count && n < sizeof(c->broker); i++) {
        const struct config_broker *b = &c->brokers[i];
        bool v6 = strchr(b->host, ':') != NULL;

        n += (size_t)snprintf(c->broker + n, sizeof(c->broker) - n, "%s%s%s%s:%d", i ? ", " : "",
                              v6 ? "[" : "", b->host, v6 ? "]" : "", b->port);
    }
    return 0;
}

int config_finish(struct config *c, char *err, size_t errlen)
{
    char spec[CONFIG_STR_MAX];
    const char *p;
    int r;

    if (!topic_level_ok(c->node_id, false)) {
        snprintf(err, errlen, "node_id: must be a non-empty topic level without '/', '+' or '#'");
        return -EINVAL;
    }
    if (!topic_level_ok(c->topic_prefix, true) || c->topic_prefix[0] == '/') {
        snprintf(err, errlen, "topic_prefix: must be non-empty, without '+', '#' or a leading '/'");
        return -EINVAL;
    }
    if (!c->client_id[0])
        snprintf(c->client_id, sizeof(c->client_id), "profiler-agent-%s", c->node_id);
    r = finish_brokers(c, err, errlen);
    if (r < 0)
        return r;
    if (c->password_file[0]) {
        r = read_password_file(c, err, errlen);
        if (r < 0)
            return r;
    }
    if ((c->tls_cert_file[0] != 0) != (c->tls_key_file[0] != 0)) {
        snprintf(err, errlen, "tls_cert_file and tls_key_file must be given together");
        return -EINVAL;
    }
    if (target_spec_check(c->target) < 0) {
        snprintf(err, errlen,
                 "target: '%s' is not a target spec (self, pid:N, comm:NAME, "
                 "exe:PATH or pidfile:PATH)",
                 c->target);
        return -EINVAL;
    }
    for (p = c->allowed_targets; *p;) {
        size_t n = strcspn(p, ",");
        char *s;

        if (n >= sizeof(spec)) {
            snprintf(err, errlen, "allowed_targets: an entry is too long");
            return -EINVAL;
        }
        memcpy(spec, p, n);
        spec[n] = '\0';
        s = trim(spec);
        if (*s && target_spec_check(s) < 0) {
            snprintf(err, errlen, "allowed_targets: '%s' is not a target spec", s);
            return -EINVAL;
        }
        p += n;
        if (*p == ',')
            p++;
    }
    return 0;
}

bool config_target_allowed(const struct config *c, const char *spec)
{
    char entry[CONFIG_STR_MAX];
    const char *p;

    /* allowed_targets may hold empty entries ("a,,b"); they allow nothing. */
    if (!*spec)
        return false;
    if (strcmp(spec, c->target) == 0)
        return true;
    for (p = c->allowed_targets; *p;) {
        size_t n = strcspn(p, ",");

        if (n < sizeof(entry)) {
            memcpy(entry, p, n);
            entry[n] = '\0';
            if (strcmp(trim(entry), spec) == 0)
                return true;
        }
        p += n;
        if (*p == ',')
            p++;
    }
    return false;
}
