"""Broker topologies beyond one mosquitto, for the fleet tests and bench/fleet.py: two mosquittos
bridged (agents on a leaf, users on the centre), and a two-node RabbitMQ cluster started by hand
from Debian's rabbitmq-server, each node with its own name, ports, Erlang distribution port and
data in a temporary directory, joined with `rabbitmqctl join_cluster`. Not a fixture: tests and
benches start and stop them; close() stops whatever is still running."""
import json
import os
import signal
import socket
import subprocess
import time
import uuid

from conftest import AGENT, ROOT_FLAGS, Agent, Broker, Client, free_port, wait_port

RABBIT_BIN = "/usr/lib/rabbitmq/bin"
# Both nodes started, joined and listening for MQTT within this, or the cluster is refused.
CLUSTER_START_S = 120.0


class FailoverAgent(Agent):
    """An agent given a list of broker ports on loopback, the first preferred."""

    def __init__(self, ports, workdir, node, target="self", extra_config=""):
        super().__init__(None, workdir, node, target, extra_config)
        self.brokers = ", ".join(f"127.0.0.1:{p}" for p in ports)

    def start(self):
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [AGENT, "--config", self.config, "--broker", self.brokers, "--database", self.db,
             "--output-dir", os.path.join(self.workdir, "profiles"), *ROOT_FLAGS],
            stdout=self.stderr, stderr=self.stderr)


class Bridged:
    """A centre mosquitto and a leaf bridged to it with the lines the README gives a user: every
    profiler/ and homeassistant/ topic both ways at QoS 1, and TCP_NODELAY on both brokers'
    sockets (without it, Nagle's algorithm on the bridge adds ~40 ms to a broadcast's answers)."""

    def __init__(self, workdir):
        self.centre = Broker(workdir, "allow_anonymous true\nset_tcp_nodelay true\n")
        self.centre.start()
        self.leaf = Broker(workdir, "allow_anonymous true\nset_tcp_nodelay true\n"
                           f"connection centre\naddress 127.0.0.1:{self.centre.port}\n"
                           "topic profiler/# both 1\ntopic homeassistant/# both 1\n")
        self.leaf.start()
        try:
            self.wait_bridged()
        except Exception:
            self.close()
            raise

    def wait_bridged(self, timeout=10.0):
        """Until a message published on the leaf reaches the centre (the bridge is up)."""
        probe = Client(self.centre.port)
        leaf = Client(self.leaf.port)
        try:
            probe.subscribe("profiler/bridge-check")
            deadline = time.monotonic() + timeout
            while True:
                leaf.publish("profiler/bridge-check", "ping")
                try:
                    probe.wait_for(lambda m: m.topic == "profiler/bridge-check", 0.5)
                    return
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the bridge did not come up within {timeout} s")
        finally:
            probe.close()
            leaf.close()

    def close(self):
        self.leaf.stop()
        self.centre.stop()


class ClusterError(Exception):
    """The cluster could not start: the message says which step failed and what the node said."""


class RabbitNode:
    def __init__(self, base, name, host):
        self.name = f"{name}@{host}"
        self.mqtt_port, self.amqp_port, self.dist_port = free_port(), free_port(), free_port()
        self.base = base
        conf = os.path.join(base, f"{name}.conf")
        with open(conf, "w") as f:
            f.write(f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
                    f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
                    "loopback_users = none\nlog.file.level = info\n")
        self.log = os.path.join(base, "log", f"{self.name}.log")
        self.env = dict(os.environ, HOME=base, RABBITMQ_NODENAME=self.name,
                        RABBITMQ_NODE_PORT=str(self.amqp_port),
                        RABBITMQ_DIST_PORT=str(self.dist_port),
                        RABBITMQ_MNESIA_BASE=os.path.join(base, "mnesia"),
                        RABBITMQ_LOG_BASE=os.path.join(base, "log"),
                        RABBITMQ_CONFIG_FILE=conf,
                        RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(base, "enabled_plugins"),
                        RABBITMQ_PLUGINS_EXPAND_DIR=os.path.join(base, f"{name}-plugins"),
                        RABBITMQ_PID_FILE=os.path.join(base, f"{name}.pid"))
        self.proc = None

    def ctl(self, *args, timeout=60):
        """rabbitmqctl against this node; raises ClusterError with its output when it fails."""
        p = subprocess.run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", self.name, *args],
                           env=self.env, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise ClusterError(f"rabbitmqctl {' '.join(args)} on {self.name} failed: "
                               f"{(p.stdout + p.stderr).strip()[-600:]}\n{self.log_tail()}")
        return p.stdout

    def start(self):
        out = open(os.path.join(self.base, f"{self.name}.out"), "ab")
        self.proc = subprocess.Popen([os.path.join(RABBIT_BIN, "rabbitmq-server")], env=self.env,
                                     stdout=out, stderr=out, start_new_session=True)
        out.close()

    def wait_started(self, deadline):
        """Until the node has booted and listens for MQTT. await_startup fails at once while the
        node is not yet known to epmd, so it is asked again."""
        while True:
            left = deadline - time.monotonic()
            if self.proc.poll() is not None:
                raise ClusterError(f"{self.name} exited with {self.proc.returncode}\n"
                                   f"{self.log_tail()}")
            try:
                self.ctl("await_startup", "--timeout", str(max(int(left), 1)),
                         timeout=max(left, 1) + 10)
                break
            except ClusterError as e:
                if time.monotonic() + 1 > deadline:
                    raise ClusterError(f"{self.name} did not start within {CLUSTER_START_S} s: "
                                       f"{e}")
                time.sleep(0.5)
        wait_port(self.mqtt_port, max(deadline - time.monotonic(), 1))

    def stop(self):
        """A clean stop of the whole node, as `systemctl stop rabbitmq-server` does."""
        if self.proc and self.proc.poll() is None:
            try:
                self.ctl("stop", timeout=60)
                self.proc.wait(30)
            except (ClusterError, subprocess.TimeoutExpired):
                self.kill()
        self.proc = None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def log_tail(self, lines=15):
        try:
            with open(self.log, errors="replace") as f:
                text = f.read().splitlines()
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(line for line in text[-lines:])


class RabbitCluster:
    """Two RabbitMQ nodes with the MQTT plugin, the second joined to the first. start() raises
    ClusterError, saying why, when that does not work within CLUSTER_START_S."""

    def __init__(self, workdir, count=2):
        self.base = os.path.join(workdir, f"rabbit-{uuid.uuid4().hex[:6]}")
        os.makedirs(self.base)
        # One cookie for the nodes and rabbitmqctl, found in their HOME.
        cookie = os.path.join(self.base, ".erlang.cookie")
        with open(cookie, "w") as f:
            f.write(uuid.uuid4().hex)
        os.chmod(cookie, 0o400)
        host = socket.gethostname().split(".")[0]
        tag = uuid.uuid4().hex[:6]
        self.nodes = [RabbitNode(self.base, f"pa{tag}n{i + 1}", host) for i in range(count)]

    def start(self):
        if not os.path.exists(os.path.join(RABBIT_BIN, "rabbitmq-server")):
            raise ClusterError("rabbitmq-server is not installed (packaging/deps-test.txt)")
        deadline = time.monotonic() + CLUSTER_START_S
        first = self.nodes[0]
        p = subprocess.run([os.path.join(RABBIT_BIN, "rabbitmq-plugins"), "--offline", "enable",
                            "rabbitmq_mqtt"], env=first.env, capture_output=True, text=True,
                           timeout=60)
        if p.returncode != 0:
            raise ClusterError(f"rabbitmq-plugins --offline enable rabbitmq_mqtt failed: "
                               f"{(p.stdout + p.stderr).strip()[-600:]}")
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_started(deadline)
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")
            node.wait_started(deadline)
        running = json.loads(first.ctl("cluster_status", "--formatter", "json"))["running_nodes"]
        if sorted(running) != sorted(node.name for node in self.nodes):
            raise ClusterError(f"the cluster runs {running}, not {[n.name for n in self.nodes]}")

    def close(self):
        for node in self.nodes:
            node.kill()
