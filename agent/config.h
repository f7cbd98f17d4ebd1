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

enum config_log_level { CONFIG_LOG_DEBUG, CONFIG_LOG_INFO, CONFIG_LOG_WARNING, CONFIG_LOG_ERROR };

struct config {
    char broker_host[CONFIG_STR_MAX];
    int broker_port;
    char username[CONFIG_STR_MAX];
    char password[CONFIG_STR_MAX];
    char password_file[PATH_MAX];
    char tls_ca_file[PATH_MAX];
    char tls_cert_file[PATH_MAX];
    char tls_key_file[PATH_MAX];
    char client_id[CONFIG_STR_MAX];
    int keepalive;
    int mqtt_version; /* 5, or 4 for MQTT 3.1.1 */
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
};

/* Fills every field with its documented default (node_id from the host name). */
void config_defaults(struct config *c);
/* Sets one key from its text value. -ENOENT for an unknown key, -EINVAL for a bad value; err
 * gets a sentence naming the key ("keepalive: must be an integer from 5 to 3600"). */
int config_set(struct config *c, const char *key, const char *value, char *err, size_t errlen);
/* Reads a `key = value` file. Errors name the file, line and key. */
int config_load_file(struct config *c, const char *path, char *err, size_t errlen);
/* Derives what depends on other keys (client_id, password from password_file) and checks the
 * whole (target spec syntax, allowed_targets). Call once after the file and flags. */
int config_finish(struct config *c, char *err, size_t errlen);
/* True when spec is the configured target or one of allowed_targets. */
bool config_target_allowed(const struct config *c, const char *spec);
/* The keys, for --help and config.example checks: NULL-terminated. */
extern const char *const config_keys[];

#endif
