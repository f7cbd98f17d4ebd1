#!/usr/bin/python3
"""Object logging through a real broker, on build/workloads/objmaker (pipes made on command, each
stamped with CLOCK_MONOTONIC just before its pipe2 call):
1. start_log_object_sources at scan_interval 1: time from a new pipe in the target to its
   `New object` record at the client (p50/p90/max over N pipes made at random moments), and the
   part of it spent after the scan began (from that scan's growth record to the source record).
2. Agent CPU per scan at scan_interval 1 on a target holding 10,000 fds: start_log_objects, and
   start_log_object_sources with 10 new pipes a second, each beside the idle agent's own CPU."""
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
from conftest import BUILD, agent_session  # noqa: E402
from procstat import cpu_seconds  # noqa: E402

N = int(os.environ.get("N", "30"))
FDS = int(os.environ.get("FDS", "10000"))
CPU_SECONDS = float(os.environ.get("CPU_SECONDS", "10"))


class Maker:
    """objmaker, with the lines it prints collected by a reader thread."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([os.path.join(BUILD, "workloads", "objmaker"), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline().split()
        assert ready and ready[0] == "ready", "objmaker did not start"
        self.fds = int(ready[1])
        self.made = {}                   # read fd -> CLOCK_MONOTONIC ns of its pipe2 call
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            w = line.split()
            if w and w[0] == "pipe":
                with self.lock:
                    self.made[int(w[1])] = int(w[3])

    def pipe(self):
        self.proc.stdin.write("pipe\n")
        self.proc.stdin.flush()

    def close(self):
        self.proc.kill()
        self.proc.wait()


def scans_done(s):
    """Scans of the one logger running, from its log_current_tasks line."""
    _, tasks = s.command("log_current_tasks")
    found = [int(m.group(1)) for t in tasks if t.startswith("Task: <logger ")
             for m in [re.search(r" scans=(\d+)", t)] if m]
    assert len(found) == 1, tasks
    return found[0]


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def latency(work):
    maker = Maker()
    try:
        with agent_session(work, "benchsrc", f"pid:{maker.proc.pid}") as s:
            r, _ = s.command("start_log_object_sources", {"scan_interval": 1, "max_objects": 1024})
            assert r["status"] == "ok", r
            arrivals = []                # (monotonic ns at the client, message)
            keep = s.client.client.on_message

            def stamp(c, u, m):
                arrivals.append((time.monotonic_ns(), m))
                keep(c, u, m)
            s.client.client.on_message = stamp
            time.sleep(1.5)
            for _ in range(N):
                maker.pipe()
                time.sleep(random.uniform(0.1, 0.4))
            time.sleep(2.5)
            s.client.client.on_message = keep
            total, after_scan = [], []
            scan_start = None
            for t, m in arrivals:
                if not m.topic.endswith("/log"):
                    continue
                text = m.payload.decode()
                if text.startswith("Memory Growth: "):
                    scan_start = t
                    continue
                hit = re.match(r"New object: pipe <pipe fd=(\d+) ", text)
                with maker.lock:
                    made = maker.made.get(int(hit.group(1))) if hit else None
                if made is not None and "make_pipe" in text:
                    total.append((t - made) / 1e6)
                    if scan_start is not None:
                        after_scan.append((t - scan_start) / 1e6)
            s.command("stop_log_object_sources")
    finally:
        maker.close()
    print(f"new pipe -> 'New object' record at the client, scan_interval 1 s, "
          f"{len(total)} of {N} pipes:")
    if total:
        print(f"  total       p50 {pct(total, 50):7.1f} ms  p90 {pct(total, 90):7.1f} ms  "
              f"max {max(total):7.1f} ms  (waiting for the scan is most of it)")
    if after_scan:
        print(f"  after scan  p50 {pct(after_scan, 50):7.1f} ms  p90 {pct(after_scan, 90):7.1f} ms"
              f"  max {max(after_scan):7.1f} ms  (growth record -> source record: match, unwind, "
              f"publish)")


def cpu_per_scan(work):
    maker = Maker("--fds", str(FDS))
    try:
        with agent_session(work, "benchcpu", f"pid:{maker.proc.pid}") as s:
            pid = s.agent.proc.pid
            time.sleep(1)
            c0 = cpu_seconds(pid)
            time.sleep(CPU_SECONDS)
            idle = (cpu_seconds(pid) - c0) / CPU_SECONDS
            rows = []
            for action, extra in (("start_log_objects", {}),
                                  ("start_log_object_sources", {"max_objects": 5})):
                r, _ = s.command(action, {"scan_interval": 1, **extra})
                assert r["status"] == "ok", r
                time.sleep(0.5)
                s0 = scans_done(s)
                c0, t0 = cpu_seconds(pid), time.monotonic()
                while time.monotonic() - t0 < CPU_SECONDS:
                    if action == "start_log_object_sources":
                        maker.pipe()
                    time.sleep(0.1)
                used = cpu_seconds(pid) - c0 - idle * (time.monotonic() - t0)
                scans = scans_done(s) - s0
                s.command(action.replace("start", "stop", 1))
                rows.append((action, used, max(scans, 1)))
    finally:
        maker.close()
    print(f"agent CPU per scan, scan_interval 1 s, target with {maker.fds} fds "
          f"(idle agent: {idle * 1000:.1f} ms/s, subtracted):")
    for action, used, scans in rows:
        what = " (10 new pipes/s, 5 sources logged per scan)" if "sources" in action else ""
        print(f"  {action:26s} {used * 1000 / scans:7.1f} ms per scan over {scans} scans{what}")


def main():
    work = tempfile.mkdtemp(prefix="bench-objsrc-")
    latency(work)
    cpu_per_scan(work)


if __name__ == "__main__":
    main()
