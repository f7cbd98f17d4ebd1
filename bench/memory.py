#!/usr/bin/python3
"""profiler.memory, measured beside valgrind's massif and heaptrack in one run, on the same
allocation-heavy workload (build/workloads/allocs: malloc/free of 16..4096 bytes in a loop, plus a
slow leak), which prints its own rate every second:
- slowdown while our hooks record every allocation (sample_bytes 0), and with sample_bytes
  524288, against its rate before;
- slowdown of the same program run under `valgrind --tool=massif` and under `heaptrack`;
- the agent's CPU and peak resident memory during the unsampled run."""
import os
import shutil
import statistics
import subprocess
import threading
import time

from common import BUILD, bench_agent, output_points
from procstat import cpu_seconds, rss_mib

SECONDS = float(os.environ.get("SECONDS_PER_RUN", "6"))
ALLOCS = os.path.join(BUILD, "workloads", "allocs")


def ops_rate(line):
    """An allocs "ops_per_sec N" line as a point, with the time it arrived."""
    f = line.split()
    if len(f) == 2 and f[0] == "ops_per_sec":
        return time.monotonic(), int(f[1])
    return None


def median_rate(points, t0, t1):
    rates = [r for t, r in points if t0 <= t <= t1]
    return statistics.median(rates) if rates else float("nan")


def under_tool(argv, work):
    """ops/s of allocs run under a tool (none for argv []) for SECONDS, the first 1.5 s
    skipped; None when the tool is not installed."""
    if argv and not shutil.which(argv[0]):
        return None
    proc = subprocess.Popen(argv + [ALLOCS, "--ops-rate"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=work)
    points = output_points(proc, ops_rate)
    t0 = time.monotonic()
    time.sleep(SECONDS + 1)
    rate = median_rate(points, t0 + 1.5, time.monotonic())
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    return rate


def main():
    with bench_agent("allocs", "--ops-rate") as (work, target, s):
        compare(work, target, s)


def compare(work, target, s):
    """Prints the slowdowns, ours measured through session s on target, the tools' on fresh
    allocs processes once target is gone."""
    points = output_points(target, ops_rate)
    rows = []
    for sample in (0, 524288):
        # The machine's speed drifts: each run is compared with the seconds just before it.
        t0 = time.monotonic()
        time.sleep(SECONDS - 1)
        base = median_rate(points, t0 + 1, time.monotonic())
        peak, c0 = 0.0, cpu_seconds(s.agent.proc.pid)
        done = []
        th = threading.Thread(target=lambda: done.append(s.command(
            "memory", {"seconds": SECONDS, "sample_bytes": sample},
            timeout=SECONDS + 120)))
        t0 = time.monotonic()
        th.start()
        while th.is_alive():
            peak = max(peak, rss_mib(s.agent.proc.pid))
            time.sleep(0.1)
        used = cpu_seconds(s.agent.proc.pid) - c0
        result = done[0][0]
        assert result["status"] == "ok", result
        rate = median_rate(points, t0 + 1.5, t0 + SECONDS)
        sm = result["summary"]
        rows.append((f"profiler-agent memory, sample_bytes {sample}", base, rate))
        print(f"  sample_bytes {sample}: {sm['allocations']} allocations recorded, "
              f"{sm['lost']} lost, method {sm['method']}; agent {used / (time.monotonic() - t0) * 100:.0f}% "
              f"of a core, peak {peak:.1f} MiB resident")
        s.client.seen.clear()
        time.sleep(1)
    target.kill()
    for name, argv in (("valgrind --tool=massif", ["valgrind", "--tool=massif",
                                                  f"--massif-out-file={work}/massif.out"]),
                       ("heaptrack", ["heaptrack", "-o", f"{work}/heaptrack"])):
        base = under_tool([], work)
        rows.append((name, base, under_tool(argv, work)))
    print(f"slowdown of an allocation-heavy loop ({SECONDS:.0f} s runs, each against the "
          "program alone just before; aim: every allocation no slower than heaptrack, "
          "sampled <= 1.3x):")
    for name, base, rate in rows:
        if rate is None:
            print(f"  {name:42s} not installed")
        else:
            print(f"  {name:42s} {base / rate:6.2f}x  ({1e9 / base:.0f} -> "
                  f"{1e9 / rate:.0f} ns per pair)")


if __name__ == "__main__":
    main()
