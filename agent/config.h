/* The agent's configuration: defaults, the `key = value` file and command-line overrides, as the
 * contract's configuration table says. Parsing only; nothing here opens sockets or files other
 * than the config and password files. */
#ifndef CONFIG_H
#define CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

#define CONFIG_ERR_MAX 512
#define CONFIG_STR_MAX 256
/* The most max_jobs may be; the agent sizes its per-job tables by it. */
#define CONFIG_MAX_JOBS 8
/* The most brokers `broker` may list: a failover list, not a fleet's address book. */
#define CONFIG_MAX_BROKERS 8

enum config_log_level { CONFIG_LOG_DEBUG, CONFIG_LOG_INFO, CONFIG_LOG_WARNING, CONFIG_LOG_ERROR };
/* What the flight recorder keeps: on-CPU samples, or those and the time threads are blocked. */
enum config_recorder_mode { CONFIG_RECORDER_CPU, CONFIG_RECORDER_WALL };

/* One broker of the failover list. */
struct config_broker {
    char host[CONFIG_STR_MAX]; /* a name or an address, IPv6 without its brackets */
    int port;
};

struct config {
    /* `broker` as given, and after config_finish the list it names, normalized ("h:1883, ...") */
    char broker[CONFIG_MAX_BROKERS * (CONFIG_STR_MAX + 8)];
    struct config_broker brokers[CONFIG_MAX_BROKERS]; /* in order of preference */
    int nbrokers;                                     /* 1.. after config_finish */
    char broker_host[CONFIG_STR_MAX];                 /* the one broker when `broker` is empty */
    int broker_port; /* and the port of every `broker` entry that names none */
    char username[CONFIG_STR_MAX];
    char password[CONFIG_STR_MAX];
    char password_file[PATH_MAX];
    char tls_ca_file[PATH_MAX];
    char tls_cert_file[PATH_MAX];
    char tls_key_file[PATH_MAX];
    char client_id[CONFIG_STR_MAX];
    int keepalive;
    int mqtt_version;         /* 5, or 4 for MQTT 3.1.1 */
    int heartbeat_seconds;    /* status and state published again this often; 0: never */
    bool heartbeat_discovery; /* the discovery config too */
    char node_id[64];
    char topic_prefix[CONFIG_STR_MAX];
    bool discovery;
    char discovery_prefix[CONFIG_STR_MAX];
    char output_dir[PATH_MAX];
    char database[PATH_MAX];
    char target[CONFIG_STR_MAX];
    char allowed_targets[4096];
    long max_payload_bytes;
    long max_file_bytes;           /* get_file's limit per file */
    int max_jobs;                  /* long jobs at once, 1..CONFIG_MAX_JOBS */
    int rate_limit;                /* commands per minute per action; 0: no limit */
    int retention_days;            /* runs and files older are deleted; 0: kept */
    long long retention_max_bytes; /* result files beyond this go, oldest first; 0: no cap */
    char schema_dir[PATH_MAX];
    int log_level;      /* enum config_log_level */
    bool python_exec;   /* actions may run the agent's scripts inside a Python target */
    int python_timeout; /* seconds a Python target has to run such a script */
    /* The flight recorder (flight.c): always sampling the target, the last minutes kept. */
    bool recorder;
    int recorder_frequency; /* Hz */
    int recorder_minutes;   /* what the ring keeps */
    int recorder_max_mb;    /* and at most this much memory */
    int recorder_mode;      /* enum config_recorder_mode */
    /* The stall watch (stall.c): a thread not back in its wait for stall_seconds (0: off). */
    int stall_seconds;
    char stall_thread[16]; /* MainThread, all, or a thread name (15 characters at most) */
};

/* Fills every field with its documented default (node_id from the host name). */
void config_defaults(struct config *c);
/* Sets one key from its text value. -ENOENT for an unknown key, -EINVAL for a bad value; err
 * gets a sentence naming the key ("keepalive: must be an integer from 5 to 3600"). */
int config_set(struct config *c, const char *key, const char *value, char *err, size_t errlen);
/* Reads a `key = value` file. Errors name the file, line and key. */
int config_load_file(struct config *c, const char *path, char *err, size_t errlen);
/* Derives what depends on other keys (client_id, password from password_file, the broker list)
 * and checks the whole (target spec syntax, allowed_targets). Call once after the file and
 * flags. */
int config_finish(struct config *c, char *err, size_t errlen);
/* True when spec is the configured target or one of allowed_targets. */
bool config_target_allowed(const struct config *c, const char *spec);
/* The keys, for --help and config.example checks: NULL-terminated. */
extern const char *const config_keys[];

#endif
