/* Home Assistant's view of the agent: one retained device-based discovery config on
 * DISCOVERY_PREFIX/device/NODE/config (buttons, numbers, a text, switches, sensors that expire
 * when the heartbeat stops, an event),
 * the settings its numbers and text set on P/N/set/NAME (kept in the run store and handed to the
 * agent as the defaults of commands that omit those fields), the event published after each long
 * run, and the re-publication after Home Assistant's birth message. Not the MQTT session: it
 * publishes through the function it is given and is fed the messages the session routes to it. */
#ifndef DISCOVERY_H
#define DISCOVERY_H

#include <stdbool.h>
#include <stddef.h>
#include "agent.h"

struct discovery;

/* Loads the settings (stored values, else the schema defaults) into a's defaults, builds the
 * config and starts the thread that publishes it after a birth message. publish sends one QoS 1
 * message (0 or a negative errno); it is called from the network thread and that thread. */
int discovery_new(struct config *c, struct agent *a,
                  int (*publish)(void *userdata, const char *topic, const void *payload, size_t len,
                                 bool retain),
                  void *userdata, struct discovery **ret, char *err, size_t errlen);
/* Stops the thread. Accepts NULL. */
void discovery_free(struct discovery *d);
/* The topic Home Assistant's birth message arrives on, or NULL when discovery is off. */
const char *discovery_birth_topic(const struct discovery *d);
/* At every connect: publishes the config, or with discovery off an empty retained payload, which
 * removes what an earlier run published. */
void discovery_connected(struct discovery *d);
/* At every heartbeat: with heartbeat_discovery on, publishes the config again (a broker that
 * keeps retained messages per node shows it to Home Assistant on another node this way). */
void discovery_heartbeat(struct discovery *d);
/* A message on the birth topic: `online` re-publishes the config after a random 0.5-3 s. */
void discovery_birth(struct discovery *d, const void *payload, size_t len);
/* A message on P/N/set/NAME: a number or text setting (validated against the action's schema;
 * a bad value is logged and ignored) or a switch (ON/OFF runs the start or stop action). */
void discovery_set(struct discovery *d, const char *name, const void *payload, size_t len);
/* After each result: a long action's run becomes a `finished` or `failed` event on P/N/event. */
void discovery_run_finished(struct discovery *d, const struct run *run);

#endif
