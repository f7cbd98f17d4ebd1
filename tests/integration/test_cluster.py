"""A fleet on a real two-node RabbitMQ cluster from Debian (rabbitmq-server 3.10: MQTT 3.1.1 only,
retained messages and the queues behind persistent sessions kept on one node): agents whose broker
lists prefer one node or the other, a broadcast answered through both, a node stopped (its agents
move to the other node and back when it returns, running nothing twice) and an agent killed (its
offline seen on the other node). The cluster is started by hand as a user would (brokers.py);
when it cannot start, the tests fail saying why."""
import json
import re
import subprocess
import threading
import time
import types
import uuid

import paho.mqtt.client as mqtt
import pytest

from brokers import CLUSTER_START_S, ClusterError, FailoverAgent, RabbitCluster
from conftest import TIMEOUT, Client, wait_online

pytestmark = pytest.mark.xdist_group("rabbitmq_cluster")

HEARTBEAT = 2
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture(scope="module")
def cluster(workdir):
    c = RabbitCluster(workdir)
    try:
        c.start()
    except (ClusterError, TimeoutError, subprocess.TimeoutExpired) as e:
        c.close()
        pytest.fail(f"the two-node RabbitMQ cluster did not start: {e}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def fleet(cluster, workdir):
    """a1 and a2 prefer node 1, b1 and b2 node 2; a watcher on node 1 sees all their output."""
    n1, n2 = (n.mqtt_port for n in cluster.nodes)
    watcher = Client(n1, protocol=mqtt.MQTTv311)
    for topic in ("profiler/+/result", "profiler/+/status", "profiler/+/state"):
        watcher.subscribe(topic)
    agents = {}
    try:
        for name, ports in [("a1", (n1, n2)), ("a2", (n1, n2)), ("b1", (n2, n1)),
                            ("b2", (n2, n1))]:
            agents[name] = FailoverAgent(ports, workdir, name,
                                         extra_config=f"heartbeat_seconds = {HEARTBEAT}\n")
            agents[name].start()
        for name in agents:
            wait_online(watcher, name, timeout=20)
        yield types.SimpleNamespace(cluster=cluster, watcher=watcher, agents=agents,
                                    address={1: f"127.0.0.1:{n1}", 2: f"127.0.0.1:{n2}"})
    finally:
        watcher.close()
        for a in agents.values():
            if a.proc:
                a.stop()


def mark(client):
    client.drain()
    return len(client.seen)


def result_of(client, node, rid, timeout=TIMEOUT, since=0):
    m = client.wait_for(lambda m: m.topic == f"profiler/{node}/result" and
                        client.seen.index(m) >= since and
                        json.loads(m.payload).get("request_id") == rid, timeout)
    return json.loads(m.payload)


def ping(f, node, timeout=TIMEOUT):
    rid = uuid.uuid4().hex[:10]
    f.watcher.publish(f"profiler/{node}/ping", {"request_id": rid})
    return result_of(f.watcher, node, rid, timeout)


def broker_of(f, node, timeout=TIMEOUT):
    """Where node's ping says it is connected, once it answers within timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ping(f, node, timeout=1)["summary"]["broker"]
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def test_broadcast_reaches_agents_on_both_nodes(fleet):
    rid = uuid.uuid4().hex[:10]
    fleet.watcher.publish("profiler/ping", {"request_id": rid})
    for node, home in [("a1", 1), ("a2", 1), ("b1", 2), ("b2", 2)]:
        r = result_of(fleet.watcher, node, rid)
        assert r["status"] == "ok" and r["summary"]["node"] == node, r
        broker = r["summary"]["broker"]
        assert broker["address"] == fleet.address[home], (node, broker)
        assert broker["mqtt_version"] == "3.1.1" and broker["subscriptions_qos"] == 1
        assert re.fullmatch(ISO, broker["connected_since"])
        log = fleet.agents[node].log_text()
        # RabbitMQ 3.10 closes the socket on an MQTT 5 CONNECT: said once, with the setting.
        assert log.count("does not speak MQTT 5; using MQTT 3.1.1") == 1, log
        assert "it closed the connection on an MQTT 5 CONNECT" in log
        assert "`mqtt_version = 3.1.1`" in log


def test_heartbeat_reaches_a_subscriber_on_the_other_node(fleet):
    # The retained status and state of b1 live on node 2 alone: a subscriber on node 1 learns of
    # b1 from its heartbeat.
    late = Client(fleet.cluster.nodes[0].mqtt_port, protocol=mqtt.MQTTv311)
    try:
        late.subscribe("profiler/b1/status")
        late.subscribe("profiler/b1/state")
        status = late.wait_for(lambda m: m.topic == "profiler/b1/status", 3 * HEARTBEAT)
        assert status.payload == b"online"
        state = json.loads(late.wait_for(lambda m: m.topic == "profiler/b1/state",
                                         3 * HEARTBEAT).payload)
        assert state["broker"]["address"] == fleet.address[2]
        first = state["last_seen"]
        later = late.wait_for(lambda m: m.topic == "profiler/b1/state" and
                              json.loads(m.payload)["last_seen"] > first, 3 * HEARTBEAT)
        assert re.fullmatch(ISO, json.loads(later.payload)["last_seen"])
    finally:
        late.close()


def test_stopped_node_agents_move_over_and_back(fleet):
    node2 = fleet.cluster.nodes[1]
    node2.stop()
    # b1 and b2 answer through node 1; their sessions' queues live on node 2, so RabbitMQ refuses
    # QoS 1 subscriptions there and they take QoS 0 ones.
    for node in ("b1", "b2"):
        broker = broker_of(fleet, node, timeout=15)
        assert broker["address"] == fleet.address[1] and broker["subscriptions_qos"] == 0
        assert "closed the connection on our QoS 1 subscriptions" in fleet.agents[node].log_text()
    # a1's session lives on node 1: nothing changed for it.
    broker = broker_of(fleet, "a1")
    assert broker["address"] == fleet.address[1] and broker["subscriptions_qos"] == 1

    # Node 2 back: b1 returns to it while a ping is sent every 0.2 s; none runs twice.
    sent, stop = [], threading.Event()
    since = mark(fleet.watcher)

    def pinger():
        while not stop.is_set():
            rid = f"back-{len(sent)}"
            sent.append(rid)
            fleet.watcher.publish("profiler/b1/ping", {"request_id": rid})
            time.sleep(0.2)

    node2.start()
    node2.wait_started(time.monotonic() + CLUSTER_START_S)
    thread = threading.Thread(target=pinger)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while broker_of(fleet, "b2")["address"] != fleet.address[2]:
            assert time.monotonic() < deadline, "b2 did not come back to node 2"
            time.sleep(0.5)
        while True:
            fleet.watcher.drain()
            back = [json.loads(m.payload) for m in fleet.watcher.seen[since:]
                    if m.topic == "profiler/b1/result" and
                    json.loads(m.payload).get("request_id", "").startswith("back-") and
                    json.loads(m.payload)["summary"]["broker"]["address"] == fleet.address[2]]
            if len(back) >= 5:
                break
            assert time.monotonic() < deadline, "b1 did not come back to node 2"
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    time.sleep(1)
    fleet.watcher.drain()
    # A result may arrive twice (QoS 1 sends again what was not acknowledged before a move); a
    # command run twice would have two runs.
    runs = {}
    for m in fleet.watcher.seen[since:]:
        r = json.loads(m.payload) if m.topic == "profiler/b1/result" else {}
        if r.get("request_id", "").startswith("back-"):
            runs.setdefault(r["request_id"], set()).add(r["run_id"])
    assert all(len(ids) == 1 for ids in runs.values()), runs
    assert back[-1]["summary"]["broker"]["subscriptions_qos"] == 1
    assert "moving back to it" in fleet.agents["b1"].log_text()
    # From then on every command is answered, through node 2.
    for _ in range(3):
        assert broker_of(fleet, "b1")["address"] == fleet.address[2]


def test_agent_killed_is_seen_offline_on_the_other_node(fleet):
    b2 = fleet.agents["b2"]
    assert broker_of(fleet, "b2")["address"] == fleet.address[2]
    since = mark(fleet.watcher)
    b2.proc.kill()
    b2.proc.wait()
    # The last will, published by node 2, reaches the watcher on node 1.
    fleet.watcher.wait_for(lambda m: fleet.watcher.seen.index(m) >= since and
                           m.topic == "profiler/b2/status" and m.payload == b"offline")
    b2.stop()
