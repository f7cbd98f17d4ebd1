"""start's compare_to end to end: two real CPU profiles through a real broker of a workload whose
time moves between functions (shift: grows 1/6 -> 2/3, shrinks 2/3 -> 1/3, vanishes 1/6 -> none),
the second compared with the first. The differential flame graph is opened in headless Chromium,
which runs its script, and each frame's hover text and color are read from the DOM it built; the
difffolded file is read as flamegraph.pl reads it and must hold both runs' own collapsed files.
The first run's stacks were kept in the run database without anyone asking for them; what cannot
be compared with is refused in a sentence, before any sampling. Windows of the flight recorder
(start {"last": S}) keep and compare their stacks the same way."""
import os
import re
import sqlite3
import subprocess
import time
import zlib

import pytest

from conftest import BUILD, agent_session, running_workload
from test_formats import collapsed_stacks
from test_profile import chromium_dom
from test_recorder import state

SHIFT = os.path.realpath(os.path.join(BUILD, "workloads", "shift"))
NS = "{http://www.w3.org/2000/svg}"
LINE = re.compile(r"^(.*)\s+?(\d+(?:\.\d*)?)$")  # flamegraph.pl's reading of a line
FIGURES = re.compile(r" \(([\d.]+)% -> ([\d.]+)%, ([-+][\d.]+) pts\)$")


@pytest.fixture(scope="module")
def shift():
    with running_workload("shift", stdin=subprocess.PIPE) as proc:
        yield proc


@pytest.fixture(scope="module")
def cmp(workdir, shift):
    with agent_session(workdir, "cmp", f"pid:{shift.pid}", "allowed_targets = comm:shift\n") as s:
        yield s


def switch(proc, mix):
    proc.stdin.write(mix)
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == f"mix {mix}"


def start(s, params, timeout=60):
    result, logs = s.command("start", params, timeout=timeout)
    return result, logs


@pytest.fixture(scope="module")
def runs(cmp, shift):
    """Run A in mix a, then run B in mix b compared with A: (A, B, B's log records)."""
    a, _ = start(cmp, {"seconds": 3, "frequency": 499, "formats": ["collapsed"]})
    assert a["status"] == "ok", a
    switch(shift, "b")
    try:
        b, logs = start(cmp, {"seconds": 3, "frequency": 499,
                              "formats": ["collapsed", "flamegraph"], "compare_to": a["run_id"]})
    finally:
        switch(shift, "a")
    assert b["status"] == "ok", b
    return a, b, logs


def diff_folded(path):
    """The file as flamegraph.pl reads a differential one: the last number is the second
    count, the number before it the first."""
    stacks = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            stack, after = LINE.match(line.rstrip("\n")).groups()
            stack, before = LINE.match(stack).groups()
            assert stack not in stacks, ("the same stack twice", line)
            stacks[stack] = (int(before), int(after))
    return stacks


def prefix_shares(stacks):
    """Each path from the root (as a tuple of frames) -> its share of samples, as a flame
    graph's frame has it: the samples of every stack through it."""
    total = sum(stacks.values())
    out = {}
    for s, n in stacks.items():
        frames = tuple(s.split(";"))
        for i in range(1, len(frames) + 1):
            out[frames[:i]] = out.get(frames[:i], 0) + n
    return {k: v / total for k, v in out.items()}


def self_shares(stacks):
    total = sum(stacks.values())
    out = {}
    for s, n in stacks.items():
        leaf = s.split(";")[-1]
        out[leaf] = out.get(leaf, 0) + n / total
    return out


def file_of(run, suffix):
    return next(f for f in run["files"] if f.endswith(suffix))


def pct(share):
    return round(share * 100, 2)


def test_the_diff_files_come_with_the_asked_ones(runs):
    _, b, _ = runs
    names = [re.sub(r"\d+", "T", os.path.basename(f)) for f in b["files"]]
    assert names == ["flamegraph.T.svg", "profile.T.collapsed", "flamegraph.T.diff.svg",
                     "profile.T.diff.folded"], names
    for f in b["files"]:
        assert os.path.getsize(f) > 0 and oct(os.stat(f).st_mode & 0o777) == "0o640"


def test_diff_folded_holds_both_runs_collapsed_files(runs):
    a, b, _ = runs
    diff = diff_folded(file_of(b, ".diff.folded"))
    assert {s: n for s, (n, _) in diff.items() if n} == \
        collapsed_stacks(file_of(a, ".collapsed"))
    assert {s: n for s, (_, n) in diff.items() if n} == \
        collapsed_stacks(file_of(b, ".collapsed"))
    assert all(x or y for x, y in diff.values())


def test_chromium_shows_growth_red_and_shrinkage_blue(runs):
    a, b, _ = runs
    before = collapsed_stacks(file_of(a, ".collapsed"))
    after = collapsed_stacks(file_of(b, ".collapsed"))
    sb, sa = prefix_shares(before), prefix_shares(after)
    # Hovering each frame, as a user does: what the details line then says, and what the
    # search matches.
    dom = chromium_dom(file_of(b, ".diff.svg"),
                       "for (var i = frames.length - 1; i >= 0; i--) { "
                       "frames[i].dispatchEvent(new MouseEvent('mouseover')); "
                       "frames[i].setAttribute('data-hover', details.textContent); "
                       "frames[i].setAttribute('data-about', about(frames[i])); }")
    frames = [g for g in dom.iter(NS + "g") if g.get("class") == "f"]
    assert frames and all(g.get("data-x") for g in frames), "the script did not run"
    seen = {}
    for g in frames:
        title = g.find(NS + "title").text
        assert g.get("data-hover") == title
        m = FIGURES.search(title)
        assert m, title
        # What a search looks through: the hover text without its figures.
        assert g.get("data-about") == title[:m.start()], (g.get("data-about"), title)
        fill = tuple(int(v) for v in re.fullmatch(r"rgb\((\d+),(\d+),(\d+)\)",
                                                  g.find(NS + "rect").get("fill")).groups())
        width = float(g.find(NS + "rect").get("width"))
        name = g.get("data-name")
        if name not in seen or width > seen[name][0]:
            seen[name] = (width, title, tuple(float(v) for v in m.groups()), fill)
        # Every frame's figures are those of some path of its name in the two collapsed files.
        if name != "all":
            got = tuple(float(v) for v in m.groups())
            want = [(pct(sb.get(p, 0)), pct(sa[p]), pct(sa[p] - sb.get(p, 0))) for p in sa
                    if p[-1] == name]
            assert any(all(abs(x - y) <= 0.011 for x, y in zip(w, got)) for w in want), \
                (title, want[:5])

    _, title, (was, now, delta), fill = seen["grows"]
    assert re.match(rf"grows in {re.escape(SHIFT)} at \S*shift\.c(:\d+)? \(", title), title
    assert abs(delta - 50) < 8 and abs(now - was - delta) <= 0.011, title
    assert fill[0] == 255 and fill[1] == fill[2] and fill[1] < 120, fill
    _, title, (was, now, delta), fill = seen["shrinks"]
    assert abs(delta + 33.3) < 8, title
    assert fill[2] == 255 and fill[0] == fill[1] and fill[0] < 180, fill
    # The larger change is the deeper color.
    assert seen["grows"][3][1] < seen["shrinks"][3][0], (seen["grows"][3], seen["shrinks"][3])
    _, title, (was, now, delta), fill = seen["all"]
    assert (was, now, delta) == (100, 100, 0) and fill == (255, 255, 255), title
    # vanishes has no width in B: not a frame, but named beneath them with its share in A.
    assert "vanishes" not in seen
    gone = [t.text for g in dom.iter(NS + "g") if g.get("id") == "gone"
            for t in g.iter(NS + "text")]
    share = pct(self_shares(before)["vanishes"])
    assert any(re.fullmatch(rf"vanishes \({share:.2f}%\)", t or "") for t in gone), gone


def test_summary_and_log_say_what_changed(runs):
    a, b, logs = runs
    before = self_shares(collapsed_stacks(file_of(a, ".collapsed")))
    after = self_shares(collapsed_stacks(file_of(b, ".collapsed")))
    c = b["summary"]["compare_to"]
    assert c["run_id"] == a["run_id"] and c["action"] == "start" and c["mode"] == "cpu", c
    assert c["samples"] == a["summary"]["samples"] and c["stacks"] == c["stacks_kept"], c
    grew, shrank = c["grew"][0], c["shrank"][0]
    assert grew["function"] == "grows" and grew["module"] == SHIFT, c["grew"]
    assert shrank["function"] == "shrinks", c["shrank"]
    for f in (grew, shrank):
        assert abs(f["self_before"] - pct(before[f["function"]])) <= 0.011, f
        assert abs(f["self_after"] - pct(after[f["function"]])) <= 0.011, f
        assert abs(f["self_delta"] - (f["self_after"] - f["self_before"])) <= 0.011, f
    # Gone: vanishes first (a stray sample of the main loop's poll may be gone too).
    assert c["gone"][0]["function"] == "vanishes", c["gone"]
    assert c["gone_count"] == len(c["gone"]) >= 1, c
    assert all(g["total_after"] == 0 < g["total_before"] for g in c["gone"]), c
    assert b["summary"]["stacks"] == b["summary"]["stacks_kept"] > 0, b["summary"]
    assert b["summary"]["stacks_kept_percent"] == 100, b["summary"]
    assert [r for r in logs if re.search(rf"Against run {a['run_id']} .*grows grew most.*"
                                         r"shrinks shrank most.*vanishes", r)], logs


def test_each_run_keeps_its_collapsed_text_in_the_database(cmp, runs):
    a, b, _ = runs
    db = sqlite3.connect(cmp.agent.db)
    try:
        rows = dict(db.execute("SELECT run_id, folded FROM stacks WHERE run_id IN (?, ?)",
                               (a["run_id"], b["run_id"])).fetchall())
    finally:
        db.close()
    for run in (a, b):
        with open(file_of(run, ".collapsed"), "rb") as f:
            assert zlib.decompress(rows[run["run_id"]]) == f.read()


def test_what_cannot_be_compared_with_is_refused_before_sampling(cmp):
    ping, _ = cmp.command("ping")
    r, _ = start(cmp, {"seconds": 30, "compare_to": 99999999})
    assert r["status"] == "error" and r["error"] == "compare_to: there is no run 99999999", r
    assert "samples" not in r["summary"], r
    r, _ = start(cmp, {"seconds": 30, "compare_to": ping["run_id"]})
    assert r["error"] == (f"compare_to: run {ping['run_id']} is a `ping` run, not a CPU profile "
                          "(`start`, or a stall's)"), r
    failed, _ = start(cmp, {"last": 5})  # the recorder is off
    assert failed["status"] == "error", failed
    r, _ = start(cmp, {"seconds": 30, "compare_to": failed["run_id"]})
    assert r["error"].startswith(f"compare_to: run {failed['run_id']} ended in error, without a "
                                 f"profile to compare with: {failed['error']}"), r
    # Nothing else talks to this agent: the next run's id is one more.
    ping, _ = cmp.command("ping")
    r, _ = start(cmp, {"seconds": 30, "compare_to": ping["run_id"] + 1})
    assert r["run_id"] == ping["run_id"] + 1, r
    assert r["error"] == (f"compare_to: run {r['run_id']} is this run; give the id of an "
                          "earlier one"), r


@pytest.mark.parametrize("value", [0, -3, "12", 1.5, None])
def test_a_bad_compare_to_is_refused(cmp, value):
    r, _ = start(cmp, {"seconds": 1, "compare_to": value})
    assert r["status"] == "error" and "compare_to" in r["error"], r


def test_stacks_not_kept_and_stacks_going_with_their_run(cmp):
    c, _ = start(cmp, {"seconds": 1, "frequency": 199, "formats": ["pprof"]})
    assert c["status"] == "ok", c
    db = sqlite3.connect(cmp.agent.db)
    try:
        # As an agent older than compare_to leaves a run: no stacks.
        with db:
            db.execute("DELETE FROM stacks WHERE run_id = ?", (c["run_id"],))
        r, _ = start(cmp, {"seconds": 30, "compare_to": c["run_id"]})
        assert r["error"] == (f"compare_to: run {c['run_id']} kept no stacks to compare with: it "
                              "was recorded by an agent older than compare_to, or its stacks "
                              "were deleted to keep the database small (the oldest runs' go "
                              "first)"), r
        # A run deleted (as retention deletes old ones) takes its stacks along.
        d, _ = start(cmp, {"seconds": 1, "frequency": 199, "formats": ["pprof"]})
        assert d["status"] == "ok", d
        assert db.execute("SELECT count(*) FROM stacks WHERE run_id = ?",
                          (d["run_id"],)).fetchone() == (1,)
        with db:
            db.execute("DELETE FROM runs WHERE id = ?", (d["run_id"],))
        assert db.execute("SELECT count(*) FROM stacks WHERE run_id = ?",
                          (d["run_id"],)).fetchone() == (0,)
    finally:
        db.close()


def test_recorder_windows_keep_their_stacks_and_compare(workdir, shift):
    """start {"last": S} keeps its stacks as a live run does, and compares with compare_to."""
    with agent_session(workdir, "cmprec", "comm:shift",
                       "recorder = on\nrecorder_frequency = 99\n") as s:
        state(s, lambda st: st["recorder"].get("pid") == shift.pid)
        time.sleep(3)
        w1, _ = start(s, {"last": 2, "formats": ["collapsed"]})
        assert w1["status"] == "ok" and w1["summary"]["method"] == "recorder", w1
        switch(shift, "b")
        try:
            time.sleep(3)
            w2, _ = start(s, {"last": 2, "formats": ["collapsed"], "compare_to": w1["run_id"]})
        finally:
            switch(shift, "a")
    assert w2["status"] == "ok", w2
    c = w2["summary"]["compare_to"]
    assert c["grew"][0]["function"] == "grows" and c["shrank"][0]["function"] == "shrinks", c
    assert c["gone"][0]["function"] == "vanishes", c
    diff = diff_folded(file_of(w2, ".diff.folded"))
    assert {k: n for k, (n, _) in diff.items() if n} == collapsed_stacks(file_of(w1, ".collapsed"))
    assert {k: n for k, (_, n) in diff.items() if n} == collapsed_stacks(file_of(w2, ".collapsed"))
