#!/usr/bin/python3
"""The flight recorder, measured in one run (about 3 minutes):
- slowdown of a 4-thread CPU-bound target (cpu_split --threads 3: its main thread's rounds in
  a fixed time) alone, with the recorder at 19 Hz, and with `perf record -e cpu-clock -F 19
  --call-graph dwarf` beside it instead, in turns;
- the agent's CPU (% of a core) and resident memory while it records, and the ring's own size;
- `start {"last": 300}` round trip through MQTT, from a ring holding as many samples as 5 minutes
  of 4 busy threads at 19 Hz (22,800; filled at 999 Hz, by a second agent, to stay within the
  run), and the shares of `start {"last": S}` against a live `start` at the same rate over the
  same seconds.
Not a test: nothing here judges a figure."""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
from conftest import BUILD, agent_session  # noqa: E402
from procstat import cpu_seconds, rss_mib  # noqa: E402

RUN_S = float(os.environ.get("RUN_SECONDS", "15"))
REPEAT = int(os.environ.get("REPEAT", "2"))
SPLIT = os.path.join(BUILD, "workloads", "cpu_split")


def rounds(extra=None):
    """Rounds of cpu_split's main thread in RUN_S with 3 busy workers; extra(pid) runs beside it
    (returns something to stop, or None)."""
    p = subprocess.Popen([SPLIT, "--threads", "3", "--exit-after", str(RUN_S)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    beside = extra(p.pid) if extra else None
    out = p.stdout.read()
    p.wait()
    if beside:
        beside.wait()
    return int(out.split("rounds=")[1])


FULL = 300 * 19 * 4


def ring(s):
    """The recorder's part of a fresh P/N/state."""
    s.client.drain()
    start = len(s.client.seen)
    s.command("ping")
    # The state goes out just after the result.
    m = s.client.wait_for(lambda m: s.client.seen.index(m) >= start and
                          m.topic == f"{s.prefix}/state")
    return json.loads(m.payload)["recorder"]


def shares(path):
    script = ("import pstats,sys; st=pstats.Stats(sys.argv[1]); "
              "tot=sum(v[2] for v in st.stats.values()); "
              "print(sum(v[2] for k,v in st.stats.items() if k[2]=='work_a')/tot)")
    return float(subprocess.run(["/usr/bin/python3", "-c", script, path], capture_output=True,
                                text=True).stdout)


def main():
    work = tempfile.mkdtemp(prefix="bench-recorder-")
    perf = shutil.which("perf")
    try:
        with agent_session(work, "bench", "comm:cpu_split",
                           "recorder_minutes = 5\nrecorder_frequency = 19\n") as s:
            alone, recorded, perfed, agent_cpu, agent_rss = [], [], [], [], []
            idle_rss = rss_mib(s.agent.proc.pid)
            taken = []  # (samples, agent CPU seconds) of each recorded run
            for _ in range(REPEAT):
                alone.append(rounds())
                s.command("recorder", {"enabled": True})
                time.sleep(0.5)
                n0 = ring(s)["samples"]
                steady = []
                # Steady state: from 4 s after the recorder found the new process to the end,
                # leaving out its first look at the process's modules.
                timer = threading.Timer(4, lambda: steady.append(
                    (cpu_seconds(s.agent.proc.pid), time.monotonic())))
                timer.start()
                c0, t0 = cpu_seconds(s.agent.proc.pid), time.monotonic()
                recorded.append(rounds())
                c1, t1 = cpu_seconds(s.agent.proc.pid), time.monotonic()
                agent_cpu.append(((c1 - c0) / (t1 - t0), (c1 - steady[0][0]) / (t1 - steady[0][1])))
                taken.append((ring(s)["samples"] - n0, c1 - c0))
                agent_rss.append(rss_mib(s.agent.proc.pid))
                s.command("recorder", {"enabled": False})
                if perf:
                    perfed.append(rounds(lambda pid: subprocess.Popen(
                        [perf, "record", "-q", "-e", "cpu-clock", "-F", "19", "--call-graph",
                         "dwarf", "-p", str(pid), "-o", os.path.join(work, "perf.data")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
            base = statistics.median(alone)
            print(f"cpu_split --threads 3, main thread's rounds in {RUN_S:.0f} s, median of "
                  f"{REPEAT} (runs alone: {', '.join(str(r) for r in alone)}):")
            print(f"  recorder at 19 Hz: slowdown {(1 - statistics.median(recorded) / base) * 100:5.2f}%"
                  f"  (runs: {', '.join(str(r) for r in recorded)})")
            if perfed:
                print(f"  perf record -F 19 --call-graph dwarf: slowdown "
                      f"{(1 - statistics.median(perfed) / base) * 100:5.2f}%  (runs: "
                      f"{', '.join(str(r) for r in perfed)})")
            print(f"agent while recording: {statistics.median(c[0] for c in agent_cpu) * 100:.2f}% "
                  f"of a core over the whole run, "
                  f"{statistics.median(c[1] for c in agent_cpu) * 100:.2f}% in its steady state, "
                  f"{max(agent_rss):.1f} MiB resident ({idle_rss:.1f} MiB before)")
            n = sum(t[0] for t in taken)
            print(f"  the recorder took {n / (REPEAT * RUN_S):.1f} samples/s (4 threads at 19 Hz "
                  f"on a CPU each: 76/s)")
            # For comparison, the memory a live profile of the same kind of target leaves.
            p = subprocess.Popen([SPLIT, "--threads", "3", "--exit-after", "5"],
                                 stdout=subprocess.PIPE, text=True)
            assert p.stdout.readline().strip() == "ready"
            fresh = rss_mib(s.agent.proc.pid)
            s.command("start", {"seconds": 3, "frequency": 19}, timeout=60)
            print(f"  a live start of 3 s at 19 Hz, recorder off: agent {fresh:.1f} -> "
                  f"{rss_mib(s.agent.proc.pid):.1f} MiB resident")
            p.wait()

        # A ring as full as 5 minutes of 4 busy threads at 19 Hz leave it (22,800 samples),
        # filled faster at 999 Hz; a live profile beside it at the same rate.
        with agent_session(work, "bench2", "comm:cpu_split",
                           "recorder = on\nrecorder_minutes = 5\nrecorder_frequency = 999\n") as s:
            target = subprocess.Popen([SPLIT, "--threads", "3"], stdout=subprocess.PIPE,
                                      text=True)
            assert target.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 120
            while ring(s)["samples"] < FULL and time.monotonic() < deadline:
                time.sleep(2)
            live, _ = s.command("start", {"seconds": 10, "frequency": 999}, timeout=70)
            last, _ = s.command("start", {"last": live["summary"]["seconds"]})
            print(f"work_a's share over the same {live['summary']['seconds']:.1f} s at 999 Hz: "
                  f"live start {shares(live['files'][0]) * 100:.1f}% "
                  f"({live['summary']['samples']} samples), start last "
                  f"{shares(last['files'][0]) * 100:.1f}% ({last['summary']['samples']} samples)")
            times = []
            for _ in range(3):
                t0 = time.monotonic()
                result, _ = s.command("start", {"last": 300})
                times.append(time.monotonic() - t0)
                assert result["status"] == "ok", result
            rec = ring(s)
            print(f"start {{\"last\": 300}} round trip: median {statistics.median(times) * 1000:.0f}"
                  f" ms of 3, over {result['summary']['samples']} samples in "
                  f"{result['summary']['seconds']:.0f} s")
            print(f"ring: {rec['seconds']:.0f} s covered, {rec['samples']} samples, "
                  f"{rec['stacks']} distinct stacks, {rec['mb']:.2f} MiB; agent "
                  f"{rss_mib(s.agent.proc.pid):.1f} MiB resident")
            target.kill()
            target.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
