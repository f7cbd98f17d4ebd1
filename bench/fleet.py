#!/usr/bin/python3
"""A fleet on one broker: 20 agents (N=...), one broadcast `ping` on profiler/ping, timed from the
publish to the last of the 20 results, each on its own profiler/NODE/result. Repeated ROUNDS
times after a warm-up; prints the median and the worst round, and the first and median agent."""
import json
import os
import statistics
import subprocess
import time

from common import agents_on_broker

N = int(os.environ.get("N", "20"))
ROUNDS = int(os.environ.get("ROUNDS", "20"))
TIMEOUT = 10.0


def main():
    with agents_on_broker([f"node{i:02d}" for i in range(N)],
                          ("profiler/+/status",)) as (broker, _, client):
        ping(broker, client)


def ping(broker, client):
    """Times ROUNDS broadcast pings (after a warm-up one) and prints the figures."""
    # Timed as a mosquitto_sub user sees it, as in roundtrip.py.
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-t", "profiler/+/result",
                            "-F", "%U %t %p"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    try:
        last, first, median = [], [], []
        for i in range(ROUNDS + 1):
            rid = f"fleet-{i}"
            t0 = time.time()
            client.publish("profiler/ping", json.dumps({"request_id": rid}))
            seen = {}
            deadline = time.monotonic() + TIMEOUT
            while len(seen) < N:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"round {i}: {len(seen)} of {N} agents answered")
                stamp, topic, payload = sub.stdout.readline().split(" ", 2)
                result = json.loads(payload)
                if result.get("request_id") != rid:
                    continue
                node = topic.split("/")[1]
                assert result["status"] == "ok" and result["summary"]["node"] == node, result
                assert node not in seen, f"{node} answered twice"
                seen[node] = (float(stamp) - t0) * 1000
            if i == 0:
                continue
            ms = sorted(seen.values())
            first.append(ms[0])
            median.append(statistics.median(ms))
            last.append(ms[-1])
        print(f"broadcast ping to {N} agents on one broker, {ROUNDS} rounds, all {N} answered "
              "each round, each on its own P/N/result: time to the last result median "
              f"{statistics.median(last):.2f} ms, worst {max(last):.2f} ms (first result "
              f"{statistics.median(first):.2f} ms, median agent "
              f"{statistics.median(median):.2f} ms)")
    finally:
        sub.kill()


if __name__ == "__main__":
    main()
