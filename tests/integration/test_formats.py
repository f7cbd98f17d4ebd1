"""profiler.start's `formats`: a CPU profile of a workload with a known time split, through a real
broker, written in every format asked and opened by each format's own reader: collapsed stacks
read as flamegraph.pl reads them, pprof by `go tool pprof`, speedscope JSON checked against the
file format's published schema and loaded with the collapsed and pprof files in the speedscope
app itself (headless Chromium). Only the files asked are written; get_file and retention know
the new names."""
import base64
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import ROOT, agent_session, running_workload

SPEEDSCOPE = os.path.join(ROOT, "tests", "viewers", "node_modules", "speedscope", "dist",
                          "release")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ALL = ["pstats", "callgrind", "flamegraph", "collapsed", "pprof", "speedscope"]


@pytest.fixture(scope="module")
def split():
    with running_workload("cpu_split", "--threads", "1") as proc:
        yield proc


@pytest.fixture(scope="module")
def fmt(workdir, split):
    with agent_session(workdir, "fmt", f"pid:{split.pid}",
                       "allowed_targets = comm:cpu_split\n") as s:
        yield s


@pytest.fixture(scope="module")
def every(fmt):
    """One profile in all six formats."""
    result, _ = fmt.command("start", {"seconds": 3, "frequency": 499, "formats": ALL},
                            timeout=60)
    assert result["status"] == "ok", result
    return result


def collapsed_stacks(path):
    """The file as flamegraph.pl reads it: the count after the last space, frames split on
    ';' (https://github.com/brendangregg/FlameGraph, flamegraph.pl's input loop)."""
    stacks = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^(.*)\s+?(\d+(?:\.\d*)?)$", line.rstrip("\n"))
            assert m, line
            assert m.group(1) not in stacks, ("the same stack twice", line)
            stacks[m.group(1)] = int(m.group(2))
    return stacks


def pprof(path, *args):
    p = subprocess.run(["go", "tool", "pprof", *args, path], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def pprof_top(path, *args):
    """go tool pprof -top's rows: function -> (flat, flat%, cum, cum%)."""
    rows = {}
    for line in pprof(path, "-top", "-nodecount=100", *args).splitlines():
        cells = line.split()
        if len(cells) >= 6 and re.fullmatch(r"[\d.]+%", cells[1]):
            rows[" ".join(cells[5:])] = (cells[0], float(cells[1][:-1]), cells[3],
                                         float(cells[4][:-1]))
    return rows


def speedscope_app(path):
    """Loads path in the speedscope app from npm in headless Chromium, as its own command line
    tool does (index.html#localProfilePath= a script handing it the file), in its Sandwich view;
    returns the document's title, the profiles it lists (name, total) and the table's rows
    (name, total %, self %)."""
    tmp = tempfile.mkdtemp(prefix="speedscope-")
    try:
        script = os.path.join(tmp, "load.js")
        with open(path, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        with open(script, "w") as f:
            f.write(f"speedscope.loadFileFromBase64({json.dumps(os.path.basename(path))}, "
                    f"{json.dumps(data)})")
        url = f"file://{SPEEDSCOPE}/index.html#localProfilePath={script}&view=sandwich"
        p = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp}/profile", "--use-angle=swiftshader",
             "--enable-unsafe-swiftshader", "--virtual-time-budget=15000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dom = p.stdout
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    profiles, rows = [], {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", dom, re.S):
        cells = [html.unescape(re.sub(r"<[^>]+>", "", c))
                 for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        if len(cells) == 3 and cells[0].isdigit():
            profiles.append(cells[1])
        elif len(cells) == 3:
            pct = [float(re.search(r"\(<?([\d.]+)%\)", c).group(1)) for c in cells[:2]]
            rows[cells[2]] = (pct[0], pct[1])
    return html.unescape(title.group(1)) if title else None, profiles, rows


def test_every_format_is_written_and_listed(every):
    files = every["files"]
    names = [os.path.basename(f) for f in files]
    t = re.fullmatch(r"profile\.(\d+)\.cprof", names[0]).group(1)
    assert names == [f"profile.{t}.cprof", f"callgrind.out.{t}", f"flamegraph.{t}.svg",
                     f"profile.{t}.collapsed", f"profile.{t}.pb.gz",
                     f"profile.{t}.speedscope.json"]
    for f in files:
        assert os.path.getsize(f) > 0 and oct(os.stat(f).st_mode & 0o777) == "0o640"
    assert not [n for n in os.listdir(os.path.dirname(files[0])) if ".tmp" in n]


def test_collapsed_as_flamegraph_pl_reads_it(every):
    stacks = collapsed_stacks(every["files"][3])
    samples = every["summary"]["samples"]
    assert sum(stacks.values()) == samples
    roots = {s.split(";")[0] for s in stacks}
    assert {"thread cpu_split", "thread worker"} <= roots, roots
    leaf = {}
    for s, n in stacks.items():
        leaf[s.split(";")[-1]] = leaf.get(s.split(";")[-1], 0) + n
    assert abs(leaf["work_a"] / samples - 0.75) < 0.05, leaf
    assert abs(leaf["work_b"] / samples - 0.25) < 0.05, leaf
    assert any(s.endswith(";dispatch;work_a") for s in stacks), list(stacks)[:20]
    assert any(s.endswith(";second_caller;work_b") for s in stacks), list(stacks)[:20]


def test_pprof_in_go_tool_pprof(every):
    path = every["files"][4]
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # gzip
    samples = every["summary"]["samples"]
    rows = pprof_top(path, "-sample_index=samples")
    assert sum(int(r[0]) for r in rows.values()) == samples, rows
    assert abs(rows["work_a"][1] - 75) < 5, rows
    assert abs(rows["work_b"][1] - 25) < 5, rows
    assert abs(rows["dispatch"][3] - 87.5) < 5, rows
    # The default value is CPU time, and it splits as the samples do.
    cpu = pprof_top(path)
    assert re.fullmatch(r"[\d.]+m?s", cpu["work_a"][0]), cpu
    assert abs(cpu["work_a"][1] - 75) < 5, cpu
    # Each thread's samples carry its name.
    worker = pprof_top(path, "-sample_index=samples", "-tagfocus=thread=worker")
    main = pprof_top(path, "-sample_index=samples", "-tagfocus=thread=cpu_split")
    both = sum(int(r[0]) for r in worker.values()) + sum(int(r[0]) for r in main.values())
    assert both == samples and worker["work_a"][0] != "0" and main["work_a"][0] != "0"
    raw = pprof(path, "-raw")
    assert "PeriodType: cpu nanoseconds" in raw
    assert re.search(r"^\d+: 0x0/0x0/0x0 \S*cpu_split ", raw, re.M), raw[-3000:]


def test_speedscope_json_against_schema_and_app(every):
    import jsonschema
    path = every["files"][5]
    with open(os.path.join(SPEEDSCOPE, "file-format-schema.json")) as f:
        schema = json.load(f)
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    jsonschema.validate(doc, schema)
    assert {p["name"] for p in doc["profiles"]} == {"cpu_split", "worker"}

    title, profiles, rows = speedscope_app(path)
    assert title == "cpu_split - speedscope", title
    assert sorted(profiles) == ["cpu_split", "worker"], profiles
    # The first profile's table (one thread): its own split.
    assert abs(rows["work_a"][1] - 75) < 6, rows
    assert abs(rows["dispatch"][0] - 87.5) < 6, rows


@pytest.mark.parametrize("index", [3, 4], ids=["collapsed", "pprof"])
def test_collapsed_and_pprof_load_in_speedscope(every, index):
    path = every["files"][index]
    title, _, rows = speedscope_app(path)
    assert title == f"{os.path.basename(path)} - speedscope", title
    assert abs(rows["work_a"][1] - 75) < 5, rows
    assert abs(rows["work_b"][1] - 25) < 5, rows


def test_only_the_formats_asked_are_written(fmt):
    result, _ = fmt.command("start", {"seconds": 1, "frequency": 99, "formats": ["pprof"]},
                            timeout=30)
    assert result["status"] == "ok", result
    assert [re.sub(r"\d+", "T", os.path.basename(f)) for f in result["files"]] == \
        ["profile.T.pb.gz"]
    t = re.search(r"\d+", os.path.basename(result["files"][0])).group(0)
    out = os.path.dirname(result["files"][0])
    assert sorted(n for n in os.listdir(out) if t in n) == [f"profile.{t}.pb.gz"]
    fmt.pprof_run = result


@pytest.mark.parametrize("formats", [[], ["pprof", "pprof"], ["svg"], ALL + ["pstats"], "pprof"])
def test_bad_formats_are_refused(fmt, formats):
    result, _ = fmt.command("start", {"seconds": 1, "formats": formats})
    assert result["status"] == "error" and "formats" in result["error"], result


def test_get_file_publishes_the_new_files(fmt):
    run = fmt.pprof_run
    fmt.client.drain()
    since = len(fmt.client.seen)
    result, _ = fmt.command("get_file", {"run_id": run["run_id"]})
    assert result["status"] == "ok", result
    name = os.path.basename(run["files"][0])
    msg = fmt.client.wait_for(lambda m: m.topic == f"{fmt.prefix}/file/{name}" and
                              m not in fmt.client.seen[:since])
    with open(run["files"][0], "rb") as f:
        assert msg.payload == f.read()


def test_retention_knows_the_new_names(workdir):
    work = tempfile.mkdtemp(prefix="profiler-agent-formats-", dir=workdir)
    profiles = os.path.join(work, "profiles")
    os.makedirs(profiles)
    old = int((time.time() - 40 * 86400) * 1e6)
    ours = [f"profile.{old}.collapsed", f"profile.{old}.pb.gz", f"profile.{old}.speedscope.json",
            f"flamegraph.{old}.diff.svg", f"profile.{old}.diff.folded"]
    foreign = [f"profile.{old}.pb.gz.bak", f"profile.x{old}.collapsed", "speedscope.json"]
    for name in ours + foreign:
        with open(os.path.join(profiles, name), "w") as f:
            f.write("x")
    with agent_session(work, "ret", "self", "retention_days = 30\n"):
        pass
    assert sorted(os.listdir(profiles)) == sorted(foreign)
