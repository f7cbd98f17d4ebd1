"""The ring of a finished `memory` run (about 25 MiB of the target's /dev/shm, unlinked) leaves the
target: still mapped right after the result, so that another run soon after replaces it without a
call into the target of its own, and unmapped by a short call into the target once the grace
period (10 s) passed with no run, or as soon as the agent stops. The target runs on unharmed
throughout, and a target that is stopped or gone is left alone."""
import os
import re
import signal
import time

import pytest

from conftest import agent_session, running_workload
from test_memory import malloc_binding, stop_and_check

GRACE_S = 10
RING = "profiler-agent-ring"
UNMAPPED = re.compile(r"INFO memory: unmapped the [\d.]+ MiB ring the last allocation profile "
                      r"left in process (\d+) ")


def rings(pid):
    """{path: bytes} of the rings mapped in pid."""
    out = {}
    for line in open(f"/proc/{pid}/maps"):
        f = line.split(maxsplit=5)
        if len(f) == 6 and RING in f[5]:
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            path = f[5].strip()
            out[path] = out.get(path, 0) + hi - lo
    return out


def wait_unmapped(pid, timeout):
    deadline = time.monotonic() + timeout
    while rings(pid):
        assert time.monotonic() < deadline, f"ring still mapped after {timeout} s: {rings(pid)}"
        time.sleep(0.25)


def profile(s, seconds=1):
    result, _ = s.command("memory", {"seconds": seconds}, timeout=60)
    assert result["status"] == "ok", result
    assert result["summary"]["method"] == "inject", result
    assert result["summary"]["allocations"] > 1000, result["summary"]
    return result


def released(s, pid):
    return [m for m in UNMAPPED.finditer(s.agent.log_text()) if int(m.group(1)) == pid]


@pytest.fixture
def allocs():
    with running_workload("allocs") as proc:
        yield proc


def test_ring_is_unmapped_after_the_grace_period(workdir, allocs):
    before = malloc_binding(allocs.pid)
    assert not rings(allocs.pid)
    with agent_session(workdir, "rel", f"pid:{allocs.pid}") as s:
        profile(s)
        mapped = rings(allocs.pid)
        assert len(mapped) == 1 and sum(mapped.values()) > 20 << 20, mapped
        assert all(p.endswith(" (deleted)") for p in mapped), mapped
        assert not released(s, allocs.pid)
        wait_unmapped(allocs.pid, GRACE_S + 20)
        assert allocs.poll() is None
        assert len(released(s, allocs.pid)) == 1, s.agent.log_text()[-2000:]
        # The hook library stays, inert: the GOT is libc's, and a later run reuses it.
        assert malloc_binding(allocs.pid) == before
        again = profile(s)
        assert not again.get("warnings"), again
        assert len(rings(allocs.pid)) == 1
        assert "WARNING memory:" not in s.agent.log_text(), s.agent.log_text()[-2000:]
    assert stop_and_check(allocs) > 0


def test_second_run_within_the_grace_period_replaces_the_ring(workdir, allocs):
    with agent_session(workdir, "relr", f"pid:{allocs.pid}") as s:
        profile(s)
        first = rings(allocs.pid)
        assert len(first) == 1, first
        second = profile(s)
        assert not second.get("warnings"), second
        # The second run's hooks replaced the first ring: one ring, a new file, no call of
        # their own to unmap the first.
        now = rings(allocs.pid)
        assert len(now) == 1 and set(now) != set(first), (first, now)
        assert not released(s, allocs.pid)
        wait_unmapped(allocs.pid, GRACE_S + 20)
        assert len(released(s, allocs.pid)) == 1, s.agent.log_text()[-2000:]
        assert allocs.poll() is None
    assert stop_and_check(allocs) > 0


@pytest.mark.parametrize("workload", ["allocs", "allocs_musl"])
def test_agent_stop_in_the_grace_period_unmaps_at_once(workdir, workload):
    with running_workload(workload) as proc:
        before = malloc_binding(proc.pid)
        with agent_session(workdir, f"rels{workload[-4:]}", f"pid:{proc.pid}") as s:
            profile(s)
            assert rings(proc.pid)
            s.agent.stop()
            assert not rings(proc.pid), rings(proc.pid)
            assert len(released(s, proc.pid)) == 1, s.agent.log_text()[-2000:]
        assert malloc_binding(proc.pid) == before
        assert stop_and_check(proc) > 0


def test_stopped_target_keeps_its_ring_and_says_why(workdir, allocs):
    """A stopped thread may be inside a hook still: the ring is left where it is, with a warning,
    and the target goes on when continued."""
    with agent_session(workdir, "relt", f"pid:{allocs.pid}") as s:
        profile(s)
        os.kill(allocs.pid, signal.SIGSTOP)
        try:
            s.agent.stop()
            assert rings(allocs.pid)
        finally:
            os.kill(allocs.pid, signal.SIGCONT)
        log = s.agent.log_text()
        assert not released(s, allocs.pid)
        assert re.search(rf"WARNING memory: the shared ring of the last allocation profile stays "
                         rf"mapped in process {allocs.pid} \(allocs\) until its next profile or "
                         rf"its exit: thread \d+ of the target is stopped", log), log[-2000:]
    assert stop_and_check(allocs) > 0


def test_thread_in_uninterruptible_sleep_keeps_the_ring(workdir):
    """stuck_vfork's second thread waits in vfork(), in state D for good: it might as well be
    waiting inside a hook, so the ring stays, with a warning that says which thread."""
    with running_workload("stuck_vfork") as proc, \
            agent_session(workdir, "reld", f"pid:{proc.pid}") as s:
        result, _ = s.command("memory", {"seconds": 1}, timeout=60)
        assert result["status"] == "ok" and result["summary"]["method"] == "inject", result
        assert rings(proc.pid)
        s.agent.stop()
        assert rings(proc.pid)
        log = s.agent.log_text()
        assert re.search(rf"WARNING memory: the shared ring .* stays mapped in process {proc.pid} "
                         r".*: thread \d+ of the target is in uninterruptible sleep", log), \
            log[-2000:]
        assert proc.poll() is None


def test_target_gone_in_the_grace_period_is_left_alone(workdir):
    with running_workload("allocs") as proc, \
            agent_session(workdir, "relg", f"pid:{proc.pid}", "log_level = debug\n") as s:
        profile(s)
        stop_and_check(proc)
        s.agent.stop()
        log = s.agent.log_text()
        assert f"memory: process {proc.pid} (allocs) is gone or was replaced" in log, log[-2000:]
        assert "WARNING memory:" not in log, log[-2000:]
