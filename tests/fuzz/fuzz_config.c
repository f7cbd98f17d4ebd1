/* libFuzzer target over the configuration parser: one input is a whole config file, read by
 * config_load_file as the daemon reads --config, then config_finish and the allow-list check.
 * Not a test of the values' meaning (whether a broker exists, whether files can be opened). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "fuzzcheck.h"

static int fd = -1;
static char path[64];

/* An error is one non-empty line. */
static void check_error(int r, const char *err)
{
    CHECK(r < 0 && r >= -4095, "return value %d", r);
    CHECK(memchr(err, '\0', CONFIG_ERR_MAX), "error text not terminated");
    CHECK(*err, "empty error text for %d", r);
}

/* Every string field stays terminated inside its array, whatever the input. */
static void check_strings(const struct config *c)
{
#define TERMINATED(f) CHECK(memchr(c->f, '\0', sizeof(c->f)), #f " not terminated")
    TERMINATED(broker_host);
    TERMINATED(username);
    TERMINATED(password);
    TERMINATED(password_file);
    TERMINATED(tls_ca_file);
    TERMINATED(tls_cert_file);
    TERMINATED(tls_key_file);
    TERMINATED(client_id);
    TERMINATED(node_id);
    TERMINATED(topic_prefix);
    TERMINATED(discovery_prefix);
    TERMINATED(output_dir);
    TERMINATED(database);
    TERMINATED(target);
    TERMINATED(allowed_targets);
    TERMINATED(schema_dir);
    TERMINATED(broker);
    TERMINATED(stall_thread);
#undef TERMINATED
}

/* The failover list config_finish leaves: 1..CONFIG_MAX_BROKERS entries, each a host and a
 * port that can be connected to. */
static void check_brokers(const struct config *c)
{
    CHECK(c->nbrokers >= 1 && c->nbrokers <= CONFIG_MAX_BROKERS, "%d brokers", c->nbrokers);
    for (int i = 0; i < c->nbrokers; i++) {
        const struct config_broker *b = &c->brokers[i];

        CHECK(memchr(b->host, '\0', sizeof(b->host)) && b->host[0], "broker %d: empty host", i);
        CHECK(b->port >= 1 && b->port <= 65535, "broker %d: port %d", i, b->port);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* A file in memory: config_load_file opens it by name, at offset 0, every time. */
    fd = memfd_create("fuzz_config", MFD_CLOEXEC);
    CHECK(fd >= 0, "memfd_create: %s", strerror(errno));
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct config c;
    char err[CONFIG_ERR_MAX];
    struct stat st;
    int r;

    CHECK(ftruncate(fd, 0) == 0 && pwrite(fd, data, size, 0) == (ssize_t)size, "memfd: %s",
          strerror(errno));
    config_defaults(&c);
    memset(err, 0, sizeof(err));
    r = config_load_file(&c, path, err, sizeof(err));
    check_strings(&c);
    if (r < 0) {
        check_error(r, err);
        return 0;
    }
    CHECK(r == 0, "config_load_file returned %d", r);
    /* The file may name any password_file; only a regular one is read, so a FIFO or a tty
     * named by the input cannot stall the run. */
    if (c.password_file[0] && (stat(c.password_file, &st) < 0 || !S_ISREG(st.st_mode)))
        c.password_file[0] = '\0';
    memset(err, 0, sizeof(err));
    r = config_finish(&c, err, sizeof(err));
    check_strings(&c);
    if (r < 0) {
        check_error(r, err);
        return 0;
    }
    CHECK(r == 0, "config_finish returned %d", r);
    CHECK(c.node_id[0] && !strpbrk(c.node_id, "/+#"), "node_id '%s' accepted", c.node_id);
    CHECK(c.topic_prefix[0] && c.topic_prefix[0] != '/' && !strpbrk(c.topic_prefix, "+#"),
          "topic_prefix '%s' accepted", c.topic_prefix);
    CHECK(c.client_id[0], "no client_id");
    check_brokers(&c);
    CHECK(config_target_allowed(&c, c.target), "the configured target is not allowed");
    CHECK(!config_target_allowed(&c, ""), "an empty target is allowed");
    return 0;
}
