"""What the benchmarks share: the integration harness (tests/integration/conftest.py) on the import
path, one agent on a private broker against a workload started for the run, and a reader of the
figures a workload prints as it runs. Not a test: nothing here judges a figure."""
import contextlib
import os
import shutil
import sys
import tempfile
import threading

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
from conftest import (BUILD, Agent, Broker, Client, agent_session,  # noqa: E402,F401
                      running_workload, wait_online)

NODE = "bench"


@contextlib.contextmanager
def bench_agent(workload, *args, topic=f"profiler/{NODE}/#", extra_config=""):
    """A scratch directory, build/workloads/WORKLOAD running past its "ready" line, and the agent
    (node NODE) online on a private broker with a client subscribed to topic only, which covers
    its status (paho's cost per message received stays out of what is timed): yields (work, target, session). All is
    stopped and the directory removed on the way out."""
    work = tempfile.mkdtemp(prefix=f"bench-{workload}-")
    try:
        with running_workload(workload, *args) as target, \
                agent_session(work, NODE, f"pid:{target.pid}", extra_config, topic=topic) as s:
            yield work, target, s
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def agents_on_broker(nodes, topics, target="self", extra_config=""):
    """A scratch directory, a private broker, an agent for each node name in nodes, all online, and
    a client subscribed to topics, which cover the agents' status: yields (broker, agents,
    client). All is stopped and the directory removed on the way out."""
    work = tempfile.mkdtemp(prefix="bench-")
    broker = Broker(work)
    broker.start()
    client = Client(broker.port)
    agents = []
    try:
        for topic in topics:
            client.subscribe(topic)
        for node in nodes:
            agent = Agent(broker, work, node, target, extra_config)
            agent.start()
            agents.append(agent)
        for agent in agents:
            wait_online(client, agent.node)
        yield broker, agents, client
    finally:
        client.close()
        for agent in agents:
            agent.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def output_points(proc, parse):
    """A list a background thread fills, as proc prints them, with parse(line) of each output
    line parse does not answer None for: (time, figure) points, however the workload words them."""
    points = []

    def read():
        for line in proc.stdout:
            point = parse(line)
            if point is not None:
                points.append(point)

    threading.Thread(target=read, daemon=True).start()
    return points
