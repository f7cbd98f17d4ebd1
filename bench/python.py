#!/usr/bin/python3
"""Python-level stacks on Debian's /usr/bin/python3 (3.11):
- log_thread_frames on a Python process with 50 threads: round trip through MQTT and the time
  the target is stopped per dump (py-spy stops every thread per sample);
- attribution of a CPU profile against tests/workloads/py_split.py's known 75/25 split between
  two Python functions."""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
from conftest import Agent, Broker, Client, Session, wait_online  # noqa: E402

WORKLOADS = os.path.join(os.path.dirname(__file__), "..", "tests", "workloads")
RUNS = int(os.environ.get("RUNS", "15"))
SECONDS = float(os.environ.get("SECONDS_PER_RUN", "5"))


def python_workload(name, *args):
    proc = subprocess.Popen(["/usr/bin/python3", os.path.join(WORKLOADS, name), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def main():
    work = tempfile.mkdtemp(prefix="bench-python-")
    parked = python_workload("py_parked.py", "42")
    split = python_workload("py_split.py")
    broker = Broker(work)
    broker.start()
    client = Client(broker.port)
    client.subscribe("profiler/bench/#")
    agent = Agent(broker, work, "bench", f"pid:{parked.pid}",
                  f"allowed_targets = pid:{split.pid}\n")
    agent.start()
    wait_online(client, "bench")
    s = Session(broker, agent, client)
    try:
        trips, stopped = [], []
        for _ in range(RUNS):
            t0 = time.monotonic()
            result, records = s.command("log_thread_frames")
            trips.append((time.monotonic() - t0) * 1000)
            assert result["status"] == "ok", result
            stopped.append(result["summary"]["stopped_ms"])
            client.seen.clear()
        print(f"log_thread_frames on a Python process with {len(records)} threads "
              f"({result['summary']['python_frames']} Python frames): round trip median "
              f"{statistics.median(trips):.1f} ms, target stopped median "
              f"{statistics.median(stopped):.2f} ms, max {max(stopped):.2f} ms "
              f"(py-spy: 8-9 ms per sample on 159 threads)")
        result, _ = s.command("start", {"seconds": SECONDS, "frequency": 999,
                                        "target": f"pid:{split.pid}"}, timeout=SECONDS + 60)
        assert result["status"] == "ok", result
        script = ("import json,pstats,sys; st=pstats.Stats(sys.argv[1]); "
                  "print(json.dumps({k[2]: v[2] for k, v in st.stats.items()}))")
        self_time = json.loads(subprocess.run(["/usr/bin/python3", "-c", script,
                                               result["files"][0]],
                                              capture_output=True, text=True).stdout)
        share = self_time["heavy"] / (self_time["heavy"] + self_time["light"])
        print(f"CPU profile at 999 Hz for {SECONDS:.0f} s: heavy {share * 100:.1f}% of "
              f"heavy+light self time, known 75.0% -> error {abs(share - 0.75) * 100:.1f} "
              f"points (target <= 3); {result['summary']['python_samples']} of "
              f"{result['summary']['samples']} samples in Python code")
    finally:
        client.close()
        agent.stop()
        broker.stop()
        parked.kill()
        split.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
