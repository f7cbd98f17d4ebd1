"""The agent against a mosquitto that requires TLS with client certificates and enforces an ACL,
as the README's security section sets it up: only the named commander may publish commands, the
agent may only publish on its own topics, and a client that presents nothing gets nowhere."""
import os
import subprocess
import time

import pytest

from conftest import Agent, Broker, Client, wait_online


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(workdir):
    """A CA, a server certificate for 127.0.0.1, and client certificates whose common names
    mosquitto takes as user names."""
    d = os.path.join(workdir, "pki")
    os.makedirs(d, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName = IP:127.0.0.1\n")
    for name, ext in (("server", True), ("agent", False), ("commander", False),
                      ("intruder", False)):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
                *(["-extfile", "san.ext"] if ext else []), cwd=d)
    return d


@pytest.fixture(scope="module")
def tls_broker(workdir, pki):
    acl = os.path.join(pki, "acl")
    with open(acl, "w") as f:
        f.write("user agent\ntopic readwrite profiler/sec/#\ntopic read profiler/+\n"
                "topic readwrite homeassistant/#\n\n"
                "user commander\ntopic write profiler/#\ntopic read profiler/sec/#\n\n"
                "user intruder\ntopic read profiler/sec/#\n")
    broker = Broker(workdir, extra=(
        f"cafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n"
        "require_certificate true\nuse_identity_as_username true\n"
        f"allow_anonymous false\nacl_file {acl}\nuser root\n"))
    broker.start()
    yield broker
    broker.stop()


def TlsClient(port, pki, name):
    return Client(port, tls=(f"{pki}/ca.crt", f"{pki}/{name}.crt", f"{pki}/{name}.key"))


def tls_agent(broker, workdir, pki):
    return Agent(broker, workdir, "sec", "self",
                 f"tls_ca_file = {pki}/ca.crt\ntls_cert_file = {pki}/agent.crt\n"
                 f"tls_key_file = {pki}/agent.key\n")


def test_only_the_named_commander_is_obeyed(workdir, pki, tls_broker):
    watcher = TlsClient(tls_broker.port, pki, "commander")
    watcher.subscribe("profiler/sec/#")
    agent = tls_agent(tls_broker, workdir, pki)
    agent.start()
    try:
        wait_online(watcher, "sec")
        watcher.publish("profiler/sec/lru_stats", '{"request_id": "ok1"}')
        result = watcher.wait_for(lambda m: m.topic == "profiler/sec/result")
        assert b'"request_id":"ok1"' in result.payload and b'"status":"ok"' in result.payload

        intruder = TlsClient(tls_broker.port, pki, "intruder")
        intruder.publish("profiler/sec/lru_stats", '{"request_id": "evil"}')
        intruder.publish("profiler/lru_stats", '{"request_id": "evil2"}')
        # Without TLS the broker does not even speak MQTT with it.
        plain = Client(tls_broker.port)
        try:
            plain.publish("profiler/sec/lru_stats", '{"request_id": "evil3"}')
        except RuntimeError:
            pass        # already dropped: the broker does not speak MQTT without TLS
        time.sleep(1.5)
        watcher.drain()
        assert not [m for m in watcher.seen if b"evil" in m.payload]
        intruder.close()
        plain.client.loop_stop()
    finally:
        watcher.close()
        agent.stop()


def test_plain_connection_and_wrong_ca_are_refused(workdir, pki, tls_broker):
    # An agent that trusts another CA never comes online.
    other = os.path.join(pki, "other")
    os.makedirs(other, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other",
            "-keyout", "other.key", "-out", "other.crt", cwd=other)
    agent = Agent(tls_broker, workdir, "sec2", "self",
                  f"tls_ca_file = {other}/other.crt\ntls_cert_file = {pki}/agent.crt\n"
                  f"tls_key_file = {pki}/agent.key\n")
    watcher = TlsClient(tls_broker.port, pki, "commander")
    watcher.subscribe("profiler/sec2/status")
    agent.start()
    try:
        # The broker's certificate is not signed by the CA it trusts: it never gets online. (It
        # usually logs "A TLS error occurred" at once, but not always: see the issue note.)
        with pytest.raises(TimeoutError):
            wait_online(watcher, "sec2", timeout=3)
        assert agent.proc.poll() is None, "a broker it cannot trust is retried, not fatal"
    finally:
        watcher.close()
        agent.stop()
