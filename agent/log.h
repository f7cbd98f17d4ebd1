/* The agent's own log: one line per message on stderr ("2026-11-25T08:30:00.123Z WARNING text"),
 * and messages of warning level and above also handed to a sink (the MQTT session publishes them
 * on P/N/log). The records an action produces are not log messages; see run.h. */
#ifndef LOG_H
#define LOG_H

#include "config.h"

void log_set_level(int level);
int log_get_level(void);
/* sink is called from any thread, without the log lock held. NULL removes it. */
void log_set_sink(void (*sink)(int level, const char *text, void *userdata), void *userdata);
void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(CONFIG_LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(CONFIG_LOG_INFO, __VA_ARGS__)
#define log_warning(...) log_msg(CONFIG_LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_msg(CONFIG_LOG_ERROR, __VA_ARGS__)

#endif
