/* Tests of the config keys a fleet uses: `broker` as a failover list (ports, IPv6, the port
 * broker_port gives an entry without one, the one broker of broker_host when the list is empty,
 * the errors that name the key) and the heartbeat keys. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "config.h"

static int set_and_finish(struct config *c, const char *key, const char *value, char *err,
                          size_t len)
{
    int r = config_set(c, key, value, err, len);

    return r < 0 ? r : config_finish(c, err, len);
}

static void test_broker_list(void **state)
{
    struct config c;
    char err[CONFIG_ERR_MAX];

    (void)state;
    config_defaults(&c);
    assert_int_equal(config_set(&c, "broker_port", "1884", err, sizeof(err)), 0);
    assert_int_equal(
        set_and_finish(&c, "broker", " a.example:1883 ,[::1]:8883,b, [fe80::1] ", err, sizeof(err)),
        0);
    assert_int_equal(c.nbrokers, 4);
    assert_string_equal(c.brokers[0].host, "a.example");
    assert_int_equal(c.brokers[0].port, 1883);
    assert_string_equal(c.brokers[1].host, "::1");
    assert_int_equal(c.brokers[1].port, 8883);
    assert_string_equal(c.brokers[2].host, "b");
    assert_int_equal(c.brokers[2].port, 1884);
    assert_string_equal(c.brokers[3].host, "fe80::1");
    assert_int_equal(c.brokers[3].port, 1884);
    assert_string_equal(c.broker, "a.example:1883, [::1]:8883, b:1884, [fe80::1]:1884");
}

static void test_broker_host_when_no_list(void **state)
{
    struct config c;
    char err[CONFIG_ERR_MAX];

    (void)state;
    config_defaults(&c);
    assert_int_equal(config_set(&c, "broker_host", "mqtt.lan", err, sizeof(err)), 0);
    assert_int_equal(set_and_finish(&c, "broker_port", "8883", err, sizeof(err)), 0);
    assert_int_equal(c.nbrokers, 1);
    assert_string_equal(c.brokers[0].host, "mqtt.lan");
    assert_int_equal(c.brokers[0].port, 8883);
    assert_string_equal(c.broker, "mqtt.lan:8883");
    /* The defaults: one broker on loopback, a heartbeat a minute, no discovery with it. */
    config_defaults(&c);
    assert_int_equal(config_finish(&c, err, sizeof(err)), 0);
    assert_string_equal(c.broker, "127.0.0.1:1883");
    assert_int_equal(c.heartbeat_seconds, 60);
    assert_false(c.heartbeat_discovery);
}

static void test_broker_errors(void **state)
{
    static const struct {
        const char *value, *error;
    } cases[] = {
        {"a:1883,,b", "broker: an empty entry (write HOST[:PORT], HOST[:PORT], ...)"},
        {"a:0", "broker: the port of 'a' must be an integer from 1 to 65535"},
        {"a:65536", "broker: the port of 'a' must be an integer from 1 to 65535"},
        {"a:x", "broker: the port of 'a' must be an integer from 1 to 65535"},
        {"::1", "broker: write an IPv6 address as [ADDRESS]:PORT, got '::1'"},
        {"[::1", "broker: expected [ADDRESS]:PORT, got '[::1'"},
        {"[]:1883", "broker: expected [ADDRESS]:PORT, got '[]:1883'"},
        {":1883", "broker: ':1883' is not HOST[:PORT]"},
        {"a b:1883", "broker: 'a b:1883' is not HOST[:PORT]"},
        {"a,b,c,d,e,f,g,h,i", "broker: at most 8 brokers"},
    };
    struct config c;
    char err[CONFIG_ERR_MAX];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        config_defaults(&c);
        err[0] = '\0';
        assert_int_equal(config_set(&c, "broker", cases[i].value, err, sizeof(err)), -EINVAL);
        assert_string_equal(err, cases[i].error);
        assert_string_equal(c.broker, "");
    }
    config_defaults(&c);
    assert_int_equal(config_set(&c, "heartbeat_seconds", "-1", err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "heartbeat_seconds: must be an integer from 0 to 86400");
    /* An empty broker_host with no list is no broker at all (found by fuzz_config). */
    config_defaults(&c);
    assert_int_equal(set_and_finish(&c, "broker_host", "", err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "broker_host: empty: name the broker (or list them in broker)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broker_list),
        cmocka_unit_test(test_broker_host_when_no_list),
        cmocka_unit_test(test_broker_errors),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
