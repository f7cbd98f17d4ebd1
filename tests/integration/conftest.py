"""Harness for the integration tests: a real mosquitto on a free loopback port, the real agent
binary, the bundled demo workload, and a paho MQTT 5 client that sends commands and collects
results and log records. Everything is started per test module and torn down after it."""
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import paho.mqtt.client as mqtt
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, os.environ.get("BUILD", "build"))
AGENT = os.path.join(BUILD, "profiler-agent")
DEMO = os.path.join(BUILD, "workloads", "demo_service")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TIMEOUT = 10.0
# The agent refuses to run as root without this; the tests run as root.
ROOT_FLAGS = ["--allow-root"] if os.geteuid() == 0 else []
# Runs a command as user nobody with no capabilities at all (needs root).
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
             "--bounding-set=-all"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


class Broker:
    """persistent: sessions and queued messages saved every second in workdir, so they outlive
    a broker killed with -9 and started again on the same port."""

    def __init__(self, workdir, extra="allow_anonymous true\n", persistent=False):
        self.port = free_port()
        self.conf = os.path.join(workdir, f"mosquitto.{self.port}.conf")
        if persistent:
            store = os.path.join(workdir, f"mosquitto.{self.port}.d")
            os.makedirs(store, exist_ok=True)
            # As root mosquitto drops to its own user, who could not write there.
            keep = (f"persistence true\npersistence_location {store}/\nautosave_interval 1\n"
                    "user root\n")
        else:
            keep = "persistence false\n"
        with open(self.conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\n{keep}{extra}")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None

    def kill(self):
        self.proc.kill()
        self.proc.wait(5)
        self.proc = None


class Agent:
    """The agent under test, run as a user runs it: a config file plus flags."""

    def __init__(self, broker, workdir, node, target, extra_config=""):
        self.broker, self.node, self.workdir = broker, node, workdir
        self.db = os.path.join(workdir, f"{node}.db")
        self.config = os.path.join(workdir, f"{node}.conf")
        with open(self.config, "w") as f:
            f.write(f"node_id = {node}\ntarget = {target}\ndiscovery = off\n{extra_config}")
        self.stderr_path = os.path.join(workdir, f"{node}.stderr")
        self.proc = None

    def start(self):
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [AGENT, "--config", self.config, "--broker", f"127.0.0.1:{self.broker.port}",
             "--database", self.db, "--output-dir", os.path.join(self.workdir, "profiles"),
             *ROOT_FLAGS], stdout=self.stderr, stderr=self.stderr)

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        rc = self.proc.returncode if self.proc else None
        self.proc = None
        self.stderr.close()
        return rc

    def describe(self, lines=40):
        """Whether the agent still runs, and its log's last lines: what a failed wait needs."""
        rc = self.proc.poll() if self.proc else "stopped"
        life = "the agent runs" if rc is None else f"the agent exited ({rc})"
        tail = "".join(self.log_text().splitlines(keepends=True)[-lines:])
        return f"{life}; its log ends:\n{tail}"

    def log_text(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()


class Client:
    """A paho client that records every message it sees, by topic, in arrival order."""

    def __init__(self, port, protocol=mqtt.MQTTv5, auth=None, tls=None):
        """tls: (CA file, certificate file, key file) to connect with a client certificate."""
        self.protocol = protocol
        self.client = mqtt.Client(client_id=f"test-{uuid.uuid4().hex[:8]}", protocol=protocol)
        if auth:
            self.client.username_pw_set(*auth)
        if tls:
            self.client.tls_set(ca_certs=tls[0], certfile=tls[1], keyfile=tls[2])
        self.messages = queue.Queue()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.disconnects = []  # (monotonic time, reason): a wait that saw nothing names them
        self.client.on_disconnect = lambda c, u, rc, *a: self.disconnects.append(
            (round(time.monotonic(), 1), str(rc)))
        self.client.connect("127.0.0.1", port)
        # Without this, Nagle's algorithm and delayed ACKs add ~40 ms to each publish here.
        self.client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()
        self.seen = []

    def subscribe(self, topic):
        done = queue.Queue()
        self.client.on_subscribe = lambda *a: done.put(True)
        self.client.subscribe(topic, qos=1)
        done.get(timeout=TIMEOUT)

    def publish(self, topic, payload, retain=False, properties=None):
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        kwargs = {"properties": properties} if properties is not None else {}
        info = self.client.publish(topic, payload, qos=1, retain=retain, **kwargs)
        info.wait_for_publish(TIMEOUT)

    def wait_for(self, pred, timeout=TIMEOUT):
        """The first message (seen before or arriving later) for which pred is true."""
        for m in self.seen:
            if pred(m):
                return m
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching message")
            try:
                m = self.messages.get(timeout=left)
            except queue.Empty:
                raise TimeoutError("no matching message")
            self.seen.append(m)
            if pred(m):
                return m

    def drain(self):
        while True:
            try:
                self.seen.append(self.messages.get_nowait())
            except queue.Empty:
                return

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


class Session:
    """A broker, an agent on it and a client subscribed to the agent's output topics."""

    def __init__(self, broker, agent, client):
        self.broker, self.agent, self.client = broker, agent, client
        self.prefix = f"profiler/{agent.node}"

    def command(self, action, payload=None, node=True, timeout=TIMEOUT, raw=None, rid=None):
        """Publishes a command and returns (result, log records that arrived before it). A raw
        payload is sent as it is; rid then names the request_id its result must carry."""
        if raw is None:
            rid = uuid.uuid4().hex[:12]
            payload = dict(payload or {})
            payload.setdefault("request_id", rid)
            rid = payload["request_id"]
            body = json.dumps(payload)
        else:
            body = raw
        self.client.drain()
        start = len(self.client.seen)
        topic = f"{self.prefix}/{action}" if node else f"profiler/{action}"
        self.client.publish(topic, body)
        try:
            msg = self.client.wait_for(
                lambda m: m.topic == f"{self.prefix}/result" and
                json.loads(m.payload).get("request_id") == rid, timeout)
        except TimeoutError:
            raise TimeoutError(f"no result for {action} in {timeout} s; {self.describe()}")
        idx = self.client.seen.index(msg)
        logs = [m.payload.decode() for m in self.client.seen[start:idx]
                if m.topic == f"{self.prefix}/log"]
        return json.loads(msg.payload), logs

    def describe(self):
        """What a wait that saw nothing needs to know: which of the three is gone."""
        broker = ("the broker runs" if self.broker.proc and self.broker.proc.poll() is None
                  else "the broker is not running")
        client = ("the test's client is connected" if self.client.client.is_connected()
                  else "the test's client is NOT connected")
        client += f" (disconnects: {self.client.disconnects}, now {time.monotonic():.1f})"
        return f"{broker}; {client}; {self.agent.describe()}"

    def next_result(self, timeout=TIMEOUT):
        start = len(self.client.seen)
        msg = self.client.wait_for(lambda m: m.topic == f"{self.prefix}/result" and
                                   m not in self.client.seen[:start], timeout)
        return json.loads(msg.payload)


@pytest.fixture(scope="module")
def workdir():
    d = tempfile.mkdtemp(prefix="profiler-agent-test-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def running_workload(name, *args, stdin=None):
    """Runs build/workloads/NAME until the block ends, once it has printed its "ready" line;
    yields the process, with the words after "ready" as proc.ready. stdin=subprocess.PIPE keeps
    workloads that stop at end of input running."""
    proc = subprocess.Popen([os.path.join(BUILD, "workloads", name), *args],
                            stdin=stdin, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line and line[0] == "ready", f"{name} did not start"
        proc.ready = line[1:]
        yield proc
    finally:
        proc.kill()
        proc.wait()


def sleep_split_share(proc):
    """sleep_split's own measure of its sleep so far: the share spent in sleep_long (0.75 on an
    idle machine; a loaded one stretches the short sleeps relatively more)."""
    proc.send_signal(signal.SIGUSR1)
    line = proc.stdout.readline().split()
    assert line and line[0] == "split", f"sleep_split said {line}"
    long_ns, short_ns = int(line[1]), int(line[2])
    return long_ns / (long_ns + short_ns)


@contextlib.contextmanager
def unprivileged_session(node, target):
    """An agent run as user nobody with no capabilities (AS_NOBODY; the caller checks it runs as
    root), on a private broker, in a fresh work directory it can write, online, with a client
    subscribed to its topics; everything started here is stopped on the way out."""
    work = tempfile.mkdtemp(prefix=f"profiler-agent-{node}-")
    os.chmod(work, 0o777)
    broker = Broker(work)
    broker.start()
    agent = Agent(broker, work, node, target)
    client = Client(broker.port)
    client.subscribe(f"profiler/{node}/#")
    try:
        agent.stderr = open(agent.stderr_path, "ab")
        agent.proc = subprocess.Popen(
            AS_NOBODY + [AGENT, "--config", agent.config, "--broker", f"127.0.0.1:{broker.port}",
                         "--database", agent.db, "--output-dir", os.path.join(work, "profiles")],
            stdout=agent.stderr, stderr=agent.stderr)
        wait_online(client, node)
        yield Session(broker, agent, client)
    finally:
        client.close()
        agent.stop()
        broker.stop()


@contextlib.contextmanager
def agent_session(workdir, node, target, extra_config="", broker=None, topic=None):
    """An agent on broker (a private one when None), online, with a client subscribed to its
    topics (to topic alone when given, which must cover its status); everything started here is
    stopped on the way out."""
    own = broker is None
    if own:
        broker = Broker(workdir)
        broker.start()
    client = Client(broker.port)
    client.subscribe(topic or f"profiler/{node}/#")
    agent = Agent(broker, workdir, node, target, extra_config)
    try:
        agent.start()
        wait_online(client, node)
        yield Session(broker, agent, client)
    finally:
        client.close()
        if agent.proc:
            agent.stop()
        if own:
            broker.stop()


@pytest.fixture(scope="module")
def demo():
    """The bundled demo service: threads parked in known functions, and sockets."""
    with running_workload("demo_service") as proc:
        proc.port = int(proc.ready[0])
        yield proc


@pytest.fixture(scope="module")
def leaky():
    """build/workloads/leaky: pipes leaked at a known rate, a timerfd and an eventfd in an epoll
    set, an unlinked log file."""
    with running_workload("leaky") as proc:
        yield proc


@pytest.fixture(scope="module")
def broker(workdir):
    b = Broker(workdir)
    b.start()
    yield b
    b.stop()


def wait_online(client, node, timeout=TIMEOUT):
    return client.wait_for(lambda m: m.topic == f"profiler/{node}/status" and
                           m.payload == b"online", timeout)


def check_logger_ends_with_target(workdir, node, logger, name):
    """start_log_LOGGER on a target that exits 1.5 s later: the logger says it stopped because the
    target exited, is no longer running, and cannot start again on the gone pid. name: what the
    logger's sentences call it ("Object logging")."""
    sleeper = subprocess.Popen(["sleep", "1.5"])
    with agent_session(workdir, node, f"pid:{sleeper.pid}") as s:
        result, _ = s.command(f"start_log_{logger}", {"scan_interval": 1})
        assert result["status"] == "ok", result
        sleeper.wait()
        m = s.client.wait_for(lambda m: m.topic.endswith("/log") and
                              m.payload.startswith(f"{name} stopped:".encode()), 10)
        assert b"has exited" in m.payload
        stop, _ = s.command(f"stop_log_{logger}")
        assert stop["error"] == f"{name} not running"
        again, _ = s.command(f"start_log_{logger}", {"scan_interval": 1})
        assert again["status"] == "error" and "no such process" in again["error"]


def growth_records(s, start, count):
    """The first count distinct "Memory Growth: [" log records after client.seen[start], as the
    object loggers publish one a scan."""
    growth = []
    for _ in range(count):
        m = s.client.wait_for(lambda m: m.topic.endswith("/log") and
                              m.payload.startswith(b"Memory Growth: [") and
                              m not in s.client.seen[:start] and m.payload not in growth)
        growth.append(m.payload)
    return growth


@pytest.fixture(scope="module")
def session(broker, workdir, demo):
    with agent_session(workdir, "testnode", f"pid:{demo.pid}",
                       "allowed_targets = self, comm:demo_service\n", broker) as s:
        yield s


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Under pytest-xdist (`make check` runs --dist loadgroup), the tests of one file go to one
    worker, in file order: some build on what an earlier test left in their module's fixtures
    (test_fleet's file fetched from the profile of the test before). Files whose tests must not
    overlap with others' (the python_exec ones check a shared /tmp) name a common group."""
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
