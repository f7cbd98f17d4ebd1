"""Targets linked with musl, as every process in an Alpine image (Home Assistant's containers), built
here with Debian's musl-gcc: musl's libc has no CFI, so the dump must scan its way out of it
where eu-stack stops at the first frame; a profile of busy musl threads must reach their callers;
and `memory` must inject the musl build of its hooks as it injects the glibc one, or say why not.
"""
import json
import os
import re
import shutil
import subprocess

from conftest import BUILD, ROOT_FLAGS, agent_session, running_workload
from test_memory import malloc_binding, stop_and_check

EU_STACK = "/usr/bin/eu-stack"


def frame_funcs(record):
    """The functions of a log_thread_frames record, outermost first, and its frame lines."""
    lines = record.split("\n")[1:]
    return [re.search(r", in (\S+)", f).group(1) for f in lines if f.startswith("  File")], lines


def test_dump_scans_out_of_musl_libc_where_eu_stack_stops(workdir):
    with running_workload("musl_parked") as proc, \
            agent_session(workdir, "musl", f"pid:{proc.pid}") as s:
        result, logs = s.command("log_thread_frames")
        eu = subprocess.run([EU_STACK, "-p", str(proc.pid)], capture_output=True, text=True)
    assert result["status"] == "ok", result
    records = [r for r in logs if r.startswith("Thread [")]
    assert len(records) == 1, logs
    funcs, lines = frame_funcs(records[0])
    chain = ["main", "musl_park_a", "musl_park_b", "musl_park_c"]
    assert all(f in funcs for f in chain), records[0]
    assert [funcs.index(f) for f in chain] == sorted(funcs.index(f) for f in chain), records[0]
    # musl_park_c was found by scanning libc's stack, and is marked so; its callers by CFI.
    assert lines[funcs.index("musl_park_c")].endswith(" (scanned)"), records[0]
    assert not lines[funcs.index("musl_park_b")].endswith(" (scanned)"), records[0]
    # Below main: its caller in libc, then the thread's start in the program (_start), and
    # nothing missing.
    assert funcs.index("main") >= 2, records[0]
    assert re.search(r"/musl_parked\+0x[0-9a-f]+\]", lines[0]), records[0]
    assert "<truncated" not in records[0]
    # eu-stack, on the same process: the first frame, then no CFI for musl's libc.
    eu_frames = re.findall(r"^#\d+\s+0x", eu.stdout, re.M)
    assert len(eu_frames) == 1, eu.stdout + eu.stderr
    assert len(funcs) >= len(chain) + 3


def test_profile_of_busy_musl_threads_reaches_their_callers(workdir):
    with running_workload("musl_parked", "2") as proc, \
            agent_session(workdir, "muslp", f"pid:{proc.pid}") as s:
        result, _ = s.command("start", {"seconds": 3, "frequency": 999}, timeout=60)
    assert result["status"] == "ok", result
    sm = result["summary"]
    assert sm["samples"] > 500, sm
    assert sm["truncated_fraction"] < 0.1, sm
    script = ("import pstats,sys,json; st=pstats.Stats(sys.argv[1]); "
              "tot=sum(v[2] for v in st.stats.values()); "
              "unk=sum(v[2] for k,v in st.stats.items() if k[2]=='[unknown]'); "
              "spin=sum(v[3] for k,v in st.stats.items() if k[2]=='musl_spin_b'); "
              "print(json.dumps([unk/tot, spin/tot]))")
    pstats_file = next(f for f in result["files"] if f.endswith(".cprof"))
    out = subprocess.run(["/usr/bin/python3", "-c", script, pstats_file], capture_output=True,
                         text=True, check=True).stdout
    unknown, spin = json.loads(out)
    # The threads spin in musl_spin_b and the libc functions it calls (memset, strlen): every
    # sample in libc must come back to it, and none be left without a function.
    assert unknown < 0.10, (unknown, sm["top"])
    assert spin > 0.90, (spin, sm["top"])


def test_memory_injects_the_musl_hooks(workdir):
    with running_workload("allocs_musl") as proc:
        before = malloc_binding(proc.pid)
        assert before[0] == before[1]
        with agent_session(workdir, "muslm", f"pid:{proc.pid}") as s:
            result, _ = s.command("memory", {"seconds": 2}, timeout=60)
        assert result["status"] == "ok", result
        sm = result["summary"]
        assert sm["method"] == "inject", result
        assert not result.get("warnings"), result
        assert sm["allocations"] > 1000 and sm["frees"] > 1000, sm
        assert sm["top"][0]["site"].startswith("leak_slowly <- leaker_main"), sm["top"]
        assert any("libprofiler-agent-memhook-musl" in line for line in
                   open(f"/proc/{proc.pid}/maps")), "the musl build was not the one loaded"
        assert malloc_binding(proc.pid) == before
        assert stop_and_check(proc) > 0


def test_memory_says_why_without_the_musl_hooks(workdir):
    """An agent installed without the musl build falls back to uprobes and names the file."""
    lone = os.path.join(workdir, "bin")
    os.mkdir(lone)
    for f in ("profiler-agent", "libprofiler-agent-memhook.so"):
        shutil.copy(os.path.join(BUILD, f), lone)
    # The schemas, where the agent looks for them beside its executable (BIN/../schemas).
    os.symlink(os.path.abspath(os.path.join(BUILD, "..", "schemas")),
               os.path.join(workdir, "schemas"))
    with running_workload("allocs_musl") as proc:
        p = subprocess.run([os.path.join(lone, "profiler-agent"), "run", "memory",
                            json.dumps({"seconds": 1}), "--target", f"pid:{proc.pid}",
                            "--output-dir", os.path.join(workdir, "out"), *ROOT_FLAGS],
                           capture_output=True, text=True, timeout=120)
        result = json.loads(p.stdout.strip().split("\n")[-1])
        assert result["status"] == "ok", (result, p.stderr[-2000:])
        assert result["summary"]["method"] == "uprobes", result
        warning = " ".join(result.get("warnings", []))
        assert "links musl" in warning and "libprofiler-agent-memhook-musl.so" in warning, result
        assert stop_and_check(proc) > 0

