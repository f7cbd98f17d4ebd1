#!/usr/bin/python3
"""log_thread_frames on a 200-thread process built without frame pointers: the whole MQTT round
trip (publish -> every record and the result received) against `eu-stack -p` on the same process,
and the time each dump keeps the target stopped, medians of RUNS (default 7) runs each."""
import json
import os
import re
import shutil
import statistics
import subprocess
import time

from common import bench_agent

RUNS = int(os.environ.get("RUNS", "7"))
THREADS = int(os.environ.get("THREADS", "200"))


def main():
    with bench_agent("many_threads", str(THREADS), topic="profiler/bench/status") as (_, target, s):
        dump(target, s.broker, s.client)


def dump(target, broker, client):
    """Times RUNS dumps of target through the agent on broker (after a cold one) and as many of
    eu-stack's, and prints the medians."""
    # The round trip is timed as a user of mosquitto_sub sees it: from just before the publish to
    # the arrival of the result, which comes after every record. paho's own per-message cost
    # (about 0.1 ms a record here) would otherwise dominate the figure.
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-t", "profiler/bench/log",
                            "-t", "profiler/bench/result", "-F", "%U %t %p"],
                           stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    try:
        ours, stopped, inside = [], [], []
        first = None
        for i in range(RUNS + 1):
            rid = f"bench-{i}"
            threads = 0
            t0 = time.time()
            client.publish("profiler/bench/log_thread_frames", {"request_id": rid})
            while True:
                m = re.match(r"(\d+\.\d+) profiler/bench/(log|result) (.*)", sub.stdout.readline())
                if not m:
                    continue
                if m.group(2) == "log":
                    threads += m.group(3).startswith("Thread [")
                    continue
                result = json.loads(m.group(3))
                if result.get("request_id") == rid:
                    break
            dt = (float(m.group(1)) - t0) * 1000
            assert result["status"] == "ok", result
            assert threads == THREADS + 1, threads
            if i == 0:
                first = dt
                continue
            ours.append(dt)
            stopped.append(result["summary"]["stopped_ms"])
            inside.append(result["summary"]["duration_ms"])
        eu = []
        eu_stack = shutil.which("eu-stack")
        for _ in range(RUNS if eu_stack else 0):
            t0 = time.perf_counter()
            p = subprocess.run([eu_stack, "-p", str(target.pid)], capture_output=True)
            eu.append((time.perf_counter() - t0) * 1000)
            assert p.returncode == 0, p.stderr
        med = statistics.median
        print(f"log_thread_frames on {THREADS + 1} threads, no frame pointers, medians of {RUNS}:")
        print(f"  profiler-agent MQTT round trip   {med(ours):8.1f} ms  (first, cold caches: "
              f"{first:.1f} ms)")
        print(f"  profiler-agent dump inside agent {med(inside):8.1f} ms")
        print(f"  target stopped per dump          {med(stopped):8.2f} ms  (max {max(stopped):.2f}; "
              f"target <= 5 ms)")
        if eu:
            print(f"  eu-stack -p                      {med(eu):8.1f} ms")
            print(f"  ratio round trip / eu-stack      {med(ours) / med(eu):8.2f}x  "
                  f"(target <= 0.5x, aim 0.25x)")
        else:
            print("  eu-stack not installed (apt-get install elfutils)")
    finally:
        sub.kill()


if __name__ == "__main__":
    main()
