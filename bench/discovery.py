#!/usr/bin/python3
"""Home Assistant's birth message to the discovery configs published again: one agent answering
N births (min, p50, max in ms), then a fleet of K agents on one broker answering one birth (time
to the last config). The agent waits a random 0.5-3 s on purpose, so a fleet's configs do not all
arrive in the same instant; the figures show that spread plus what the agent itself adds."""
import os
import statistics
import time

from common import agents_on_broker

N = int(os.environ.get("N", "10"))
K = int(os.environ.get("K", "10"))


def wait_configs(client, nodes, t0, timeout=10.0):
    """ms from t0 until each node's config arrives, in arrival order."""
    left, times = set(nodes), []
    while left:
        m = client.wait_for(lambda m: m.topic.startswith("homeassistant/device/") and m.payload
                            and m.topic.split("/")[2] in left, timeout)
        times.append((time.monotonic() - t0) * 1000)
        left.discard(m.topic.split("/")[2])
        client.seen.clear()
    return times


def birth(client):
    client.drain()
    client.seen.clear()
    t0 = time.monotonic()
    client.publish("homeassistant/status", "online")
    return t0


def main():
    with agents_on_broker([f"fleet{i}" for i in range(K)],
                          ("profiler/+/status", "homeassistant/device/+/config"),
                          extra_config="discovery = on\n") as (_, agents, client):
        time.sleep(0.5)

        one = agents[0].node
        times = []
        for _ in range(N):
            t0 = birth(client)
            # Every agent answers each birth; only the first one is timed here.
            times.extend(wait_configs(client, [one], t0))
            time.sleep(3.5)
        times.sort()
        print(f"birth message to config re-published, one agent, {N} births (ms): "
              f"min {times[0]:.0f}  p50 {statistics.median(times):.0f}  max {times[-1]:.0f}  "
              f"(designed: a random 500-3000 ms delay)")
        t0 = birth(client)
        fleet = wait_configs(client, [a.node for a in agents], t0)
        print(f"birth message to all {K} agents' configs re-published (ms): first "
              f"{fleet[0]:.0f}  last {fleet[-1]:.0f}  (designed: within 3000 ms)")

if __name__ == "__main__":
    main()
