#!/usr/bin/python3
"""Python-level stacks on Debian's /usr/bin/python3 (3.11), and 3.14/3.15 from tests/pyroot.sh's
root when there is one (run as root):
- log_thread_frames on a Python process with 50 threads: round trip through MQTT and the time
  the target is stopped per dump (py-spy stops every thread per sample);
- attribution of a CPU profile against tests/workloads/py_split.py's known 75/25 split between
  two Python functions;
- attribution when the work changes every 0.1-0.3 ms (tests/workloads/py_alternate.py, which
  times each phase itself): two Python functions, Python against hashlib (C), and in wall mode
  work against time.sleep; beside the program's own timing, and on 3.15 beside Tachyon
  (`python3.15 -m profiling.sampling`, CPython's own sampler, run in the target's root)."""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
from conftest import Agent, Broker, Client, Session, agent_session, wait_online  # noqa: E402

WORKLOADS = os.path.join(os.path.dirname(__file__), "..", "tests", "workloads")
RUNS = int(os.environ.get("RUNS", "15"))
SECONDS = float(os.environ.get("SECONDS_PER_RUN", "5"))


def python_workload(name, *args):
    proc = subprocess.Popen(["/usr/bin/python3", os.path.join(WORKLOADS, name), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


ALTERNATE = [("py", "0.1", "cpu", "a", "b"), ("hash", "0.1", "cpu", "hash_data", "py_loop"),
             ("sleep", "1", "wall", "busy", "pause")]


def cumulative(path, source, python=("/usr/bin/python3",)):
    """{function: cumulative seconds} of source's functions in a pstats file, read by python
    (Tachyon's file is marshalled by 3.15, which 3.11 cannot read)."""
    script = ("import json,pstats,sys; st=pstats.Stats(sys.argv[1]); out={}\n"
              "for (f,l,n),v in st.stats.items():\n"
              "    if f.endswith(sys.argv[2]): out[n]=out.get(n,0)+v[3]\n"
              "print(json.dumps(out))")
    p = subprocess.run([*python, "-c", script, path, source], capture_output=True, text=True)
    return json.loads(p.stdout) if p.returncode == 0 else {}


def share(times, a, b):
    """a's percentage of a + b."""
    total = times.get(a, 0) + times.get(b, 0)
    return 100 * times.get(a, 0) / total if total else 0


def pyroot():
    p = subprocess.run(["sh", os.path.join(WORKLOADS, "..", "pyroot.sh")], capture_output=True,
                       text=True)
    return p.stdout.strip() if p.returncode == 0 and os.geteuid() == 0 else ""


def in_root(root, out, *cmd):
    """cmd under chroot root, in a private mount namespace with /proc, the workloads at /mnt
    and out at /srv (the root itself is not written)."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            'r=$1; mount -t proc proc "$r/proc" && mount --bind "$2" "$r/mnt" && '
            'mount --bind "$3" "$r/srv" && shift 3 && exec chroot "$r" "$@"',
            "sh", root, WORKLOADS, out, *cmd]


def alternate(work, python, root):
    """Shares of py_alternate.py's two phases: ours, the program's own, and Tachyon's on 3.15."""
    for mode, unit, kind, a, b in ALTERNATE:
        cmd = (in_root(root, work, f"/usr/bin/{python}", "/mnt/py_alternate.py", mode, unit)
               if root else ["/usr/bin/python3", os.path.join(WORKLOADS, "py_alternate.py"),
                             mode, unit])
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        with agent_session(work, "benchalt", f"pid:{proc.pid}") as s:
            proc.stdin.write("reset\n")  # the same stretch as the profile, not the agent's start
            proc.stdin.flush()
            result, _ = s.command("start", {"seconds": SECONDS, "frequency": 999, "mode": kind},
                                  timeout=SECONDS + 60)
        proc.stdin.write("report\n")
        proc.stdin.flush()
        own = json.loads(proc.stdout.readline())[kind]
        ours = cumulative(result["files"][0], "py_alternate.py")
        line = (f"{python} {mode:5} ({kind}): {a} {share(ours, a, b):5.1f}% of {a}+{b}, "
                f"program's own clock {share(own, a, b):5.1f}%")
        if python == "python3.15":
            # In the target's own root and mount namespace, where its maps' paths exist.
            subprocess.run(["nsenter", "-t", str(proc.pid), "-m", "-r", "/usr/bin/python3.15",
                            "-m", "profiling.sampling", "attach", "-a", "-r", "1khz", "-d",
                            str(int(SECONDS)), "--mode", kind, "--pstats", "-o",
                            "/srv/tachyon.pstats", str(proc.pid)], capture_output=True,
                           timeout=SECONDS + 60)
            theirs = cumulative("/srv/tachyon.pstats", "py_alternate.py",
                                ("nsenter", "-t", str(proc.pid), "-m", "-r",
                                 "/usr/bin/python3.15"))
            if theirs.get(a, 0) + theirs.get(b, 0):
                line += f", Tachyon {share(theirs, a, b):5.1f}%"
        sm = result["summary"]
        print(f"{line}; {sm['python_unpaired']} of {sm['samples']} samples unpaired, "
              f"{sm['lost']} lost")
        proc.kill()
        proc.wait()


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
        alternate(work, "python3.11", "")
        root = pyroot()
        for python in ("python3.14", "python3.15"):
            if root:
                alternate(work, python, root)
    finally:
        client.close()
        agent.stop()
        broker.stop()
        parked.kill()
        split.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
