/* profiler-agent's command line: the daemon (`profiler-agent [--config FILE] [flags]`) and
 * `profiler-agent run ACTION [JSON] [--target SPEC]`, which runs one action locally. */
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include "agent.h"
#include "clock.h"
#include "config.h"
#include "flight.h"
#include "log.h"
#include "mqtt.h"
#include "registry.h"
#include "stall.h"
#include "store.h"
#include "watch.h"

#define EXIT_USAGE 2

/* Where `make install` put the schemas (the Makefile passes PREFIX's). */
#ifndef PROFILER_AGENT_SCHEMADIR
#define PROFILER_AGENT_SCHEMADIR "/usr/share/profiler-agent/schemas"
#endif

/* Before the actions. */
static const char usage_head[] =
    "Usage: profiler-agent [--config FILE] [OPTIONS]\n"
    "       profiler-agent run ACTION [JSON] [--config FILE] [--target SPEC]\n"
    "\n"
    "A profiler for any Linux process, driven over MQTT. The daemon subscribes to\n"
    "P/ACTION (every agent) and P/N/ACTION (this agent), where P is topic_prefix and N\n"
    "node_id, runs the action against the target process, records the run in SQLite\n"
    "and answers one JSON result on P/N/result, with log records on P/N/log.\n"
    "\n"
    "Options (each overrides the same key of the config file):\n"
    "  --config FILE           read `key = value` settings from FILE\n"
    "  --broker LIST           MQTT brokers, HOST[:PORT] separated by commas: the first\n"
    "                          that answers (broker; 127.0.0.1:1883); IPv6 as [ADDR]:PORT\n"
    "  --node-id ID            this agent's name in topics (node_id; the host name)\n"
    "  --target SPEC           process to profile (target; self): self, pid:N,\n"
    "                          comm:NAME, exe:PATH or pidfile:PATH\n"
    "  --output-dir DIR        where result files go (output_dir; ./profiles)\n"
    "  --database FILE         SQLite file of runs (database; ./profiler-agent.db)\n"
    "  --log-level LEVEL       debug, info, warning or error (log_level; info)\n"
    "  --allow-root            run even as root (refused otherwise: see below)\n"
    "  --version               print the version and exit\n"
    "  --help                  print this help and exit\n"
    "\n"
    "Config keys (see config.example): broker (a failover list), broker_host, broker_port,\n"
    "username, password, password_file, tls_ca_file, tls_cert_file, tls_key_file,\n"
    "client_id, keepalive, mqtt_version (5 or 3.1.1), heartbeat_seconds (60: status and\n"
    "state published again; 0: off), heartbeat_discovery, node_id, topic_prefix, discovery,\n"
    "discovery_prefix, output_dir, database, target, allowed_targets (comma-separated\n"
    "specs a command's \"target\" field may name), max_payload_bytes (65536),\n"
    "max_file_bytes (8388608, get_file's limit), max_jobs (4, long jobs at once),\n"
    "rate_limit (60 commands a minute per action; 0: none), retention_days (30) and\n"
    "retention_max_bytes (1073741824): older runs' files and rows, then the oldest\n"
    "files beyond the byte cap, are deleted at start and hourly (0: keep); schema_dir,\n"
    "log_level, python_exec (on: actions such as lru_stats run a shipped script inside\n"
    "a Python target at a safe point; off: outside only), python_timeout (10 s to reach\n"
    "that safe point); recorder (off), recorder_frequency (19 Hz), recorder_minutes (10),\n"
    "recorder_max_mb (16) and recorder_mode (cpu; wall: blocked time too): the flight\n"
    "recorder; stall_seconds (0: off) and stall_thread (MainThread, all or a thread\n"
    "name): the stall watch. An unknown key is an error naming the key and line.\n"
    "\n"
    "Actions (payload: a JSON object; every action also takes request_id and target):\n";

/* After the actions, which come from the table. */
static const char usage_tail[] =
    "The payload schema of each action is schemas/ACTION.json.\n"
    "\n"
    "Topics: P/N/status (retained online/offline), P/N/result, P/N/log, P/N/progress,\n"
    "P/N/state, P/N/file/NAME (get_file), P/N/event (finished/failed runs); settings in\n"
    "on P/N/set/NAME (the defaults Home Assistant's numbers and text change).\n"
    "Example:\n"
    "  mosquitto_pub -t profiler/log_thread_frames -m '{\"request_id\": \"a1\"}'\n"
    "  mosquitto_sub -v -t 'profiler/+/result' -t 'profiler/+/log'\n"
    "  profiler-agent run log_thread_frames --target comm:mosquitto\n"
    "  profiler-agent run start '{\"seconds\": 10}' --target pid:1234\n"
    "\n"
    "Exit status: 0 after SIGTERM or SIGINT (or a run whose result is ok), 2 on a bad\n"
    "command line or config (or when run as root without --allow-root), 1 otherwise.\n"
    "Run it as its own user with CAP_SYS_PTRACE (to read other users' processes),\n"
    "CAP_PERFMON (perf_event sampling and uprobes; without it `start` samples with\n"
    "ptrace at up to 49 Hz) and CAP_DAC_READ_SEARCH (the target's files that its user\n"
    "alone may read), not as root; `ping` lists what it lacks. See the README's\n"
    "Security and Troubleshooting sections.\n";

#define HELP_NAME_WIDTH 23 /* an action's help starts in column 26 */

/* One action a line (more when its help has more), as the table lists them. */
static void print_usage(void)
{
    const struct registry_action *act;

    fputs(usage_head, stdout);
    for (unsigned i = 0; (act = registry_at(i)); i++) {
        const char *line = act->help, *nl;

        /* A name too long for its column gets a line of its own, so it never runs into its
         * help text. */
        if (strlen(act->name) >= HELP_NAME_WIDTH)
            printf("  %s\n  %-*s ", act->name, HELP_NAME_WIDTH, "");
        else
            printf("  %-*s ", HELP_NAME_WIDTH, act->name);
        while ((nl = strchr(line, '\n'))) {
            printf("%.*s\n  %-*s ", (int)(nl - line), line, HELP_NAME_WIDTH, "");
            line = nl + 1;
        }
        printf("%s\n", line);
    }
    fputs(usage_tail, stdout);
}

struct cli {
    const char *config_file;
    const char *run_action;
    const char *run_json;
    char *flags[16][2]; /* key, value pairs from the flags, applied after the file */
    int nflags;
    bool allow_root;
};

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "profiler-agent: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'profiler-agent --help'.\n");
    return -EINVAL;
}

static int add_flag(struct cli *cli, const char *key, const char *value)
{
    if (cli->nflags >= 16)
        return usage_error("too many options%s", "");
    cli->flags[cli->nflags][0] = (char *)key;
    cli->flags[cli->nflags][1] = (char *)value;
    cli->nflags++;
    return 0;
}

/* Returns 1 when the program should exit 0 (help, version), 0 to go on, <0 on a usage error. */
static int parse_args(int argc, char **argv, struct cli *cli)
{
    static const struct {
        const char *flag, *key;
    } map[] = {
        {"--node-id", "node_id"},   {"--target", "target"},       {"--output-dir", "output_dir"},
        {"--database", "database"}, {"--log-level", "log_level"}, {"--broker", "broker"},
    };
    int i = 1;

    if (argc > 1 && strcmp(argv[1], "run") == 0) {
        if (argc < 3 || argv[2][0] == '-')
            return usage_error("run needs an ACTION%s", "");
        cli->run_action = argv[2];
        i = 3;
        if (i < argc && argv[i][0] != '-')
            cli->run_json = argv[i++];
    }
    for (; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool matched = false;

        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            print_usage();
            return 1;
        }
        if (!strcmp(a, "--version")) {
            printf("profiler-agent %s\n", PROFILER_AGENT_VERSION);
            return 1;
        }
        if (!strcmp(a, "--allow-root")) {
            cli->allow_root = true;
            continue;
        }
        if (!v)
            return usage_error("unknown option or missing value: %s", a);
        if (!strcmp(a, "--config")) {
            cli->config_file = v;
            matched = true;
        }
        for (size_t k = 0; !matched && k < sizeof(map) / sizeof(map[0]); k++)
            if (!strcmp(a, map[k].flag)) {
                if (add_flag(cli, map[k].key, v) < 0)
                    return -EINVAL;
                matched = true;
            }
        if (!matched)
            return usage_error("unknown option: %s", a);
        i++;
    }
    return 0;
}

/* Schemas ship beside the binary in a source tree (build/../schemas) and in
 * PREFIX/share/profiler-agent/schemas when installed. */
static void default_schema_dir(struct config *c)
{
    static const char *const candidates[] = {"../schemas", "../share/profiler-agent/schemas"};
    char exe[PATH_MAX], path[PATH_MAX + 64], real[PATH_MAX];
    struct stat st;
    ssize_t n;
    char *slash;

    if (c->schema_dir[0])
        return;
    snprintf(c->schema_dir, sizeof(c->schema_dir), "%s", PROFILER_AGENT_SCHEMADIR);
    n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return;
    exe[n] = '\0';
    slash = strrchr(exe, '/');
    if (!slash)
        return;
    *slash = '\0';
    for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", exe, candidates[i]);
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode) && realpath(path, real)) {
            memcpy(c->schema_dir, real, strlen(real) + 1);
            return;
        }
    }
}

static int load_config(struct cli *cli, struct config *c)
{
    char err[CONFIG_ERR_MAX];

    config_defaults(c);
    if (cli->config_file && config_load_file(c, cli->config_file, err, sizeof(err)) < 0)
        goto fail;
    for (int i = 0; i < cli->nflags; i++)
        if (config_set(c, cli->flags[i][0], cli->flags[i][1], err, sizeof(err)) < 0)
            goto fail;
    if (config_finish(c, err, sizeof(err)) < 0)
        goto fail;
    default_schema_dir(c);
    log_set_level(c->log_level);
    return 0;
fail:
    fprintf(stderr, "profiler-agent: %s\n", err);
    return -EINVAL;
}

static void print_record(struct run *run, const char *text, void *userdata)
{
    (void)run;
    (void)userdata;
    printf("%s\n", text);
    fflush(stdout);
}

static void print_result(struct run *run, const char *json, void *userdata)
{
    int *status = userdata;

    *status = run->ok ? EXIT_SUCCESS : EXIT_FAILURE;
    printf("%s\n", json);
    fflush(stdout);
}

/* Progress of a long local run goes to stderr, so stdout stays records then the result. */
static void print_progress(struct run *run, const char *json, void *userdata)
{
    (void)run;
    (void)userdata;
    fprintf(stderr, "progress: %s\n", json);
}

static int run_local(struct config *c, const char *action, const char *json)
{
    int status = EXIT_FAILURE;
    struct run_output out = {.record = print_record,
                             .result = print_result,
                             .progress = print_progress,
                             .userdata = &status};
    const struct timespec poll_interval = {0, 100 * 1000 * 1000};
    char err[CONFIG_ERR_MAX];
    struct agent a;
    sigset_t set;

    if (agent_init(&a, c, false, &out, err, sizeof(err)) < 0) {
        fprintf(stderr, "profiler-agent: %s\n", err);
        return EXIT_FAILURE;
    }
    /* Ctrl-C or SIGTERM ends a long run early with what it has, as a stop of the daemon does;
     * the job threads inherit the blocked mask, so only this thread takes them. */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    agent_command(&a, action, json ? json : "", json ? strlen(json) : 0, NULL);
    while (agent_wait_jobs(&a, false, 0) > 0)
        if (sigtimedwait(&set, NULL, &poll_interval) > 0) {
            agent_wait_jobs(&a, true, INT_MAX / 2);
            break;
        }
    agent_destroy(&a);
    return status;
}

static int run_daemon(struct config *c)
{
    char err[CONFIG_ERR_MAX];
    struct mqtt *session = NULL;
    struct agent a;
    sigset_t set;
    unsigned left;
    int sig, r;

    /* Block the stop signals in every thread; only this one waits for them. */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (mkdir(c->output_dir, 0750) < 0 && errno != EEXIST) {
        log_error("cannot create output_dir %s: %s", c->output_dir, strerror(errno));
        return EXIT_FAILURE;
    }
    if (mqtt_new(c, &session, err, sizeof(err)) < 0) {
        log_error("%s", err);
        return EXIT_FAILURE;
    }
    struct run_output out = mqtt_output;
    out.userdata = session;
    if (agent_init(&a, c, true, &out, err, sizeof(err)) < 0) {
        log_error("%s", err);
        mqtt_free(session);
        return EXIT_FAILURE;
    }
    unsigned nschemas = 0;
    while (registry_at(nschemas))
        nschemas++;
    log_info("profiler-agent %s: node %s, target %s, broker %s, %u schemas from %s",
             PROFILER_AGENT_VERSION, c->node_id, c->target, c->broker, nschemas, c->schema_dir);
    r = mqtt_start(session, &a, err, sizeof(err));
    if (r < 0) {
        log_error("%s", err);
        agent_destroy(&a);
        mqtt_free(session);
        return EXIT_FAILURE;
    }
    /* Failing to start either is logged, not fatal: the agent still answers commands. */
    if (c->recorder && flight_start(&a.host, c->target, err, sizeof(err)) < 0)
        log_error("%s", err);
    if (stall_start(&a.host, &a, err, sizeof(err)) < 0)
        log_error("%s", err);
    do
        sig = sigwaitinfo(&set, NULL);
    while (sig < 0 && errno == EINTR);
    log_info("stopping on %s", strsignal(sig));
    watch_stop_all();
    stall_stop();
    flight_stop();
    left = agent_wait_jobs(&a, true, 5000);
    if (left > 0) {
        log_warning("%u job(s) still running at stop; their runs are marked interrupted", left);
        store_interrupt_running(a.host.store, clock_realtime_us(), NULL);
    }
    mqtt_stop(session);
    /* Job threads still running use the agent and the session: leave both to the exit. */
    if (left > 0)
        return EXIT_SUCCESS;
    agent_destroy(&a);
    mqtt_free(session);
    return EXIT_SUCCESS;
}

/* perf_event needs one fd per thread, CPU and probe: a busy target uses thousands. The hard
 * limit is the administrator's word; the soft one is only a default. */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* glibc raises its mmap threshold to the size of each large block freed, up to 32 MiB: after the
 * first 2 MiB payload or profile file, later ones come from the heap, where the small blocks of
 * the next commands land above them and keep the pages from going back. A long-lived agent's
 * RSS then climbs by megabytes at each large command (seen: 30 to 75 MiB over 10,000 commands).
 * A fixed threshold, which also fixes the trim threshold, keeps large blocks in mappings of
 * their own, returned when freed. */
static void keep_large_blocks_apart(void)
{
#ifdef M_MMAP_THRESHOLD
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
#endif
}

int main(int argc, char **argv)
{
    struct config c;
    struct cli cli = {0};
    int r;

    r = parse_args(argc, argv, &cli);
    if (r != 0)
        return r > 0 ? EXIT_SUCCESS : EXIT_USAGE;
    if (load_config(&cli, &c) < 0)
        return EXIT_USAGE;
    if (geteuid() == 0 && !cli.allow_root) {
        fprintf(stderr,
                "profiler-agent: refusing to run as root: whoever may publish commands "
                "to the broker could then stop and read any process on this machine. Run it as "
                "its own user with the capabilities CAP_PERFMON, CAP_SYS_PTRACE and "
                "CAP_DAC_READ_SEARCH (the systemd unit does so), or pass --allow-root.\n");
        return EXIT_USAGE;
    }
    raise_fd_limit();
    keep_large_blocks_apart();
    if (cli.run_action)
        return run_local(&c, cli.run_action, cli.run_json);
    return run_daemon(&c);
}
