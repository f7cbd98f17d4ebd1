#!/usr/bin/python3
"""A fleet of N agents (20) answering one broadcast `ping` on profiler/ping, each on its own
profiler/NODE/result, timed from the publish to the last result as a mosquitto_sub user sees it,
on three topologies in one run: one mosquitto (as configured by default, then with TCP_NODELAY on
its sockets); two bridged mosquittos (agents on the leaf, the user on the centre, TCP_NODELAY as
the README says); a two-node RabbitMQ cluster from Debian (half the agents prefer each node, the
user on node 1). ROUNDS rounds (30) after a warm-up: median, p90 and max. Then failover: the
time from a broker stopped to every agent that was on it answering through the other one, and
how many of the commands sent to them meanwhile (one every 100 ms each) were answered; on two
independent mosquittos (MQTT 5) and on the cluster (MQTT 3.1.1). Not a test: nothing here judges
a figure."""
import json
import os
import queue
import shutil
import statistics
import subprocess
import tempfile
import threading
import time

import paho.mqtt.client as mqtt

# common puts tests/integration on the path, where brokers.py is.
from common import Agent, Broker, Client, wait_online
from brokers import CLUSTER_START_S, Bridged, FailoverAgent, RabbitCluster  # noqa: E402

N = int(os.environ.get("N", "20"))
ROUNDS = int(os.environ.get("ROUNDS", "30"))
TIMEOUT = 10.0


class Results:
    """mosquitto_sub on the user's broker, its lines ("time topic payload") in a queue."""

    def __init__(self, port, v311=False):
        self.proc = subprocess.Popen(["mosquitto_sub", "-p", str(port), "-t", "profiler/+/result",
                                      "-F", "%U %t %p", *(["-V", "mqttv311"] if v311 else [])],
                                     stdout=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self.read, daemon=True).start()
        time.sleep(0.5)

    def read(self):
        for line in self.proc.stdout:
            stamp, topic, payload = line.rstrip("\n").split(" ", 2)
            self.lines.put((float(stamp), topic.split("/")[1], json.loads(payload)))

    def close(self):
        self.proc.kill()
        self.proc.wait()


def broadcast(name, publisher, results, nodes):
    """ROUNDS timed broadcast pings after a warm-up; prints the time to the last result."""
    last = []
    for i in range(ROUNDS + 1):
        rid = f"{name}-{i}"
        t0 = time.time()
        publisher.publish("profiler/ping", json.dumps({"request_id": rid}))
        seen = {}
        deadline = time.monotonic() + TIMEOUT
        while len(seen) < len(nodes):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{name} round {i}: {len(seen)} of {len(nodes)} answered")
            try:
                stamp, node, result = results.lines.get(timeout=left)
            except queue.Empty:
                continue
            if result.get("request_id") != rid:
                continue
            assert result["status"] == "ok" and node not in seen, (node, result)
            seen[node] = (stamp - t0) * 1000
        if i:
            last.append(max(seen.values()))
    last.sort()
    p90 = last[min(len(last) - 1, int(0.9 * len(last)))]
    print(f"{name}: broadcast ping to {len(nodes)} agents, {ROUNDS} rounds, all answered each "
          f"round: time to the last result median {statistics.median(last):.1f} ms, p90 "
          f"{p90:.1f} ms, max {last[-1]:.1f} ms")


def failover(name, stop, user, results, nodes, address):
    """Stops a broker (stop()) and times until every node answers through address; pings each
    node every 100 ms meanwhile and counts those answered."""
    sent, answered, moved = [], set(), {}
    t0 = time.monotonic()
    stop()
    stopped = time.monotonic() - t0
    deadline = time.monotonic() + 60
    while len(moved) < len(nodes):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: {sorted(set(nodes) - set(moved))} never moved")
        for node in nodes:
            rid = f"move-{node}-{len(sent)}"
            sent.append(rid)
            user.publish(f"profiler/{node}/ping", json.dumps({"request_id": rid}))
        end = time.monotonic() + 0.1
        while time.monotonic() < end:
            try:
                _, node, result = results.lines.get(timeout=max(end - time.monotonic(), 0.001))
            except queue.Empty:
                break
            rid = result.get("request_id", "")
            if not rid.startswith("move-"):
                continue
            answered.add(rid)
            if result["summary"]["broker"]["address"] == address and node not in moved:
                moved[node] = time.monotonic() - t0
    time.sleep(2)
    while not results.lines.empty():
        answered.add(results.lines.get()[2].get("request_id", ""))
    print(f"{name}: broker stopped ({stopped:.2f} s to stop it) -> all {len(nodes)} of its agents "
          f"answering through the other within {max(moved.values()):.2f} s (median "
          f"{statistics.median(moved.values()):.2f} s); commands sent to them meanwhile: "
          f"{len(answered & set(sent))} of {len(sent)} answered")


def start_agents(agents):
    for agent in agents:
        agent.start()


def stop_agents(agents):
    for agent in agents:
        if agent.proc:
            agent.stop()


def broadcast_on(name, agents_broker, user_port, prefix, work):
    """N agents on agents_broker, the user on the broker at user_port: the broadcast figures."""
    user = Client(user_port)
    user.subscribe("profiler/+/status")
    agents = [Agent(agents_broker, work, f"{prefix}{i:02d}", "self") for i in range(N)]
    try:
        start_agents(agents)
        for a in agents:
            wait_online(user, a.node)
        results = Results(user_port)
        try:
            broadcast(name, user, results, [a.node for a in agents])
        finally:
            results.close()
    finally:
        user.close()
        stop_agents(agents)


def one_mosquitto(work, nodelay):
    broker = Broker(work, "allow_anonymous true\n" + ("set_tcp_nodelay true\n" if nodelay else ""))
    broker.start()
    try:
        broadcast_on(f"one mosquitto{', set_tcp_nodelay true' if nodelay else ''}", broker,
                     broker.port, "one", work)
    finally:
        broker.stop()


def bridged_mosquittos(work):
    site = Bridged(work)
    try:
        broadcast_on("two bridged mosquittos", site.leaf, site.centre.port, "leaf", work)
    finally:
        site.close()


def mosquitto_failover(work):
    first, second = Broker(work), Broker(work)
    first.start()
    second.start()
    user = Client(second.port)
    user.subscribe("profiler/+/status")
    agents = [FailoverAgent([first.port, second.port], work, f"fo{i:02d}") for i in range(N)]
    try:
        start_agents(agents)
        # On the first broker: they announce themselves on the second only once they move.
        time.sleep(2)
        results = Results(second.port)
        try:
            failover("two independent mosquittos, MQTT 5", first.stop, user, results,
                     [a.node for a in agents], f"127.0.0.1:{second.port}")
        finally:
            results.close()
    finally:
        user.close()
        stop_agents(agents)
        second.stop()


def rabbitmq_cluster(work):
    cluster = RabbitCluster(work)
    t0 = time.monotonic()
    cluster.start()
    print(f"RabbitMQ cluster of 2 nodes started and joined in {time.monotonic() - t0:.1f} s "
          f"(bound {CLUSTER_START_S:.0f} s)")
    n1, n2 = (n.mqtt_port for n in cluster.nodes)
    user = Client(n1, protocol=mqtt.MQTTv311)
    user.subscribe("profiler/+/status")
    agents = [FailoverAgent((n1, n2) if i % 2 == 0 else (n2, n1), work, f"rb{i:02d}")
              for i in range(N)]
    try:
        start_agents(agents)
        for a in agents:
            wait_online(user, a.node, timeout=30)
        results = Results(n1, v311=True)
        try:
            broadcast("two-node RabbitMQ cluster", user, results, [a.node for a in agents])
            failover("two-node RabbitMQ cluster, MQTT 3.1.1", cluster.nodes[1].stop, user,
                     results, [a.node for i, a in enumerate(agents) if i % 2],
                     f"127.0.0.1:{n1}")
        finally:
            results.close()
    finally:
        user.close()
        stop_agents(agents)
        cluster.close()


def main():
    work = tempfile.mkdtemp(prefix="bench-fleet-")
    try:
        one_mosquitto(work, False)
        one_mosquitto(work, True)
        bridged_mosquittos(work)
        mosquitto_failover(work)
        rabbitmq_cluster(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
