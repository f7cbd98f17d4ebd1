/* The MQTT session (see mqtt.h). The network thread (net_main) tries the brokers in order and
 * runs libmosquitto's loop on the connection it gets; commands are handled on it, and long
 * actions leave it for job threads (agent.c), so the loop keeps answering. The watch thread
 * publishes the heartbeat and looks for a preferred broker to come back. Everything published goes
 * through publish(), which knows the protocol version in use. */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
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
/* What may wait in libmosquitto's queue, in memory, for a broker to come back. */
#define OFFLINE_MAX_BYTES (16u << 20)
#define OFFLINE_WAIT_MS 2000
/* How long the broker keeps our session (subscriptions, and commands sent meanwhile) while we are
 * away: enough for a broker or agent restart, short enough that a command is not run an hour late.
 * A clean stop ends the session at once. */
#define SESSION_EXPIRY_S 300
/* The longest the network thread stays in libmosquitto's loop between its own checks (a stop, a
 * move back to a preferred broker, a CONNECT left unanswered). */
#define LOOP_WAIT_MS 1000
/* A broker that accepts no TCP connection within this is skipped: libmosquitto's own connect
 * would wait for the kernel to give up, two minutes on a host that drops packets. */
#define CONNECT_TIMEOUT_MS 5000
#define CONNACK_TIMEOUT_US (10 * 1000000LL)
/* Waits between rounds of the list when no broker answered, as libmosquitto's own backoff. */
#define RETRY_FIRST_US 1000000LL
#define RETRY_MAX_US 2000000LL
/* How often a preferred broker is tried while on another one, doubled after each move back that
 * did not hold (a broker that accepts TCP but not us), up to the maximum. */
#define PROBE_EVERY_US (5 * 1000000LL)
#define PROBE_EVERY_MAX_US (300 * 1000000LL)
#define PROBE_TIMEOUT_MS 2000
/* The same failure of one broker is logged again at most this often. */
#define FAILURE_LOG_US (60 * 1000000LL)
#define ADDRESS_MAX (CONFIG_STR_MAX + 8)
#define REASON_MAX 160

/* One broker of the list, as the network thread knows it. */
struct link {
    const struct config_broker *b;
    char address[ADDRESS_MAX]; /* host:port, [v6]:port */
    int version;               /* what to speak to it: MQTT_PROTOCOL_V5 or MQTT_PROTOCOL_V311 */
    bool version_guessed;      /* 3.1.1 only because an MQTT 5 CONNECT was closed unanswered */
    bool told_311;             /* the switch to 3.1.1 is in the log */
    bool told_qos0;            /* and the one to QoS 0 subscriptions */
    char failure[REASON_MAX];  /* the last failure logged, when, and how many since */
    int64_t failure_logged_us;
    unsigned failures_since;
};

enum attempt { ATTEMPT_FAILED, ATTEMPT_AGAIN, ATTEMPT_DEGRADE, ATTEMPT_ENDED };

/* What publish() does with a message while no broker is connected. Results always wait: they are
 * few and small, and the one thing a commander must get. A run's log records, files and events
 * wait while the waiting messages stay under OFFLINE_MAX_BYTES, and are dropped and counted past
 * it. Progress is stale by the time a broker is back, and state, status and discovery are
 * published afresh on connecting: those are dropped at once. */
enum offline { OFFLINE_KEEP, OFFLINE_BOUNDED, OFFLINE_DROP };

struct mqtt {
    struct mosquitto *m;
    struct config *c;
    struct agent *agent;
    struct link links[CONFIG_MAX_BROKERS];
    int nlinks;
    atomic_int version; /* of the connection in use: MQTT_PROTOCOL_V5 or MQTT_PROTOCOL_V311 */
    atomic_bool connected;
    atomic_bool stopping; /* mqtt_stop began: no new connection */
    atomic_bool quit;     /* the threads leave */
    atomic_int go_back;   /* a preferred broker the watch thread found answering; -1: none */
    atomic_uint unacked;  /* QoS 1 messages the broker has not acknowledged, queued ones too */
    atomic_size_t offline_bytes; /* queued while no broker was connected, since the last connect */
    atomic_uint offline_dropped; /* and dropped past OFFLINE_MAX_BYTES */
    /* The network thread's alone. */
    bool acked;              /* the CONNACK of this attempt accepted us */
    int refusal;             /* or refused us with this code */
    unsigned nsubs, subacks; /* subscriptions made and acknowledged in this attempt */
    bool session_stale; /* a QoS 0 connection was used: the session may hold commands run then */
    bool moving;        /* we are leaving the broker for a preferred one */
    int moving_from;    /* the broker left for a preferred one; -1: none */
    bool was_connected;
    char t_status[TOPIC_MAX], t_result[TOPIC_MAX], t_log[TOPIC_MAX], t_state[TOPIC_MAX];
    char t_progress[TOPIC_MAX];
    char sub_all[TOPIC_MAX], sub_node[TOPIC_MAX], sub_set[TOPIC_MAX], set_prefix[TOPIC_MAX];
    struct discovery *discovery; /* from mqtt_start on */
    pthread_mutex_t lock;        /* guards what follows */
    pthread_cond_t published;    /* the offline message acknowledged, or the connection ended */
    pthread_cond_t wake;         /* on CLOCK_MONOTONIC: ends the threads' waits early */
    int cur;                     /* the broker in use or being tried */
    int sub_qos;                 /* of its subscriptions: 1, or 0 where QoS 1 ones failed */
    int64_t connected_at_us;     /* wall clock; 0 while not connected */
    int64_t probe_every_us;
    int offline_mid;
    bool offline_done;
    pthread_t net, watch;
    bool threads_started;
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

/* 0 when sent; 1 when queued: a QoS 1 message while no broker is connected stays in libmosquitto's
 * queue and goes out once one is; a negative errno when it is lost (-ENOTCONN: dropped, as
 * offline says). */
static int publish(struct mqtt *s, const char *topic, const void *payload, size_t len, bool retain,
                   enum offline offline, const struct reply_to *reply, int *mid)
{
    mosquitto_property *props = NULL;
    int rc;

    if (len > INT32_MAX)
        return -EMSGSIZE;
    if (!atomic_load(&s->connected) && offline != OFFLINE_KEEP) {
        if (offline == OFFLINE_DROP)
            return -ENOTCONN;
        if (atomic_fetch_add(&s->offline_bytes, len) + len > OFFLINE_MAX_BYTES) {
            atomic_fetch_sub(&s->offline_bytes, len);
            atomic_fetch_add(&s->offline_dropped, 1);
            return -ENOTCONN;
        }
    } else if (!atomic_load(&s->connected)) {
        atomic_fetch_add(&s->offline_bytes, len);
    }
    if (reply && reply->correlation_len > 0 && atomic_load(&s->version) == MQTT_PROTOCOL_V5)
        mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, reply->correlation,
                                      (uint16_t)reply->correlation_len);
    rc = mosquitto_publish_v5(s->m, mid, topic, (int)len, payload, 1, retain, props);
    mosquitto_property_free_all(&props);
    if (rc == MOSQ_ERR_SUCCESS || rc == MOSQ_ERR_NO_CONN)
        atomic_fetch_add(&s->unacked, 1);
    return rc == MOSQ_ERR_NO_CONN ? 1 : errno_of(rc);
}

static void out_record(struct run *run, const char *text, void *userdata)
{
    struct mqtt *s = userdata;

    (void)run;
    publish(s, s->t_log, text, strlen(text), false, OFFLINE_BOUNDED, NULL, NULL);
}

static void out_result(struct run *run, const char *json, void *userdata)
{
    struct mqtt *s = userdata;
    int r;

    r = publish(s, s->t_result, json, strlen(json), false, OFFLINE_KEEP, NULL, NULL);
    if (r < 0)
        log_warning("cannot publish the result of %s: %s", run->action_name, strerror(-r));
    else if (r > 0)
        log_info("the result of %s is queued: no broker is connected now, and it goes out as soon "
                 "as one is",
                 run->action_name);
    if (run->reply.topic && atomic_load(&s->version) == MQTT_PROTOCOL_V5)
        publish(s, run->reply.topic, json, strlen(json), false, OFFLINE_KEEP, &run->reply, NULL);
    discovery_run_finished(s->discovery, run);
}

static int discovery_publish(void *userdata, const char *topic, const void *payload, size_t len,
                             bool retain)
{
    /* Retained: a config, published afresh on connecting; else a run's event. */
    return publish(userdata, topic, payload, len, retain, retain ? OFFLINE_DROP : OFFLINE_BOUNDED,
                   NULL, NULL);
}

static void out_progress(struct run *run, const char *json, void *userdata)
{
    struct mqtt *s = userdata;

    (void)run;
    publish(s, s->t_progress, json, strlen(json), false, OFFLINE_DROP, NULL, NULL);
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
    return publish(s, topic, data, len, false, OFFLINE_BOUNDED, NULL, NULL);
}

static void out_state(struct agent *a, void *userdata)
{
    struct mqtt *s = userdata;
    char *json = agent_state_json(a);

    if (json)
        publish(s, s->t_state, json, strlen(json), true, OFFLINE_DROP, NULL, NULL);
    free(json);
}

static void out_event(const char *json, bool retain, void *userdata)
{
    struct mqtt *s = userdata;
    char topic[TOPIC_MAX];

    snprintf(topic, sizeof(topic), "%s/%s/event", s->c->topic_prefix, s->c->node_id);
    if (publish(s, topic, json, strlen(json), retain, OFFLINE_BOUNDED, NULL, NULL) < 0)
        log_warning("cannot publish an event on %s", topic);
}

static void out_connection(struct json_object *into, void *userdata)
{
    struct mqtt *s = userdata;
    struct json_object *o = json_object_new_object();
    char stamp[CLOCK_ISO_MAX];

    pthread_mutex_lock(&s->lock);
    json_object_object_add(o, "address", json_object_new_string(s->links[s->cur].address));
    json_object_object_add(
        o, "mqtt_version",
        json_object_new_string(atomic_load(&s->version) == MQTT_PROTOCOL_V5 ? "5" : "3.1.1"));
    json_object_object_add(o, "subscriptions_qos", json_object_new_int(s->sub_qos));
    clock_iso8601(s->connected_at_us, stamp, sizeof(stamp));
    json_object_object_add(o, "connected_since",
                           s->connected_at_us ? json_object_new_string(stamp) : NULL);
    pthread_mutex_unlock(&s->lock);
    json_object_object_add(into, "broker", o);
}

const struct run_output mqtt_output = {
    .record = out_record,
    .result = out_result,
    .progress = out_progress,
    .file = out_file,
    .state_changed = out_state,
    .event = out_event,
    .connection = out_connection,
};

static void log_sink(int level, const char *text, void *userdata)
{
    struct mqtt *s = userdata;

    (void)level;
    publish(s, s->t_log, text, strlen(text), false, OFFLINE_DROP, NULL, NULL);
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
        publish(s, s->t_log, text, strlen(text), false, OFFLINE_DROP, NULL, NULL);
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

/* Logs a failed connect to l: at once when the reason is new, else at most every FAILURE_LOG_US
 * with how many there were, so a broker that stays away neither floods the log nor goes
 * unmentioned. */
static void note_failure(struct link *l, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void note_failure(struct link *l, int level, const char *fmt, ...)
{
    char why[REASON_MAX];
    int64_t now = clock_monotonic_us();
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    l->failures_since++;
    if (strcmp(why, l->failure) == 0 && now - l->failure_logged_us < FAILURE_LOG_US)
        return;
    if (strcmp(why, l->failure) == 0)
        log_msg(level, "broker %s %s (%u attempts in %lld s); retrying", l->address, why,
                l->failures_since, (long long)((now - l->failure_logged_us) / 1000000));
    else
        log_msg(level, "broker %s %s; retrying", l->address, why);
    snprintf(l->failure, sizeof(l->failure), "%s", why);
    l->failure_logged_us = now;
    l->failures_since = 0;
}

static void use_311(struct link *l, const char *why)
{
    l->version = MQTT_PROTOCOL_V311;
    if (l->told_311)
        return;
    l->told_311 = true;
    log_warning("broker %s does not speak MQTT 5; using MQTT 3.1.1 (%s; no response topics: match "
                "results by request_id; `mqtt_version = 3.1.1` starts with it)",
                l->address, why);
}

/* Whether something accepts TCP connections at b within timeout_ms; why says what when not. */
static int tcp_answers(const struct config_broker *b, int timeout_ms, char *why, size_t len)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai, *p;
    char port[8];
    int r, err = EHOSTUNREACH;

    snprintf(port, sizeof(port), "%d", b->port);
    r = getaddrinfo(b->host, port, &hints, &ai);
    if (r != 0) {
        snprintf(why, len, "cannot be found (%s)",
                 r == EAI_SYSTEM ? strerror(errno) : gai_strerror(r));
        return -EHOSTUNREACH;
    }
    for (p = ai; p; p = p->ai_next) {
        struct pollfd pfd = {.events = POLLOUT};
        socklen_t elen = sizeof(err);

        pfd.fd =
            socket(p->ai_family, p->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, p->ai_protocol);
        if (pfd.fd < 0) {
            err = errno;
            continue;
        }
        if (connect(pfd.fd, p->ai_addr, p->ai_addrlen) == 0)
            err = 0;
        else if (errno != EINPROGRESS)
            err = errno;
        else if (poll(&pfd, 1, timeout_ms) != 1)
            err = ETIMEDOUT;
        else if (getsockopt(pfd.fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
            err = errno;
        close(pfd.fd);
        if (err == 0)
            break;
    }
    freeaddrinfo(ai);
    if (err)
        snprintf(why, len, "does not answer (%s)", strerror(err));
    return -err;
}

static void on_connect(struct mosquitto *m, void *userdata, int rc, int flags,
                       const mosquitto_property *props)
{
    struct mqtt *s = userdata;
    int64_t t0 = clock_monotonic_us();
    struct link *l;
    int opts = 0;

    (void)flags;
    (void)props;
    if (rc != 0) {
        s->refusal = rc;
        return;
    }
    s->acked = true;
    pthread_mutex_lock(&s->lock);
    l = &s->links[s->cur];
    s->connected_at_us = clock_realtime_us();
    /* A move back that did not reach a better broker: try less often. */
    if (s->cur == 0)
        s->probe_every_us = PROBE_EVERY_US;
    else if (s->moving_from >= 0 && s->cur >= s->moving_from)
        s->probe_every_us =
            s->probe_every_us * 2 > PROBE_EVERY_MAX_US ? PROBE_EVERY_MAX_US : s->probe_every_us * 2;
    pthread_mutex_unlock(&s->lock);
    s->moving_from = -1;
    l->failure[0] = '\0';
    l->failures_since = 0;
    atomic_store(&s->connected, true);
    log_info("connected to broker %s as %s (MQTT %s)%s", l->address, s->c->client_id,
             l->version == MQTT_PROTOCOL_V5 ? "5" : "3.1.1", s->was_connected ? " again" : "");
    s->was_connected = true;
    atomic_store(&s->offline_bytes, 0);
    unsigned dropped = atomic_exchange(&s->offline_dropped, 0);
    if (dropped)
        log_warning("%u log records, files or events of runs were dropped while no broker was "
                    "connected: past the %u MiB kept for its return (results are all kept)",
                    dropped, OFFLINE_MAX_BYTES >> 20);
    /* Retain-as-published lets a command published retained while we are subscribed be told
     * apart (the broker would clear the flag otherwise); send-retained-never keeps old ones away.
     */
    if (l->version == MQTT_PROTOCOL_V5)
        opts = MQTT_SUB_OPT_SEND_RETAIN_NEVER | MQTT_SUB_OPT_NO_LOCAL |
               MQTT_SUB_OPT_RETAIN_AS_PUBLISHED;
    s->nsubs = 3;
    mosquitto_subscribe_v5(m, NULL, s->sub_all, s->sub_qos, opts, NULL);
    mosquitto_subscribe_v5(m, NULL, s->sub_node, s->sub_qos, opts, NULL);
    mosquitto_subscribe_v5(m, NULL, s->sub_set, s->sub_qos, opts, NULL);
    /* Home Assistant's birth message is not retained; a retained one only re-sends the config. */
    if (discovery_birth_topic(s->discovery)) {
        s->nsubs++;
        mosquitto_subscribe_v5(m, NULL, discovery_birth_topic(s->discovery), s->sub_qos,
                               l->version == MQTT_PROTOCOL_V5 ? MQTT_SUB_OPT_NO_LOCAL : 0, NULL);
    }
    if (s->sub_qos == 0)
        s->session_stale = true;
    publish(s, s->t_status, "online", 6, true, OFFLINE_DROP, NULL, NULL);
    out_state(s->agent, s);
    discovery_connected(s->discovery);
    loop_timing(s, "Handle on_connect", t0);
}

static void on_disconnect(struct mosquitto *m, void *userdata, int rc,
                          const mosquitto_property *props)
{
    struct mqtt *s = userdata;
    int err = errno;
    bool was;

    (void)m;
    (void)props;
    pthread_mutex_lock(&s->lock);
    s->connected_at_us = 0;
    was = atomic_exchange(&s->connected, false);
    pthread_cond_broadcast(&s->published); /* mqtt_stop waits for the end */
    pthread_mutex_unlock(&s->lock);
    /* Dropped before our subscriptions were acknowledged: attempt() says why. */
    if (was && !atomic_load(&s->stopping) && !s->moving && s->subacks >= s->nsubs)
        log_warning("lost the connection to broker %s (%s); reconnecting", s->links[s->cur].address,
                    rc == MOSQ_ERR_ERRNO ? strerror(err) : mosquitto_strerror(rc));
}

/* Credentials, TLS (for every broker of the list alike) and, for the session's client, the will. */
static int client_setup(struct mqtt *s, struct mosquitto *m, bool will)
{
    struct config *c = s->c;
    int rc = MOSQ_ERR_SUCCESS;

    mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
    if (will)
        rc = mosquitto_will_set_v5(m, s->t_status, 7, "offline", 1, true, NULL);
    if (rc == MOSQ_ERR_SUCCESS && c->username[0])
        rc = mosquitto_username_pw_set(m, c->username, c->password[0] ? c->password : NULL);
    if (rc == MOSQ_ERR_SUCCESS && c->tls_ca_file[0])
        rc = mosquitto_tls_set(m, c->tls_ca_file, NULL,
                               c->tls_cert_file[0] ? c->tls_cert_file : NULL,
                               c->tls_key_file[0] ? c->tls_key_file : NULL, NULL);
    return rc;
}

static void on_cleaned(struct mosquitto *m, void *userdata, int rc)
{
    (void)m;
    *(int *)userdata = rc;
}

/* Ends our session at broker b by connecting once more with a clean one, from a client of its
 * own: what the broker kept for us is dropped. A failure is logged at level. */
static void end_session(struct mqtt *s, const struct config_broker *b, int version, int level)
{
    int64_t deadline = clock_monotonic_us() + OFFLINE_WAIT_MS * 1000LL;
    struct mosquitto *m;
    int acked = -1;

    m = mosquitto_new(s->c->client_id, true, &acked);
    if (!m)
        return;
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, version);
    mosquitto_connect_callback_set(m, on_cleaned);
    if (client_setup(s, m, false) == MOSQ_ERR_SUCCESS &&
        mosquitto_connect(m, b->host, b->port, s->c->keepalive) == MOSQ_ERR_SUCCESS) {
        while (acked < 0 && clock_monotonic_us() < deadline &&
               mosquitto_loop(m, 100, 1) == MOSQ_ERR_SUCCESS)
            ;
        mosquitto_disconnect(m);
    }
    if (acked != 0)
        log_msg(level,
                "cannot end the agent's session at broker %s:%d: commands it kept may run "
                "once more",
                b->host, b->port);
    mosquitto_destroy(m);
}

/* One connection to broker i, from the TCP connect to its end: ATTEMPT_ENDED when it was up (lost,
 * left for a preferred broker, or closed by a stop), ATTEMPT_AGAIN when the same broker is worth
 * a second try at once (in MQTT 3.1.1 now), ATTEMPT_DEGRADE when it is with QoS 0 subscriptions,
 * ATTEMPT_FAILED otherwise (logged). */
static enum attempt attempt(struct mqtt *s, int i, bool qos0)
{
    struct link *l = &s->links[i];
    mosquitto_property *props = NULL;
    char why[REASON_MAX];
    int64_t t0;
    bool closed;
    int rc, err;

    pthread_mutex_lock(&s->lock);
    s->cur = i;
    s->sub_qos = qos0 ? 0 : 1;
    pthread_mutex_unlock(&s->lock);
    if (tcp_answers(l->b, CONNECT_TIMEOUT_MS, why, sizeof(why)) < 0) {
        note_failure(l, CONFIG_LOG_INFO, "%s", why);
        return ATTEMPT_FAILED;
    }
    /* Commands went to the QoS 0 subscriptions meanwhile: what the persistent session kept since
     * then would run twice. */
    if (!qos0 && s->session_stale) {
        end_session(s, l->b, l->version, CONFIG_LOG_INFO);
        s->session_stale = false;
    }
    atomic_store(&s->version, l->version);
    mosquitto_int_option(s->m, MOSQ_OPT_PROTOCOL_VERSION, l->version);
    /* The session expiry rides on CONNECT; MQTT 3.1.1 has none (its session lasts until a clean
     * one replaces it, or the broker's own limit). */
    if (l->version == MQTT_PROTOCOL_V5)
        mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, SESSION_EXPIRY_S);
    s->acked = false;
    s->refusal = 0;
    s->moving = false;
    s->nsubs = s->subacks = 0;
    rc = mosquitto_connect_bind_v5(s->m, l->b->host, l->b->port, s->c->keepalive, NULL, props);
    err = errno;
    mosquitto_property_free_all(&props);
    if (rc != MOSQ_ERR_SUCCESS) {
        note_failure(l, CONFIG_LOG_INFO, "cannot be reached (%s)",
                     rc == MOSQ_ERR_ERRNO ? strerror(err) : mosquitto_strerror(rc));
        return ATTEMPT_FAILED;
    }
    t0 = clock_monotonic_us();
    for (;;) {
        int back;

        rc = mosquitto_loop(s->m, LOOP_WAIT_MS, 1);
        err = errno;
        if (rc != MOSQ_ERR_SUCCESS || atomic_load(&s->quit))
            break;
        if (!s->acked && !s->refusal) {
            if (atomic_load(&s->stopping))
                return ATTEMPT_FAILED;
            if (clock_monotonic_us() - t0 > CONNACK_TIMEOUT_US) {
                note_failure(l, CONFIG_LOG_INFO, "did not answer CONNECT within %lld s",
                             CONNACK_TIMEOUT_US / 1000000);
                return ATTEMPT_FAILED;
            }
        }
        back = atomic_exchange(&s->go_back, -1);
        if (s->acked && back >= 0 && back < i && !s->moving && !atomic_load(&s->stopping)) {
            log_info("broker %s answers again: moving back to it from %s", s->links[back].address,
                     l->address);
            s->moving = true;
            s->moving_from = i;
            mosquitto_disconnect(s->m);
        }
    }
    if (s->acked && !qos0 && s->subacks < s->nsubs && !s->moving && !atomic_load(&s->stopping)) {
        if (!l->told_qos0)
            log_warning("broker %s closed the connection on our QoS 1 subscriptions (RabbitMQ "
                        "does when the node that holds this agent's session is down); subscribing "
                        "at QoS 0 there: commands sent while the agent is not connected are lost "
                        "until it is back on a broker that keeps its session",
                        l->address);
        l->told_qos0 = true;
        return ATTEMPT_DEGRADE;
    }
    if (s->acked)
        return ATTEMPT_ENDED;
    if (atomic_load(&s->stopping))
        return ATTEMPT_FAILED;
    if (s->refusal) {
        if (l->version == MQTT_PROTOCOL_V5 &&
            (s->refusal == MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION || s->refusal == 1)) {
            use_311(l, "it refused an MQTT 5 CONNECT");
            return ATTEMPT_AGAIN;
        }
        note_failure(l, CONFIG_LOG_ERROR, "refused the connection: %s", refusal_text(s->refusal));
        return ATTEMPT_FAILED;
    }
    /* RabbitMQ before 3.13 closes the connection on an MQTT 5 CONNECT without a word. */
    closed =
        rc == MOSQ_ERR_CONN_LOST || (rc == MOSQ_ERR_ERRNO && (err == ECONNRESET || err == EPIPE));
    if (closed && l->version == MQTT_PROTOCOL_V5 && s->c->mqtt_version == 5) {
        l->version_guessed = true;
        use_311(l, "it closed the connection on an MQTT 5 CONNECT");
        return ATTEMPT_AGAIN;
    }
    /* Closed in 3.1.1 too: the version was not the reason. */
    if (l->version_guessed) {
        l->version = MQTT_PROTOCOL_V5;
        l->version_guessed = false;
    }
    if (closed)
        note_failure(l, CONFIG_LOG_INFO, "closed the connection before answering CONNECT");
    else
        note_failure(l, CONFIG_LOG_INFO, "failed during CONNECT (%s)",
                     rc == MOSQ_ERR_ERRNO ? strerror(err) : mosquitto_strerror(rc));
    return ATTEMPT_FAILED;
}

/* Waits until the monotonic time until_us, or less when the session is stopped. */
static void pause_until(struct mqtt *s, int64_t until_us)
{
    struct timespec ts = {.tv_sec = (time_t)(until_us / 1000000),
                          .tv_nsec = (long)(until_us % 1000000) * 1000};

    pthread_mutex_lock(&s->lock);
    if (!atomic_load(&s->stopping))
        pthread_cond_timedwait(&s->wake, &s->lock, &ts);
    pthread_mutex_unlock(&s->lock);
}

/* Rounds of the list, first broker first, until a stop: the first that answers is used until its
 * connection ends. */
static void *net_main(void *arg)
{
    struct mqtt *s = arg;
    int64_t retry_us = RETRY_FIRST_US;

    while (!atomic_load(&s->stopping)) {
        enum attempt a = ATTEMPT_FAILED;
        int64_t up_at = 0;

        for (int i = 0; i < s->nlinks && !atomic_load(&s->stopping); i++) {
            up_at = clock_monotonic_us();
            a = attempt(s, i, false);
            if (a == ATTEMPT_AGAIN)
                a = attempt(s, i, false);
            if (a == ATTEMPT_DEGRADE)
                a = attempt(s, i, true);
            if (a == ATTEMPT_ENDED)
                break;
        }
        if (a == ATTEMPT_ENDED) {
            retry_us = RETRY_FIRST_US;
            /* A broker that drops us as soon as we are in is not tried again at once. */
            if (!s->moving && clock_monotonic_us() - up_at < RETRY_MAX_US)
                pause_until(s, clock_monotonic_us() + RETRY_FIRST_US);
            continue;
        }
        pause_until(s, clock_monotonic_us() + retry_us);
        retry_us = retry_us * 2 > RETRY_MAX_US ? RETRY_MAX_US : retry_us * 2;
    }
    return NULL;
}

/* status and state again (and the discovery config when asked), for subscribers that missed the
 * retained ones: on another node of a cluster that keeps retained messages per node, or Home
 * Assistant's sensors that expire without them. */
static void heartbeat(struct mqtt *s)
{
    if (!atomic_load(&s->connected))
        return;
    publish(s, s->t_status, "online", 6, true, OFFLINE_DROP, NULL, NULL);
    out_state(s->agent, s);
    discovery_heartbeat(s->discovery);
}

/* While on broker cur, whether a preferred one answers again; the network thread moves to it. */
static void probe_preferred(struct mqtt *s, int cur)
{
    char why[REASON_MAX];

    for (int j = 0; j < cur; j++)
        if (tcp_answers(s->links[j].b, PROBE_TIMEOUT_MS, why, sizeof(why)) == 0) {
            atomic_store(&s->go_back, j);
            return;
        }
}

static void *watch_main(void *arg)
{
    struct mqtt *s = arg;
    int64_t beat_us = (int64_t)s->c->heartbeat_seconds * 1000000;
    int64_t now = clock_monotonic_us(), next_beat = now + beat_us, next_probe = now;

    pthread_mutex_lock(&s->lock);
    while (!atomic_load(&s->quit)) {
        int64_t until;
        struct timespec ts;

        now = clock_monotonic_us();
        if (beat_us && now >= next_beat) {
            pthread_mutex_unlock(&s->lock);
            heartbeat(s);
            pthread_mutex_lock(&s->lock);
            next_beat = now + beat_us;
        }
        if (now >= next_probe) {
            int cur = s->cur;

            next_probe = now + s->probe_every_us;
            pthread_mutex_unlock(&s->lock);
            if (cur > 0 && atomic_load(&s->connected))
                probe_preferred(s, cur);
            pthread_mutex_lock(&s->lock);
        }
        until = beat_us && next_beat < next_probe ? next_beat : next_probe;
        ts.tv_sec = (time_t)(until / 1000000);
        ts.tv_nsec = (long)(until % 1000000) * 1000;
        if (!atomic_load(&s->quit))
            pthread_cond_timedwait(&s->wake, &s->lock, &ts);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
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

static void on_subscribe(struct mosquitto *m, void *userdata, int mid, int count,
                         const int *granted, const mosquitto_property *props)
{
    struct mqtt *s = userdata;

    (void)m;
    (void)mid;
    (void)count;
    (void)granted;
    (void)props;
    s->subacks++;
}

static void on_publish(struct mosquitto *m, void *userdata, int mid, int rc,
                       const mosquitto_property *props)
{
    struct mqtt *s = userdata;
    unsigned n = atomic_load(&s->unacked);

    (void)rc;
    (void)props;
    ack_quickly(m);
    while (n > 0 && !atomic_compare_exchange_weak(&s->unacked, &n, n - 1))
        ;
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
    pthread_condattr_t attr;
    struct mqtt *s;
    int rc;

    mosquitto_lib_init();
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->c = c;
    s->offline_mid = -1;
    s->moving_from = -1;
    s->probe_every_us = PROBE_EVERY_US;
    atomic_init(&s->go_back, -1);
    atomic_init(&s->version, c->mqtt_version == 5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->published, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&s->wake, &attr);
    pthread_condattr_destroy(&attr);
    s->nlinks = c->nbrokers;
    for (int i = 0; i < c->nbrokers; i++) {
        struct link *l = &s->links[i];
        bool v6 = strchr(c->brokers[i].host, ':') != NULL;

        l->b = &c->brokers[i];
        l->version = atomic_load(&s->version);
        snprintf(l->address, sizeof(l->address), "%s%s%s:%d", v6 ? "[" : "", l->b->host,
                 v6 ? "]" : "", l->b->port);
    }
    snprintf(s->t_status, TOPIC_MAX, "%s/%s/status", c->topic_prefix, c->node_id);
    snprintf(s->t_result, TOPIC_MAX, "%s/%s/result", c->topic_prefix, c->node_id);
    snprintf(s->t_log, TOPIC_MAX, "%s/%s/log", c->topic_prefix, c->node_id);
    snprintf(s->t_state, TOPIC_MAX, "%s/%s/state", c->topic_prefix, c->node_id);
    snprintf(s->t_progress, TOPIC_MAX, "%s/%s/progress", c->topic_prefix, c->node_id);
    snprintf(s->sub_all, TOPIC_MAX, "%s/+", c->topic_prefix);
    snprintf(s->sub_node, TOPIC_MAX, "%s/%s/+", c->topic_prefix, c->node_id);
    snprintf(s->sub_set, TOPIC_MAX, "%s/%s/set/+", c->topic_prefix, c->node_id);
    snprintf(s->set_prefix, TOPIC_MAX, "%s/%s/set/", c->topic_prefix, c->node_id);
    /* A persistent session under either version: the broker keeps our subscriptions, and queues
     * commands, while we are away (a broker restart, a move to another broker of the list, the
     * agent restarted); libmosquitto queues our QoS 1 output meanwhile. A clean stop ends it. */
    s->m = mosquitto_new(c->client_id, false, s);
    if (!s->m) {
        snprintf(err, errlen, "cannot create an MQTT client: %s", strerror(errno));
        mqtt_free(s);
        return -ENOMEM;
    }
    /* Our thread runs the loop; others only queue what they publish. */
    mosquitto_threaded_set(s->m, true);
    mosquitto_connect_v5_callback_set(s->m, on_connect);
    mosquitto_disconnect_v5_callback_set(s->m, on_disconnect);
    mosquitto_message_v5_callback_set(s->m, on_message);
    mosquitto_publish_v5_callback_set(s->m, on_publish);
    mosquitto_subscribe_v5_callback_set(s->m, on_subscribe);
    rc = client_setup(s, s->m, true);
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
    int r;

    s->agent = a;
    r = discovery_new(s->c, a, discovery_publish, s, &s->discovery, err, errlen);
    if (r < 0)
        return r;
    log_set_sink(log_sink, s);
    r = -pthread_create(&s->net, NULL, net_main, s);
    if (r == 0) {
        r = -pthread_create(&s->watch, NULL, watch_main, s);
        if (r < 0) {
            atomic_store(&s->stopping, true);
            atomic_store(&s->quit, true);
            pthread_join(s->net, NULL);
        }
    }
    if (r < 0) {
        snprintf(err, errlen, "cannot start the MQTT threads: %s", strerror(-r));
        return r;
    }
    s->threads_started = true;
    return 0;
}

void mqtt_stop(struct mqtt *s)
{
    struct timespec deadline;
    bool up, v5;
    unsigned lost;
    int mid, cur;

    atomic_store(&s->stopping, true);
    log_set_sink(NULL, NULL);
    pthread_mutex_lock(&s->lock);
    pthread_cond_broadcast(&s->wake);
    pthread_mutex_unlock(&s->lock);
    up = atomic_load(&s->connected);
    v5 = atomic_load(&s->version) == MQTT_PROTOCOL_V5;
    if (up) {
        /* Held across the publish so on_publish, on the network thread, sees offline_mid. */
        pthread_mutex_lock(&s->lock);
        s->offline_done = false;
        if (publish(s, s->t_status, "offline", 7, true, OFFLINE_DROP, NULL, &mid) == 0) {
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
    if (v5) {
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
    /* The network thread sends the DISCONNECT, then sees quit. */
    pthread_mutex_lock(&s->lock);
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += OFFLINE_WAIT_MS / 1000;
    while (atomic_load(&s->connected))
        if (pthread_cond_timedwait(&s->published, &s->lock, &deadline) != 0)
            break;
    atomic_store(&s->quit, true);
    pthread_cond_broadcast(&s->wake);
    pthread_mutex_unlock(&s->lock);
    if (s->threads_started) {
        pthread_join(s->net, NULL);
        pthread_join(s->watch, NULL);
        s->threads_started = false;
    }
    pthread_mutex_lock(&s->lock);
    cur = s->cur;
    pthread_mutex_unlock(&s->lock);
    /* MQTT 3.1.1 sessions do not expire (MQTT 5 ones end with the DISCONNECT's expiry): so that
     * commands sent while the agent is stopped are not kept for its next start. */
    if (up && !v5)
        end_session(s, s->links[cur].b, MQTT_PROTOCOL_V311, CONFIG_LOG_WARNING);
    lost = atomic_load(&s->unacked);
    if (lost)
        log_warning("%u message(s) (results, records, state) were never acknowledged by a broker "
                    "and are lost: %s",
                    lost, up ? "the broker did not answer in time" : "no broker was reachable");
}

void mqtt_free(struct mqtt *s)
{
    if (!s)
        return;
    /* Here, not in mqtt_stop: job threads left running at a stop still report their runs. */
    discovery_free(s->discovery);
    mosquitto_destroy(s->m);
    pthread_cond_destroy(&s->wake);
    pthread_cond_destroy(&s->published);
    pthread_mutex_destroy(&s->lock);
    free(s);
    mosquitto_lib_cleanup();
}
