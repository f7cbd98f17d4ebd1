"""lru_stats answered from inside a Python target through a real broker: the agent's script runs
in the target at a safe point (3.11 and 3.13: a pending call placed with ptrace; 3.14 on: PEP 768)
and its answer must equal what the target says of itself. Then what must not hurt the target: a
script that raises, a target that exits meanwhile, an agent killed with -9 mid-request, a target
that reaches no safe point in time or refuses remote debugging, and a non-Python target. After
each, no file of the agent is left in the target's /tmp."""
import json
import os
import re
import shutil
import signal
import time

import pytest

from conftest import AGENT, ROOT, agent_session
from pytarget import PyTarget
from test_python_tasks import pyroot

# Every test here checks that no script file is left in a shared /tmp: on one xdist worker, in
# turn, none sees another's files in flight (`make` runs pytest with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("python_exec")
LINE = re.compile(r"^Cache stats for lru_cache (<function \S+ at 0x[0-9a-f]+>) at (\S+): "
                  r"(CacheInfo\(.*\))$")


class Target(PyTarget):
    """py_lru.py running (under a chroot when root is given); .caches: its own report."""

    def __init__(self, python="/usr/bin/python3", root=None, args=(), env=()):
        super().__init__("py_lru.py", python, root, args, env)
        self.caches = self.read_json("caches")


@pytest.fixture
def target(request):
    t = Target(*getattr(request, "param", ()))
    yield t
    t.stop()


def session_for(workdir, node, pid, extra=""):
    return agent_session(workdir, node, f"pid:{pid}", extra)


def reported(logs):
    return {m.group(1): (m.group(2), m.group(3)) for m in map(LINE.match, logs) if m}


def check_equal(target, result, logs, method):
    assert result["status"] == "ok", result
    assert "warnings" not in result, result
    got = reported(logs)
    for name, info in target.caches.items():
        assert name in got, (name, logs)
        assert got[name][1] == info
        assert got[name][0].endswith("py_lru.py")
    s = result["summary"]
    assert s["method"] == method and s["held_ms"] > 0 and s["caches"] >= len(target.caches)
    assert {"schemas", "targets"} <= set(s["agent_caches"])
    assert not any(r.startswith("Cache stats for schemas:") for r in logs)


def test_python311_answers_as_the_target_itself(workdir, target):
    with session_for(workdir, "pyx311", target.pid) as s:
        result, logs = s.command("lru_stats")
        check_equal(target, result, logs, "pending_call")
        assert result["summary"]["python"] == "3.11"
        # Again: the first request's copy of the text was freed, the queue is empty again.
        result, logs = s.command("lru_stats")
        check_equal(target, result, logs, "pending_call")
    assert target.alive() and not target.leftovers()
    assert "Traceback" not in target.stop()


@pytest.mark.parametrize("python", ["python3.13", "python3.14", "python3.15"])
def test_chrooted_target_gets_its_files_in_its_own_tmp(workdir, python):
    root = pyroot(python)
    t = Target(f"/usr/bin/{python}", root)
    try:
        with session_for(workdir, "pyxroot", t.pid) as s:
            result, logs = s.command("lru_stats")
            check_equal(t, result, logs, "pending_call" if python == "python3.13"
                        else "remote_exec")
            assert result["summary"]["python"] == python[len("python"):]
            # The file names are the target's own: its functions were defined in /mnt.
            assert all(f.startswith("/mnt/") for f, _ in reported(logs).values()
                       if f.endswith("py_lru.py"))
        assert t.alive() and not t.leftovers()
    finally:
        assert "Traceback" not in t.stop()


def test_a_script_that_raises_gives_its_traceback(workdir, target):
    """An agent installed elsewhere, beside a pyscripts/ whose lru_stats.py fails in its search."""
    inst = os.path.join(workdir, "raising")
    os.makedirs(os.path.join(inst, "bin"), exist_ok=True)
    os.makedirs(os.path.join(inst, "pyscripts"), exist_ok=True)
    shutil.copy(AGENT, os.path.join(inst, "bin", "profiler-agent"))
    shutil.copy(os.path.join(ROOT, "pyscripts", "_prelude.py"), os.path.join(inst, "pyscripts"))
    with open(os.path.join(ROOT, "pyscripts", "lru_stats.py")) as f:
        text = f.read()
    with open(os.path.join(inst, "pyscripts", "lru_stats.py"), "w") as f:
        f.write(text + "\n\ndef work(limits, started):\n"
                "    raise ValueError('boom from the test')\n")
    import conftest
    saved = conftest.AGENT
    conftest.AGENT = os.path.join(inst, "bin", "profiler-agent")
    try:
        with session_for(workdir, "pyxraise", target.pid,
                         f"schema_dir = {os.path.join(ROOT, 'schemas')}\n") as s:
            result, logs = s.command("lru_stats")
    finally:
        conftest.AGENT = saved
    assert result["status"] == "error", result
    assert result["error"].startswith("the lru_stats script raised inside the target: Traceback")
    assert "ValueError: boom from the test" in result["error"]
    assert any("ValueError: boom from the test" in r for r in logs)
    assert target.alive() and not target.leftovers()


def test_target_that_exits_meanwhile(workdir):
    t = Target(args=["--nap", "30"])
    try:
        with session_for(workdir, "pyxexit", t.pid) as s:
            s.client.publish(f"{s.prefix}/lru_stats", {"request_id": "exit1"})
            time.sleep(1)
            t.proc.kill()
            t.proc.wait()
            msg = s.client.wait_for(lambda m: m.topic.endswith("/result") and
                                    json.loads(m.payload).get("request_id") == "exit1", 5)
            result = json.loads(msg.payload)
            assert result["status"] == "error" and "exited" in result["error"], result
        assert not t.leftovers()
    finally:
        t.stop()


def test_no_safe_point_in_time_withdraws_and_a_late_run_is_harmless(workdir):
    """The main thread sleeps 4 s: the request (1 s deadline) is withdrawn; when the target wakes,
    the queued call finds no script and does nothing."""
    t = Target(args=["--nap", "4"])
    try:
        with session_for(workdir, "pyxlate", t.pid, "python_timeout = 1\n") as s:
            t0 = time.monotonic()
            result, logs = s.command("lru_stats")
            assert time.monotonic() - t0 < 4
            assert result["status"] == "ok", result
            assert any("reached no safe point in 1.0 s" in w for w in result["warnings"]), result
            assert any(r.startswith("Cache stats for schemas:") for r in logs)
            assert not t.leftovers()
            time.sleep(4)
            assert t.alive()
            result, logs = s.command("lru_stats")
            check_equal(t, result, logs, "pending_call")
    finally:
        assert "Traceback" not in t.stop()


@pytest.mark.parametrize("python", ["/usr/bin/python3", "python3.14"])
def test_agent_killed_mid_request(workdir, python):
    """kill -9 while the target has not reached its safe point: once it does, it runs the script,
    which removes its files first; the target carries on."""
    root = pyroot(python) if python.startswith("python") else None
    t = Target(f"/usr/bin/{python}" if root else python, root, ["--nap", "3"])
    try:
        with session_for(workdir, "pyxkill", t.pid, "") as s:
            s.client.publish(f"{s.prefix}/lru_stats", {"request_id": "k1"})
            deadline = time.monotonic() + 5
            while not t.leftovers() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert t.leftovers(), "the request never reached the target"
            s.agent.proc.send_signal(signal.SIGKILL)
            s.agent.proc.wait(5)
        time.sleep(4)
        assert t.alive() and not t.leftovers()
    finally:
        assert "Traceback" not in t.stop()


def test_remote_debugging_disabled(workdir):
    root = pyroot("python3.14")
    t = Target("/usr/bin/python3.14", root, env=["PYTHON_DISABLE_REMOTE_DEBUG=1"])
    try:
        with session_for(workdir, "pyxoff", t.pid) as s:
            t0 = time.monotonic()
            result, logs = s.command("lru_stats")
            assert time.monotonic() - t0 < 10
            assert result["status"] == "ok", result
            assert any("remote debugging is disabled in the target" in w
                       for w in result["warnings"]), result
            assert any(r.startswith("Cache stats for schemas:") for r in logs)
            # A Python type has no outside view: the error says why, not "unknown type".
            result, _ = s.command("dump_log_objects", {"type": "dict"})
            assert result["error"] == (
                "type: dict can only be listed from inside the target, which did not answer "
                "(see warnings); from outside: pipe, socket, eventfd, timerfd, epoll, signalfd, "
                "inotify, file, other, thread, mapping"), result
            assert any("remote debugging is disabled" in w for w in result["warnings"]), result
        assert t.alive() and not t.leftovers()
    finally:
        t.stop()


def test_python_exec_off_keeps_the_outside_view(workdir, target):
    with session_for(workdir, "pyxcfg", target.pid, "python_exec = off\n") as s:
        result, logs = s.command("lru_stats")
    assert result["status"] == "ok" and "warnings" not in result
    assert any(r.startswith("Cache stats for schemas:") for r in logs)
    assert not reported(logs)


def test_non_python_target_keeps_todays_answer(workdir, demo):
    with session_for(workdir, "pyxc", demo.pid) as s:
        result, logs = s.command("lru_stats")
    assert result["status"] == "ok" and "warnings" not in result, result
    assert any(r.startswith("Cache stats for schemas: CacheInfo(") for r in logs)
    assert result["summary"] == {}
