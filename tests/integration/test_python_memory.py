"""memory on a Python target through a real broker: besides the native allocation profile, the
Python heap counted from inside the target (pyscripts/heap.py) by kind as guppy's hpy().heap()
partitions it, in heap_profile.T.hpy; the native sites in heap_native.T.hpy. Both read by a parser
that reads them as guppy's _load_stat does; the counts must equal what the target says of itself
through gc. Under Debian's python3 (3.11, a pending call) and a chrooted 3.14 (PEP 768); with
python_exec off, today's files. Over the run, tracemalloc inside the target (pyscripts/tracemalloc.py):
the line that grows must lead the answer, and the trace is off again afterwards unless the target
had it on; a killed agent's trace stops by itself."""
import json
import os
import re
import time

import pytest

from conftest import agent_session
from pytarget import PyTarget
from hpy import load_hpy
from test_python_tasks import pyroot

# Like test_python_exec.py: each checks that no script file is left in a shared /tmp.
pytestmark = pytest.mark.xdist_group("python_exec")
CLASS_HEADER = "Kind (class / dict of class)"
WORKLOAD = os.path.join(os.path.dirname(__file__), "..", "workloads", "py_heap.py")
with open(WORKLOAD) as _f:
    GROW_LINE = 1 + [n for n, line in enumerate(_f) if "the line tracemalloc names" in line][0]


class Target(PyTarget):
    """py_heap.py running (under a chroot when root is given)."""

    def __init__(self, python="/usr/bin/python3", root=None, env=()):
        super().__init__("py_heap.py", python, root, env=env)

    def counts(self):
        """What the target says of itself: {kind: count}."""
        return self.ask_json("c", "counts")

    def tracing(self):
        """Whether the target's tracemalloc traces, as it says itself."""
        return self.ask_json("t", "tracing")


def check_allocations(result, logs, method, started=True):
    """tracemalloc's answer: the workload's grow() line leads (among what grew over the run; a
    trace the target started itself also holds what it made at its start), as summary and as
    records."""
    pa = result["summary"]["python_allocations"]
    assert pa["method"] == method and pa["started_by_run"] is started, pa
    assert pa["current"] > 0 and pa["peak"] >= pa["current"] and pa["sites"] > 0, pa
    grew = [t for t in pa["top"] if t["traceback"][0][0].endswith("py_heap.py") and
            t["traceback"][0][1] == GROW_LINE]
    assert grew and (grew[0] is pa["top"][0] or not started), pa["top"]
    # Each bytearray is two blocks from that line: the object and its 4097-byte buffer.
    top = grew[0]
    assert top["count"] >= 2 and top["size"] >= 4097 * (top["count"] // 2), top
    # tracemalloc's own Statistic form, then the traceback outermost first.
    head = [r for r in logs if re.match(rf".*py_heap\.py:{GROW_LINE}: size=[0-9.]+ [KMG]?i?B, "
                                        rf"count=\d+, average=", r)]
    assert head, logs
    assert any(f'py_heap.py", line {GROW_LINE}' in r for r in logs), logs


def check_heap(target, node, workdir, method, version):
    target.send("g")
    with agent_session(workdir, node, f"pid:{target.pid}") as s:
        result, logs = s.command("memory", {"seconds": 1}, timeout=90)
    assert result["status"] == "ok", result
    assert len(result["files"]) == 3, result
    hpy, native, massif = result["files"]
    t = re.fullmatch(r"heap_profile\.(\d+)\.hpy", os.path.basename(hpy)).group(1)
    assert os.path.basename(native) == f"heap_native.{t}.hpy"
    assert os.path.basename(massif) == f"massif.out.{t}"

    stat = load_hpy(hpy)  # counts and sizes add up to the header, rows largest first, ...
    assert stat.header["kindheader"] == CLASS_HEADER and stat.header["kindname"] == ""
    rows = {r.kind: r for r in stat.rows}
    own = target.counts()
    assert own["__main__.Widget"] == 5000 and own["dict of __main__.Widget"] == 5000, own
    assert own["__main__.Gadget"] == 3000 and own["__main__.Slotted"] == 2000, own
    for kind in ("Widget", "Gadget", "Slotted"):
        for name in (f"__main__.{kind}", f"dict of __main__.{kind}"):
            assert (rows[name].count if name in rows else 0) == own.get(name, 0), (name, own)
    assert "dict of __main__.Slotted" not in rows
    assert rows["str"].count >= 5000  # the Widgets' labels, reached through their dicts
    assert rows["dict of module"].count > 0 and "dict (no owner)" in rows

    native_stat = load_hpy(native)
    assert native_stat.header["kindheader"].startswith("Allocation site")

    sm = result["summary"]
    assert sm["method"] == "inject", sm  # the allocation profile's, not the script's
    ph = sm["python_heap"]
    assert ph["method"] == method and ph["python"] == version and ph["held_ms"] > 0, ph
    assert ph["objects"] >= stat.header["count"] and ph["kinds"] == stat.header["numrows"], ph
    assert [k["kind"] for k in ph["top"]] == [r.kind for r in stat.rows[:5]], ph
    assert "warnings" not in result, result["warnings"]
    check_allocations(result, logs, method)
    assert target.tracing() is False
    assert target.alive() and not target.leftovers()


def test_python311_heap_by_kind(workdir):
    target = Target()
    try:
        check_heap(target, "pymem311", workdir, "pending_call", "3.11")
    finally:
        assert "Traceback" not in target.stop()


def test_chrooted_python314_heap_by_kind(workdir):
    target = Target("/usr/bin/python3.14", pyroot("python3.14"))
    try:
        check_heap(target, "pymem314", workdir, "remote_exec", "3.14")
    finally:
        assert "Traceback" not in target.stop()


def test_python_exec_off_keeps_the_native_sites(workdir):
    target = Target()
    try:
        with agent_session(workdir, "pymemoff", f"pid:{target.pid}", "python_exec = off\n") as s:
            result, _ = s.command("memory", {"seconds": 1}, timeout=90)
        assert result["status"] == "ok", result
        assert "python_heap" not in result["summary"]
        hpy, massif = result["files"]
        assert load_hpy(hpy).header["kindheader"].startswith("Allocation site")
        assert os.path.basename(massif).startswith("massif.out.")
    finally:
        assert "Traceback" not in target.stop()


def test_chrooted_target_memory_twice(workdir):
    """The second run finds the first run's hook library still loaded (it is never unloaded) and
    must start it again although maps names it by our path (ROOT/tmp/...), not the target's."""
    target = Target("/usr/bin/python3.14", pyroot("python3.14"))
    try:
        with agent_session(workdir, "pymemtwice", f"pid:{target.pid}") as s:
            ours = f".{s.agent.proc.pid}."  # in the names of its hook library and rings
            for run in range(2):
                result, _ = s.command("memory", {"seconds": 1}, timeout=90)
                assert result["status"] == "ok", (run, result)
                sm = result["summary"]
                assert sm["method"] == "inject" and sm["allocations"] > 0, (run, sm)
                assert "warnings" not in result, (run, result["warnings"])
                left = [f for f in os.listdir(target.tmp) if ours in f and "profiler-agent" in f]
                assert not left and not target.leftovers(), (run, left)
        assert target.alive()
    finally:
        assert "Traceback" not in target.stop()


def test_tracemalloc_of_the_target_is_read_and_left_on(workdir):
    target = Target(env=("PYTHONTRACEMALLOC=3",))
    try:
        target.send("g")
        with agent_session(workdir, "pymemtm", f"pid:{target.pid}") as s:
            result, logs = s.command("memory", {"seconds": 1}, timeout=90)
        assert result["status"] == "ok", result
        check_allocations(result, logs, "pending_call", started=False)
        assert any("tracing with tracemalloc already" in w for w in result["warnings"]), result
        assert target.tracing() is True
    finally:
        assert "Traceback" not in target.stop()


def test_tracemalloc_off_and_a_killed_agents_trace(workdir):
    """"tracemalloc": false leaves it alone; an agent killed mid-run leaves a trace that its
    guard stops after seconds + 2 x python_timeout + 10 s."""
    target = Target()
    try:
        with agent_session(workdir, "pymemtmoff", f"pid:{target.pid}", "python_timeout = 2\n") as s:
            result, _ = s.command("memory", {"seconds": 1, "tracemalloc": False}, timeout=90)
            assert result["status"] == "ok" and "python_allocations" not in result["summary"]
            assert "python_heap" in result["summary"]
            s.client.publish(f"{s.prefix}/memory", json.dumps({"seconds": 5}))
            deadline = time.monotonic() + 30
            while not target.tracing():
                assert time.monotonic() < deadline, "tracemalloc never started"
                time.sleep(0.2)
            s.agent.proc.kill()
            s.agent.proc.wait(5)
            s.agent.proc = None
            killed = time.monotonic()
        # The guard fires 5 + 2 x 2 + 10 s after the start.
        while target.tracing():
            assert time.monotonic() - killed < 30, "a killed agent's trace stayed on"
            time.sleep(1)
        assert target.alive()
    finally:
        assert "Traceback" not in target.stop()
