"""memory on a Python target through a real broker: besides the native allocation profile, the
Python heap counted from inside the target (pyscripts/heap.py) by kind as guppy's hpy().heap()
partitions it, in heap_profile.T.hpy; the native sites in heap_native.T.hpy. Both read by a parser
that reads them as guppy's _load_stat does; the counts must equal what the target says of itself
through gc. Under Debian's python3 (3.11, a pending call) and a chrooted 3.14 (PEP 768); with
python_exec off, today's files."""
import os
import re

import pytest

from conftest import agent_session
from pytarget import PyTarget
from hpy import load_hpy
from test_python_tasks import pyroot

# Like test_python_exec.py: each checks that no script file is left in a shared /tmp.
pytestmark = pytest.mark.xdist_group("python_exec")
CLASS_HEADER = "Kind (class / dict of class)"


class Target(PyTarget):
    """py_heap.py running (under a chroot when root is given)."""

    def __init__(self, python="/usr/bin/python3", root=None):
        super().__init__("py_heap.py", python, root)

    def counts(self):
        """What the target says of itself: {kind: count}."""
        return self.ask_json("c", "counts")


def check_heap(target, node, workdir, method, version):
    with agent_session(workdir, node, f"pid:{target.pid}") as s:
        result, _ = s.command("memory", {"seconds": 1}, timeout=90)
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
