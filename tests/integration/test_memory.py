"""profiler.memory end to end through a real broker: hooks injected into a running workload that
churns the heap and leaks from a known function, files read by ms_print and by a parser that
reads the hpy as guppy does, the target checked byte for byte afterwards (its GOT slot for malloc
points at libc's malloc again), the uprobe fallback on a static binary, and an agent killed with
-9 in the middle of a run."""
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import BUILD, agent_session, running_workload, wait_online  # noqa: F401
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
        top = result["summary"]["top"][0]
        assert top["site"].startswith("leak_here <- main"), result["summary"]["top"]
        assert load_hpy(result["files"][0]).rows[0].kind == top["site"]
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
