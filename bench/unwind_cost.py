#!/usr/bin/python3
"""The unwinder's cost, beside perf's own, in one run:
- per-sample unwind cost at 999 Hz (thread CPU time of each stacks_unwind_regs call, by
  bench/unwind_cost.c linked with the engine): warm median and p99, the first (cold) sample, and a
  cold and a warm whole-process dump, on cpu_split with 4 threads and on a process that maps libc,
  libpython3.11 and libsqlite3 (Python running sqlite3 queries; libc's debug file from libc6-dbg);
- perf's cost on the same targets: `perf record -F 999 --call-graph dwarf` (its CPU per sample
  while recording) and `perf report` (its CPU per sample, where perf unwinds);
- a musl-built workload parked three calls deep: our dump's frames against eu-stack's;
- the agent's resident memory after a profile, a dump and a memory run of the libpython process
  (aim: <= 32 MiB).
Not a test: it judges nothing."""
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from common import BUILD, agent_session, running_workload
from procstat import rss_mib

SECONDS = float(os.environ.get("SECONDS_PER_RUN", "5"))
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PYLOAD = """
import sqlite3
db = sqlite3.connect(":memory:")
db.execute("create table t(a integer primary key, b text)")
print("ready", flush=True)
i = 0
while True:
    db.execute("insert into t(b) values (?)", ("x" * (i % 50),))
    i += 1
    if i % 1000 == 0:
        db.execute("delete from t where a < ?", (i - 5000,))
        db.execute("select count(*), sum(length(b)) from t").fetchone()
"""
EMBED = """#include <Python.h>
int main(int argc, char **argv)
{
    Py_Initialize();
    return PyRun_SimpleString(argv[1]) != 0;
}
"""


def pkg_libs():
    return subprocess.run(["pkg-config", "--libs", "libunwind-generic", "libdw", "libelf"],
                          capture_output=True, text=True, check=True).stdout.split()


def build_tools(work):
    """The timing helper, and the embedding program that maps libpython3.11.so (Debian's
    python3.11 links it statically)."""
    helper = os.path.join(work, "unwind_cost")
    subprocess.run(["cc", "-O2", "-g", "-std=gnu11", "-D_GNU_SOURCE",
                    "-I", os.path.join(ROOT, "engine"), "-o", helper,
                    os.path.join(ROOT, "bench", "unwind_cost.c"),
                    os.path.join(BUILD, "libengine.a"), *pkg_libs(), "-lpthread", "-lm"],
                   check=True)
    src = os.path.join(work, "pyembed.c")
    with open(src, "w") as f:
        f.write(EMBED)
    flags = subprocess.run(["/usr/bin/python3.11-config", "--embed", "--cflags", "--ldflags"],
                           capture_output=True, text=True, check=True).stdout.split()
    embed = os.path.join(work, "pyembed")
    subprocess.run(["cc", "-O2", "-o", embed, src, *flags], check=True)
    return helper, embed


def start_pyembed(embed):
    proc = subprocess.Popen([embed, PYLOAD], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def ours(helper, pid):
    out = subprocess.run([helper, str(pid), str(SECONDS), "999"], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def child_cpu(argv, **kw):
    """Runs argv to its end: (its user + system CPU seconds, its stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True, **kw).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out


def perf_cost(work, pid):
    """perf record's and perf report's CPU per sample on pid, and the samples taken."""
    data = os.path.join(work, "perf.data")
    rec, _ = child_cpu(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "--call-graph",
                        "dwarf", "-p", str(pid), "-o", data, "--", "sleep", str(SECONDS)])
    _, stats = child_cpu(["perf", "report", "--stats", "-i", data])
    m = re.search(r"SAMPLE events:\s+(\d+)", stats)
    samples = int(m.group(1)) if m else 0
    rep, _ = child_cpu(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort",
                        "dso,sym"])
    return samples, rec, rep


def print_costs(name, pid, helper, work):
    r = ours(helper, pid)
    print(f"{name}: {r['samples']} samples, {r['frames_per_sample']:.1f} frames each, "
          f"{r['truncated']} truncated, {r['scanned_frames']} frames scanned")
    print(f"  ours: warm median {r['warm_median_us']:.2f} us, p99 {r['warm_p99_us']:.1f} us, "
          f"mean {r['warm_mean_us']:.2f} us; first sample (cold) {r['first_us'] / 1000:.1f} ms; "
          f"dump cold {r['cold_dump_ms']:.1f} ms, warm {r['warm_dump_ms']:.2f} ms")
    if shutil.which("perf"):
        samples, rec, rep = perf_cost(work, pid)
        if samples:
            print(f"  perf ({samples} samples): record {rec / samples * 1e6:.1f} us/sample "
                  f"(copying stacks to its file), report {rep / samples * 1e6:.1f} us/sample "
                  f"(its unwinding and symbols, start-up included)")


def musl_frames(work):
    with running_workload("musl_parked") as proc:
        eu = subprocess.run(["eu-stack", "-p", str(proc.pid)], capture_output=True, text=True)
        ours_out = subprocess.run([os.path.join(BUILD, "profiler-agent"), "run",
                                   "log_thread_frames", "--target", f"pid:{proc.pid}",
                                   "--allow-root", "--database", os.path.join(work, "runs.db"),
                                   "--output-dir", work],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True).stdout
    frames = [line for line in ours_out.splitlines() if line.startswith("  File")]
    named = [f for f in ("musl_park_c", "musl_park_b", "musl_park_a", "main")
             if any(f", in {f} " in line for line in frames)]
    print(f"musl workload parked three calls deep: our dump {len(frames)} frames "
          f"({sum(line.endswith('(scanned)') for line in frames)} scanned; named: "
          f"{', '.join(named)}; outermost: {frames[0].split('[')[-1].split(']')[0] if frames else '-'}), "
          f"eu-stack {len(re.findall(r'^#[0-9]+ ', eu.stdout, re.M))} frame(s)")


def agent_rss(work, embed):
    proc = start_pyembed(embed)
    try:
        with agent_session(work, "rss", f"pid:{proc.pid}") as s:
            base = rss_mib(s.agent.proc.pid)
            figures = []
            for action, payload in (("start", {"seconds": SECONDS, "frequency": 999}),
                                    ("log_thread_frames", {}), ("memory", {"seconds": 2})):
                result, _ = s.command(action, payload, timeout=SECONDS + 60)
                figures.append(f"{action} {rss_mib(s.agent.proc.pid):.1f}"
                               f"{'' if result['status'] == 'ok' else ' (failed)'}")
                s.client.seen.clear()
            print(f"agent resident memory, libc (debug file installed: "
                  f"{os.path.isdir('/usr/lib/debug/.build-id')}), libpython3.11, libsqlite3: "
                  f"idle {base:.1f} MiB, after " + ", ".join(figures) + " MiB (aim: <= 32)")
    finally:
        proc.kill()
        proc.wait()


def main():
    work = tempfile.mkdtemp(prefix="bench-unwind-")
    try:
        helper, embed = build_tools(work)
        with running_workload("cpu_split", "--threads", "3") as proc:
            time.sleep(0.5)
            print_costs("cpu_split, 4 CPU-bound threads", proc.pid, helper, work)
        proc = start_pyembed(embed)
        try:
            print_costs("python3.11 + sqlite3 (libc, libpython, libsqlite3)", proc.pid, helper,
                        work)
        finally:
            proc.kill()
            proc.wait()
        musl_frames(work)
        agent_rss(work, embed)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
