"""Long actions run off the network thread: while a slow thread dump runs, cheap commands are
answered; and in debug mode a dispatch that holds the network loop is named in a warning."""
import json

import pytest

from conftest import agent_session, running_workload


@pytest.fixture(scope="module")
def slow_session(workdir):
    """An agent on a target one of whose threads cannot be stopped: every dump of it waits for a
    timeout."""
    with running_workload("stuck_vfork") as stuck, \
            agent_session(workdir, "slow", f"pid:{stuck.pid}",
                          "max_payload_bytes = 16777216\n") as s:
        yield s


def results(session):
    return [json.loads(m.payload) for m in session.client.seen
            if m.topic == f"{session.prefix}/result"]


def test_cheap_commands_are_answered_while_a_dump_runs(slow_session):
    s = slow_session
    s.client.drain()
    s.client.publish(f"{s.prefix}/log_thread_frames", {"request_id": "slow-dump"})
    cheap, _ = s.command("lru_stats")
    tasks, logs = s.command("log_current_tasks")
    assert cheap["status"] == "ok"
    assert any("log_thread_frames" in r and "elapsed=" in r for r in logs if r.startswith("Task:"))
    dump = s.client.wait_for(lambda m: m.topic.endswith("/result") and
                             json.loads(m.payload).get("request_id") == "slow-dump")
    order = [r.get("request_id") for r in results(s)]
    assert order.index(cheap["request_id"]) < order.index("slow-dump")
    dump = json.loads(dump.payload)
    assert dump["status"] == "ok"
    assert dump["warnings"] == ["1 of 2 threads could not be captured"]
    records = [m.payload.decode() for m in s.client.seen if m.topic.endswith("/log")]
    assert any("<unavailable: the thread did not stop for ptrace" in r for r in records)


def test_state_lists_the_running_job(slow_session):
    s = slow_session
    s.client.drain()
    s.client.publish(f"{s.prefix}/log_thread_frames", {"request_id": "slow-2"})
    s.client.wait_for(lambda m: m.topic.endswith("/state") and
                      any(j["action"] == "log_thread_frames" for j in json.loads(m.payload)["jobs"]))
    s.client.wait_for(lambda m: m.topic.endswith("/result") and
                      json.loads(m.payload).get("request_id") == "slow-2")


def test_debug_mode_names_what_holds_the_loop(slow_session):
    s = slow_session
    result, _ = s.command("set_asyncio_debug", {"enabled": True})
    assert result["status"] == "ok"
    # Checking, parsing and rejecting a 15 MB command holds the network loop well over 100 ms.
    body = json.dumps({"request_id": "heavy", "pad": "x" * 15_000_000})
    assert len(body) < 16777216
    heavy, _ = s.command("lru_stats", raw=body, rid="heavy", timeout=30)
    assert heavy["error"] == "unknown field 'pad'"
    warn = s.client.wait_for(lambda m: m.topic.endswith("/log") and
                             m.payload.startswith(b"Executing <Handle dispatch of lru_stats> took"))
    assert float(warn.payload.split()[-2]) > 0.1
    assert "WARNING Executing <Handle dispatch of lru_stats>" in s.agent.log_text()
    s.command("set_asyncio_debug", {"enabled": False})
