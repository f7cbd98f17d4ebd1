"""Limits through a real broker: max_jobs, rate_limit, retention of old runs and files at start
(retention_days, retention_max_bytes), and the modes of output_dir and of result files."""
import datetime
import json
import os
import sqlite3
import stat
import subprocess
import tempfile
import time

from conftest import AGENT, ROOT_FLAGS, agent_session, running_workload


def iso(us):
    t = datetime.datetime.fromtimestamp(us / 1e6, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def test_max_jobs(workdir):
    with running_workload("cpu_split") as a, running_workload("cpu_split") as b, \
            running_workload("cpu_split") as c, \
            agent_session(workdir, "jobs", f"pid:{a.pid}",
                          f"max_jobs = 2\nallowed_targets = pid:{b.pid}, pid:{c.pid}\n") as s:
        for rid, t in (("j1", a), ("j2", b)):
            s.client.publish("profiler/jobs/start",
                             {"seconds": 2, "request_id": rid, "target": f"pid:{t.pid}"})
        third, _ = s.command("start", {"seconds": 2, "target": f"pid:{c.pid}"})
        assert third["status"] == "error", third
        assert third["error"] == ("too many jobs running (max_jobs is 2); try again when one "
                                  "finishes")
        quick, _ = s.command("ping")
        assert quick["status"] == "ok"
        for rid in ("j1", "j2"):
            m = s.client.wait_for(lambda m: m.topic.endswith("/result") and
                                  json.loads(m.payload).get("request_id") == rid, 20)
            assert json.loads(m.payload)["status"] == "ok"
        again, _ = s.command("start", {"seconds": 1, "target": f"pid:{c.pid}"}, timeout=20)
        assert again["status"] == "ok", again


def test_max_jobs_is_bounded(workdir):
    agent_conf = os.path.join(workdir, "jobs9.conf")
    with open(agent_conf, "w") as f:
        f.write("max_jobs = 9\n")
    p = subprocess.run([AGENT, "run", "lru_stats", "--config", agent_conf, *ROOT_FLAGS],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "max_jobs: must be an integer from 1 to 8" in p.stderr


def test_rate_limit_per_action(workdir, demo):
    with agent_session(workdir, "rate", f"pid:{demo.pid}", "rate_limit = 30\n") as s:
        results = [s.command("lru_stats")[0] for _ in range(32)]
        ok = [r for r in results if r["status"] == "ok"]
        refused = [r for r in results if r["status"] == "error"]
        assert len(ok) == 30 and len(refused) == 2, [r.get("error") for r in results]
        assert refused[0]["error"].startswith(
            "rate limit: more than 30 lru_stats commands a minute (rate_limit); try again in ")
        assert refused[0]["run_id"]        # recorded, like every command
        assert s.command("ping")[0]["status"] == "ok"     # per action
        time.sleep(2.2)                     # 30 a minute: one more every 2 s
        assert s.command("lru_stats")[0]["status"] == "ok"
        assert s.command("lru_stats")[0]["status"] == "error"


def test_retention_at_start(workdir):
    """Files and rows of runs older than retention_days go; then the oldest runs' files until the
    rest fit in retention_max_bytes, their rows kept with a warning; stale temporary files of
    dead agents go; nothing that is not named like the agent's output is touched."""
    work = tempfile.mkdtemp(prefix="profiler-agent-retention-", dir=workdir)
    profiles = os.path.realpath(os.path.join(work, "profiles"))
    os.makedirs(profiles)
    now = int(time.time() * 1e6)
    hour = 3600 * 10**6
    old, t1, t2, t3 = now - 40 * 24 * hour, now - 3 * hour, now - 2 * hour, now - hour
    def make(t, kinds=("profile.{}.cprof", "flamegraph.{}.svg")):
        paths = []
        for k in kinds:
            p = os.path.join(profiles, k.format(t))
            with open(p, "wb") as f:
                f.write(b"x" * 4096)
            paths.append(p)
        return paths
    files = {t: make(t) for t in (old, t1, t2, t3)}
    foreign = ["notes.txt", "profile.abc.cprof", "callgrind.out.12x", "flamegraph.5.svg.bak"]
    for name in foreign:
        with open(os.path.join(profiles, name), "w") as f:
            f.write("keep")

    # A database with the rows these files came from (and an old run without files).
    with agent_session(work, "ret", "self", "retention_days = 0\nretention_max_bytes = 0\n"):
        pass
    assert len(os.listdir(profiles)) == 8 + len(foreign)
    dead = subprocess.Popen(["true"])
    dead.wait()
    with open(os.path.join(profiles, f"massif.out.{t2}.tmp.{dead.pid}"), "w") as f:
        f.write("partial")
    db = sqlite3.connect(os.path.join(work, "ret.db"))
    ids = {}
    for t in (old, t1, t2, t3):
        cur = db.execute("INSERT INTO runs (action, status, started, finished, files) VALUES "
                         "('start', 'ok', ?, ?, ?)", (iso(t), iso(t + 10**6),
                                                      json.dumps(files[t])))
        ids[t] = cur.lastrowid
    db.execute("INSERT INTO runs (action, status, started) VALUES ('ping', 'ok', ?)",
               (iso(old),))
    db.commit()
    db.close()

    # 3 recent runs of 8 KiB each, a cap of 20000 bytes: the oldest of them goes.
    with agent_session(work, "ret", "self",
                       "retention_days = 30\nretention_max_bytes = 20000\n") as s:
        log = s.agent.log_text()
        left = sorted(os.listdir(profiles))
        assert left == sorted(foreign + [os.path.basename(p) for p in files[t2] + files[t3]])
        assert "retention: deleted 2 file(s) older than 30 days, 2 more" in log, log
        assert "1 stale temporary file(s) and 2 old run(s)" in log, log
        result, _ = s.command("runs", {"limit": 100})
        runs = {r["run_id"]: r for r in result["summary"]["runs"]}
        assert ids[old] not in runs and not [r for r in runs.values() if r["action"] == "ping"]
        assert runs[ids[t1]]["files"] == [] and runs[ids[t2]]["files"] == files[t2]
        assert runs[ids[t3]]["files"] == files[t3]
        got, _ = s.command("get_file", {"run_id": ids[t1]})
        assert got["status"] == "error" and "has no files" in got["error"]
    db = sqlite3.connect(os.path.join(work, "ret.db"))
    (warnings,) = db.execute("SELECT warnings FROM runs WHERE id = ?", (ids[t1],)).fetchone()
    db.close()
    assert "retention_max_bytes (20000)" in json.loads(warnings)[0]


def test_output_modes(workdir):
    """output_dir is created 0750 and result files are 0640, whatever the umask allows more."""
    work = tempfile.mkdtemp(prefix="profiler-agent-modes-", dir=workdir)
    old = os.umask(0)
    try:
        with running_workload("cpu_split") as target, \
                agent_session(work, "modes", f"pid:{target.pid}") as s:
            result, _ = s.command("start", {"seconds": 1}, timeout=30)
    finally:
        os.umask(old)
    assert result["status"] == "ok", result
    assert stat.S_IMODE(os.stat(os.path.join(work, "profiles")).st_mode) == 0o750
    for f in result["files"]:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o640, f
