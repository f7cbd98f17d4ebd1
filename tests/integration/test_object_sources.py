"""start_log_object_sources / stop_log_object_sources through a real broker: growth records as
start_log_objects logs them, then where new objects came from, on a workload that leaks a pipe
every 100 ms from its thread "piper" in leak_pipe(); the errors, the task listing and state, the
end when the target exits, and the sentence when tracing is not permitted."""
import json
import os
import re
import subprocess
import time

import pytest

from conftest import (AS_NOBODY, BUILD, agent_session, check_logger_ends_with_target,
                      growth_records, unprivileged_session)

NEW = re.compile(r"New object: (\w+) (<.*>) from:\nThread \[([^\]]*)\]: tid=(\d+)\n(.*)", re.S)


@pytest.fixture(scope="module")
def srcs(workdir, leaky):
    with agent_session(workdir, "objsrc", f"pid:{leaky.pid}") as s:
        yield s


def logs_since(s, start):
    s.client.drain()
    return [m.payload.decode() for m in s.client.seen[start:] if m.topic.endswith("/log")]


def piper_tid(pid):
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().strip() == "piper":
                return int(tid)
    raise AssertionError("no piper thread")


def test_sources_start_records_stop(srcs, leaky):
    start = len(srcs.client.seen)
    result, _ = srcs.command("start_log_object_sources", {"scan_interval": 1, "max_objects": 2})
    assert result["status"] == "ok", result
    assert result["summary"]["max_objects"] == 2
    again, _ = srcs.command("start_log_object_sources", {"scan_interval": 1})
    assert again["status"] == "error"
    assert again["error"] == "Object source logging already started"
    # Four scans: the first counts everything, each later one has about ten new pipes.
    growth_records(srcs, start, 4)
    logs = logs_since(srcs, start)
    scans, current = [], None
    for text in logs:
        if text.startswith("Memory Growth: ["):
            current = []
            scans.append(current)
        elif text.startswith("New object: ") and current is not None:
            current.append(text)
    # Whole intervals between two growth records: exactly max_objects sources each.
    full = scans[1:-1]
    assert len(full) >= 2, logs
    for scan in full:
        assert len(scan) == 2, scan
    tid = piper_tid(leaky.pid)
    for text in (t for scan in full for t in scan):
        m = NEW.fullmatch(text)
        assert m, text
        kind, repr_, thread, rec_tid, frames = m.groups()
        assert kind == "pipe"
        assert re.fullmatch(r"<pipe fd=\d+ inode=\d+ read end, other end: pid %d fd \d+>"
                            % leaky.pid, repr_), repr_
        assert thread == "piper" and int(rec_tid) == tid
        lines = frames.split("\n")
        assert all(line.startswith("  File \"") for line in lines), frames
        funcs = [re.search(r", in (\S+)", line).group(1) for line in lines]
        # Outermost first: the thread's function, then the leaking one, then libc's wrapper.
        assert "leak_pipe" in funcs and "piper_main" in funcs, frames
        assert funcs.index("piper_main") < funcs.index("leak_pipe"), frames
        assert "leaky.c" in lines[funcs.index("leak_pipe")]
    _, tasks = srcs.command("log_current_tasks")
    assert any(t.startswith("Task: <logger object_sources target=pid:%d" % leaky.pid)
               and "max_objects=2" in t for t in tasks), tasks
    state = srcs.client.wait_for(lambda m: m.topic.endswith("/state") and
                                 any(g["logger"] == "object_sources"
                                     for g in json.loads(m.payload).get("loggers", [])))
    entry = [g for g in json.loads(state.payload)["loggers"] if g["logger"] == "object_sources"]
    assert entry[0]["max_objects"] == 2 and entry[0]["pid"] == leaky.pid
    stop, _ = srcs.command("stop_log_object_sources")
    assert stop["status"] == "ok", stop
    after = len(srcs.client.seen)
    stop, _ = srcs.command("stop_log_object_sources")
    assert stop["status"] == "error" and stop["error"] == "Object source logging not running"
    _, tasks = srcs.command("log_current_tasks")
    assert not any("object_sources" in t for t in tasks)
    assert not any(t.startswith("New object: ") for t in logs_since(srcs, after))


def test_both_loggers_at_once(srcs):
    a, _ = srcs.command("start_log_objects", {"scan_interval": 1})
    b, _ = srcs.command("start_log_object_sources", {"scan_interval": 1})
    assert a["status"] == "ok" and b["status"] == "ok", (a, b)
    _, tasks = srcs.command("log_current_tasks")
    assert any(t.startswith("Task: <logger objects ") for t in tasks)
    assert any(t.startswith("Task: <logger object_sources ") for t in tasks)
    assert srcs.command("stop_log_objects")[0]["status"] == "ok"
    _, tasks = srcs.command("log_current_tasks")
    assert any(t.startswith("Task: <logger object_sources ") for t in tasks)
    assert srcs.command("stop_log_object_sources")[0]["status"] == "ok"


def test_default_max_objects_and_bad_values(srcs):
    bad, _ = srcs.command("start_log_object_sources", {"max_objects": 0})
    assert bad["status"] == "error" and "max_objects" in bad["error"]
    bad, _ = srcs.command("start_log_object_sources", {"scan_interval": 0.5})
    assert bad["status"] == "error" and "scan_interval" in bad["error"]
    ok, _ = srcs.command("start_log_object_sources", {"scan_interval": 1})
    assert ok["status"] == "ok" and ok["summary"]["max_objects"] == 5
    assert srcs.command("stop_log_object_sources")[0]["status"] == "ok"


def test_sources_stop_when_the_target_exits(workdir):
    check_logger_ends_with_target(workdir, "srcexit", "object_sources", "Object source logging")


def test_not_permitted_says_what_is_needed():
    """An agent without privileges (user nobody) on a target of its own user: tracefs and the
    tracepoints are root's, so the start fails with a sentence naming what is missing."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the agent as another user")
    target = subprocess.Popen(AS_NOBODY + ["sleep", "60"])
    try:
        with unprivileged_session("nopriv", f"pid:{target.pid}") as s:
            result, _ = s.command("start_log_object_sources", {"scan_interval": 1})
            assert result["status"] == "error", result
            assert result["error"].startswith("Object source logging is not permitted"), result
            assert "CAP_PERFMON" in result["error"] and "/sys/kernel/tracing" in result["error"]
            stop, _ = s.command("stop_log_object_sources")
            assert stop["error"] == "Object source logging not running"
    finally:
        target.kill()
        target.wait()


def test_live_objects_first_and_closed_ones_say_so(workdir):
    """objmaker makes a pipe and closes it, then a live pipe that gets the same fds, both within
    one interval: with max_objects 1 the live one is logged; alone, the closed one says so."""
    proc = subprocess.Popen([os.path.join(BUILD, "workloads", "objmaker")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("ready")
        with agent_session(workdir, "srclive", f"pid:{proc.pid}") as s:
            start = len(s.client.seen)
            r, _ = s.command("start_log_object_sources", {"scan_interval": 1, "max_objects": 1})
            assert r["status"] == "ok", r
            s.client.wait_for(lambda m: m.topic.endswith("/log") and
                              m.payload.startswith(b"Memory Growth: ["))
            proc.stdin.write("closed\npipe\n")
            proc.stdin.flush()
            closed = proc.stdout.readline().split()
            live = proc.stdout.readline().split()
            assert closed[-1] == "closed" and closed[1:3] == live[1:3]
            m = s.client.wait_for(lambda m: m.topic.endswith("/log") and
                                  m.payload.startswith(b"New object: "))
            rec = NEW.fullmatch(m.payload.decode())
            assert rec and rec.group(1) == "pipe", m.payload
            assert rec.group(2).startswith(f"<pipe fd={live[1]} inode="), rec.group(2)
            assert rec.group(3) == "objmaker" and int(rec.group(4)) == proc.pid
            assert ", in make_pipe [" in rec.group(5) and ", in main [" in rec.group(5)
            # One source per scan: the closed pipe is not logged in a later one either.
            time.sleep(2.5)
            news = [t for t in logs_since(s, start) if t.startswith("New object: ")]
            assert len(news) == 1, news
            assert s.command("stop_log_object_sources")[0]["status"] == "ok"

            start = len(s.client.seen)
            r, _ = s.command("start_log_object_sources", {"scan_interval": 1})
            assert r["status"] == "ok", r
            # Both in one scan, the live one first; the fds the closed one had are taken now.
            proc.stdin.write("closed\npipe\n")
            proc.stdin.flush()
            closed = proc.stdout.readline().split()
            live = proc.stdout.readline().split()
            s.client.wait_for(lambda m: m.topic.endswith("/log") and
                              m.payload.startswith(b"New object: ") and b"(closed)" in m.payload
                              and m not in s.client.seen[:start])
            news = [NEW.fullmatch(t) for t in logs_since(s, start) if t.startswith("New object")]
            assert len(news) == 2 and all(news), news
            assert news[0].group(2).startswith(f"<pipe fd={live[1]} inode="), news[0].group(2)
            rec = news[1]
            assert rec.group(2) == (f"<pipe fd={closed[1]} (closed), "
                                    f"other end fd={closed[2]}>"), rec.group(2)
            assert ", in make_pipe [" in rec.group(5)
            assert s.command("stop_log_object_sources")[0]["status"] == "ok"
    finally:
        proc.kill()
        proc.wait()
