"""The stall watch end to end: an event loop (tests/workloads/loop_stall, normally in
epoll_wait) blocks in read() or spins for 5 s; the agent, with stall_seconds = 2, announces it
within stall_seconds + 1 s on P/N/event (retained) with the blocking function, dumps the
threads on P/N/log, and when it ends says how long it lasted and keeps the recorder's profile of
the stall as a run the `runs` action lists: with the recorder in wall mode, a stall blocked in
read() has a profile too, of where it blocked."""
import json
import os
import subprocess
import time

import pytest

from conftest import TIMEOUT, Client, agent_session, running_workload
from test_profile import cumulative_shares, pstats_shares

STALL_S = 2


@pytest.fixture(scope="module")
def loop():
    with running_workload("loop_stall", stdin=subprocess.PIPE) as proc:
        yield proc


@pytest.fixture(scope="module")
def watch(workdir, loop):
    with agent_session(workdir, "stall", "comm:loop_stall",
                       f"stall_seconds = {STALL_S}\nrecorder = on\nrecorder_frequency = 99\n") as s:
        deadline = time.monotonic() + TIMEOUT
        while True:
            result, _ = s.command("ping")
            st = json.loads([m for m in s.client.seen if m.topic == f"{s.prefix}/state"][-1]
                            .payload)
            if st["stall"]["pid"] == loop.pid and st["recorder"].get("pid") == loop.pid:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.2)
        time.sleep(0.5)  # the watch has seen the loop in its wait
        yield s


def event(s, start, kind, timeout):
    m = s.client.wait_for(lambda m: s.client.seen.index(m) >= start and
                          m.topic == f"{s.prefix}/event" and
                          json.loads(m.payload)["event_type"] == kind, timeout)
    return m, json.loads(m.payload)


def stall(s, loop, command):
    """Starts a stall; returns (seconds until announced, the stall event, the log records up
    to it, the end event)."""
    s.client.drain()
    start = len(s.client.seen)
    t0 = time.monotonic()
    loop.stdin.write(command)
    loop.stdin.flush()
    m, begun = event(s, start, "stall", STALL_S + 5)
    announced = time.monotonic() - t0
    logs = [x.payload.decode() for x in s.client.seen[start:] if x.topic == f"{s.prefix}/log"]
    _, ended = event(s, start, "stall_ended", 15)
    assert loop.stdout.readline().strip() == "done"
    return announced, begun, logs, ended


def check_run(s, ended):
    result, _ = s.command("runs", {"limit": 5})
    runs = {r["run_id"]: r for r in result["summary"]["runs"]}
    run = runs[ended["run_id"]]
    assert run["action"] == "stall" and run["status"] == "ok", run
    assert run["target"]["spec"] == "comm:loop_stall"
    return run


def test_a_loop_blocked_in_read_is_announced_with_the_blocking_function(watch, loop):
    announced, begun, logs, ended = stall(watch, loop, "r")
    assert announced <= STALL_S + 1, announced
    assert begun["tid"] == loop.pid and begun["pid"] == loop.pid
    assert begun["state"] == "blocked in read"
    assert begun["in"] == "read_config_slowly", begun
    assert any("read_config_slowly" in f for f in begun["frames"][:4]), begun["frames"]
    assert begun["seconds"] >= STALL_S
    assert begun["run_id"]
    # The dump: the header, then every thread, the stalled one in read_config_slowly.
    header = [r for r in logs if r.startswith("Stall: thread loop_stall")]
    assert header and "blocked in read" in header[0], logs
    dump = [r for r in logs if r.startswith("Thread [loop_stall]")]
    assert dump and "read_config_slowly" in dump[0] and "handle_command" in dump[0], logs
    assert 4.0 <= ended["duration"] <= 7.0, ended
    assert ended["run_id"] == begun["run_id"] and not ended["gone"]
    run = check_run(watch, ended)
    # Blocked, the loop used no CPU: no profile, and the run says why.
    assert run["files"] == []


def test_a_spinning_loop_is_announced_and_its_profile_kept(watch, loop):
    announced, begun, _, ended = stall(watch, loop, "s")
    assert announced <= STALL_S + 1, announced
    assert begun["state"] == "running on a CPU"
    assert begun["in"] == "checksum_forever", begun
    assert 4.0 <= ended["duration"] <= 7.0, ended
    run = check_run(watch, ended)
    assert len(run["files"]) == 3 and all(os.path.exists(f) for f in run["files"])
    assert ended["files"] == run["files"]
    shares = pstats_shares(run["files"][0])["funcs"]
    assert shares.get("checksum_forever", 0) > 0.8, shares
    # Retained: a client that comes later learns of the last stall's end.
    late = Client(watch.broker.port)
    try:
        late.subscribe(f"{watch.prefix}/event")
        m = late.wait_for(lambda m: m.topic == f"{watch.prefix}/event")
        assert m.retain and json.loads(m.payload)["event_type"] == "stall_ended"
        assert json.loads(m.payload)["run_id"] == ended["run_id"]
    finally:
        late.close()


def test_a_loop_that_keeps_coming_back_is_no_stall(watch, loop):
    watch.client.drain()
    start = len(watch.client.seen)
    time.sleep(STALL_S + 2)
    watch.client.drain()
    assert not [m for m in watch.client.seen[start:] if m.topic == f"{watch.prefix}/event"]


def test_a_blocked_stall_has_a_profile_in_wall_mode(watch, loop):
    result, _ = watch.command("recorder", {"enabled": True, "mode": "wall"})
    assert result["status"] == "ok" and result["summary"]["mode"] == "wall", result
    time.sleep(1)
    try:
        _, begun, _, ended = stall(watch, loop, "r")
        assert begun["in"] == "read_config_slowly", begun
        run = check_run(watch, ended)
        assert len(run["files"]) == 3 and all(os.path.exists(f) for f in run["files"]), run
        # The loop's thread blocked in read() in read_config_slowly the whole stall, and the
        # helper that ends it slept as long: each about half of the stall's wall-clock time.
        cum = cumulative_shares(run["files"][0])
        assert cum.get("read_config_slowly", 0) >= 0.4, cum
        assert cum.get("late_writer", 0) >= 0.4, cum
    finally:
        result, _ = watch.command("recorder", {"enabled": True, "mode": "cpu"})
        assert result["status"] == "ok", result
