#!/usr/bin/python3
"""profiler.start, measured beside `perf record --call-graph dwarf` in one run:
- slowdown of a CPU-bound target (its own work rate, read from its output) at 99, 999 and 4999 Hz
  under our profile and under perf record -e cpu-clock --call-graph dwarf at the same rate;
- attribution error against cpu_split's known 75/25 split at 999 Hz for 5 s;
- the agent's own CPU and peak resident memory while profiling a 4-thread target at 199 Hz;
- unwind cost per sample, cold (first run on a target) and warm (second)."""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
from conftest import BUILD, Agent, Broker, Client, Session, wait_online  # noqa: E402
from procstat import cpu_seconds, rss_mib  # noqa: E402

SECONDS = float(os.environ.get("SECONDS_PER_RUN", "5"))
RATES = [int(r) for r in os.environ.get("RATES", "99,999,4999").split(",")]
REPEAT = int(os.environ.get("REPEAT", "3"))


class RateReader:
    """Collects a work_rate process's "T UNITS" lines in the background."""

    def __init__(self, proc):
        self.points = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc):
        for line in proc.stdout:
            t, units = line.split()
            self.points.append((float(t), int(units)))

    def rate(self, t0, t1):
        pts = [p for p in self.points if t0 <= p[0] <= t1]
        if len(pts) < 2:
            return float("nan")
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


def mono():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def main():
    work = tempfile.mkdtemp(prefix="bench-cpu-")
    target = subprocess.Popen([os.path.join(BUILD, "workloads", "work_rate")],
                              stdout=subprocess.PIPE, text=True)
    assert target.stdout.readline().strip() == "ready"
    reader = RateReader(target)
    broker = Broker(work)
    broker.start()
    client = Client(broker.port)
    client.subscribe("profiler/bench/#")
    # The split workload runs only after the slowdown runs: it would take both cores.
    agent = Agent(broker, work, "bench", f"pid:{target.pid}", "allowed_targets = comm:cpu_split\n")
    split = None
    agent.start()
    wait_online(client, "bench")
    s = Session(broker, agent, client)
    perf = shutil.which("perf")
    try:
        time.sleep(1)
        print(f"slowdown of a CPU-bound target (work rate, {SECONDS:.0f} s per run, "
              f"median of {REPEAT}):")
        print("    rate   ours      perf record --call-graph dwarf    our samples/s")
        for rate in RATES:
            ours, theirs, per_s = [], [], []
            for _ in range(REPEAT):
                t0 = mono()
                time.sleep(SECONDS)
                base = reader.rate(t0 + 0.3, mono())
                t0 = mono()
                result, _ = s.command("start", {"seconds": SECONDS, "frequency": rate},
                                      timeout=SECONDS + 60)
                assert result["status"] == "ok", result
                ours.append(1 - reader.rate(t0 + 0.5, t0 + SECONDS) / base)
                per_s.append(result["summary"]["samples"] / result["summary"]["seconds"])
                client.seen.clear()
                if perf:
                    t0 = mono()
                    subprocess.run([perf, "record", "-q", "-e", "cpu-clock", "-F", str(rate),
                                    "--call-graph", "dwarf", "-p", str(target.pid),
                                    "-o", os.path.join(work, "perf.data"), "--",
                                    "sleep", str(SECONDS)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    theirs.append(1 - reader.rate(t0 + 0.5, t0 + SECONDS) / base)
            line = f"  {rate:6d}   {statistics.median(ours) * 100:5.2f}%"
            line += f"    {statistics.median(theirs) * 100:5.2f}%" if theirs else "    -     "
            print(f"{line}                        {statistics.median(per_s):7.0f}")

        target.kill()
        split = subprocess.Popen([os.path.join(BUILD, "workloads", "cpu_split"), "--threads", "3"],
                                 stdout=subprocess.PIPE, text=True)
        assert split.stdout.readline().strip() == "ready"
        result, _ = s.command("start", {"seconds": SECONDS, "frequency": 999,
                                        "target": "comm:cpu_split"}, timeout=SECONDS + 60)
        assert result["status"] == "ok", result
        script = ("import pstats,sys; st=pstats.Stats(sys.argv[1]); "
                  "tot=sum(v[2] for v in st.stats.values()); "
                  "print(sum(v[2] for k,v in st.stats.items() if k[2]=='work_a')/tot)")
        share_a = float(subprocess.run(["/usr/bin/python3", "-c", script, result["files"][0]],
                                       capture_output=True, text=True).stdout)
        print(f"attribution at 999 Hz for {SECONDS:.0f} s: work_a {share_a * 100:.1f}% of self "
              f"time, known 75.0% -> error {abs(share_a - 0.75) * 100:.1f} points "
              f"(target <= 2)")
        cold = result["summary"]["unwind_us_per_sample"]

        client.seen.clear()
        peak, c0 = 0.0, cpu_seconds(agent.proc.pid)
        done = []
        t = threading.Thread(target=lambda: done.append(s.command(
            "start", {"seconds": SECONDS, "frequency": 199, "target": "comm:cpu_split"},
            timeout=SECONDS + 60)))
        t0 = mono()
        t.start()
        while t.is_alive():
            peak = max(peak, rss_mib(agent.proc.pid))
            time.sleep(0.1)
        used = cpu_seconds(agent.proc.pid) - c0
        warm = done[0][0]["summary"]["unwind_us_per_sample"]
        print(f"agent while profiling a 4-thread target at 199 Hz: {used / (mono() - t0) * 100:.2f}% "
              f"of a core, peak {peak:.1f} MiB resident (aim: <= 2%, <= 32 MiB)")
        print(f"unwind cost per sample: {cold:.1f} us cold (first profile of the target), "
              f"{warm:.1f} us warm")
    finally:
        client.close()
        agent.stop()
        broker.stop()
        target.kill()
        if split:
            split.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
