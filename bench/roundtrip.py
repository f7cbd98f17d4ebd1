#!/usr/bin/python3
"""Round trip of a cheap action through a real broker: 1,000 `lru_stats` commands sent one after
another, each timed from publish to its result; prints p50, p90, p99 and max. Also measures an
idle agent: resident memory and CPU over 10 s, with the same figures for mosquitto beside it."""
import json
import os
import statistics
import subprocess
import time

from common import agents_on_broker
from procstat import cpu_seconds, rss_mib

N = int(os.environ.get("N", "1000"))
IDLE_SECONDS = float(os.environ.get("IDLE_SECONDS", "10"))


def main():
    # The rate limit (60 a minute by default) would refuse most of the N commands.
    with agents_on_broker(["bench"], ("profiler/bench/status",),
                          extra_config="rate_limit = 0\n") as (broker, agents, client):
        measure(broker, agents[0], client)


def measure(broker, agent, client):
    """Prints the round trip's quantiles, then the idle agent's and mosquitto's figures."""
    # Timed as a mosquitto_sub user sees it (libmosquitto, like most clients); paho's own
    # per-message cost is kept out of the figure.
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-t", "profiler/bench/result",
                            "-F", "%U %p"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    try:
        times = []
        for i in range(N + 20):
            rid = f"rt-{i}"
            t0 = time.time()
            client.publish("profiler/bench/lru_stats", json.dumps({"request_id": rid}))
            while True:
                stamp, payload = sub.stdout.readline().split(" ", 1)
                result = json.loads(payload)
                if result.get("request_id") == rid:
                    break
            assert result["status"] == "ok"
            if i >= 20:
                times.append((float(stamp) - t0) * 1000)
        times.sort()
        q = statistics.quantiles(times, n=100)
        print(f"cheap action round trip over {N} commands (ms): p50 {q[49]:.2f}  "
              f"p90 {q[89]:.2f}  p99 {q[98]:.2f}  max {times[-1]:.2f}  (target: p50 <= 5, "
              f"p99 <= 20)")

        pid = agent.proc.pid
        time.sleep(1)
        c0, m0, t0 = cpu_seconds(pid), cpu_seconds(broker.proc.pid), time.monotonic()
        time.sleep(IDLE_SECONDS)
        dt = time.monotonic() - t0
        cpu = (cpu_seconds(pid) - c0) / dt * 100
        mcpu = (cpu_seconds(broker.proc.pid) - m0) / dt * 100
        print(f"idle over {dt:.0f} s: agent {rss_mib(pid):.1f} MiB resident, "
              f"{cpu:.3f}% of a core (target: <= 8 MiB, <= 0.1%); mosquitto beside it "
              f"{rss_mib(broker.proc.pid):.1f} MiB, {mcpu:.3f}%")
    finally:
        sub.kill()


if __name__ == "__main__":
    main()
