"""profiler.start end to end: a CPU profile of a workload built without frame pointers with a
known time split, through a real broker, written as files the real readers open."""
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import xml.etree.ElementTree as ET

import pytest

from conftest import BUILD, ROOT, ROOT_FLAGS, agent_session, running_workload, sleep_split_share

SPLIT = os.path.join(BUILD, "workloads", "cpu_split")
NO_PERF = os.path.join(BUILD, "workloads", "no_perf")


@pytest.fixture(scope="module")
def split():
    with running_workload("cpu_split", "--threads", "1") as proc:
        yield proc


@pytest.fixture(scope="module")
def prof(workdir, split):
    with agent_session(workdir, "prof", f"pid:{split.pid}",
                       "allowed_targets = comm:cpu_split\n") as s:
        yield s


def pstats_shares(path):
    """Self-time shares and callers, as Python's own pstats reads the file."""
    script = r"""
import json, pstats, sys
st = pstats.Stats(sys.argv[1])
total = sum(v[2] for v in st.stats.values())
out = {"total": total, "funcs": {}, "callers": {}}
for (f, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
    out["funcs"][name] = out["funcs"].get(name, 0) + tt / total
    out["callers"].setdefault(name, []).extend(c[2] for c in callers)
print(json.dumps(out))
"""
    p = subprocess.run(["/usr/bin/python3", "-c", script, path], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_start_writes_three_files_the_readers_open(prof, split):
    progress_before = len([m for m in prof.client.seen if m.topic.endswith("/progress")])
    result, _ = prof.command("start", {"seconds": 3, "frequency": 999}, timeout=30)
    assert result["status"] == "ok", result
    files = result["files"]
    assert len(files) == 3
    out_dir = os.path.realpath(os.path.join(prof.agent.workdir, "profiles"))
    names = [os.path.basename(f) for f in files]
    t = re.fullmatch(r"profile\.(\d+)\.cprof", names[0]).group(1)
    assert names == [f"profile.{t}.cprof", f"callgrind.out.{t}", f"flamegraph.{t}.svg"]
    for f in files:
        assert os.path.isabs(f) and os.path.dirname(f) == out_dir and os.path.getsize(f) > 0
        assert oct(os.stat(f).st_mode & 0o777) == "0o640"
    assert not [n for n in os.listdir(out_dir) if ".tmp" in n]

    s = result["summary"]
    # How many samples a second the machine allows is a figure of bench/cpu_profile.py.
    assert s["samples"] > 0 and s["method"] == "perf_event" and s["frequency"] == 999
    assert s["threads"] >= 2 and s["lost"] >= 0
    assert 0 <= s["truncated_fraction"] < 0.05
    top = [f["function"] for f in s["top"]]
    assert top[:2] == ["work_a", "work_b"], s["top"]

    shares = pstats_shares(files[0])
    assert abs(shares["funcs"]["work_a"] - 0.75) < 0.05, shares["funcs"]
    assert abs(shares["funcs"]["work_b"] - 0.25) < 0.05, shares["funcs"]
    assert "dispatch" in shares["callers"]["work_a"]

    p = subprocess.run(["/usr/bin/python3", "-m", "pstats", files[0]],
                       input="sort cumtime\nstats 5\ncallers work_a\nquit\n",
                       capture_output=True, text=True)
    assert p.returncode == 0 and "work_a" in p.stdout and "dispatch" in p.stdout

    p = subprocess.run(["callgrind_annotate", "--inclusive=yes", files[1]],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "work_a" in p.stdout and "Samples" in p.stdout

    svg = ET.parse(files[2]).getroot()
    text = open(files[2]).read()
    assert svg.tag.endswith("svg")
    assert "work_a" in text and "cpu_split" in text
    assert not re.search(r"(src|href)=\"https?:", text)

    progress = [json.loads(m.payload) for m in prof.client.seen if m.topic.endswith("/progress")]
    progress = progress[progress_before:]
    assert len(progress) >= 2
    assert all(p["run_id"] == result["run_id"] and p["seconds"] == 3 for p in progress)
    assert progress[-1]["samples"] >= progress[0]["samples"]


def test_one_profile_per_target_and_cheap_actions_still_answered(prof):
    prof.client.drain()
    prof.client.publish(f"{prof.prefix}/start", {"request_id": "long", "seconds": 2})
    # Sent right behind it, so it arrives while the first is being admitted or running.
    second, _ = prof.command("start", {"seconds": 1})
    assert second["status"] == "error"
    assert "already running" in second["error"] and "run " in second["error"]
    prof.client.wait_for(lambda m: m.topic.endswith("/progress") and
                         json.loads(m.payload).get("request_id") == "long")
    cheap, _ = prof.command("lru_stats")
    assert cheap["status"] == "ok"
    dump, logs = prof.command("log_thread_frames")
    assert dump["status"] == "ok"
    done = prof.client.wait_for(lambda m: m.topic.endswith("/result") and
                                json.loads(m.payload).get("request_id") == "long", 20)
    assert json.loads(done.payload)["status"] == "ok"


def run_start(workdir, payload, target, wrapper=()):
    p = subprocess.run([*wrapper, os.path.join(BUILD, "profiler-agent"), "run", "start",
                        json.dumps(payload), "--target", target,
                        "--output-dir", os.path.join(workdir, "cli-profiles"), *ROOT_FLAGS],
                       capture_output=True, text=True, timeout=60)
    return p, json.loads(p.stdout.strip().split("\n")[-1])


def test_target_exiting_mid_run_gives_a_partial_profile(workdir):
    with running_workload("cpu_split", "--exit-after", "1") as short:
        p, result = run_start(workdir, {"seconds": 5, "frequency": 499}, f"pid:{short.pid}")
    assert p.returncode == 0 and result["status"] == "ok", result
    assert any("exited" in w for w in result["warnings"])
    # It ends when the target does (a second after it started), not at the 5 s asked: how much
    # of that second it covers depends on how soon the agent started, 0.49 s under ASan once.
    assert 0 < result["summary"]["seconds"] < 3
    assert result["summary"]["samples"] > 0 and len(result["files"]) == 3
    assert "progress: " in p.stderr


def test_threads_started_during_the_run_are_sampled(workdir):
    with running_workload("cpu_split", "--churn") as churn:
        before = set(os.listdir(f"/proc/{churn.pid}/task"))
        p, result = run_start(workdir, {"seconds": 2, "frequency": 999}, f"pid:{churn.pid}")
    assert p.returncode == 0 and result["status"] == "ok", result
    # Short-lived "churnling" threads, none of which existed when the profile began.
    assert result["summary"]["threads"] > len(before) + 10
    svg = open(result["files"][2]).read()
    assert "churnling" in svg


def test_fallback_when_perf_event_open_is_refused(workdir, split):
    p, result = run_start(workdir, {"seconds": 2, "frequency": 999}, f"pid:{split.pid}",
                          wrapper=(NO_PERF,))
    assert p.returncode == 0 and result["status"] == "ok", result
    s = result["summary"]
    assert s["method"] == "ptrace" and s["frequency"] < 999 and s["samples"] > 0
    assert any("perf_event_open" in w and "ptrace" in w for w in result["warnings"])
    shares = pstats_shares(result["files"][0])
    assert shares["funcs"].get("work_a", 0) + shares["funcs"].get("work_b", 0) > 0.8
    status = open(f"/proc/{split.pid}/status").read()
    assert re.search(r"TracerPid:\s+0\n", status)


def test_stop_mid_profile_writes_files_and_marks_interrupted(workdir, split):
    with agent_session(workdir, "stopper", f"pid:{split.pid}") as s:
        s.client.publish("profiler/stopper/start", {"request_id": "cut", "seconds": 60})
        s.client.wait_for(lambda m: m.topic.endswith("/progress"))
        assert s.agent.stop(signal.SIGTERM) == 0
        m = s.client.wait_for(lambda m: m.topic.endswith("/result") and
                              json.loads(m.payload).get("request_id") == "cut")
        result = json.loads(m.payload)
        assert result["status"] == "ok" and len(result["files"]) == 3
        assert any("stopped" in w for w in result["warnings"])
        db = sqlite3.connect(s.agent.db)
        assert db.execute("SELECT status FROM runs WHERE id = ?",
                          (result["run_id"],)).fetchone()[0] == "interrupted"
        db.close()


CUMULATIVE = r"""
import json, pstats, sys
st = pstats.Stats(sys.argv[1])
tot = sum(v[2] for v in st.stats.values())
print(json.dumps({k[2]: v[3] / tot for k, v in st.stats.items()}))
"""


def cumulative_shares(path):
    """{function name: cumulative time / total self time}, as pstats reads the file."""
    p = subprocess.run(["/usr/bin/python3", "-c", CUMULATIVE, path], capture_output=True,
                       text=True)
    return json.loads(p.stdout)


def test_wall_mode_counts_every_thread_all_the_time(workdir):
    # parked: threads blocked in read, nanosleep and pthread_cond_wait since before the run (read
    # from /proc without stopping them), and one spinning. Each counts its whole time.
    with running_workload("parked", stdin=subprocess.PIPE) as parked:
        p, result = run_start(workdir, {"seconds": 2, "frequency": 199, "mode": "wall"},
                              f"pid:{parked.pid}")
    assert p.returncode == 0 and result["status"] == "ok", result
    s = result["summary"]
    assert s["mode"] == "wall" and s["method"] == "perf_event", s
    states = s["states"]
    # Six threads blocked and one running, for 2 s at 199 Hz.
    assert states["syscall"] > 3 * states["running"] > 0, states
    assert states["gil"] == 0, states
    total = sum(states.values())
    assert 0.8 * 7 * 2 * 199 < total < 1.2 * 7 * 2 * 199, states
    shares = pstats_shares(result["files"][0])
    cum = cumulative_shares(result["files"][0])
    for func in ("main_park_b", "park_read_b", "park_sleep_b", "park_cond_a", "park_spin_b"):
        assert 0.08 < cum.get(func, 0) < 0.25, (func, cum.get(func), shares["funcs"])


def test_wall_mode_is_refused_without_perf_event(workdir, split):
    p, result = run_start(workdir, {"seconds": 1, "mode": "wall"}, f"pid:{split.pid}",
                          wrapper=(NO_PERF,))
    assert result["status"] == "error" and "wall-clock profile needs perf_event" in \
        result["error"], result
    p, result = run_start(workdir, {"seconds": 1, "mode": "both"}, f"pid:{split.pid}")
    assert result["status"] == "error" and "mode" in result["error"], result


def test_off_mode_weighs_where_threads_block(workdir):
    # sleep_split: one thread asleep 30 ms in sleep_long, then 10 ms in sleep_short, over and
    # over: off-CPU time about 75% / 25% (as the program measures it), whatever the sampling rate.
    # Every file weighs the stretches by their time, not one per stretch: the flame graph's widths
    # and the collapsed stacks' counts too (as many stretches of each: a count would say 50/50).
    with running_workload("sleep_split") as sleeper:
        p, result = run_start(workdir, {"seconds": 3, "frequency": 49, "mode": "off",
                                        "formats": ["pstats", "flamegraph", "collapsed"]},
                              f"pid:{sleeper.pid}")
        own = sleep_split_share(sleeper)
    assert p.returncode == 0 and result["status"] == "ok", result
    s = result["summary"]
    assert s["mode"] == "off" and s["method"] == "perf_event", s
    assert s["states"]["syscall"] > 0 and s["states"]["gil"] == 0, s["states"]
    pstats_file, svg, collapsed = result["files"]
    for name, shares in [("pstats", cumulative_shares(pstats_file)),
                         ("flamegraph", flamegraph_shares(svg)),
                         ("collapsed", collapsed_shares(collapsed))]:
        assert abs(shares.get("sleep_long", 0) - own) <= 0.03, (name, own, shares)
        assert abs(shares.get("sleep_short", 0) - (1 - own)) <= 0.03, (name, own, shares)


def flamegraph_shares(path):
    """{function: its widest frame's share}, from the hover titles of the SVG."""
    out = {}
    for title in re.findall(r"<title>([^<]*)</title>", open(path).read()):
        m = re.match(r"(\S+) .*\(([\d.]+) (?:samples|ms), ([\d.]+)%\)$", title)
        if m:
            out[m[1]] = max(out.get(m[1], 0), float(m[3]) / 100)
    return out


def collapsed_shares(path):
    """{function: share of the counts of the stacks it is on}, as flamegraph.pl adds them."""
    total, on = 0, {}
    for line in open(path):
        stack, count = line.rsplit(" ", 1)
        total += int(count)
        for f in set(stack.split(";")):
            on[f] = on.get(f, 0) + int(count)
    return {f: n / total for f, n in on.items()}


def callgrind_names(path):
    """Callgrind's compressed names as a reader resolves them: [(kind, name, ob in force)] for
    each ob=/fl=/fn= (c-prefixed too), and {(kind, id): name}; fails on an id named twice or
    used before it is named."""
    names, out, ob = {}, [], None
    for line in open(path):
        m = re.match(r"^(c?)(ob|fl|fi|fe|fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if not m:
            continue
        kind = "fl" if m.group(2) in ("fi", "fe") else m.group(2)
        key = (kind, m.group(3))
        if m.group(4) is not None:
            assert key not in names, ("named twice", line)
            names[key] = m.group(4)
        assert key in names, ("used before it is named", line)
        if not m.group(1) and kind == "ob":
            ob = names[key]
        out.append((m.group(1) + kind, names[key], ob))
    return out, names


def chromium_dom(svg, onload=None):
    """The flame graph's DOM after Chromium loaded it and ran its script (and onload's code
    after init, if given), from a copy of the file."""
    text = open(svg).read()
    if onload:
        text = text.replace('onload="init(evt)"', f'onload="init(evt); {onload}"', 1)
    copy = svg + ".chromium.svg"
    with open(copy, "w") as f:
        f.write(text)
    p = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                        "--dump-dom", "file://" + copy], capture_output=True, text=True,
                       timeout=120)
    os.unlink(copy)
    assert p.returncode == 0 and "<svg" in p.stdout, p.stderr[-2000:]
    return ET.fromstring(p.stdout)


@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium is not installed")
def test_each_viewer_shows_function_module_and_place(workdir, split):
    p, result = run_start(workdir, {"seconds": 2, "frequency": 499}, f"pid:{split.pid}")
    assert p.returncode == 0 and result["status"] == "ok", result
    exe = os.path.realpath(SPLIT)
    cprof, cg, svg = result["files"]

    # Callgrind: each module named once in ob=, a function's name alone in fn=.
    names, ids = callgrind_names(cg)
    fns = [(n, ob) for kind, n, ob in names if kind == "fn"]
    assert ("work_a", exe) in fns, fns
    assert not [n for n, ob in fns if ob and n.endswith(f" [{ob}]")], fns
    obs = [n for (kind, _), n in ids.items() if kind == "ob"]
    assert len(obs) == len(set(obs)), obs
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", cg], capture_output=True,
                         text=True, check=True).stdout
    assert f"cpu_split.c:work_a [{exe}]" in out, out
    assert not re.search(r"\[([^\]]+)\] \[\1\]", out), out

    # pstats: the module is the file part of a function without a source file.
    stats = pstats_keys(cprof)
    assert all(f for f, _, _ in stats), stats
    assert [k for k in stats if k[2] == "work_a" and k[0].endswith("cpu_split.c")], stats

    # The flame graph in Chromium: hovering work_a tells its module and file:line; zoomed in,
    # frames are labelled by function alone.
    ns = "{http://www.w3.org/2000/svg}"
    dom = chromium_dom(svg)
    frames = [g for g in dom.iter(ns + "g") if g.get("class") == "f"]
    assert frames and all(g.get("data-x") for g in frames), "the script did not run"
    titles = [g.find(ns + "title").text for g in frames]
    # The place pstats has for it: its source file and first line (when DWARF gives one).
    file, line = next((f, n) for f, n, name in stats if name == "work_a")
    want = re.compile(rf"work_a in {re.escape(exe)} at {re.escape(file)}"
                      rf"{':%d' % line if line else ''} \(\d+ samples, [\d.]+%\)$")
    assert [t for t in titles if want.match(t)], titles
    assert not [t for t in titles if t.startswith("[unknown] (")], titles
    at = next(i for i, g in enumerate(frames) if g.get("data-name") == "work_a")
    zoomed = chromium_dom(svg, f"zoom(frames[{at}]);")
    shown = [g for g in zoomed.iter(ns + "g") if g.get("class") in ("f", "f parent")]
    labels = {g.get("data-name"): (g.find(ns + "text").text or "") for g in shown
              if g.get("style", "") == ""}
    assert labels["work_a"] == "work_a", labels
    assert all(" in /" not in text for text in labels.values()), labels


def pstats_keys(path):
    script = "import json, pstats, sys; print(json.dumps(list(pstats.Stats(sys.argv[1]).stats)))"
    p = subprocess.run(["/usr/bin/python3", "-c", script, path], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return [tuple(k) for k in json.loads(p.stdout)]


def test_python_functions_are_objects_of_their_files(workdir):
    """Debian's python3 running py_split.py: its functions' object in callgrind is the .py file,
    never [unknown], and the interpreter's own functions keep its module."""
    script = os.path.realpath(os.path.join(ROOT, "tests", "workloads", "py_split.py"))
    proc = subprocess.Popen(["/usr/bin/python3", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        p, result = run_start(workdir, {"seconds": 2, "frequency": 499}, f"pid:{proc.pid}")
    finally:
        proc.kill()
        proc.wait()
    assert p.returncode == 0 and result["status"] == "ok", result
    names, _ = callgrind_names(result["files"][1])
    fns = {(n, ob) for kind, n, ob in names if kind == "fn"}
    assert ("heavy", script) in fns and ("light", script) in fns, sorted(fns)
    assert not [f for f in fns if f[1] == "[unknown]" and f[0] != "[truncated]"], sorted(fns)
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", result["files"][1]],
                         capture_output=True, text=True, check=True).stdout
    assert f"py_split.py:heavy [{script}]" in out, out
    assert "[[unknown]]" not in out.replace("[truncated] [[unknown]]", ""), out
