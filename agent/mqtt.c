/* The MQTT session (see mqtt.h). Commands are handled on libmosquitto's network thread; long
 * actions leave it for job threads (agent.c), so the loop keeps answering. Everything published
 * goes through publish(), which knows the protocol version in use. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include "clock.h"
#include "discovery.h"
#include "log.h"
#include "mqtt.h"

#define TOPIC_MAX 512
#define OFFLINE_WAIT_MS 2000
/* How long the broker keeps our session (subscriptions, and commands sent meanwhile) while we are
 * away: enough for a broker or agent restart, short enough that a command is not run an hour late.
 * A clean stop ends the session at once. */
#define SESSION_EXPIRY_S 300

struct mqtt {
    struct mosquitto *m;
    struct config *c;
    struct agent *agent;
    int version; /* MQTT_PROTOCOL_V5 or MQTT_PROTOCOL_V311 */
    atomic_bool connected;
    atomic_bool stopping;
    bool was_connected;
    int last_refusal;
    char t_status[TOPIC_MAX], t_result[TOPIC_MAX], t_log[TOPIC_MAX], t_state[TOPIC_MAX];
    char t_progress[TOPIC_MAX];
    char sub_all[TOPIC_MAX], sub_node[TOPIC_MAX], sub_set[TOPIC_MAX], set_prefix[TOPIC_MAX];
    struct discovery *discovery; /* from mqtt_start on */
    pthread_mutex_t lock;
    pthread_cond_t published;
    int offline_mid;
    bool offline_done;
    pthread_t fallback; /* the switch to MQTT 3.1.1, when one was needed */
    bool fallback_started;
};

static int errno_of(int rc)
{
    switch (rc) {
    case MOSQ_ERR_SUCCESS:
        return 0;
    case MOSQ_ERR_NOMEM:
        return -ENOMEM;
    case MOSQ_ERR_INVAL:
    case MOSQ_ERR_MALFORMED_UTF8:
        return -EINVAL;
    case MOSQ_ERR_NO_CONN:
    case MOSQ_ERR_CONN_LOST:
        return -ENOTCONN;
    case MOSQ_ERR_PAYLOAD_SIZE:
    case MOSQ_ERR_OVERSIZE_PACKET:
        return -EMSGSIZE;
    case MOSQ_ERR_ERRNO:
        return errno ? -errno : -EIO;
    default:
        return -EIO;
    }
}

static int publish(struct mqtt *s, const char *topic, const void *payload, size_t len, bool retain,
                   const struct reply_to *reply, int *mid)
{
    mosquitto_property *props = NULL;
    int rc;

    if (len > INT32_MAX)
        return -EMSGSIZE;
    if (reply && reply->correlation_len > 0 && s->version == MQTT_PROTOCOL_V5)
        mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, reply->correlation,
                                      (uint16_t)reply->correlation_len);
    if (s->version == MQTT_PROTOCOL_V5)
        rc = mosquitto_publish_v5(s->m, mid, topic, (int)len, payload, 1, retain, props);
    else
        rc = mosquitto_publish(s->m, mid, topic, (int)len, payload, 1, retain);
    mosquitto_property_free_all(&props);
    return errno_of(rc);
}

static void out_record(struct run *run, const char *text, void *userdata)
{
    struct mqtt *s = userdata;

    (void)run;
    publish(s, s->t_log, text, strlen(text), false, NULL, NULL);
}

static void out_result(struct run *run, const char *json, void *userdata)
{
    struct mqtt *s = userdata;
    int r;

    r = publish(s, s->t_result, json, strlen(json), false, NULL, NULL);
    if (r < 0)
        log_warning("cannot publish the result of %s: %s", run->action_name, strerror(-r));
    if (run->reply.topic && s->version == MQTT_PROTOCOL_V5)
        publish(s, run->reply.topic, json, strlen(json), false, &run->reply, NULL);
    discovery_run_finished(s->discovery, run);
}

static int discovery_publish(void *userdata, const char *topic, const void *payload, size_t len,
                             bool retain)
{
    return publish(userdata, topic, payload, len, retain, NULL, NULL);
}

static void out_progress(struct run *run, const char *json, void *userdata)
{
    struct mqtt *s = userdata;

    (void)run;
    publish(s, s->t_progress, json, strlen(json), false, NULL, NULL);
}

static int out_file(struct run *run, const char *name, const void *data, size_t len, void *userdata)
{
    struct mqtt *s = userdata;
    char topic[TOPIC_MAX];

    (void)run;
    if (!*name || strpbrk(name, "/+#"))
        return -EINVAL;
    if ((size_t)snprintf(topic, sizeof(topic), "%s/%s/file/%s", s->c->topic_prefix, s->c->node_id,
                         name) >= sizeof(topic))
        return -ENAMETOOLONG;
    return publish(s, topic, data, len, false, NULL, NULL);
}

static void out_state(struct agent *a, void *userdata)
{
    struct mqtt *s = userdata;
    char *json = agent_state_json(a);

    if (json)
        publish(s, s->t_state, json, strlen(json), true, NULL, NULL);
    free(json);
}

const struct run_output mqtt_output = {
    .record = out_record,
    .result = out_result,
    .progress = out_progress,
    .file = out_file,
    .state_changed = out_state,
};

static void log_sink(int level, const char *text, void *userdata)
{
    struct mqtt *s = userdata;

    (void)level;
    if (atomic_load(&s->connected))
        publish(s, s->t_log, text, strlen(text), false, NULL, NULL);
}

/* asyncio's debug rule: in debug mode every callback is timed, and one that holds the loop
 * longer than slow_callback_duration is named in a warning. */
static void loop_timing(struct mqtt *s, const char *what, int64_t t0)
{
    int64_t us = clock_monotonic_us() - t0;

    if (!atomic_load(&s->agent->host.debug))
        return;
    if (us > RUN_SLOW_CALLBACK_US)
        log_warning("Executing <%s> took %.3f seconds", what, (double)us / 1e6);
    else
        log_info("Executing <%s> took %.3f seconds", what, (double)us / 1e6);
    if (us <= RUN_SLOW_CALLBACK_US) {
        char text[300];

        snprintf(text, sizeof(text), "Executing <%s> took %.3f seconds", what, (double)us / 1e6);
        publish(s, s->t_log, text, strlen(text), false, NULL, NULL);
    }
}

static const char *refusal_text(int rc)
{
    switch (rc) {
    case 4:
    case 5:
    case MQTT_RC_BAD_USERNAME_OR_PASSWORD:
    case MQTT_RC_NOT_AUTHORIZED:
        return "bad user name or password, or not authorized";
    case 2:
    case MQTT_RC_CLIENTID_NOT_VALID:
        return "client id rejected";
    case 3:
    case MQTT_RC_SERVER_UNAVAILABLE:
    case MQTT_RC_SERVER_BUSY:
        return "server unavailable";
    default:
        return mosquitto_reason_string(rc);
    }
}

/* libmosquitto reconnects with the CONNECT properties it was first given, and refuses to send
 * MQTT 5 properties over 3.1.1: only a new connect without them switches. That cannot happen on
 * the network thread, which this stops and starts again. */
static void *fallback_main(void *arg)
{
    struct mqtt *s = arg;
    int rc;

    mosquitto_disconnect(s->m);
    mosquitto_loop_stop(s->m, false);
    if (atomic_load(&s->stopping))
        return NULL;
    mosquitto_int_option(s->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    rc = mosquitto_connect_bind_v5(s->m, s->c->broker_host, s->c->broker_port, s->c->keepalive,
                                   NULL, NULL);
    if (rc != MOSQ_ERR_SUCCESS)
        log_warning("cannot reach broker %s:%d yet (%s); retrying", s->c->broker_host,
                    s->c->broker_port,
                    rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
    rc = mosquitto_loop_start(s->m);
    if (rc != MOSQ_ERR_SUCCESS)
        log_error("cannot start the MQTT network thread again: %s", mosquitto_strerror(rc));
    return NULL;
}

static void on_connect(struct mosquitto *m, void *userdata, int rc, int flags,
                       const mosquitto_property *props)
{
    struct mqtt *s = userdata;
    int64_t t0 = clock_monotonic_us();
    int opts = 0;

    (void)flags;
    (void)props;
    if (rc != 0) {
        if (s->version == MQTT_PROTOCOL_V5 &&
            (rc == MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION || rc == 1)) {
            log_warning("broker %s:%d does not speak MQTT 5; using MQTT 3.1.1 (no response "
                        "topics: match results by request_id)",
                        s->c->broker_host, s->c->broker_port);
            s->version = MQTT_PROTOCOL_V311;
            pthread_mutex_lock(&s->lock);
            if (!s->fallback_started && pthread_create(&s->fallback, NULL, fallback_main, s) == 0)
                s->fallback_started = true;
            pthread_mutex_unlock(&s->lock);
            return;
        }
        if (rc != s->last_refusal)
            log_error("broker %s:%d refused the connection: %s; retrying", s->c->broker_host,
                      s->c->broker_port, refusal_text(rc));
        s->last_refusal = rc;
        return;
    }
    s->last_refusal = 0;
    atomic_store(&s->connected, true);
    log_info("connected to broker %s:%d as %s (MQTT %s)%s", s->c->broker_host, s->c->broker_port,
             s->c->client_id, s->version == MQTT_PROTOCOL_V5 ? "5" : "3.1.1",
             s->was_connected ? " again" : "");
    s->was_connected = true;
    /* Retain-as-published lets a command published retained while we are subscribed be told
     * apart (the broker would clear the flag otherwise); send-retained-never keeps old ones away.
     */
    if (s->version == MQTT_PROTOCOL_V5)
        opts = MQTT_SUB_OPT_SEND_RETAIN_NEVER | MQTT_SUB_OPT_NO_LOCAL |
               MQTT_SUB_OPT_RETAIN_AS_PUBLISHED;
    mosquitto_subscribe_v5(m, NULL, s->sub_all, 1, opts, NULL);
    mosquitto_subscribe_v5(m, NULL, s->sub_node, 1, opts, NULL);
    mosquitto_subscribe_v5(m, NULL, s->sub_set, 1, opts, NULL);
    /* Home Assistant's birth message is not retained; a retained one only re-sends the config. */
    if (discovery_birth_topic(s->discovery))
        mosquitto_subscribe_v5(m, NULL, discovery_birth_topic(s->discovery), 1,
                               s->version == MQTT_PROTOCOL_V5 ? MQTT_SUB_OPT_NO_LOCAL : 0, NULL);
    publish(s, s->t_status, "online", 6, true, NULL, NULL);
    out_state(s->agent, s);
    discovery_connected(s->discovery);
    loop_timing(s, "Handle on_connect", t0);
}

static void on_disconnect(struct mosquitto *m, void *userdata, int rc,
                          const mosquitto_property *props)
{
    struct mqtt *s = userdata;

    (void)m;
    (void)props;
    if (atomic_exchange(&s->connected, false) && !atomic_load(&s->stopping))
        log_warning("lost the connection to broker %s:%d (%s); reconnecting", s->c->broker_host,
                    s->c->broker_port, mosquitto_strerror(rc));
}

/* The broker acknowledges each record with a PUBACK. If our kernel delays its TCP ACK of the last
 * one (up to 40 ms), a broker with Nagle's algorithm on (mosquitto's default) holds the next
 * command for us until that ACK: every command right after a busy one would wait. Asking for a
 * quick ACK after each PUBACK avoids it. */
static void ack_quickly(struct mosquitto *m)
{
    int one = 1, fd = mosquitto_socket(m);

    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
}

static void on_publish(struct mosquitto *m, void *userdata, int mid, int rc,
                       const mosquitto_property *props)
{
    struct mqtt *s = userdata;

    (void)rc;
    (void)props;
    ack_quickly(m);
    pthread_mutex_lock(&s->lock);
    if (mid == s->offline_mid) {
        s->offline_done = true;
        pthread_cond_broadcast(&s->published);
    }
    pthread_mutex_unlock(&s->lock);
}

/* The action a topic names: P/ACTION or P/N/ACTION, NULL for anything else (our own output
 * topics among them). */
static const char *topic_action(struct mqtt *s, const char *topic)
{
    static const char *const outputs[] = {"status", "result", "log", "progress",
                                          "state",  "event",  NULL};
    size_t plen = strlen(s->c->topic_prefix), nlen = strlen(s->c->node_id);
    const char *rest;

    if (strncmp(topic, s->c->topic_prefix, plen) != 0 || topic[plen] != '/')
        return NULL;
    rest = topic + plen + 1;
    if (strncmp(rest, s->c->node_id, nlen) == 0 && rest[nlen] == '/') {
        rest += nlen + 1;
        for (int i = 0; outputs[i]; i++)
            if (strcmp(rest, outputs[i]) == 0)
                return NULL;
    }
    if (!*rest || strchr(rest, '/'))
        return NULL;
    return rest;
}

/* The NAME of P/N/set/NAME, or NULL. */
static const char *setting_name(struct mqtt *s, const char *topic)
{
    size_t n = strlen(s->set_prefix);

    if (strncmp(topic, s->set_prefix, n) != 0 || !topic[n] || strchr(topic + n, '/'))
        return NULL;
    return topic + n;
}

static void on_message(struct mosquitto *m, void *userdata, const struct mosquitto_message *msg,
                       const mosquitto_property *props)
{
    struct mqtt *s = userdata;
    struct reply_to reply = {0};
    const char *action = topic_action(s, msg->topic), *setting;
    int64_t t0 = clock_monotonic_us();
    char what[160];
    uint16_t clen = 0;

    (void)m;
    if (discovery_birth_topic(s->discovery) &&
        strcmp(msg->topic, discovery_birth_topic(s->discovery)) == 0) {
        discovery_birth(s->discovery, msg->payload,
                        msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0);
        return;
    }
    setting = setting_name(s, msg->topic);
    if (!action && !setting)
        return;
    if (msg->retain) {
        /* An empty retained message is how a retained command is cleared, not a command. */
        if (msg->payloadlen == 0)
            return;
        log_warning("ignored a retained command on %s: retained commands are never run (clear "
                    "it with: mosquitto_pub -r -n -t '%s')",
                    msg->topic, msg->topic);
        return;
    }
    if (setting) {
        discovery_set(s->discovery, setting, msg->payload,
                      msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0);
        loop_timing(s, "Handle setting", t0);
        return;
    }
    if (props) {
        mosquitto_property_read_string(props, MQTT_PROP_RESPONSE_TOPIC, &reply.topic, false);
        mosquitto_property_read_binary(props, MQTT_PROP_CORRELATION_DATA, &reply.correlation, &clen,
                                       false);
        reply.correlation_len = clen;
    }
    agent_command(s->agent, action, msg->payload, msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0,
                  &reply);
    free(reply.topic);
    free(reply.correlation);
    snprintf(what, sizeof(what), "Handle dispatch of %.64s", action);
    loop_timing(s, what, t0);
}

int mqtt_new(struct config *c, struct mqtt **ret, char *err, size_t errlen)
{
    struct mqtt *s;
    int rc;

    mosquitto_lib_init();
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->c = c;
    s->version = c->mqtt_version == 5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311;
    s->offline_mid = -1;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->published, NULL);
    snprintf(s->t_status, TOPIC_MAX, "%s/%s/status", c->topic_prefix, c->node_id);
    snprintf(s->t_result, TOPIC_MAX, "%s/%s/result", c->topic_prefix, c->node_id);
    snprintf(s->t_log, TOPIC_MAX, "%s/%s/log", c->topic_prefix, c->node_id);
    snprintf(s->t_state, TOPIC_MAX, "%s/%s/state", c->topic_prefix, c->node_id);
    snprintf(s->t_progress, TOPIC_MAX, "%s/%s/progress", c->topic_prefix, c->node_id);
    snprintf(s->sub_all, TOPIC_MAX, "%s/+", c->topic_prefix);
    snprintf(s->sub_node, TOPIC_MAX, "%s/%s/+", c->topic_prefix, c->node_id);
    snprintf(s->sub_set, TOPIC_MAX, "%s/%s/set/+", c->topic_prefix, c->node_id);
    snprintf(s->set_prefix, TOPIC_MAX, "%s/%s/set/", c->topic_prefix, c->node_id);
    /* Under MQTT 5 a persistent session: the broker keeps our subscriptions across a broker
     * restart (when it persists them) and queues commands while we reconnect, for at most
     * SESSION_EXPIRY_S. MQTT 3.1.1 has no expiry, so a session there would pile up every command
     * sent while the agent is stopped: a clean one instead. Either way libmosquitto queues our
     * QoS 1 results while the connection is down and sends them when it is back. */
    s->m = mosquitto_new(c->client_id, s->version != MQTT_PROTOCOL_V5, s);
    if (!s->m) {
        snprintf(err, errlen, "cannot create an MQTT client: %s", strerror(errno));
        mqtt_free(s);
        return -ENOMEM;
    }
    mosquitto_int_option(s->m, MOSQ_OPT_PROTOCOL_VERSION, s->version);
    mosquitto_int_option(s->m, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_connect_v5_callback_set(s->m, on_connect);
    mosquitto_disconnect_v5_callback_set(s->m, on_disconnect);
    mosquitto_message_v5_callback_set(s->m, on_message);
    mosquitto_publish_v5_callback_set(s->m, on_publish);
    mosquitto_reconnect_delay_set(s->m, 1, 2, true);
    rc = mosquitto_will_set_v5(s->m, s->t_status, 7, "offline", 1, true, NULL);
    if (rc == MOSQ_ERR_SUCCESS && c->username[0])
        rc = mosquitto_username_pw_set(s->m, c->username, c->password[0] ? c->password : NULL);
    if (rc == MOSQ_ERR_SUCCESS && c->tls_ca_file[0])
        rc = mosquitto_tls_set(s->m, c->tls_ca_file, NULL,
                               c->tls_cert_file[0] ? c->tls_cert_file : NULL,
                               c->tls_key_file[0] ? c->tls_key_file : NULL, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        snprintf(err, errlen, "cannot set up the MQTT client: %s", mosquitto_strerror(rc));
        mqtt_free(s);
        return errno_of(rc);
    }
    *ret = s;
    return 0;
}

int mqtt_start(struct mqtt *s, struct agent *a, char *err, size_t errlen)
{
    mosquitto_property *props = NULL;
    int rc, r;

    s->agent = a;
    r = discovery_new(s->c, a, discovery_publish, s, &s->discovery, err, errlen);
    if (r < 0)
        return r;
    log_set_sink(log_sink, s);
    /* The session expiry rides on CONNECT, which only the blocking connect can carry; the
     * network thread reconnects with the same properties. MQTT 3.1.1 ignores them (its session
     * lasts as long as the broker's persistent_client_expiration). */
    rc = MOSQ_ERR_SUCCESS;
    if (s->version == MQTT_PROTOCOL_V5)
        rc = mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
                                          SESSION_EXPIRY_S);
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_connect_bind_v5(s->m, s->c->broker_host, s->c->broker_port, s->c->keepalive,
                                       NULL, props);
    mosquitto_property_free_all(&props);
    if (rc != MOSQ_ERR_SUCCESS)
        log_warning("cannot reach broker %s:%d yet (%s); retrying", s->c->broker_host,
                    s->c->broker_port,
                    rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
    rc = mosquitto_loop_start(s->m);
    if (rc != MOSQ_ERR_SUCCESS) {
        snprintf(err, errlen, "cannot start the MQTT network thread: %s", mosquitto_strerror(rc));
        return errno_of(rc);
    }
    return 0;
}

void mqtt_stop(struct mqtt *s)
{
    struct timespec deadline;
    bool fallback;
    int mid;

    atomic_store(&s->stopping, true);
    log_set_sink(NULL, NULL);
    pthread_mutex_lock(&s->lock);
    fallback = s->fallback_started;
    pthread_mutex_unlock(&s->lock);
    if (fallback)
        pthread_join(s->fallback, NULL);
    if (atomic_load(&s->connected)) {
        /* Held across the publish so on_publish, on the network thread, sees offline_mid. */
        pthread_mutex_lock(&s->lock);
        s->offline_done = false;
        if (publish(s, s->t_status, "offline", 7, true, NULL, &mid) == 0) {
            s->offline_mid = mid;
            clock_gettime(CLOCK_REALTIME, &deadline);
            deadline.tv_sec += OFFLINE_WAIT_MS / 1000;
            while (!s->offline_done)
                if (pthread_cond_timedwait(&s->published, &s->lock, &deadline) != 0)
                    break;
        }
        pthread_mutex_unlock(&s->lock);
    }
    /* A stopped agent is not coming back soon: commands sent from now on must not wait in the
     * broker to run at its next start. */
    if (s->version == MQTT_PROTOCOL_V5) {
        mosquitto_property *props = NULL;

        if (mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, 0) ==
            MOSQ_ERR_SUCCESS)
            mosquitto_disconnect_v5(s->m, MQTT_RC_NORMAL_DISCONNECTION, props);
        else
            mosquitto_disconnect(s->m);
        mosquitto_property_free_all(&props);
    } else {
        mosquitto_disconnect(s->m);
    }
    mosquitto_loop_stop(s->m, false);
}

void mqtt_free(struct mqtt *s)
{
    if (!s)
        return;
    /* Here, not in mqtt_stop: job threads left running at a stop still report their runs. */
    discovery_free(s->discovery);
    mosquitto_destroy(s->m);
    pthread_cond_destroy(&s->published);
    pthread_mutex_destroy(&s->lock);
    free(s);
    mosquitto_lib_cleanup();
}
