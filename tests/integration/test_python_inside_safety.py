"""What answers from inside a Python target must survive, on tests/workloads/py_big.py (an asyncio
program with 200 tasks, 1,000 timers, 500,000 objects and a few lru_caches) and py_lru.py:
two agents asking the same target at the same moment, a heap too big for the script's bounds,
and the agent killed with -9 at several points of a request, on Debian's 3.11 (a pending call)
and a chrooted 3.14 (PEP 768). After each the target still runs Python, says the same of
itself, and keeps no file of the agent in its /tmp."""
import contextlib
import json
import os
import signal
import time

import pytest

from conftest import Broker, agent_session
from test_python_event_loop import PYTHONS, Loop
from test_python_exec import Target, check_equal, reported
from test_python_tasks import pyroot

# Every test here checks that no script file is left in a shared /tmp (see test_python_exec).
pytestmark = pytest.mark.xdist_group("python_exec")
BUSY = ("another", "pending", "busy")  # how a refusal because of another request reads


def started(version, script="py_big.py"):
    """script on Python version ("3.11": Debian's; "3.14": chrooted), with .method."""
    python, in_root, method = PYTHONS[version]
    t = Loop(python, pyroot(python.rsplit("/", 1)[1]) if in_root else None, script)
    t.method = method
    return t


def check_caches(t, result, logs):
    """result answers lru_stats from inside with py_big.py's caches as it sees them itself."""
    assert result["status"] == "ok" and "warnings" not in result, result
    assert result["summary"]["method"] == t.method, result
    got = reported(logs)
    for name, info in t.view()["caches"].items():
        assert got.get(name, (None, None))[1] == info, (name, logs)


def check_unharmed(t):
    """Still running Python, the same caches, and nothing of ours in its /tmp."""
    assert t.alive()
    assert t.view()["items"] > 0
    assert not t.leftovers()


def send(s, action, rid):
    """Publishes action as request rid on session s; returns where its records will start."""
    s.client.drain()
    start = len(s.client.seen)
    s.client.publish(f"{s.prefix}/{action}", {"request_id": rid})
    return start


def result_for(s, rid, start, timeout=30):
    """(result, log records) of request rid on session s, sent when s.client.seen was start
    long, nothing else sent meanwhile."""
    msg = s.client.wait_for(lambda m: m.topic == f"{s.prefix}/result" and
                            json.loads(m.payload).get("request_id") == rid, timeout)
    logs = [m.payload.decode() for m in s.client.seen[start:s.client.seen.index(msg)]
            if m.topic == f"{s.prefix}/log"]
    return json.loads(msg.payload), logs


def check_inside_or_refused(t, result, logs):
    """Either py_lru.py's own caches, read from inside, or the agent's caches with a warning
    that says another request stood in the way."""
    if "warnings" not in result:
        check_equal(t, result, logs, t.method)
        return "inside"
    assert result["status"] == "ok", result
    assert any(word in w for w in result["warnings"] for word in BUSY), result
    assert any(r.startswith("Cache stats for schemas:") for r in logs), logs
    return "refused"


@pytest.mark.parametrize("version", ["3.11", "3.14"])
def test_two_agents_ask_at_once(workdir, version):
    python, in_root, method = PYTHONS[version]
    t = Target(python, pyroot(python.rsplit("/", 1)[1]) if in_root else None)
    t.method = method
    broker = Broker(workdir)
    broker.start()
    outcomes = []
    try:
        with agent_session(workdir, "pyboth1", f"pid:{t.pid}", broker=broker) as a, \
                agent_session(workdir, "pyboth2", f"pid:{t.pid}", broker=broker) as b:
            for i in range(5):
                starts = [send(s, "lru_stats", f"both{i}") for s in (a, b)]
                for s, start in zip((a, b), starts):
                    outcomes.append(check_inside_or_refused(t, *result_for(s, f"both{i}",
                                                                           start)))
        assert "inside" in outcomes, outcomes
        assert t.alive() and not t.leftovers()
    finally:
        broker.stop()
        assert "Traceback" not in t.stop()


@pytest.mark.parametrize("version", ["3.11", "3.14"])
def test_heap_beyond_the_bounds(workdir, version):
    """8.5 million objects and python_timeout 1 (scripts get a quarter or half of it: 3.5
    million are searched within that at times): each answer is bounded either way, and says
    which in a warning: the search stopped at its time bound, or (a target still busy in C
    after the grow, on a loaded machine) the request was withdrawn and the answer is from
    outside. The interpreter is never held past the second, and the target is fine after."""
    t = started(version)
    ran_inside = 0
    try:
        assert t.ask("grow 8000000").startswith("grown ")
        with agent_session(workdir, "pybig", f"pid:{t.pid}", "python_timeout = 1\n") as s:
            for action, payload in (("lru_stats", {}), ("dump_log_objects", {"type": "dict"}),
                                    # The census's bound: tracemalloc's start and stop
                                    # would each wait for a safe point of their own, and a
                                    # full collection of 8.5 million objects that the
                                    # tracing's allocations set off can take longer than 1 s.
                                    ("memory", {"seconds": 1, "tracemalloc": False})):
                result, _ = s.command(action, payload, timeout=30)
                warnings = result.get("warnings", ())
                stopped = any("stopped" in w and "time limit" in w for w in warnings)
                withdrawn = any("reached no safe point" in w for w in warnings)
                assert stopped or withdrawn, (action, warnings)
                if withdrawn and action == "dump_log_objects":
                    # A Python type has no outside view: an error that says so.
                    assert result["error"].startswith(
                        "type: dict can only be listed from inside the target"), result
                else:
                    assert result["status"] == "ok", result
                ran_inside += stopped
                held = result["summary"].get("python_heap", result["summary"]).get("held_ms", 0)
                assert held < 1000, (action, result["summary"])
                check_unharmed(t)
        print(f"\nheap beyond the bounds, {version}: {ran_inside} of 3 searches ran and stopped "
              f"at their bound, the others were withdrawn")
        with agent_session(workdir, "pybig2", f"pid:{t.pid}") as s:
            check_caches(t, *s.command("lru_stats", timeout=30))
    finally:
        assert "Traceback" not in t.stop()


def kill_during_request(s, t, point):
    """Sends lru_stats on s and kills its agent with -9 point seconds after, or (point "files")
    as soon as the script's files appear in t's /tmp; returns the files there once it is dead."""
    send(s, "lru_stats", "kill")
    if point == "files":
        deadline = time.monotonic() + 5
        while not t.files() and time.monotonic() < deadline:
            pass
    else:
        time.sleep(point)
    s.agent.proc.send_signal(signal.SIGKILL)
    s.agent.proc.wait(5)
    return t.files()


@pytest.mark.parametrize("point", [0, 0.05, 0.2, "files"])
@pytest.mark.parametrize("version", ["3.11", "3.14"])
def test_agent_killed_during_a_request(workdir, version, point):
    """kill -9 right after the publish, 50 ms or 200 ms after it, or the moment the script's
    files appear, while the script would search 1.5 million objects: the target carries on,
    its /tmp is clean once it has passed a safe point (it does every 100 ms), and a new agent
    then answers. The files a failure leaves are removed, so as not to fail the next test."""
    t = started(version)
    files = []
    try:
        assert t.ask("grow 1000000").startswith("grown ")
        with agent_session(workdir, "pykill", f"pid:{t.pid}") as s:
            files = kill_during_request(s, t, point)
        check_unharmed(t)
        with agent_session(workdir, "pyafter", f"pid:{t.pid}") as s:
            check_caches(t, *s.command("lru_stats", timeout=30))
        check_unharmed(t)
    finally:
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f)
        assert "Traceback" not in t.stop()
