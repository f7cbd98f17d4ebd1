/* The MQTT session: libmosquitto driven by a network thread of our own, which connects to the
 * first broker of the `broker` list that answers, moves on when it fails and back to a preferred
 * one when it returns; MQTT 5 with a fall-back to 3.1.1 (a refused or an unanswered CONNECT), a
 * persistent session under both; commands in on P/ACTION and P/N/ACTION, results, log records,
 * progress and state out, a retained `online`/`offline` status with a last will, and a heartbeat
 * that publishes status and state again for brokers that keep neither across their nodes.
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
/* Starts the threads that connect (retrying in the background until a broker answers), hand
 * commands to a and publish the heartbeat. */
int mqtt_start(struct mqtt *s, struct agent *a, char *err, size_t errlen);
/* Publishes the retained `offline`, disconnects cleanly (ending the broker's session: commands
 * sent from then on wait for no one) and stops the threads. */
void mqtt_stop(struct mqtt *s);
void mqtt_free(struct mqtt *s);

#endif
