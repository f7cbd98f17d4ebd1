"""Python-level stacks of a CPython 3.11 target (Debian's /usr/bin/python3) through a real broker:
log_thread_frames shows the Python functions, files and lines where the interpreter's own frames
were, in traceback order."""
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


@pytest.fixture
def parked():
    proc = subprocess.Popen(["/usr/bin/python3", PARKED], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.tids = dict(kv.split("=") for kv in proc.stdout.readline().split()[1:])
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_thread_frames_show_python_functions(workdir, parked):
    with agent_session(workdir, "py", f"pid:{parked.pid}") as s:
        result, records = s.command("log_thread_frames")
    assert result["status"] == "ok", result
    assert re.fullmatch(r"3\.11\.\d+", result["summary"]["python"]), result["summary"]
    assert result["summary"]["python_frames"] > 10
    by_tid = {int(re.match(r"Thread \[.*\]: tid=(\d+)", r).group(1)): r for r in records}

    sleeper = by_tid[int(parked.tids["sleeper"])].splitlines()
    want = [f'  File "{PARKED}", line {marker_line(PARKED, "@sleep")}, in sleeper_inner']
    assert want[0] in sleeper, "\n".join(sleeper)
    # Outermost first: the thread's bootstrap, then sleeper_outer, then sleeper_inner, and the
    # native frames of time.sleep below them.
    names = [re.search(r"in (\S+)", line).group(1) for line in sleeper[1:]]
    assert names.index("Thread._bootstrap") < names.index("sleeper_outer") < \
        names.index("sleeper_inner") < names.index("clock_nanosleep"), names
    waiter = by_tid[int(parked.tids["waiter"])]
    assert f'line {marker_line(PARKED, "@acquire")}, in waiter_inner' in waiter
    # Every eval loop frame of a thread was replaced by the Python frames it runs.
    for text in records:
        if f'File "{PARKED}"' in text:
            assert "_PyEval_EvalFrameDefault" not in text, text
    # Python frames carry no [module+offset] suffix, native ones do.
    assert all(line.endswith("]") for line in sleeper[1:] if "python3.11+" in line)
    assert not [line for line in sleeper if "sleeper_inner" in line and "[" in line]


def test_non_python_target_has_no_python_summary(session):
    result, _ = session.command("log_thread_frames")
    assert result["status"] == "ok" and "python" not in result["summary"]


def test_cpu_profile_attributes_samples_to_python_functions(workdir):
    split = os.path.realpath(os.path.join(WORKLOADS, "py_split.py"))
    proc = subprocess.Popen(["/usr/bin/python3", split], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with agent_session(workdir, "pyprof", f"pid:{proc.pid}") as s:
            result, _ = s.command("start", {"seconds": 3, "frequency": 499}, timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert result["status"] == "ok", result
    sm = result["summary"]
    assert sm["python"].startswith("3.11.") and sm["python_samples"] > 0.9 * sm["samples"], sm
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
