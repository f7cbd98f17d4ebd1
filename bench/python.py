#!/usr/bin/python3
"""Python-level stacks on Debian's /usr/bin/python3 (3.11), and 3.14/3.15 from tests/pyroot.sh's
root when there is one (run as root):
- log_thread_frames on a Python process with 50 threads, on 3.11 and on 3.14 under chroot: round
  trip through MQTT and the time the target is stopped per dump (py-spy stops every thread per
  sample);
- attribution of a CPU profile against tests/workloads/py_split.py's known 75/25 split between
  two Python functions;
- attribution when the work changes every 0.1-0.3 ms (tests/workloads/py_alternate.py, which
  times each phase itself): two Python functions, Python against hashlib (C), and in wall mode
  work against time.sleep; beside the program's own timing, and on 3.15 beside Tachyon
  (`python3.15 -m profiling.sampling`, CPython's own sampler, run in the target's root);
- on 3.15, the slowdown of py_split.py (a fixed amount of work, timed by the program itself) with
  our `start` and with Tachyon attached at the same rate, in turns in the same run; both tools'
  top five functions by self samples, and the samples each lost."""
import concurrent.futures
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
from conftest import agent_session  # noqa: E402

WORKLOADS = os.path.join(os.path.dirname(__file__), "..", "tests", "workloads")
RUNS = int(os.environ.get("RUNS", "15"))
SECONDS = float(os.environ.get("SECONDS_PER_RUN", "5"))
# The slowdown comparison: its rate, how long the work takes alone, and how many turns.
RATE = int(os.environ.get("RATE", "999"))
WORK_SECONDS = float(os.environ.get("WORK_SECONDS", "4"))
TURNS = int(os.environ.get("TURNS", "5"))
# A profiler is given this long to attach before the work starts.
LEAD = 1.0
DEBIAN = "/usr/bin/python3"


def workload(cmd):
    """cmd started and past its "ready" line."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", cmd
    return proc


def python_cmd(python, root, work, name, *args):
    """tests/workloads/NAME on python: Debian's 3.11, or python3.X in root (see in_root)."""
    if python == "python3.11":
        return [DEBIAN, os.path.join(WORKLOADS, name), *args]
    return in_root(root, work, f"/usr/bin/{python}", f"/mnt/{name}", *args)


def in_target_root(pid, *cmd):
    """cmd in the target's own root and mount namespace, where its maps' paths exist."""
    return ["nsenter", "-t", str(pid), "-m", "-r", *cmd]


ALTERNATE = [("py", "0.1", "cpu", "a", "b"), ("hash", "0.1", "cpu", "hash_data", "py_loop"),
             ("sleep", "1", "wall", "busy", "pause")]


def pstats_rows(path, python=(DEBIAN,)):
    """[file, first line, function, self seconds, cumulative seconds] of a pstats file, read by
    python (Tachyon's file is marshalled by 3.15, which 3.11 cannot read)."""
    script = ("import json,pstats,sys; st=pstats.Stats(sys.argv[1])\n"
              "print(json.dumps([[*k, v[2], v[3]] for k, v in st.stats.items()]))")
    p = subprocess.run([*python, "-c", script, path], capture_output=True, text=True)
    return json.loads(p.stdout) if p.returncode == 0 else []


def cumulative(path, source, python=(DEBIAN,)):
    """{function: cumulative seconds} of source's functions in a pstats file."""
    out = {}
    for f, _, name, _, ct in pstats_rows(path, python):
        if f.endswith(source):
            out[name] = out.get(name, 0) + ct
    return out


def top_self(path, python=(DEBIAN,), n=5):
    """The n functions with the most self time in a pstats file, with their share of it; by file
    and function (Tachyon keys a function by the line it samples too)."""
    funcs = {}
    for f, _, name, tt, _ in pstats_rows(path, python):
        funcs[f, name] = funcs.get((f, name), 0) + tt
    total = sum(funcs.values()) or 1
    top = sorted(funcs.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{name} {100 * tt / total:.1f}%" for (_, name), tt in top)


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


def tachyon(pid, rate, seconds, mode, out):
    """`python3.15 -m profiling.sampling attach` on pid, all threads, pstats to out (a path in the
    target's root), as a started process whose output is its summary."""
    return subprocess.Popen(in_target_root(pid, "/usr/bin/python3.15", "-m", "profiling.sampling",
                                           "attach", "-a", "-r", str(rate), "-d",
                                           str(int(seconds)), "--mode", mode, "--pstats", "-o",
                                           out, str(pid)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def alternate(work, python, root):
    """Shares of py_alternate.py's two phases: ours, the program's own, and Tachyon's on 3.15."""
    for mode, unit, kind, a, b in ALTERNATE:
        proc = workload(python_cmd(python, root, work, "py_alternate.py", mode, unit))
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
            tachyon(proc.pid, 1000, SECONDS, kind, "/srv/tachyon.pstats").communicate(
                timeout=SECONDS + 60)
            theirs = cumulative("/srv/tachyon.pstats", "py_alternate.py",
                                in_target_root(proc.pid, "/usr/bin/python3.15"))
            if theirs.get(a, 0) + theirs.get(b, 0):
                line += f", Tachyon {share(theirs, a, b):5.1f}%"
        sm = result["summary"]
        print(f"{line}; {sm['python_unpaired']} of {sm['samples']} samples unpaired, "
              f"{sm['lost']} lost")
        proc.kill()
        proc.wait()


def frames(work, python, root):
    """log_thread_frames on py_parked.py with 43 more threads (50 in all), RUNS times."""
    proc = workload(python_cmd(python, root, work, "py_parked.py", "43"))
    trips, stopped = [], []
    try:
        with agent_session(work, "benchframes", f"pid:{proc.pid}") as s:
            for _ in range(RUNS):
                t0 = time.monotonic()
                result, records = s.command("log_thread_frames")
                trips.append((time.monotonic() - t0) * 1000)
                assert result["status"] == "ok", result
                stopped.append(result["summary"]["stopped_ms"])
                s.client.seen.clear()
    finally:
        proc.kill()
        proc.wait()
    print(f"{python}: log_thread_frames on a Python process with {len(records)} threads "
          f"({result['summary']['python_frames']} Python frames): round trip median "
          f"{statistics.median(trips):.1f} ms, target stopped median "
          f"{statistics.median(stopped):.2f} ms, max {max(stopped):.2f} ms "
          f"(py-spy: 8-9 ms per sample on 159 threads)")


def split(work):
    """Attribution of a 999 Hz profile of py_split.py on 3.11 against its known 75/25 split."""
    proc = workload(python_cmd("python3.11", "", work, "py_split.py"))
    try:
        with agent_session(work, "benchsplit", f"pid:{proc.pid}") as s:
            result, _ = s.command("start", {"seconds": SECONDS, "frequency": 999},
                                  timeout=SECONDS + 60)
    finally:
        proc.kill()
        proc.wait()
    assert result["status"] == "ok", result
    self_time = {r[2]: r[3] for r in pstats_rows(result["files"][0])}
    heavy = self_time["heavy"] / (self_time["heavy"] + self_time["light"])
    print(f"CPU profile at 999 Hz for {SECONDS:.0f} s: heavy {heavy * 100:.1f}% of "
          f"heavy+light self time, known 75.0% -> error {abs(heavy - 0.75) * 100:.1f} "
          f"points (target <= 3); {result['summary']['python_samples']} of "
          f"{result['summary']['samples']} samples in Python code")


def timed(proc, rounds):
    """(wall, CPU) seconds py_split.py (timed) takes for rounds rounds, by its own clocks."""
    proc.stdin.write(f"{rounds}\n")
    proc.stdin.flush()
    line = proc.stdout.readline().split()
    assert line and line[0] == "done", line
    return float(line[1]), float(line[2])


def tachyon_lost(summaries):
    """What Tachyon's summaries say it lost, summed: the samples it missed of those expected at
    its rate, and its worst error rate (failed reads)."""
    def total(pattern, group=1):
        return sum(int(m.group(group)) for m in re.finditer(pattern, "".join(summaries)))

    captured = r"Captured (\d+) samples?"
    missed = r"missed (\d+) samples from the expected total of (\d+)"
    errors = [float(e) for e in re.findall(r"Error rate: ([\d.]+)", "".join(summaries))]
    return (f"{total(captured)} samples, "
            + (f"{total(missed)} missed of {total(missed, 2)} expected in the "
               f"{len(re.findall(missed, ''.join(summaries)))} of {len(summaries)} runs that "
               "said they missed any" if re.search(missed, "".join(summaries))
               else "none reported missed")
            + (f", error rate at most {max(errors):.2f}%" if errors else ""))


def against_tachyon(work, root):
    """py_split.py on 3.15 in root: a fixed amount of work alone, with our start and with Tachyon
    at RATE, in TURNS turns; each profiler attached LEAD seconds before the work starts and
    still running when it ends. A slowdown is the median over turns of the time with a tool
    against the time alone in the same turn (other jobs on the machine come and go), by the wall
    clock and by the target's CPU time (which waiting for a core does not count)."""
    proc = workload(python_cmd("python3.15", root, work, "py_split.py", "20000", "timed"))
    rounds = max(1, round(WORK_SECONDS / timed(proc, 3)[0] * 3))
    span = LEAD + 2 * WORK_SECONDS + 1
    times = {"alone": [], "ours": [], "Tachyon": []}
    ours_samples, ours_lost, summaries = 0, 0, []
    try:
        with agent_session(work, "benchtachyon", f"pid:{proc.pid}") as s, \
                concurrent.futures.ThreadPoolExecutor(1) as pool:
            for _ in range(TURNS):
                times["alone"].append(timed(proc, rounds))
                ours = pool.submit(s.command, "start", {"seconds": span, "frequency": RATE},
                                   timeout=span + 60)
                time.sleep(LEAD)
                times["ours"].append(timed(proc, rounds))
                assert not ours.done(), "our profile ended before the work"
                result, _ = ours.result()
                assert result["status"] == "ok", result
                ours_samples += result["summary"]["samples"]
                ours_lost += result["summary"]["lost"]
                theirs = tachyon(proc.pid, RATE, span, "cpu", "/srv/tachyon.pstats")
                time.sleep(LEAD)
                times["Tachyon"].append(timed(proc, rounds))
                assert theirs.poll() is None, "Tachyon ended before the work"
                summaries.append(theirs.communicate(timeout=span + 60)[0])
        their_top = top_self("/srv/tachyon.pstats",
                             in_target_root(proc.pid, "/usr/bin/python3.15"))
    finally:
        proc.kill()
        proc.wait()

    def slowdown(tool, clock):
        return 100 * (statistics.median(t[clock] / a[clock] for t, a in
                                        zip(times[tool], times["alone"])) - 1)

    alone = statistics.median(t[0] for t in times["alone"])
    print(f"python3.15 py_split.py, {rounds} rounds ({alone:.2f} s alone, median of {TURNS}), "
          f"profiled at {RATE} Hz from {LEAD:.0f} s before until after the work: slowdown "
          f"ours {slowdown('ours', 0):+.1f}% wall / {slowdown('ours', 1):+.1f}% CPU, Tachyon "
          f"{slowdown('Tachyon', 0):+.1f}% wall / {slowdown('Tachyon', 1):+.1f}% CPU "
          f"(wall s: {json.dumps({k: [round(t[0], 2) for t in v] for k, v in times.items()})})")
    print(f"  ours top 5 by self samples (last turn): {top_self(result['files'][0])}; "
          f"{ours_samples} samples, {ours_lost} lost")
    print(f"  Tachyon top 5 by self samples (last turn): {their_top}; {tachyon_lost(summaries)}")


def main():
    work = tempfile.mkdtemp(prefix="bench-python-")
    os.chmod(work, 0o755)
    try:
        root = pyroot()
        frames(work, "python3.11", "")
        if root:
            frames(work, "python3.14", root)
        split(work)
        if root:
            against_tachyon(work, root)
        alternate(work, "python3.11", "")
        for python in ("python3.14", "python3.15"):
            if root:
                alternate(work, python, root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
