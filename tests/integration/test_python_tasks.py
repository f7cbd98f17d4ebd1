"""asyncio tasks of a Python target through a real broker: log_current_tasks reads them from outside
and is compared, on the same target in the same test, with CPython's own out-of-process reader
(`python3.X -m asyncio ps PID`, run in the Debian root the target runs in) and with what the
target says of itself (repr of every task of asyncio.all_tasks()), also with the target in a PID
namespace of its own and the agent outside. On 3.11 the result says, as a warning, why the tasks
cannot be read."""
import json
import os
import re
import subprocess

import pytest

from conftest import agent_session
from test_python import IN_PID_NAMESPACE, ns_child

HERE = os.path.dirname(__file__)
WORKLOADS = os.path.realpath(os.path.join(HERE, "..", "workloads"))
TASKS = os.path.join(WORKLOADS, "py_tasks.py")
ALL = 1 + 5 + 5 * 8 + 1  # main, branches, leaves and the reporter (py_tasks.py's defaults)


def pyroot(python):
    """The Debian root with python (tests/pyroot.sh), or a skip saying why not."""
    try:
        p = subprocess.run(["sh", os.path.join(HERE, "..", "pyroot.sh")], capture_output=True,
                           text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("tests/pyroot.sh took more than 60 s (it needs network the first time)")
    root = p.stdout.strip().splitlines()[-1] if p.returncode == 0 and p.stdout.strip() else ""
    if not root or not os.access(os.path.join(root, "usr/bin", python), os.X_OK):
        pytest.skip(f"no Debian root with {python}: tests/pyroot.sh said {p.stderr.strip()!r}")
    if os.geteuid() != 0:
        pytest.skip("running a target under chroot needs root")
    return root


def start(cmd):
    """Starts py_tasks.py by cmd; returns (process, its pid as it sees it, its own task list)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = proc.stdout.readline().split()
    if len(ready) != 2 or ready[0] != "ready":
        proc.kill()
        raise AssertionError(f"py_tasks.py did not start: {ready} {proc.stderr.read()}")
    line = proc.stdout.readline()
    assert line.startswith("tasks "), line
    return proc, int(ready[1]), json.loads(line[len("tasks "):])


@pytest.fixture
def in_root(request):
    """py_tasks.py under `chroot ROOT python3.X`, in a private mount namespace that has /proc
    and the workloads (at /mnt) mounted in the root, so that `asyncio ps` can run there too; in a
    PID namespace of its own for "python3.X-pidns". Yields (python, pid here, pid in its own
    PID namespace, its own task list)."""
    python, _, pidns = request.param.partition("-")
    root = pyroot(python)
    script = ('mount -t proc proc "$1/proc" && mount --bind "$2" "$1/mnt" && '
              'exec chroot "$1" "$3" /mnt/py_tasks.py')
    proc, own_pid, own = start([*(IN_PID_NAMESPACE if pidns else []), "unshare", "-m",
                                "--propagation", "private", "sh", "-c", script, "sh", root,
                                WORKLOADS, python])
    try:
        yield python, ns_child(proc.pid) if pidns else own_pid, own_pid, own
    finally:
        proc.kill()
        proc.wait()


def asyncio_ps(python, pid, own_pid):
    """The rows of `python -m asyncio ps PID`, run in the target's own root, mount and PID
    namespaces (where it is own_pid):
    (task id, task name, coroutine stack, awaiter chain, awaiter name, awaiter id). Its columns
    are left-aligned to fixed widths (Lib/asyncio/tools.py), which the names here fit."""
    p = subprocess.run(["nsenter", "-t", str(pid), "-m", "-r", "-p", python, "-m", "asyncio",
                        "ps", str(own_pid)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("tid") and set(lines[1]) == {"-"}, p.stdout
    cols = [(0, 10), (11, 31), (32, 52), (53, 103), (104, 154), (155, 170), (171, None)]
    rows = []
    for line in lines[2:]:
        assert all(line[b - 1] == " " for b, _ in cols[1:]), line
        f = [line[a:b].strip() for a, b in cols]
        rows.append((int(f[1], 16), f[2], f[3], f[4], f[5], int(f[6], 16)))
    return rows


def parse_records(records):
    """Our task records: {task id: (name, repr, coroutine stack, {(awaiter id, name, chain)})},
    with stacks as asyncio ps writes them (function names, innermost first)."""
    def funcs(stack):
        return " -> ".join(e.split(" ")[0] for e in stack.split(" -> ")) if stack else ""

    tasks = {}
    for rec in records:
        lines = rec.split("\n")
        assert lines[0].startswith("Task: <Task "), rec
        repr_ = lines[0][len("Task: "):]
        name = re.match(r"<Task \w+ name='([^']*)'", repr_).group(1)
        tid = int(re.fullmatch(r"  task id: (0x[0-9a-f]+), thread \d+", lines[1]).group(1), 16)
        assert lines[2].startswith("  coroutine stack: "), rec
        stack = funcs(lines[2][len("  coroutine stack: "):])
        awaiters = set()
        for line in lines[3:]:
            m = re.fullmatch(r"  awaited by: '([^']*)' \((0x[0-9a-f]+)\)(?: at (.*))?", line)
            assert m, line
            awaiters.add((int(m.group(2), 16), m.group(1), funcs(m.group(3) or "")))
        tasks[tid] = (name, repr_, stack, awaiters)
    return tasks


@pytest.mark.parametrize("in_root", ["python3.14", "python3.15", "python3.14-pidns"],
                         indirect=True)
def test_tasks_match_asyncio_ps(workdir, in_root):
    python, pid, own_pid, own = in_root
    with agent_session(workdir, "pytasks", f"pid:{pid}") as s:
        result, records = s.command("log_current_tasks")
    assert result["status"] == "ok", result
    assert "warnings" not in result, result["warnings"]
    sm = result["summary"]
    assert sm["python"] == own["version"] and sm["tasks"] == ALL, sm
    assert any("log_current_tasks" in j and "(this command)" in j for j in sm["agent_jobs"]), sm
    ours = parse_records(records)
    assert len(ours) == ALL

    # Every task asyncio ps lists, with the same name, coroutine stack and awaiters.
    ps = asyncio_ps(python, pid, own_pid)
    want = {}
    for task, name, stack, chain, awaiter_name, awaiter in ps:
        w = want.setdefault(task, (name, stack, set()))
        assert w[:2] == (name, stack)
        if awaiter:
            w[2].add((awaiter, awaiter_name, chain))
    got = {task: (name, stack, awaiters) for task, (name, _, stack, awaiters) in ours.items()}
    assert got == want
    leaves = [t for t in got.values() if t[0].startswith("leaf-")]
    assert len(leaves) == 40 and all(t[1] == "sleep -> nap -> leaf" for t in leaves), leaves

    # repr(task) as the target itself wrote it, for every task that has not moved since (all but
    # the reporter, which printed them).
    by_name = {name: repr_ for name, repr_, _, _ in ours.values()}
    theirs = {t["name"]: t["repr"] for t in own["tasks"]}
    assert set(theirs) == set(by_name) - {"reporter"}
    for name, repr_ in theirs.items():
        assert by_name[name] == repr_, name


def test_python_311_says_why_not(workdir):
    proc, pid, own = start(["/usr/bin/python3", TASKS])
    try:
        assert own["version"].startswith("3.11."), own
        with agent_session(workdir, "pytasks311", f"pid:{pid}", "python_exec = off\n") as s:
            result, records = s.command("log_current_tasks")
    finally:
        proc.kill()
        proc.wait()
    assert result["status"] == "ok", result
    assert result["warnings"] == [
        f"asyncio tasks of Python {own['version']} cannot be read from outside: before 3.14, "
        "_asyncio publishes no offsets of its Task objects, and keeps its tasks in weak sets "
        "only code inside the process can walk"], result
    # Nothing about the target's tasks is made up: no records, none counted.
    assert records == [] and result["summary"]["tasks"] == 0, (records, result["summary"])
    assert result["summary"]["python"] == own["version"]
    assert any("(this command)" in j for j in result["summary"]["agent_jobs"])
