"""Object actions through a real broker: growth logging, dumps by type and what the target has
scheduled, on a workload that leaks pipes at a known rate and runs a timerfd in an epoll set."""
import json
import re

import pytest

from conftest import agent_session, check_logger_ends_with_target, growth_records


@pytest.fixture(scope="module")
def objs(workdir, leaky):
    with agent_session(workdir, "objs", f"pid:{leaky.pid}") as s:
        yield s


def logs_after(s, start, prefix):
    return [m.payload.decode() for m in s.client.seen[start:]
            if m.topic.endswith("/log") and m.payload.decode().startswith(prefix)]


def test_growth_logging_start_stop(objs):
    result, _ = objs.command("start_log_objects", {"scan_interval": 1})
    assert result["status"] == "ok", result
    again, _ = objs.command("start_log_objects", {"scan_interval": 1})
    assert again["status"] == "error" and again["error"] == "Object logging already started"
    growth = growth_records(objs, len(objs.client.seen), 3)
    # After the first scan, only what grew is listed: the leaked pipes, by about 10 a second.
    later = growth[-1].decode()
    assert re.fullmatch(r"Memory Growth: \[\('pipe', \d+, \d+\)(, \('\w+', \d+, \d+\))*\]", later)
    inc = int(re.search(r"\('pipe', \d+, (\d+)\)", later).group(1))
    assert 10 <= inc <= 40
    _, tasks = objs.command("log_current_tasks")
    assert any(t.startswith("Task: <logger objects") for t in tasks)
    state = objs.client.wait_for(lambda m: m.topic.endswith("/state") and
                                 json.loads(m.payload)["loggers"])
    assert json.loads(state.payload)["loggers"][0]["logger"] == "objects"
    stop, _ = objs.command("stop_log_objects")
    assert stop["status"] == "ok"
    stop, _ = objs.command("stop_log_objects")
    assert stop["status"] == "error" and stop["error"] == "Object logging not running"


def test_dump_log_objects_by_type(objs, leaky):
    result, logs = objs.command("dump_log_objects", {"type": "timerfd"})
    assert result["status"] == "ok", result
    recs = [r for r in logs if r.startswith("timerfd object in memory: ")]
    assert len(recs) == 1 and result["summary"]["objects"] == 1
    assert re.search(r"<timerfd fd=\d+ clock=monotonic next=\d+\.\d+s interval=7s>", recs[0])
    result, logs = objs.command("dump_log_objects", {"type": "pipe"})
    assert result["summary"]["objects"] >= 2
    assert all(r.startswith("pipe object in memory: <pipe fd=") for r in logs
               if r.startswith("pipe object"))
    result, logs = objs.command("dump_log_objects", {"type": "thread"})
    assert any("name=piper" in r for r in logs)
    bad, _ = objs.command("dump_log_objects", {"type": "widget"})
    assert bad["status"] == "error"
    assert "unknown type 'widget'" in bad["error"] and "pipe" in bad["error"]


def test_log_event_loop_scheduled(objs):
    result, logs = objs.command("log_event_loop_scheduled")
    assert result["status"] == "ok", result
    sched = [r for r in logs if r.startswith("Scheduled: <")]
    assert any(re.fullmatch(r"Scheduled: <timerfd fd=\d+ clock=monotonic next=\d+\.\d+s "
                            r"interval=7s>", r) for r in sched), sched
    assert any(r.startswith("Scheduled: <epoll fd=") and "timerfd" in r for r in sched), sched


def test_logger_stops_when_the_target_exits(workdir):
    check_logger_ends_with_target(workdir, "objexit", "objects", "Object logging")
