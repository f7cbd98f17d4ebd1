"""Agents behind a bridge: two mosquittos, a leaf bridged to a centre with `topic profiler/# both 1`
and `topic homeassistant/# both 1` (the lines the README gives), the agents on the leaf and the
user on the centre. A command published on the centre is answered there, with its log records;
the retained discovery config and status reach the centre, and so does the last will of an agent
killed with -9."""
import json
import uuid

import pytest

from brokers import Bridged
from conftest import Agent, Client, Session, wait_online


@pytest.fixture(scope="module")
def site(workdir):
    """The bridged pair, agents br1 (discovery on) and br2 on the leaf, a client on the centre."""
    bridged = Bridged(workdir)
    centre = Client(bridged.centre.port)
    agents = []
    try:
        centre.subscribe("profiler/#")
        for node, extra in (("br1", "discovery = on\n"), ("br2", "")):
            agent = Agent(bridged.leaf, workdir, node, "self", extra)
            agent.start()
            agents.append(agent)
        for agent in agents:
            wait_online(centre, agent.node)
        yield bridged, agents, centre
    finally:
        centre.close()
        for agent in agents:
            if agent.proc:
                agent.stop()
        bridged.close()


def test_command_on_the_centre_is_answered_there(site):
    bridged, agents, centre = site
    result, logs = Session(bridged.centre, agents[0], centre).command("log_thread_frames")
    assert result["status"] == "ok", result
    assert logs and logs[0].startswith("Thread "), logs
    # Through the leaf: the agent says which broker it is on.
    ping, _ = Session(bridged.centre, agents[0], centre).command("ping")
    assert ping["summary"]["broker"]["address"] == f"127.0.0.1:{bridged.leaf.port}"


def test_broadcast_on_the_centre_reaches_every_agent(site):
    _, agents, centre = site
    rid = uuid.uuid4().hex[:10]
    centre.publish("profiler/ping", {"request_id": rid})
    for agent in agents:
        m = centre.wait_for(lambda m: m.topic == f"profiler/{agent.node}/result" and
                            json.loads(m.payload).get("request_id") == rid)
        assert json.loads(m.payload)["summary"]["node"] == agent.node


def test_retained_discovery_and_status_are_kept_by_the_centre(site):
    bridged, _, _ = site
    late = Client(bridged.centre.port)
    try:
        late.subscribe("homeassistant/device/br1/config")
        late.subscribe("profiler/br1/status")
        config = late.wait_for(lambda m: m.topic == "homeassistant/device/br1/config")
        assert config.retain and json.loads(config.payload)["cmps"]
        status = late.wait_for(lambda m: m.topic == "profiler/br1/status")
        assert status.retain and status.payload == b"online"
    finally:
        late.close()


def test_last_will_of_a_killed_agent_reaches_the_centre(site):
    bridged, agents, centre = site
    victim = agents[1]
    centre.drain()
    since = len(centre.seen)
    victim.proc.kill()
    victim.proc.wait()
    centre.wait_for(lambda m: centre.seen.index(m) >= since and
                    m.topic == f"profiler/{victim.node}/status" and m.payload == b"offline")
    victim.stop()
    late = Client(bridged.centre.port)
    try:
        late.subscribe(f"profiler/{victim.node}/status")
        m = late.wait_for(lambda m: m.topic == f"profiler/{victim.node}/status")
        assert m.retain and m.payload == b"offline"
    finally:
        late.close()
