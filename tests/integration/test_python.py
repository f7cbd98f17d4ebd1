"""Python-level stacks of a CPython target through a real broker: log_thread_frames shows the Python
functions, files and lines where the interpreter's own frames were, in traceback order, and start
charges samples to them. Each runs on Debian's /usr/bin/python3 (3.11) and on a 3.14 under chroot,
each also in a PID namespace of its own with the agent outside (as Home Assistant OS runs Home
Assistant); a 3.10 gets native frames and a warning saying why."""
import glob
import json
import os
import re
import subprocess

import pytest

from conftest import agent_session

WORKLOADS = os.path.join(os.path.dirname(__file__), "..", "workloads")
PARKED = os.path.realpath(os.path.join(WORKLOADS, "py_parked.py"))


def marker_line(path, marker):
    with open(path) as f:
        for no, line in enumerate(f, 1):
            if line.rstrip().endswith(f"# {marker}"):
                return no
    raise KeyError(marker)


ALTERNATE = os.path.join(WORKLOADS, "py_alternate.py")
GENEXPR = os.path.join(WORKLOADS, "py_genexpr.py")
# Debian's 3.11, and a 3.14 from tests/pyroot.sh's root, stripped (its eval loop has no name);
# each also in a PID namespace of its own ("-pidns"), the agent outside it, as Home Assistant OS
# runs Home Assistant: the target's thread states carry the namespace's thread ids.
PYTHONS = ["python3.11", "python3.14", "python3.11-pidns", "python3.14-pidns"]
# Shares are compared with the program's own timing of each phase; a loaded 2-core machine
# keeps them within this many points.
TOLERANCE = 0.05
NATIVE_ENTRY = ("_start", "__libc_start_main", "Py_BytesMain", "Py_RunMain")
IN_PID_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc"]


def debian_root():
    """tests/pyroot.sh's root with python3.14 and root to chroot into it, or a skip."""
    if os.geteuid() != 0:
        pytest.skip("running a target under chroot needs root")
    p = subprocess.run(["sh", os.path.join(WORKLOADS, "..", "pyroot.sh")], capture_output=True,
                       text=True, timeout=600)
    root = p.stdout.strip().splitlines()[-1] if p.returncode == 0 and p.stdout.strip() else ""
    if not root or not os.access(os.path.join(root, "usr/bin/python3.14"), os.X_OK):
        pytest.skip(f"no Debian root with python3.14: {p.stderr.strip()!r}")
    return root


def python_cmd(python, script, *args):
    """How to run a workload on python (one of PYTHONS): Debian's own, or under chroot with the
    workloads bind-mounted at /mnt in a private mount namespace (the root is left as it is);
    either in a PID namespace of its own when python ends in "-pidns"."""
    version, _, pidns = python.partition("-")
    if pidns and os.geteuid() != 0:
        pytest.skip("running a target in a PID namespace needs root")
    ns = IN_PID_NAMESPACE if pidns else []
    if version == "python3.11":
        return [*ns, "/usr/bin/python3", script, *args]
    root = debian_root()
    return [*ns, "unshare", "-m", "--propagation", "private", "sh", "-c",
            'root=$1 dir=$2; shift 2; mount --bind "$dir" "$root/mnt" && exec chroot "$root" "$@"',
            "sh", root, WORKLOADS, f"/usr/bin/{version}", script_path(python, script), *args]


def script_path(python, script):
    """script's path as the target running on python sees it."""
    return script if python.startswith("python3.11") else os.path.join("/mnt",
                                                                        os.path.basename(script))


def spawn(cmd):
    """Runs cmd until its "ready" line. proc.target is the pid of the Python it runs as seen
    from here: in a PID namespace, unshare's child (sh, then chroot, exec themselves into it)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise AssertionError(f"{cmd} did not start: {line!r}")
    proc.target = ns_child(proc.pid) if cmd[:len(IN_PID_NAMESPACE)] == IN_PID_NAMESPACE \
        else proc.pid
    return proc


def ns_child(pid):
    """The only child of `unshare --fork` pid: the first process of its PID namespace."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = f.read().split()
    assert len(children) == 1, children
    return int(children[0])


def host_tids(pid):
    """{thread id in pid's own PID namespace: thread id here} of pid's threads (NSpid)."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as f:
            ids = next(line for line in f if line.startswith("NSpid:")).split()[1:]
        out[int(ids[-1])] = int(ids[0])
    return out


@pytest.fixture
def parked(request):
    """py_parked.py on request.param (one of PYTHONS), past its "ready" line: proc.target is its
    pid as the agent sees it, proc.script its path as the target sees it, and proc.tids its
    threads' ids by name as the agent sees them (host ids when in a PID namespace)."""
    proc = spawn(python_cmd(request.param, PARKED))
    try:
        proc.script = script_path(request.param, PARKED)
        own = dict(kv.split("=") for kv in proc.stdout.readline().split()[1:])
        host = host_tids(proc.target)
        proc.tids = {name: host[int(tid)] for name, tid in own.items()}
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("parked", PYTHONS, indirect=True)
def test_thread_frames_show_python_functions(workdir, parked):
    with agent_session(workdir, "py", f"pid:{parked.target}") as s:
        result, records = s.command("log_thread_frames")
    assert result["status"] == "ok", result
    assert re.fullmatch(r"3\.1[14]\.\d+", result["summary"]["python"]), result["summary"]
    assert result["summary"]["python_frames"] > 10
    by_tid = {int(re.match(r"Thread \[.*\]: tid=(\d+)", r).group(1)): r for r in records}
    # Threads are named as threading names them (the main thread too), not by their comm.
    for name, tid in parked.tids.items():
        want = "MainThread" if name == "main" else name
        assert by_tid[tid].startswith(f"Thread [{want}]: tid={tid}\n"), by_tid[tid][:80]

    script = parked.script
    sleeper = by_tid[parked.tids["sleeper"]].splitlines()
    want = [f'  File "{script}", line {marker_line(PARKED, "@sleep")}, in sleeper_inner']
    assert want[0] in sleeper, "\n".join(sleeper)
    # Outermost first: the thread's bootstrap, then sleeper_outer, then sleeper_inner, and the
    # native frames of time.sleep below them.
    names = [re.search(r"in (\S+)", line).group(1) for line in sleeper[1:]]
    assert names.index("Thread._bootstrap") < names.index("sleeper_outer") < \
        names.index("sleeper_inner") < names.index("clock_nanosleep"), names
    waiter = by_tid[parked.tids["waiter"]]
    assert f'line {marker_line(PARKED, "@acquire")}, in waiter_inner' in waiter
    # Every eval loop frame of a thread was replaced by the Python frames it runs.
    for text in records:
        if f'File "{script}"' in text:
            assert "_PyEval_EvalFrameDefault" not in text, text
    # Python frames carry no [module+offset] suffix, native ones do.
    assert all(line.endswith("]") for line in sleeper[1:] if "python3.11+" in line)
    assert not [line for line in sleeper if "sleeper_inner" in line and "[" in line]


def test_unsupported_python_gives_native_frames_and_says_why(workdir):
    # pyenv's 3.10: its frames (before 3.11's _PyInterpreterFrame) are not read. Both actions
    # still answer, with native frames only and a warning naming the version and why.
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(os.path.join(pyenv, "versions", "3.10.*", "bin", "python3.10")))
    if not found:
        pytest.skip(f"no Python 3.10 in pyenv ({pyenv}/versions/3.10.*)")
    proc = spawn([found[-1], PARKED])
    try:
        with agent_session(workdir, "py310", f"pid:{proc.target}") as s:
            frames, records = s.command("log_thread_frames")
            profile, _ = s.command("start", {"seconds": 1, "frequency": 99}, timeout=60)
    finally:
        proc.kill()
        proc.wait()
    why = "Python 3.10 is older than 3.11, the oldest whose frames can be read"
    for result in (frames, profile):
        assert result["status"] == "ok", result
        assert [w for w in result.get("warnings", []) if why in w], result
    assert "python_frames" not in frames["summary"], frames["summary"]
    text = "\n".join(records)
    assert "_PyEval_EvalFrameDefault" in text and "sleeper_inner" not in text
    assert profile["summary"]["python_samples"] == 0 and profile["files"], profile["summary"]


def test_non_python_target_has_no_python_summary(session):
    result, _ = session.command("log_thread_frames")
    assert result["status"] == "ok" and "python" not in result["summary"]


def profile_of(workdir, python, script, node, payload):
    """The result of `start` with payload on SCRIPT run by python, the target then killed."""
    proc = spawn(python_cmd(python, script))
    try:
        with agent_session(workdir, node, f"pid:{proc.target}") as s:
            result, _ = s.command("start", payload, timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert result["status"] == "ok", result
    return result


@pytest.mark.parametrize("python", PYTHONS)
def test_cpu_profile_attributes_samples_to_python_functions(workdir, python):
    split = os.path.realpath(os.path.join(WORKLOADS, "py_split.py"))
    result = profile_of(workdir, python, split, "pyprof", {"seconds": 3, "frequency": 499})
    sm = result["summary"]
    assert sm["python"].startswith(python[len("python"):].split("-")[0] + "."), sm
    assert sm["python_samples"] > 0.9 * sm["samples"], sm
    script = r"""
import json, pstats, sys
st = pstats.Stats(sys.argv[1])
tot = sum(v[2] for v in st.stats.values())
out = {}
for (f, line, name), v in st.stats.items():
    if f.endswith("py_split.py"):
        out[name] = [line, v[2] / tot, v[3] / tot]
print(json.dumps(out))
"""
    p = subprocess.run(["/usr/bin/python3", "-c", script, result["files"][0]],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    funcs = json.loads(p.stdout)
    # Keys are (file, first line, function) as cProfile writes them, so SnakeViz shows Python.
    assert funcs["heavy"][0] == marker_def(split, "heavy"), funcs
    # Self time of heavy : light is 3 : 1 by construction; both run under main's loop.
    share = funcs["heavy"][1] / (funcs["heavy"][1] + funcs["light"][1])
    assert abs(share - 0.75) < 0.05, funcs
    assert funcs["main"][2] > 0.9, funcs


def marker_def(path, name):
    with open(path) as f:
        for no, line in enumerate(f, 1):
            if line.startswith(f"def {name}("):
                return no
    raise KeyError(name)


# ---- Python and native stacks of one moment, and wall-clock profiles ----

def profile_alternate(workdir, python, mode, payload, unit="0.1"):
    """A profile of py_alternate.py MODE next to the program's own timing of the same stretch:
    (result, {function: (self, cumulative) share}, its own {"cpu": ..., "wall": ...})."""
    proc = spawn(python_cmd(python, ALTERNATE, mode, unit))
    try:
        with agent_session(workdir, f"alt{mode}", f"pid:{proc.target}") as s:
            proc.stdin.write("reset\n")
            proc.stdin.flush()
            result, _ = s.command("start", payload, timeout=60)
            proc.stdin.write("report\n")
            proc.stdin.flush()
            own = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    assert result["status"] == "ok", result
    return result, python_shares(result["files"][0], "py_alternate.py"), own


def python_shares(path, source):
    """{function: [self share, cumulative share]} of the functions of source, and the Python
    callers of the native program entry frames ("entry callers": none when merged right)."""
    script = r"""
import json, pstats, sys
st = pstats.Stats(sys.argv[1])
tot = sum(v[2] for v in st.stats.values())
out, bad = {}, 0
for (f, line, name), v in st.stats.items():
    if f.endswith(sys.argv[2]):
        out.setdefault(name, [0, 0])
        out[name][0] += v[2] / tot
        out[name][1] += v[3] / tot
    if name in sys.argv[3:] and not f.endswith(".py"):
        bad += sum(c[3] for k, c in v[4].items() if k[0].endswith(".py"))
out["entry callers"] = [bad / tot, bad / tot]
print(json.dumps(out))
"""
    p = subprocess.run(["/usr/bin/python3", "-c", script, path, source, *NATIVE_ENTRY],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def split(shares, own, a, b):
    """a's share of a + b in the profile (cumulative) and by the program's own clock."""
    sa, sb = shares.get(a, [0, 0])[1], shares.get(b, [0, 0])[1]
    got = sa / (sa + sb)
    want = own[a] / (own[a] + own[b])
    return got, want


@pytest.mark.parametrize("python", PYTHONS)
def test_cpu_profile_python_and_native_of_one_moment(workdir, python):
    # A pure-Python loop and sha256 (C) in 0.1 ms turns: a Python stack read even a moment after
    # the sample would charge hashing to the loop.
    result, shares, own = profile_alternate(workdir, python, "hash",
                                            {"seconds": 3, "frequency": 999})
    sm = result["summary"]
    assert sm["method"] == "perf_event" and sm["mode"] == "cpu", sm
    assert sm["python_samples"] > 0.9 * sm["samples"], sm
    assert sm["python_unpaired"] <= 0.02 * sm["samples"], sm
    got, want = split(shares, own["cpu"], "hash_data", "py_loop")
    assert abs(got - want) < TOLERANCE, (got, want, shares)
    assert shares["entry callers"][0] == 0, shares

    result, shares, own = profile_alternate(workdir, python, "py",
                                            {"seconds": 3, "frequency": 999})
    got, want = split(shares, own["cpu"], "a", "b")
    assert abs(got - want) < TOLERANCE, (got, want, shares)


@pytest.mark.parametrize("python", PYTHONS)
def test_python_run_by_a_c_builtin_stays_in_place(workdir, python):
    # sum(genexpr) and " ".join(genexpr): each run of Python frames at the eval-loop call that
    # runs it, the C builtin between; never Python frames above the program's entry point.
    result = profile_of(workdir, python, GENEXPR, "genexpr", {"seconds": 2, "frequency": 999})
    shares = python_shares(result["files"][0], "py_genexpr.py")
    assert shares["entry callers"][0] == 0, shares
    script = r"""
import json, pstats, sys
st = pstats.Stats(sys.argv[1])
print(json.dumps(sorted({k[2] for (f, l, n), v in st.stats.items() if n == "is_prime"
                         for k in v[4]})))
"""
    p = subprocess.run(["/usr/bin/python3", "-c", script, result["files"][0]],
                       capture_output=True, text=True)
    assert json.loads(p.stdout) == ["primes.<locals>.<genexpr>"], p.stdout


@pytest.mark.parametrize("python", PYTHONS)
def test_wall_profile_counts_waiting(workdir, python):
    # busy() 3 units, pause() (time.sleep) 1 unit: wall mode shares are of time, sleep included,
    # against the program's own wall clock; cpu mode hardly sees the pause.
    result, shares, own = profile_alternate(workdir, python, "sleep",
                                            {"seconds": 3, "frequency": 499, "mode": "wall"},
                                            unit="1")
    sm = result["summary"]
    assert sm["mode"] == "wall" and sm["states"]["running"] > 0, sm
    assert sm["states"]["syscall"] > 0, sm
    got, want = split(shares, own["wall"], "busy", "pause")
    assert abs(got - want) < TOLERANCE, (got, want, shares)

    result, shares, own = profile_alternate(workdir, python, "sleep",
                                            {"seconds": 2, "frequency": 499}, unit="1")
    assert "states" not in result["summary"]
    got, _ = split(shares, own["cpu"], "busy", "pause")
    assert got > 0.9, shares


@pytest.mark.parametrize("python", PYTHONS)
def test_wall_profile_sees_threads_waiting_for_the_gil(workdir, python):
    result, shares, own = profile_alternate(workdir, python, "gil",
                                            {"seconds": 2, "frequency": 499, "mode": "wall"})
    states = result["summary"]["states"]
    # Two threads in pure Python: one runs, the other waits for the GIL, turn by turn.
    assert states["gil"] > 0.2 * states["running"], states
