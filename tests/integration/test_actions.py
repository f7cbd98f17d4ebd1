"""The five implemented actions end to end: command through a real mosquitto, the agent runs it
on the demo service, the result and log records come back, and the run is in SQLite."""
import json
import re
import sqlite3

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def thread_records(logs):
    return [r for r in logs if r.startswith("Thread [")]


def test_log_thread_frames_names_every_thread_and_function(session, demo):
    result, logs = session.command("log_thread_frames", {"request_id": "a1"})
    assert result["status"] == "ok", result
    assert result["request_id"] == "a1"
    assert result["target"] == {"spec": f"pid:{demo.pid}", "pid": demo.pid,
                                "name": "demo_service"}
    assert isinstance(result["run_id"], int)
    threads = thread_records(logs)
    assert result["summary"]["threads"] == len(threads) == 5
    by_name = {}
    for rec in threads:
        first, *frames = rec.split("\n")
        m = re.fullmatch(r"Thread \[(.+)\]: tid=(\d+)", first)
        assert m, first
        for f in frames:
            assert re.fullmatch(r'  File "[^"]+", line \d+, in \S+( \[.+\+0x[0-9a-f]+\])?', f), f
        by_name.setdefault(m.group(1), []).append(frames)

    def funcs(frames):
        return [re.search(r"in (\S+)", f).group(1) for f in frames]

    assert set(by_name) == {"demo_service", "worker", "idle", "acceptor"}
    idle = funcs(by_name["idle"][0])
    # Outermost first: the thread's start routine comes before the function it called.
    assert idle.index("idle_main") < idle.index("wait_for_work") if "idle_main" in idle \
        else "wait_for_work" in idle
    assert "serve_connections" in funcs(by_name["acceptor"][0])
    assert "main" in funcs(by_name["demo_service"][0])
    for w in by_name["worker"]:
        assert "worker_main" in funcs(w)
    assert any("demo_service.c" in f for f in by_name["acceptor"][0])
    # The target is left running and untraced.
    status = open(f"/proc/{demo.pid}/status").read()
    assert re.search(r"TracerPid:\s+0\n", status)
    assert not re.search(r"State:\s+[tT]", status)


def test_dump_sockets_lists_tcp_udp_and_unix(session, demo):
    result, logs = session.command("dump_sockets")
    assert result["status"] == "ok", result
    rec = [r for r in logs if r.startswith("Sockets used by")]
    assert len(rec) == 1
    lines = rec[0].split("\n")
    assert lines[0] == f"Sockets used by demo_service (pid {demo.pid}):"
    body = "\n".join(lines[1:])
    port = demo.port
    assert re.search(rf"family=2, type=1, proto=6, laddr=\('127\.0\.0\.1', {port}\)>", body)
    assert re.search(rf"family=2, type=1, proto=6, laddr=\('127\.0\.0\.1', \d+\), "
                     rf"raddr=\('127\.0\.0\.1', {port}\)>", body)
    assert re.search(r"family=2, type=2, proto=17", body)
    # Python prints str(laddr): a unix path comes without quotes.
    assert re.search(rf"family=1, type=1, proto=0, laddr=/tmp/demo_service\.{demo.pid}\.sock>",
                     body)
    assert result["summary"]["sockets"] == len(lines) - 1 >= 5
    for line in lines[1:]:
        assert line.startswith("<socket.socket fd=") and line.endswith(">")


def cache_stats(logs):
    stats = {}
    for r in logs:
        m = re.fullmatch(r"Cache stats for (\S+): CacheInfo\(hits=(\d+), misses=(\d+), "
                         r"maxsize=(\d+|None), currsize=(\d+)\)", r)
        if m:
            stats[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return stats


def test_lru_stats_counts_real_hits(session):
    _, before = session.command("lru_stats")
    session.command("log_thread_frames")
    result, after = session.command("lru_stats")
    assert result["status"] == "ok"
    b, a = cache_stats(before), cache_stats(after)
    assert {"schemas", "targets", "unwinders", "symbols"} <= set(a)
    assert a["schemas"][0] >= b["schemas"][0] + 2
    assert a["unwinders"][0] + a["unwinders"][1] > b["unwinders"][0] + b["unwinders"][1]
    assert a["symbols"][0] > b["symbols"][0]


def test_log_current_tasks(session):
    result, logs = session.command("log_current_tasks")
    assert result["status"] == "ok"
    tasks = [r for r in logs if r.startswith("Task: <")]
    assert tasks and f"run {result['run_id']} log_current_tasks" in tasks[0]


def test_set_asyncio_debug_times_dispatches(session):
    result, _ = session.command("set_asyncio_debug", {"enabled": True})
    assert result["status"] == "ok" and result["summary"] == {"enabled": True}
    _, logs = session.command("lru_stats")
    # The timing line of this dispatch is published after its result: wait for it.
    session.client.wait_for(lambda m: m.topic.endswith("/log") and
                            m.payload.startswith(b"Executing <Handle dispatch of lru_stats> took"))
    state = session.client.wait_for(lambda m: m.topic.endswith("/state") and
                                    json.loads(m.payload)["debug"] is True)
    assert state.retain or state.payload
    result, _ = session.command("set_asyncio_debug", {"enabled": False})
    assert result["summary"] == {"enabled": False}


def test_broadcast_topic_reaches_the_agent(session):
    result, _ = session.command("lru_stats", node=False)
    assert result["status"] == "ok"


def test_response_topic_and_correlation_data(session):
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "test/replies/1"
    props.CorrelationData = b"\x01corr"
    session.client.subscribe("test/replies/#")
    session.client.publish(f"{session.prefix}/lru_stats", {"request_id": "rt1"}, properties=props)
    msg = session.client.wait_for(lambda m: m.topic == "test/replies/1")
    assert json.loads(msg.payload)["request_id"] == "rt1"
    assert msg.properties.CorrelationData == b"\x01corr"


def test_runs_are_recorded_in_sqlite(session):
    result, _ = session.command("log_current_tasks", {"request_id": "db1"})
    bad, _ = session.command("start", {"request_id": "db2", "seconds": 0})
    db = sqlite3.connect(session.agent.db)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    row = db.execute("SELECT request_id, action, status, started, finished, target_spec "
                     "FROM runs WHERE id = ?", (result["run_id"],)).fetchone()
    assert row[:3] == ("db1", "log_current_tasks", "ok")
    assert row[3] == result["started"] and row[4] == result["finished"]
    row = db.execute("SELECT status, error FROM runs WHERE id = ?", (bad["run_id"],)).fetchone()
    assert row == ("error", "seconds: must be greater than 0")
    db.close()
