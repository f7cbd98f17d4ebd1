"""Fleets and files end to end through a real mosquitto: `ping`, `runs` read back from SQLite,
`get_file` publishing result files on P/N/file/NAME (byte for byte, never from outside
output_dir, never a hard link or another user's file, never above max_file_bytes), a broadcast on
P/ACTION answered by every agent; and what keeps a fleet connected: a list of brokers (failover
and return), failed connects in the log, MQTT 3.1.1 sessions that keep commands, the heartbeat,
results queued through an outage, and a run database deleted under a running agent."""
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid

import paho.mqtt.client as mqtt
import pytest

from brokers import FailoverAgent
from conftest import (ROOT, TIMEOUT, Agent, Broker, Client, Session, agent_session,
                      running_workload, wait_online)
from test_faults import PersistentClient

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture(scope="module")
def fleet(workdir, broker, demo):
    with agent_session(workdir, "fleet1", f"pid:{demo.pid}",
                       "allowed_targets = self, pid:1\n", broker) as s:
        yield s


def out_dir(s):
    return os.path.realpath(os.path.join(s.agent.workdir, "profiles"))


def file_messages(s, since, names, timeout=TIMEOUT):
    """The P/N/file/NAME message for each of names, seen after index since."""
    got = {}
    for name in names:
        topic = f"{s.prefix}/file/{name}"
        got[name] = s.client.wait_for(
            lambda m: m.topic == topic and m not in s.client.seen[:since], timeout)
    return got


def file_topics_after(s, since):
    s.client.drain()
    return [m.topic for m in s.client.seen[since:] if "/file/" in m.topic]


def get_file(s, payload, timeout=TIMEOUT):
    s.client.drain()
    since = len(s.client.seen)
    result, _ = s.command("get_file", payload, timeout=timeout)
    return result, since


def test_ping_reports_version_node_target_and_capabilities(fleet, demo):
    result, _ = fleet.command("ping")
    assert result["status"] == "ok", result
    summary = result["summary"]
    with open(os.path.join(ROOT, "VERSION")) as f:
        assert summary["version"] == f.read().strip()
    assert summary["node"] == "fleet1"
    assert summary["target"] == {"spec": f"pid:{demo.pid}", "pid": demo.pid,
                                 "name": "demo_service"}
    assert summary["pid"] == fleet.agent.proc.pid
    up = summary["uptime"]
    time.sleep(0.3)
    later, _ = fleet.command("ping")
    assert later["summary"]["uptime"] >= up + 0.25
    caps = summary["capabilities"]
    assert set(caps) == {"perf_event", "uprobes", "ptrace"}
    if os.geteuid() == 0:
        for name, c in caps.items():
            assert c["available"] is True, (name, c)
    for c in caps.values():
        assert isinstance(c["available"], bool)
        assert c["available"] or c["reason"]
    other, _ = fleet.command("ping", {"target": "pid:1"})
    assert other["summary"]["target"]["pid"] == 1 and other["target"]["pid"] == 1


def test_ping_and_state_say_which_broker_and_since_when(fleet):
    result, _ = fleet.command("ping")
    broker = result["summary"]["broker"]
    assert broker["address"] == f"127.0.0.1:{fleet.broker.port}"
    assert broker["mqtt_version"] == "5" and broker["subscriptions_qos"] == 1
    assert re.fullmatch(ISO, broker["connected_since"])
    assert broker["connected_since"] <= result["started"]
    state = json.loads(fleet.client.wait_for(lambda m: m.topic == f"{fleet.prefix}/state").payload)
    assert state["broker"] == broker
    assert re.fullmatch(ISO, state["last_seen"])


def test_ping_of_a_missing_target_is_ok_and_says_why(workdir, broker):
    with running_workload("parked") as p:
        pid = p.pid
    with agent_session(workdir, "gone", f"pid:{pid}", "", broker) as s:
        result, _ = s.command("ping")
    assert result["status"] == "ok", result
    assert result["summary"]["target"] == {"spec": f"pid:{pid}",
                                           "error": "no such process is running"}
    assert "target" not in result


def test_runs_lists_newest_first_with_filters(fleet, demo):
    ids = {}
    for action, payload in [("lru_stats", {}), ("ping", {}), ("lru_stats", {}),
                            ("start", {"seconds": -1})]:
        result, _ = fleet.command(action, payload)
        ids.setdefault(action, []).append(result["run_id"])
    bad = ids["start"][0]

    result, _ = fleet.command("runs", {"limit": 3})
    assert result["status"] == "ok", result
    runs = result["summary"]["runs"]
    # The runs command itself is not among them: the three before it, newest first.
    assert [r["run_id"] for r in runs] == [bad, ids["lru_stats"][1], ids["ping"][0]]
    assert runs[0]["action"] == "start" and runs[0]["status"] == "error"
    assert runs[0]["error"] == "seconds: must be greater than 0"
    assert runs[1]["status"] == "ok" and runs[1]["error"] is None
    # lru_stats resolves its target (it answers from inside a Python one).
    assert runs[1]["target"] == {"spec": f"pid:{demo.pid}", "pid": demo.pid}
    assert runs[2]["target"] == {"spec": f"pid:{demo.pid}", "pid": demo.pid}
    for r in runs:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["started"])
        assert r["finished"] >= r["started"]
        assert r["files"] == []

    result, _ = fleet.command("runs", {"action": "lru_stats"})
    got = [r["run_id"] for r in result["summary"]["runs"]]
    assert got[:2] == [ids["lru_stats"][1], ids["lru_stats"][0]]
    assert {r["action"] for r in result["summary"]["runs"]} == {"lru_stats"}

    result, _ = fleet.command("runs", {"status": "error", "limit": 100})
    errs = result["summary"]["runs"]
    assert errs and {r["status"] for r in errs} == {"error"} and errs[0]["run_id"] == bad

    result, _ = fleet.command("runs", {"action": "ping", "status": "ok", "limit": 1})
    assert [r["run_id"] for r in result["summary"]["runs"]] == [ids["ping"][0]]

    # What the store holds, read with sqlite3, agrees.
    with sqlite3.connect(fleet.agent.db) as db:
        rows = db.execute("SELECT id, action, status FROM runs WHERE action = 'lru_stats' "
                          "ORDER BY id DESC").fetchall()
    result, _ = fleet.command("runs", {"action": "lru_stats", "limit": 100})
    assert [(r["run_id"], r["action"], r["status"]) for r in result["summary"]["runs"]] == rows


@pytest.mark.parametrize("payload,error", [
    ({"limit": 0}, "limit: must be at least 1"),
    ({"limit": 101}, "limit: must be at most 100"),
    ({"status": "done"}, "status: must be one of"),
    ({"action": "nope"}, "action: unknown action 'nope'"),
    ({"bogus": 1}, "unknown field 'bogus'"),
])
def test_runs_rejects_bad_filters(fleet, payload, error):
    result, _ = fleet.command("runs", payload)
    assert result["status"] == "error"
    assert result["error"].startswith(error), result["error"]


def test_get_file_of_a_cpu_profile_run_is_byte_for_byte(fleet):
    start, _ = fleet.command("start", {"seconds": 1, "frequency": 99}, timeout=30)
    assert start["status"] == "ok", start
    assert len(start["files"]) == 3
    result, since = get_file(fleet, {"run_id": start["run_id"]})
    assert result["status"] == "ok", result
    names = [os.path.basename(f) for f in start["files"]]
    published = result["summary"]["files"]
    assert [p["name"] for p in published] == names
    msgs = file_messages(fleet, since, names)
    for path, p in zip(start["files"], published):
        with open(path, "rb") as f:
            data = f.read()
        assert p["size"] == len(data) > 0
        assert p["topic"] == f"{fleet.prefix}/file/{p['name']}"
        assert msgs[p["name"]].payload == data
        assert not msgs[p["name"]].retain
    fleet.start_files = start["files"]


def test_get_file_by_name(fleet):
    path = fleet.start_files[-1]
    name = os.path.basename(path)
    result, since = get_file(fleet, {"name": name})
    assert result["status"] == "ok", result
    with open(path, "rb") as f:
        data = f.read()
    assert result["summary"]["files"] == [{"name": name, "topic": f"{fleet.prefix}/file/{name}",
                                           "size": len(data)}]
    assert file_messages(fleet, since, [name])[name].payload == data
    # A symlink that stays inside output_dir is followed, and published under the asked name.
    link = os.path.join(out_dir(fleet), "latest.svg")
    os.symlink(name, link)
    try:
        result, since = get_file(fleet, {"name": "latest.svg"})
        assert result["status"] == "ok", result
        assert file_messages(fleet, since, ["latest.svg"])["latest.svg"].payload == data
    finally:
        os.unlink(link)


def outside_file(workdir, name):
    """A file outside output_dir, that get_file must never publish."""
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write("not for MQTT\n")
    return path


def test_get_file_never_leaves_output_dir(fleet, workdir):
    d = out_dir(fleet)
    secret = outside_file(workdir, "secret.txt")
    os.symlink(secret, os.path.join(d, "escape"))
    os.symlink("../secret.txt", os.path.join(d, "escape_rel"))
    os.symlink("/etc", os.path.join(d, "etcdir"))
    os.mkdir(os.path.join(d, "subdir"))
    os.mkfifo(os.path.join(d, "fifo"))
    try:
        cases = [
            ({"name": "../secret.txt"}, "name: does not match pattern"),
            ({"name": secret}, "name: does not match pattern"),
            ({"name": "/etc/passwd"}, "name: does not match pattern"),
            ({"name": "sub/../../secret.txt"}, "name: does not match pattern"),
            ({"name": ".."}, "name: must be a file name in output_dir, not '..'"),
            ({"name": "."}, "name: must be a file name in output_dir, not '.'"),
            ({"name": "escape"}, "escape: refused: it resolves to a path outside output_dir"),
            ({"name": "escape_rel"},
             "escape_rel: refused: it resolves to a path outside output_dir"),
            ({"name": "etcdir"}, "etcdir: refused: it resolves to a path outside output_dir"),
            ({"name": "subdir"}, "subdir: refused: not a regular file"),
            ({"name": "fifo"}, "fifo: refused: not a regular file"),
            ({"name": "x" * 256}, "name: must be at most 255 characters"),
            ({"name": "missing.cprof"}, "missing.cprof: no such file in output_dir"),
            ({}, "run_id or name: one of them is required"),
            ({"name": "a", "run_id": 1}, "give run_id or name, not both"),
            ({"run_id": 0}, "run_id: must be at least 1"),
            ({"run_id": 999999}, "run_id: there is no run 999999"),
        ]
        for payload, error in cases:
            result, since = get_file(fleet, payload)
            assert result["status"] == "error", (payload, result)
            assert result["error"].startswith(error), (payload, result["error"])
            assert file_topics_after(fleet, since) == [], payload
        ping, _ = fleet.command("ping")
        result, _ = get_file(fleet, {"run_id": ping["run_id"]})
        assert result["error"] == f"run_id: run {ping['run_id']} (ping) has no files"
    finally:
        for n in ["escape", "escape_rel", "etcdir", "fifo"]:
            os.unlink(os.path.join(d, n))
        os.rmdir(os.path.join(d, "subdir"))


def test_get_file_of_a_run_whose_file_moved_outside_is_refused(fleet, workdir):
    # A run's recorded path is checked like a name: replaced by a link outside, it is refused.
    start, _ = fleet.command("start", {"seconds": 0.5, "frequency": 49}, timeout=30)
    assert start["status"] == "ok", start
    victim = start["files"][1]
    os.unlink(victim)
    os.symlink("/etc/passwd", victim)
    result, since = get_file(fleet, {"run_id": start["run_id"]})
    assert result["status"] == "error"
    assert result["error"] == (f"{os.path.basename(victim)}: refused: it resolves to a path "
                               "outside output_dir")
    assert file_topics_after(fleet, since) == []


def test_get_file_size_limit(workdir, broker):
    with agent_session(workdir, "small", "self", "max_file_bytes = 1024\n", broker) as s:
        d = os.path.join(workdir, "profiles")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "big.bin"), "wb") as f:
            f.write(os.urandom(1025))
        with open(os.path.join(d, "fits.bin"), "wb") as f:
            fits = os.urandom(1024)
            f.write(fits)
        result, since = get_file(s, {"name": "big.bin"})
        assert result["status"] == "error"
        assert result["error"] == "big.bin is 1025 bytes, larger than max_file_bytes (1024)"
        assert file_topics_after(s, since) == []
        result, since = get_file(s, {"name": "fits.bin"})
        assert result["status"] == "ok", result
        assert file_messages(s, since, ["fits.bin"])["fits.bin"].payload == fits


def test_broadcast_is_answered_by_every_agent_on_its_own_topic(workdir):
    # A broker of their own, so the two agents are all there is to answer.
    broker = Broker(workdir)
    broker.start()
    try:
        run_broadcast(workdir, broker)
    finally:
        broker.stop()


def run_broadcast(workdir, broker):
    with agent_session(workdir, "bc1", "self", "", broker) as a, \
            agent_session(workdir, "bc2", "self", "", broker) as b:
        listener = Client(broker.port)
        try:
            listener.subscribe("profiler/+/result")
            rid = uuid.uuid4().hex[:12]
            listener.publish("profiler/ping", json.dumps({"request_id": rid}))
            got = {}
            for node in ("bc1", "bc2"):
                m = listener.wait_for(lambda m: m.topic == f"profiler/{node}/result" and
                                      json.loads(m.payload).get("request_id") == rid)
                got[node] = json.loads(m.payload)
            for node, s in (("bc1", a), ("bc2", b)):
                assert got[node]["status"] == "ok"
                assert got[node]["summary"]["node"] == node
                assert got[node]["summary"]["pid"] == s.agent.proc.pid
            time.sleep(0.3)
            listener.drain()
            answers = [m for m in listener.seen
                       if json.loads(m.payload).get("request_id") == rid]
            assert sorted(m.topic for m in answers) == ["profiler/bc1/result",
                                                        "profiler/bc2/result"]
        finally:
            listener.close()


def test_request_id_with_nul_is_echoed_exactly(fleet):
    # Valid JSON, 3 characters: echoed as it came, escaped, and stored as it came.
    result, _ = fleet.command("ping", raw='{"request_id": "a\\u0000b"}', rid="a\0b")
    assert result["request_id"] == "a\0b"
    runs, _ = fleet.command("runs", {"limit": 1})
    assert runs["summary"]["runs"][0]["request_id"] == "a\0b"
    with sqlite3.connect(fleet.agent.db) as db:
        stored, = db.execute("SELECT request_id FROM runs WHERE id = ?",
                             (result["run_id"],)).fetchone()
    assert stored == "a\0b"


def test_get_file_refuses_hard_links_and_other_users_files(fleet, workdir):
    d = out_dir(fleet)
    os.link(outside_file(workdir, "linked-secret.txt"), os.path.join(d, "hardlink.txt"))
    foreign = os.path.join(d, "foreign.txt")
    with open(foreign, "w") as f:
        f.write("someone else's\n")
    os.chown(foreign, 65534, 65534)
    try:
        result, since = get_file(fleet, {"name": "hardlink.txt"})
        assert result["status"] == "error"
        assert result["error"] == ("hardlink.txt: refused: it has 2 hard links, and another may "
                                   "be outside output_dir")
        result, since2 = get_file(fleet, {"name": "foreign.txt"})
        assert result["error"] == ("foreign.txt: refused: it belongs to uid 65534, not to the "
                                   "agent's user")
        assert file_topics_after(fleet, since) == []
    finally:
        os.unlink(os.path.join(d, "hardlink.txt"))
        os.unlink(foreign)


def test_deleted_or_replaced_database_is_noticed_and_opened_again(workdir, broker):
    with agent_session(workdir, "dbgone", "self", "", broker) as s:
        first, _ = s.command("ping")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(s.agent.db + suffix):
                os.unlink(s.agent.db + suffix)
        after, _ = s.command("ping")
        said = f"the run database {s.agent.db} was deleted while the agent was running"
        assert any(w.startswith(said) for w in after["warnings"]), after
        assert "was deleted while the agent was running" in s.agent.log_text()
        runs, _ = s.command("runs", {"limit": 10})
        assert [r["run_id"] for r in runs["summary"]["runs"]] == [after["run_id"]]
        with sqlite3.connect(s.agent.db) as db:
            assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
        # Replaced by another database: the agent records in that one from then on.
        other = os.path.join(workdir, "dbgone-other.db")
        shutil.copy(s.agent.db, other)
        os.replace(other, s.agent.db)
        third, _ = s.command("ping")
        assert any("was replaced by another file" in w for w in third["warnings"]), third
        quiet, _ = s.command("ping")
        assert "warnings" not in quiet, quiet
        with sqlite3.connect(s.agent.db) as db:
            ids = [r for r, in db.execute("SELECT id FROM runs ORDER BY id")]
        assert quiet["run_id"] in ids and third["run_id"] in ids


def test_failed_connects_are_logged_with_their_reason_once(workdir):
    broker = Broker(workdir)
    agent = Agent(broker, workdir, "nobroker", "self")
    agent.start()
    try:
        line = f"INFO broker 127.0.0.1:{broker.port} does not answer (Connection refused)"
        deadline = time.monotonic() + TIMEOUT
        while line not in agent.log_text():
            assert time.monotonic() < deadline, agent.log_text()
            time.sleep(0.1)
        # Tried again and again (1, then every 2 s), said once.
        time.sleep(3.5)
        assert agent.log_text().count(line) == 1, agent.log_text()
        broker.start()
        client = Client(broker.port)
        client.subscribe("profiler/nobroker/status")
        wait_online(client, "nobroker")
        client.close()
        assert "connected to broker" in agent.log_text()
    finally:
        agent.stop()
        broker.stop()


def test_failover_to_the_next_broker_and_back(workdir):
    first, second = Broker(workdir), Broker(workdir)
    first.start()
    second.start()
    agent = FailoverAgent([first.port, second.port], workdir, "fo", "self")
    on_first, on_second = Client(first.port), Client(second.port)
    try:
        for c in (on_first, on_second):
            c.subscribe("profiler/fo/#")
        agent.start()
        wait_online(on_first, "fo")
        result, _ = Session(first, agent, on_first).command("ping")
        assert result["summary"]["broker"]["address"] == f"127.0.0.1:{first.port}"
        first.stop()
        wait_online(on_second, "fo")
        result, _ = Session(second, agent, on_second).command("ping")
        assert result["summary"]["broker"]["address"] == f"127.0.0.1:{second.port}"
        # The preferred broker back: the agent returns to it.
        first.start()
        on_first.close()
        on_first = Client(first.port)
        on_first.subscribe("profiler/fo/#")
        wait_online(on_first, "fo", timeout=20)
        result, _ = Session(first, agent, on_first).command("ping")
        assert result["summary"]["broker"]["address"] == f"127.0.0.1:{first.port}"
        log = agent.log_text()
        assert f"broker 127.0.0.1:{first.port} answers again: moving back to it" in log
    finally:
        on_first.close()
        on_second.close()
        agent.stop()
        first.stop()
        second.stop()


def test_mqtt_311_session_keeps_commands_while_the_agent_is_away(workdir):
    broker = Broker(workdir)
    broker.start()
    client = Client(broker.port)
    agent = Agent(broker, workdir, "keep311", "self", "mqtt_version = 3.1.1\n")
    try:
        client.subscribe("profiler/keep311/#")
        agent.start()
        wait_online(client, "keep311")
        s = Session(broker, agent, client)
        # Killed: its session stays, and keeps what is sent meanwhile.
        agent.stop(signal.SIGKILL)
        for rid in ("away1", "away2"):
            client.publish("profiler/keep311/ping", {"request_id": rid})
        agent.start()
        for rid in ("away1", "away2"):
            client.wait_for(lambda m: m.topic == "profiler/keep311/result" and
                            json.loads(m.payload).get("request_id") == rid)
        # Stopped cleanly: its session ends, and nothing sent meanwhile runs at the next start.
        assert agent.stop() == 0
        client.publish("profiler/keep311/ping", {"request_id": "stale"})
        client.drain()
        since = len(client.seen)
        agent.start()
        client.wait_for(lambda m: client.seen.index(m) >= since and
                        m.topic == "profiler/keep311/status" and m.payload == b"online")
        fresh, _ = s.command("ping")
        assert fresh["status"] == "ok"
        time.sleep(0.5)
        client.drain()
        assert "stale" not in [json.loads(m.payload).get("request_id") for m in client.seen
                               if m.topic == "profiler/keep311/result"]
    finally:
        client.close()
        if agent.proc:
            agent.stop()
        broker.stop()


def test_heartbeat_publishes_status_and_state_again(workdir, broker):
    with agent_session(workdir, "beat", "self", "heartbeat_seconds = 1\n", broker) as s:
        start = len(s.client.seen)
        seen = []
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            try:
                m = s.client.wait_for(lambda m: m.topic == "profiler/beat/state" and
                                      s.client.seen.index(m) >= start and m not in seen, 0.5)
                seen.append(m)
            except TimeoutError:
                pass
        stamps = [json.loads(m.payload)["last_seen"] for m in seen]
        assert len(stamps) >= 2 and stamps == sorted(set(stamps)), stamps
        statuses = [m for m in s.client.seen[start:] if m.topic == "profiler/beat/status"]
        assert len(statuses) >= 2 and all(m.payload == b"online" for m in statuses)


def test_result_of_a_run_ended_during_an_outage_is_queued_not_lost(workdir):
    broker = Broker(workdir, persistent=True)
    broker.start()
    client = PersistentClient(broker.port, "profiler/outage/#")
    with running_workload("cpu_split") as target:
        agent = Agent(broker, workdir, "outage", f"pid:{target.pid}")
        try:
            agent.start()
            deadline = time.monotonic() + TIMEOUT
            while not any(m[1] == "profiler/outage/status" for m in client.messages):
                assert time.monotonic() < deadline, "agent not online"
                time.sleep(0.05)
            time.sleep(1.5)  # the sessions saved by the broker's autosave
            client.publish("profiler/outage/start", {"seconds": 3, "request_id": "during"})
            while not any(m[1].endswith("/progress") for m in client.messages):
                assert time.monotonic() < deadline, "no progress"
                time.sleep(0.05)
            broker.kill()
            before = [json.loads(m[2])["elapsed"] for m in client.messages
                      if m[1].endswith("/progress")]
            while "the result of start is queued" not in agent.log_text():
                assert time.monotonic() < deadline + 10, agent.log_text()
                time.sleep(0.1)
            broker.start()
            _, result = client.result("during", 15)
            assert result["status"] == "ok", result
            assert "cannot publish" not in agent.log_text()
            # Progress of the outage (about one a second) is stale once a broker is back: not
            # kept for it. What the broker held before it died may still come.
            time.sleep(1)
            after = [json.loads(m[2])["elapsed"] for m in client.messages
                     if m[1].endswith("/progress")]
            assert max(after) < max(before) + 0.5, (before, after)
        finally:
            client.close()
            agent.stop()
            broker.stop()

