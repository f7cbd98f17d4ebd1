"""The flight recorder end to end: `recorder = on` samples the target all the time, `start`
with "last" or "from"/"to" answers with the usual files for that window at once (a workload in
phase_a, then phase_b), the ring says how much it covers and in how much memory, recording goes
on across a restart of the target (a comm: spec found again; while it is gone, its last seconds
are still asked for by its spec), and the `recorder` action turns it
off and on. With recorder_mode = wall it also keeps the time threads spend blocked, by where they
blocked: `start {"last": S, "mode": "off"}` splits a sleeper's time as it sleeps (sleep_split: 75%
in sleep_long, 25% in sleep_short), and a ring of on-CPU samples refuses off and wall."""
import datetime
import os
import subprocess
import time

import pytest

from conftest import agent_session, running_workload, sleep_split_share
from test_profile import cumulative_shares, pstats_shares

FREQ = 99  # more samples than the default 19 Hz: shares hold on a busy test machine


def iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def state(s, pred, timeout=15):
    """The next P/N/state (or the last seen) for which pred holds."""
    import json
    deadline = time.monotonic() + timeout
    while True:
        s.client.drain()
        for m in reversed(s.client.seen):
            if m.topic == f"{s.prefix}/state":
                st = json.loads(m.payload)
                if pred(st):
                    return st
                break
        if time.monotonic() > deadline:
            raise TimeoutError("no such state")
        # State goes out on each command's result: a cheap one asks for a fresh one.
        s.command("ping")
        time.sleep(0.3)


def switch_phase(proc, phase):
    proc.stdin.write(phase)
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == f"phase {phase}"


@pytest.fixture(scope="module")
def phases():
    with running_workload("phases", "--threads", "1", stdin=subprocess.PIPE) as proc:
        yield proc


@pytest.fixture(scope="module")
def rec(workdir, phases):
    with agent_session(workdir, "rec", "comm:phases",
                       f"recorder = on\nrecorder_frequency = {FREQ}\n") as s:
        state(s, lambda st: st["recorder"].get("pid") == phases.pid)
        yield s


def test_last_seconds_and_windows_give_that_time(rec, phases):
    t0 = time.time()
    time.sleep(4)
    switch_phase(phases, "b")
    tb = time.time()
    time.sleep(4)
    t1 = time.time()

    result, _ = rec.command("start", {"last": 3})
    assert result["status"] == "ok", result
    assert result["summary"]["method"] == "recorder"
    assert 2.5 <= result["summary"]["seconds"] <= 3.5
    assert result["summary"]["frequency"] == FREQ
    assert len(result["files"]) == 3 and all(os.path.exists(f) for f in result["files"])
    shares = pstats_shares(result["files"][0])["funcs"]
    assert shares.get("phase_b", 0) > 0.8, shares
    assert shares.get("phase_a", 0) < 0.1, shares
    assert result["summary"]["top"][0]["function"] == "phase_b"

    # A window before the switch: phase_a's.
    result, _ = rec.command("start", {"from": iso(t0 + 0.5), "to": iso(tb - 0.5)})
    assert result["status"] == "ok", result
    assert 2.5 <= result["summary"]["seconds"] <= 3.5
    shares = pstats_shares(result["files"][0])["funcs"]
    assert shares.get("phase_a", 0) > 0.8, shares

    # Across the switch: both, in proportion to the time each had.
    result, _ = rec.command("start", {"from": iso(tb - 2), "to": iso(tb + 2)})
    shares = pstats_shares(result["files"][0])["funcs"]
    assert 0.3 < shares.get("phase_a", 0) < 0.7 and 0.3 < shares.get("phase_b", 0) < 0.7, shares

    # The ring covers the time since it started, in a few hundred KiB.
    st = state(rec, lambda st: True)["recorder"]
    assert st["enabled"] and st["target"] == "comm:phases" and st["frequency"] == FREQ
    assert st["seconds"] >= t1 - t0 and st["samples"] > 0 and 0 < st["mb"] < 16
    assert st["error"] is None
    switch_phase(phases, "a")


def test_bad_windows_are_refused(rec):
    for payload, words in [({"last": 601}, "recorder_minutes"),
                           ({"last": 5, "from": iso(time.time() - 5)}, "not both"),
                           ({"to": iso(time.time())}, "to needs from"),
                           ({"from": "2026-13-45T99:00:00Z"}, "ISO 8601"),
                           ({"from": iso(time.time() - 2), "to": iso(time.time() - 3)},
                            "after from"),
                           ({"from": iso(time.time() + 60)}, "future")]:
        result, _ = rec.command("start", payload)
        assert result["status"] == "error" and words in result["error"], (payload, result)
    result, _ = rec.command("start", {"last": 0})
    assert result["status"] == "error" and "last" in result["error"]
    # This ring has on-CPU samples only: no blocked time to give.
    for mode in ("off", "wall"):
        result, _ = rec.command("start", {"last": 2, "mode": mode})
        assert result["status"] == "error", result
        assert f"mode {mode}: the recorder records time on the CPU only" in result["error"]
        assert "recorder_mode = wall" in result["error"], result
    # A window older than the ring reaches: cut, with a warning.
    result, _ = rec.command("start", {"last": 600})
    assert result["status"] == "ok", result
    assert any("holds samples since" in w for w in result["warnings"]), result


def test_recording_goes_on_across_a_restart(rec, phases, workdir):
    covered = state(rec, lambda st: True)["recorder"]["seconds"]
    # The module's workload goes; a new one of the same name comes.
    phases.kill()
    phases.wait()
    # Gone (crashed, say): its last seconds are still in the ring, and still asked for by spec.
    result, _ = rec.command("start", {"last": 3})
    assert result["status"] == "ok", result
    assert any("target comm:phases:" in w and "the recorder's, of before it went" in w
               for w in result.get("warnings", [])), result
    assert pstats_shares(result["files"][0])["funcs"].get("phase_b", 0) > 0.5
    with running_workload("phases", stdin=subprocess.PIPE) as again:
        st = state(rec, lambda st: st["recorder"].get("pid") == again.pid)["recorder"]
        assert st["seconds"] >= covered  # the ring was kept
        switch_phase(again, "b")
        time.sleep(3)
        result, _ = rec.command("start", {"last": 2, "target": "comm:phases"})
        assert result["status"] == "ok", result
        shares = pstats_shares(result["files"][0])["funcs"]
        assert shares.get("phase_b", 0) > 0.8, shares
        # The old process's samples are still there, before the new one's.
        result, _ = rec.command("start", {"last": st["seconds"] + 2})
        assert result["status"] == "ok", result
        shares = pstats_shares(result["files"][0])["funcs"]
        assert shares.get("phase_a", 0) > 0.2 and shares.get("phase_b", 0) > 0.1, shares


def test_the_recorder_action_turns_it_off_and_on(rec):
    with running_workload("phases", stdin=subprocess.PIPE) as again:
        result, _ = rec.command("recorder", {"enabled": False})
        assert result["status"] == "ok" and result["summary"] == {"enabled": False}
        result, _ = rec.command("start", {"last": 1})
        assert result["status"] == "error" and "recorder is off" in result["error"]
        result, _ = rec.command("recorder", {"enabled": False})
        assert result["status"] == "ok" and "recorder was off" in result["warnings"][0]
        result, _ = rec.command("recorder", {"enabled": True})
        assert result["status"] == "ok" and result["summary"]["enabled"]
        assert result["summary"]["target"] == "comm:phases"
        st = state(rec, lambda st: st["recorder"].get("pid") == again.pid)["recorder"]
        assert st["seconds"] < 30  # a new ring


def test_the_recorder_action_chooses_the_mode(rec):
    result, _ = rec.command("recorder", {"enabled": True, "mode": "wall"})
    assert result["status"] == "ok" and result["summary"]["mode"] == "wall", result
    assert any("started over in wall mode" in w for w in result["warnings"]), result
    # Left out: the mode it records already, the ring kept.
    result, _ = rec.command("recorder", {"enabled": True})
    assert result["status"] == "ok" and result["summary"]["mode"] == "wall", result
    assert not result.get("warnings"), result
    assert state(rec, lambda st: True)["recorder"]["mode"] == "wall"
    result, _ = rec.command("recorder", {"enabled": True, "mode": "off"})
    assert result["status"] == "error" and "mode" in result["error"], result
    result, _ = rec.command("recorder", {"enabled": True, "mode": "cpu"})
    assert result["status"] == "ok" and result["summary"]["mode"] == "cpu", result


def test_wall_mode_keeps_where_threads_block(workdir):
    # sleep_split: one thread asleep 30 ms in sleep_long, then 10 ms in sleep_short, over and
    # over: off-CPU time about 75% / 25%, as the program measures it.
    with running_workload("sleep_split") as sleeper, \
            agent_session(workdir, "recwall", "comm:sleep_split",
                          "recorder = on\nrecorder_mode = wall\nrecorder_frequency = 19\n") as s:
        st = state(s, lambda st: st["recorder"].get("pid") == sleeper.pid)["recorder"]
        assert st["mode"] == "wall"
        time.sleep(6)
        result, _ = s.command("start", {"last": 5, "mode": "off"})
        assert result["status"] == "ok", result
        summary = result["summary"]
        assert summary["mode"] == "off" and summary["method"] == "recorder", summary
        assert 4.5 <= summary["seconds"] <= 5.5
        # Asleep all but a sliver of the 5 s, counted as samples of the rate would.
        states = summary["states"]
        assert states["gil"] == 0 and states["syscall"] >= 0.9 * 5 * 19, states
        cum = cumulative_shares(result["files"][0])
        own = sleep_split_share(sleeper)
        assert abs(cum.get("sleep_long", 0) - own) <= 0.03, (own, cum)
        assert abs(cum.get("sleep_short", 0) - (1 - own)) <= 0.03, (own, cum)

        # Wall: the same, and the little time on the CPU. On a loaded machine that little grows
        # (woken, the thread waits for a CPU, and its work takes longer), so 6 points here; the
        # off-CPU split above is the 3.
        result, _ = s.command("start", {"last": 5, "mode": "wall"})
        assert result["status"] == "ok" and result["summary"]["mode"] == "wall", result
        cum = cumulative_shares(result["files"][0])
        assert abs(cum.get("sleep_long", 0) - own) <= 0.06, (own, cum)
        st = state(s, lambda st: True)["recorder"]
        assert st["stretches"] > 0 and st["samples"] >= st["stretches"], st


def test_off_by_default_and_a_target_not_yet_running(workdir):
    with agent_session(workdir, "recoff", "comm:no_such_thing_x") as s:
        assert state(s, lambda st: True)["recorder"] == {"enabled": False}
        result, _ = s.command("recorder", {"enabled": True})
        assert result["status"] == "ok", result
        st = state(s, lambda st: st["recorder"].get("error"))["recorder"]
        assert "waiting for target comm:no_such_thing_x" in st["error"] and st["pid"] is None


def test_python_frames_where_the_target_is_python(workdir):
    script = os.path.join(os.path.dirname(__file__), "..", "workloads", "py_split.py")
    p = subprocess.Popen(["/usr/bin/python3", script], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        with agent_session(workdir, "recpy", f"pid:{p.pid}",
                           f"recorder = on\nrecorder_frequency = {FREQ}\n") as s:
            state(s, lambda st: st["recorder"].get("pid") == p.pid)
            time.sleep(4)
            result, _ = s.command("start", {"last": 3})
            assert result["status"] == "ok", result
            shares = pstats_shares(result["files"][0])["funcs"]
            assert abs(shares.get("heavy", 0) - 0.75) < 0.1, shares
            assert abs(shares.get("light", 0) - 0.25) < 0.1, shares
    finally:
        p.kill()
        p.wait()
