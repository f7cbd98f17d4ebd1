#!/usr/bin/python3
"""A fleet of N agents (20) answering one broadcast `ping` on profiler/ping, each on its own
profiler/NODE/result, timed from the publish to the last result as a mosquitto_sub user sees it,
on three topologies in one run: one mosquitto (as configured by default, then with TCP_NODELAY on
its sockets); two bridged mosquittos (agents on the leaf, the user on the centre, TCP_NODELAY as
the README says); a two-node RabbitMQ cluster from Debian (half the agents prefer each node, the
user on node 1). ROUNDS rounds (30) after a warm-up: median, p90 and max. Then failover: the
time from a broker stopped to every agent that was on it answering through the other one, and
how many of the commands sent to them meanwhile (one every 100 ms each) were answered; on two
independent mosquittos (MQTT 5) and on the cluster (MQTT 3.1.1). Last, MANY agents (200), one
process each with its own node, database and output_dir, on one mosquitto: the broker's, one
agent's and all agents' memory and CPU at idle (IDLE_S, 60 s: one heartbeat) and during ROUNDS
broadcast pings, and the time to the last of the MANY results. `--only NAME` (repeatable) runs
some sections alone (`--only 200`). Not a test: nothing here judges a figure."""
import argparse
import json
import os
import queue
import resource
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
from procstat import cpu_seconds, rss_mib

N = int(os.environ.get("N", "20"))
ROUNDS = int(os.environ.get("ROUNDS", "30"))
TIMEOUT = 10.0
MANY = int(os.environ.get("MANY", "200"))
# One heartbeat (heartbeat_seconds, 60 by default): each agent re-publishes its status and state
# once within the window, wherever the window falls.
IDLE_S = float(os.environ.get("IDLE_S", "60"))
# Agents started at a time, each batch online before the next: 200 starting at once on 2 cores
# would measure the scramble for the CPU, not the fleet.
BATCH = 10


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


def pss_mib(pid):
    """Proportional set size of pid in MiB: its resident pages, each shared by k processes counted
    1/k, so that a sum over the agents counts the binary and the libraries they share once."""
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_files_limit(pid):
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            return line.split()[3]
    return "?"


def raise_open_files(need):
    """Our soft limit on open files raised to need (up to the hard limit), for us (a log file per
    agent) and for mosquitto, which inherits it: its max_connections is unlimited by default, so
    its open-file limit is what caps the clients it accepts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise RuntimeError(f"{MANY} agents need {need} open files and the hard limit is {hard}: "
                           "raise it (ulimit -Hn, as root)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


class Usage:
    """CPU time of the broker and of each agent at one moment; figures() gives their use since."""

    def __init__(self, broker, agents):
        self.broker, self.pids = broker.proc.pid, [a.proc.pid for a in agents]
        self.start = time.monotonic()
        self.cpu = [cpu_seconds(p) for p in [self.broker, *self.pids]]

    def figures(self):
        """(seconds, CPU seconds of the broker, of each agent, in self.pids order), now."""
        cpu = [cpu_seconds(p) - c for p, c in zip([self.broker, *self.pids], self.cpu)]
        return time.monotonic() - self.start, cpu[0], cpu[1:]


def usage_cells(usage):
    """The cells of one column of the table (mosquitto, one agent, all agents) for the use since
    usage: resident memory now and CPU as a share of a core; and the seconds, the broker's, the
    first agent's and the agents' mean CPU seconds, for figures per round."""
    wall, broker_cpu, agent_cpu = usage.figures()
    rss = [rss_mib(p) for p in usage.pids]
    pss = sum(pss_mib(p) for p in usage.pids)
    cells = [f"{rss_mib(usage.broker):.1f} MiB, {broker_cpu / wall * 100:.2f}% of a core",
             f"{rss[0]:.1f} MiB, {agent_cpu[0] / wall * 100:.3f}% of a core",
             f"{sum(rss):.0f} MiB ({min(rss):.1f}-{max(rss):.1f} each; PSS {pss:.0f} MiB), "
             f"{sum(agent_cpu) / wall * 100:.1f}% of a core"]
    return cells, (wall, broker_cpu, agent_cpu[0], sum(agent_cpu) / len(agent_cpu))


def stop_all(agents):
    """SIGTERM to every agent still running, then each waited for (killed after 10 s): they stop
    together, not one clean stop after another."""
    for a in agents:
        if a.proc and a.proc.poll() is None:
            a.proc.terminate()
    for a in agents:
        if a.proc:
            try:
                a.proc.wait(10)
            except subprocess.TimeoutExpired:
                a.proc.kill()
                a.proc.wait()
            a.proc = None
            a.stderr.close()


def many_agents(work):
    """MANY agents on one mosquitto (set_tcp_nodelay true, as the README asks of a fleet's broker),
    each in its own directory (config, database, output_dir, log) with target self and no rate
    limit, started BATCH at a time. Prints memory and CPU at idle and during the broadcasts side
    by side, and the broadcast's line."""
    raise_open_files(2 * MANY + 256)
    broker = Broker(work, "allow_anonymous true\nset_tcp_nodelay true\n")
    agents = []
    for i in range(MANY):
        node = f"many{i:03d}"
        home = os.path.join(work, node)
        os.makedirs(home)
        # The default rate limit (60 commands a minute) would refuse rounds past the 60th.
        agents.append(Agent(broker, home, node, "self", "rate_limit = 0\n"))
    try:
        broker.start()
        user = Client(broker.port)
        try:
            user.subscribe("profiler/+/status")
            t0 = time.monotonic()
            for first in range(0, MANY, BATCH):
                batch = agents[first:first + BATCH]
                start_agents(batch)
                for a in batch:
                    wait_online(user, a.node, timeout=30)
            name = f"{MANY} agents on one mosquitto, set_tcp_nodelay true"
            print(f"{name}: one process each (own node_id, database and output_dir, target "
                  f"self), started {BATCH} at a time, all online in {time.monotonic() - t0:.1f} "
                  f"s; mosquitto's open-file limit {open_files_limit(broker.proc.pid)}")
            many_figures(name, broker, agents, user)
        finally:
            user.close()
    finally:
        stop_all(agents)
        try:
            broker.stop()
        except subprocess.TimeoutExpired:
            broker.kill()


def many_figures(name, broker, agents, user):
    """many_agents' measures, once every agent is online."""
    # Past the start of the last batch (SQLite opened, the first state published).
    time.sleep(5)
    usage = Usage(broker, agents)
    time.sleep(IDLE_S)
    idle, (idle_s, _, _, _) = usage_cells(usage)
    results = Results(broker.port)
    try:
        usage = Usage(broker, agents)
        broadcast(name, user, results, [a.node for a in agents])
        busy, (busy_s, broker_cpu, agent_cpu, mean_cpu) = usage_cells(usage)
    finally:
        results.close()
    rows = ("mosquitto", f"one agent ({agents[0].node})", f"all {len(agents)} agents")
    width = max(len(c) for c in idle) + 2
    print(f"{'':24}{f'idle, {idle_s:.0f} s':{width}}broadcast ping, {ROUNDS + 1} rounds "
          f"(1 warm-up) in {busy_s:.1f} s")
    for row, a, b in zip(rows, idle, busy):
        print(f"{row:24}{a:{width}}{b}")
    # One agent's CPU time over the rounds is a few clock ticks (10 ms each): the mean over all
    # of them says more.
    print(f"{name}: CPU per broadcast round: mosquitto {broker_cpu / (ROUNDS + 1) * 1000:.1f} ms, "
          f"one agent {agent_cpu / (ROUNDS + 1) * 1000:.2f} ms, the mean agent "
          f"{mean_cpu / (ROUNDS + 1) * 1000:.2f} ms")


def one_mosquitto_both(work):
    one_mosquitto(work, False)
    one_mosquitto(work, True)


SECTIONS = {
    "one": one_mosquitto_both,
    "bridged": bridged_mosquittos,
    "failover": mosquitto_failover,
    "rabbitmq": rabbitmq_cluster,
    "200": many_agents,
}


def main():
    parser = argparse.ArgumentParser(description="Fleet figures: broadcast, failover, "
                                     f"{MANY} agents on one broker.")
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run this section alone (repeatable); all of them by default")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-fleet-")
    try:
        for name, section in SECTIONS.items():
            if not args.only or name in args.only:
                section(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
