/* The MQTT session: libmosquitto in its threaded mode, MQTT 5 with a fall-back to 3.1.1,
 * commands in on P/ACTION and P/N/ACTION, results, log records, progress and state out, a
 * retained `online`/`offline` status with a last will, and reconnection after broker restarts.
 * libmosquitto's MOSQ_ERR_* codes are translated here and nowhere else. */
#ifndef MQTT_H
#define MQTT_H

#include <stddef.h>
#include "agent.h"

struct mqtt;

/* The output callbacks to hand to agent_init; userdata must be the struct mqtt. */
extern const struct run_output mqtt_output;

/* Allocates the session (not yet connected). */
int mqtt_new(struct config *c, struct mqtt **ret, char *err, size_t errlen);
/* Connects (retrying in the background until the broker answers) and starts handing commands to
 * a. */
int mqtt_start(struct mqtt *s, struct agent *a, char *err, size_t errlen);
/* Publishes the retained `offline`, disconnects cleanly and stops the network thread. */
void mqtt_stop(struct mqtt *s);
void mqtt_free(struct mqtt *s);

#endif
