"""Python-level stacks of a CPython 3.11 target (Debian's /usr/bin/python3) through a real broker:
log_thread_frames shows the Python functions, files and lines where the interpreter's own frames
were, in traceback order."""
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
