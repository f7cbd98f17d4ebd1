/* The agent's own log (see log.h): its messages about itself. Not the records of actions
 * (run.c) nor those of the background object loggers (watch.c). */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include "log.h"
#include "clock.h"

static int min_level = CONFIG_LOG_INFO;
static void (*sink_fn)(int, const char *, void *);
static void *sink_data;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const names[] = {"DEBUG", "INFO", "WARNING", "ERROR"};

void log_set_level(int level)
{
    min_level = level;
}

int log_get_level(void)
{
    return min_level;
}

void log_set_sink(void (*sink)(int, const char *, void *), void *userdata)
{
    pthread_mutex_lock(&lock);
    sink_fn = sink;
    sink_data = userdata;
    pthread_mutex_unlock(&lock);
}

void log_msg(int level, const char *fmt, ...)
{
    char text[2048], stamp[CLOCK_ISO_MAX];
    void (*fn)(int, const char *, void *);
    void *data;
    va_list ap;

    if (level < min_level)
        return;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    clock_iso8601(clock_realtime_us(), stamp, sizeof(stamp));
    fprintf(stderr, "%s %s %s\n", stamp, names[level], text);
    pthread_mutex_lock(&lock);
    fn = sink_fn;
    data = sink_data;
    pthread_mutex_unlock(&lock);
    if (fn && level >= CONFIG_LOG_WARNING)
        fn(level, text, data);
}
