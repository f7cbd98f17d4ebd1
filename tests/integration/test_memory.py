"""profiler.memory end to end through a real broker: hooks injected into a running workload that
churns the heap and leaks from a known function, files read by ms_print and by a parser that
reads the hpy as guppy does, the target checked byte for byte afterwards (its GOT slot for malloc
points at libc's malloc again), the uprobe fallback on a static binary, and an agent killed with
-9 in the middle of a run."""
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from conftest import BUILD, ROOT_FLAGS, agent_session, running_workload, wait_online  # noqa: F401
from hpy import load_hpy


def elf_dynsym(path, name):
    out = subprocess.run(["readelf", "-W", "--dyn-syms", path], capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 8 and f[7].split("@")[0] == name and f[6] != "UND":
            return int(f[1], 16)
    raise KeyError(name)


def got_offset(path, name):
    out = subprocess.run(["readelf", "-W", "-r", path], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 5 and f[2] in ("R_X86_64_JUMP_SLOT", "R_X86_64_GLOB_DAT") and \
                f[4].split("@")[0] == name:
            return int(f[0], 16)
    raise KeyError(name)


def base_of(pid, path):
    for line in open(f"/proc/{pid}/maps"):
        f = line.split()
        if len(f) >= 6 and f[5] == path and int(f[2], 16) == 0:
            return int(f[0].split("-")[0], 16)
    raise KeyError(path)


def malloc_binding(pid):
    """(what the executable's GOT slot for malloc holds, libc's malloc) in the live process."""
    exe = os.readlink(f"/proc/{pid}/exe")
    libc = next(line.split()[5] for line in open(f"/proc/{pid}/maps")
                if "/libc.so" in line)
    slot = base_of(pid, exe) + got_offset(exe, "malloc")
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(slot)
        held = int.from_bytes(mem.read(8), "little")
    return held, base_of(pid, libc) + elf_dynsym(libc, "malloc")


def stop_and_check(proc):
    """Ends the workload cleanly: it must not have found a block altered, nor died."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, (proc.returncode, out)
    m = re.search(r"checksum=\S+ ops=(\d+) errors=(\d+)", out)
    assert m and int(m.group(2)) == 0, out
    return int(m.group(1))


def hooked_mid_run(s, payload):
    """Sends a memory command without waiting for its result; returns once it reports progress,
    its hooks then installed."""
    s.client.drain()
    s.client.publish(f"{s.prefix}/memory", payload)
    assert s.client.wait_for(lambda m: m.topic.endswith("/progress"), timeout=20)


@pytest.fixture
def allocs():
    with running_workload("allocs") as proc:
        yield proc


def test_memory_finds_the_leak_and_leaves_the_target_as_it_was(workdir, allocs):
    before = malloc_binding(allocs.pid)
    assert before[0] == before[1]
    with agent_session(workdir, "mem", f"pid:{allocs.pid}") as s:
        result, _ = s.command("memory", {"seconds": 3}, timeout=60)
        assert result["status"] == "ok", result
        progress = [m for m in s.client.seen if m.topic.endswith("/progress")]
        assert progress, "no progress during a 3 s run"
    assert malloc_binding(allocs.pid) == before

    sm = result["summary"]
    assert sm["method"] == "inject" and sm["sample_bytes"] == 0
    assert sm["allocations"] > 10000 and sm["frees"] > 10000
    # The leaker keeps a 1 KiB block every 10 ms: about 300 in 3 s, all still live.
    assert sm["top"][0]["site"].startswith("leak_slowly <- leaker_main"), sm["top"]
    leaked = sm["top"][0]["live_blocks"]
    assert 200 <= leaked <= 400, sm["top"]
    assert sm["top"][0]["live_bytes"] == leaked * 1024
    assert sm["peak_bytes"] >= sm["live_bytes"] >= leaked * 1024

    hpy, massif = result["files"]
    t = re.fullmatch(r"heap_profile\.(\d+)\.hpy", os.path.basename(hpy)).group(1)
    assert os.path.basename(massif) == f"massif.out.{t}"
    stat = load_hpy(hpy)
    assert stat.rows[0].kind == sm["top"][0]["site"]
    assert stat.rows[0].count == leaked and stat.rows[0].size == leaked * 1024
    assert stat.header["count"] == sum(r.count for r in stat.rows)

    p = subprocess.run(["ms_print", massif], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "leak_slowly" in p.stdout and "(peak)" in p.stdout
    assert re.search(r"0x[0-9A-F]+: leak_slowly \(allocs\.c:\d+\)", p.stdout), p.stdout
    assert stop_and_check(allocs) > 0


def test_sampled_profile_scales_its_estimates(workdir, allocs):
    with agent_session(workdir, "mems", f"pid:{allocs.pid}") as s:
        result, _ = s.command("memory", {"seconds": 3, "sample_bytes": 4096}, timeout=60)
    assert result["status"] == "ok", result
    sm = result["summary"]
    assert sm["sample_bytes"] == 4096
    assert any("estimates" in w for w in result.get("warnings", []))
    # ~300 leaked KiB: a 1 KiB block is sampled with probability 1 - exp(-1/4), so about 66
    # samples stand for them, each weighted by the inverse; the estimate lands well within 2x.
    top = sm["top"][0]
    assert top["site"].startswith("leak_slowly"), sm["top"]
    assert 150 * 1024 <= top["live_bytes"] <= 600 * 1024, top
    assert stop_and_check(allocs) > 0


def test_static_binary_falls_back_to_uprobes(workdir):
    with running_workload("allocs_static", "--leak-every", "64",
                              stdin=subprocess.PIPE) as proc, \
            agent_session(workdir, "memu", f"pid:{proc.pid}") as s:
        result, _ = s.command("memory", {"seconds": 2}, timeout=60)
        assert result["status"] == "ok", result
        assert result["summary"]["method"] == "uprobes"
        assert any("uprobes" in w for w in result["warnings"]), result
        # The pool main keeps live may outweigh what leak_here kept so far: look it up.
        top = [t for t in result["summary"]["top"] if t["site"].startswith("leak_here <- main")]
        assert top, result["summary"]["top"]
        rows = load_hpy(result["files"][0]).rows
        assert (top[0]["site"], top[0]["live_blocks"], top[0]["live_bytes"]) in \
            [(r.kind, r.count, r.size) for r in rows], rows
        assert proc.poll() is None


def test_agent_killed_mid_run_leaves_the_target_working(workdir, allocs):
    before = malloc_binding(allocs.pid)
    with agent_session(workdir, "memk", f"pid:{allocs.pid}") as s:
        hooked_mid_run(s, '{"seconds": 60}')
        assert malloc_binding(allocs.pid) != before     # hooked now
        s.agent.proc.kill()
        s.agent.proc.wait()
        # The hooks notice the silent agent within 2 s and put the GOT back themselves.
        deadline = time.monotonic() + 10
        while malloc_binding(allocs.pid) != before:
            assert time.monotonic() < deadline, "hooks still installed 10 s after the agent died"
            time.sleep(0.2)
    assert allocs.poll() is None
    assert stop_and_check(allocs) > 0


def test_refusals(workdir, allocs):
    with agent_session(workdir, "memr", f"pid:{allocs.pid}",
                       "allowed_targets = self\n") as s:
        s.client.drain()
        first_rid = "first"
        s.client.publish("profiler/memr/memory",
                         '{"seconds": 3, "request_id": "%s"}' % first_rid)
        # Admission is in arrival order on the network thread: the first claims the target.
        second, _ = s.command("memory", {"seconds": 1})
        assert second["status"] == "error" and "already running" in second["error"], second
        own, _ = s.command("memory", {"seconds": 1, "target": "self"})
        assert own["status"] == "error" and "its own allocations" in own["error"], own
        bad, _ = s.command("memory", {"seconds": 1, "sample_bytes": -1})
        assert bad["status"] == "error", bad
    assert stop_and_check(allocs) > 0


def test_clean_stop_mid_run_restores_at_once_and_answers(workdir, allocs):
    before = malloc_binding(allocs.pid)
    with agent_session(workdir, "memc", f"pid:{allocs.pid}") as s:
        hooked_mid_run(s, '{"seconds": 60, "request_id": "long"}')
        assert malloc_binding(allocs.pid) != before
        s.agent.stop()
        assert malloc_binding(allocs.pid) == before
        result = s.client.wait_for(lambda m: m.topic == "profiler/memc/result")
        body = result.payload.decode()
        assert '"request_id":"long"' in body and '"status":"ok"' in body, body
        assert "the agent was stopped" in body and "heap_profile." in body, body
    assert stop_and_check(allocs) > 0


def test_target_exit_mid_run_keeps_what_was_recorded(workdir):
    with running_workload("allocs", "--ops", "30000000") as proc, \
            agent_session(workdir, "meme", f"pid:{proc.pid}") as s:
        result, _ = s.command("memory", {"seconds": 30}, timeout=60)
        assert result["status"] == "ok", result
        assert any("exited" in w for w in result["warnings"]), result
        assert result["summary"]["allocations"] > 0
        assert all(os.path.getsize(f) > 0 for f in result["files"])


def test_target_in_another_mount_namespace(workdir):
    """A container-like target: its /tmp, /dev/shm and the agent's build directory are its own,
    so the agent must place the library and the ring where the target sees them, and leave
    nothing there."""
    exe = os.path.join("/var/tmp", f"allocs-ns-{os.getpid()}")
    shutil.copy(os.path.join(BUILD, "workloads", "allocs"), exe)
    build = os.path.realpath(BUILD)
    script = (f"mount -t tmpfs none {build} && mount -t tmpfs none /dev/shm && "
              f"mount -t tmpfs none /tmp && exec {exe}")
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("ready")
        root = f"/proc/{proc.pid}/root"
        hidden = f"{root}{build}"
        assert not os.path.isdir(hidden) or not os.listdir(hidden)
        with agent_session(workdir, "memn", f"pid:{proc.pid}") as s:
            result, _ = s.command("memory", {"seconds": 2}, timeout=60)
        assert result["status"] == "ok" and result["summary"]["method"] == "inject", result
        assert result["summary"]["top"][0]["site"].startswith("leak_slowly")
        assert os.listdir(f"{root}/tmp") == [] and os.listdir(f"{root}/dev/shm") == []
        assert stop_and_check(proc) > 0
    finally:
        proc.kill()
        proc.wait()
        os.unlink(exe)


def run_memory(workdir, payload, pid):
    """`profiler-agent run memory` on pid: its result."""
    p = subprocess.run([os.path.join(BUILD, "profiler-agent"), "run", "memory", json.dumps(payload),
                        "--target", f"pid:{pid}", "--output-dir",
                        os.path.join(workdir, "cli-memory"), *ROOT_FLAGS],
                       capture_output=True, text=True, timeout=120)
    result = json.loads(p.stdout.strip().split("\n")[-1])
    assert p.returncode == 0 and result["status"] == "ok", (result, p.stderr[-2000:])
    return result


def heap_rss(pid):
    """The Rss of the [heap] entry of /proc/PID/smaps, in bytes."""
    heap = False
    for line in open(f"/proc/{pid}/smaps"):
        f = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            heap = len(f) == 6 and f[5] == "[heap]"
        elif heap and f[0] == "Rss:":
            return int(f[1]) * 1024
    return 0


def call_instruction(exe, offset):
    """objdump's instruction of exe that holds offset: (start, length, text)."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={offset - 16}",
                          f"--stop-address={offset + 16}", exe], capture_output=True, text=True,
                         check=True).stdout
    starts = [(int(m.group(1), 16), m.group(2)) for m in
              re.finditer(r"^\s*([0-9a-f]+):\s+(.*)$", out, re.M)]
    for (a, text), (b, _) in zip(starts, starts[1:]):
        if a <= offset < b:
            return a, b - a, text
    raise KeyError(hex(offset))


def test_top_is_the_hpy_rows_and_massif_starts_from_the_heap_in_use(workdir):
    exe = os.path.realpath(os.path.join(BUILD, "workloads", "allocs"))
    with running_workload("allocs", "--leak-only") as proc:
        low = heap_rss(proc.pid)
        base = base_of(proc.pid, exe)
        result = run_memory(workdir, {"seconds": 2}, proc.pid)
        high = heap_rss(proc.pid)
    sm = result["summary"]
    rows = load_hpy(result["files"][0]).rows
    assert [(t["site"], t["live_blocks"], t["live_bytes"]) for t in sm["top"]] == \
        [(r.kind, r.count, r.size) for r in rows[:len(sm["top"])]], (sm["top"], rows[:5])
    assert len({t["site"] for t in sm["top"]}) == len(sm["top"])

    p = subprocess.run(["ms_print", result["files"][1]], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    # Snapshot 0 is the heap the run found, all of it in one node; later ones keep it.
    first = re.search(r"^\s+0\s+0\s+([\d,]+)\s+([\d,]+)\s+0\s+0\n(.*)\n(.*)\n", p.stdout, re.M)
    assert first, p.stdout
    before = int(first.group(1).replace(",", ""))
    assert 0 < low <= before <= high, (low, before, high)
    assert "(heap allocation functions)" in first.group(3)
    assert re.search(r"->100\.00% \([\d,]+B\) 0x0: \?\?\? \(heap in use when the run started: "
                     r"the \[heap\] Rss in /proc/PID/smaps, not attributed\)", first.group(4)), \
        first.group(4)
    # Addresses are call sites: the byte before the return address, inside the call.
    m = re.search(r"0x([0-9A-F]+): leak_slowly \(allocs\.c:\d+\)", p.stdout)
    assert m, p.stdout
    start, length, text = call_instruction(exe, int(m.group(1), 16) - base)
    assert text.startswith("call") and start + length == int(m.group(1), 16) - base + 1, text


SQLITE = "/usr/bin/sqlite3"
SQL = """CREATE TABLE IF NOT EXISTS t(a INTEGER PRIMARY KEY, b TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
INSERT INTO t(b) SELECT hex(randomblob(16)) FROM n;
CREATE INDEX IF NOT EXISTS tb ON t(b);
SELECT count(*) FROM t WHERE b LIKE '%AB%';
DELETE FROM t WHERE a % 2 = 0;
"""


@pytest.mark.skipif(not os.path.exists(SQLITE), reason="Debian's sqlite3 is not installed")
def test_sqlite_labels_name_the_code_behind_its_allocator(workdir):
    """Debian's sqlite3 (libsqlite3 stripped) allocates through sqlite3Malloc and static helpers
    without symbols: a row names its wrappers and still HPY_KIND_FRAMES callers after them."""
    proc = subprocess.Popen([SQLITE, ":memory:"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    stop = threading.Event()

    def feed():
        try:
            while not stop.is_set():
                proc.stdin.write(SQL)
                proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        time.sleep(0.5)
        result = run_memory(workdir, {"seconds": 3}, proc.pid)
    finally:
        stop.set()
        proc.kill()
        feeder.join()
        proc.wait()
    sm = result["summary"]
    rows = load_hpy(result["files"][0]).rows
    assert [(t["site"], t["live_blocks"], t["live_bytes"]) for t in sm["top"]] == \
        [(r.kind, r.count, r.size) for r in rows[:len(sm["top"])]], (sm["top"], rows[:5])
    wrapped = [r.kind.split(" <- ") for r in rows if " <- sqlite3Malloc <- " in r.kind]
    assert wrapped, [r.kind for r in rows]
    for frames in wrapped:
        after = len(frames) - frames.index("sqlite3Malloc") - 1
        assert after >= 8 or frames[-1] != "...", " <- ".join(frames)
    assert not [f for frames in wrapped for f in frames if f in ("[unknown]", "??")], wrapped
    p = subprocess.run(["ms_print", result["files"][1]], capture_output=True, text=True)
    assert p.returncode == 0 and "heap in use when the run started" in p.stdout, p.stderr
