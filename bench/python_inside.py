#!/usr/bin/python3
"""Answers from inside a Python target (README: What runs inside a Python target), on a Home
Assistant-sized asyncio program, tests/workloads/py_big.py: 200 tasks, 1,000 timers, 500,000
objects, a few lru_caches. On 3.14 under chroot of tests/pyroot.sh's root (run as root) and on
Debian's /usr/bin/python3 (3.11). For each action answered from inside, medians of RUNS runs:
the round trip through MQTT (publish to result) and how long the script held the target's
interpreter (the summary's held_ms); beside it, the same work run by the program itself on its
loop's thread (what Home Assistant's Profiler costs in-process), and held / in-process, which
the issue wants at 1.5 or less; and the Profiler as written, which also hands each line it makes
to logging (_LOGGER.critical, to a QueueHandler as on Home Assistant's loop), and held / that. memory's in-process anchor is a census by type with
sys.getsizeof (guppy's hpy().heap() is not packaged in Debian); its round trip holds its
1 s of allocation recording."""
import os
import shutil
import statistics
import sys
import tempfile
import time

import pytest

from common import agent_session  # noqa: E402  (puts tests/integration on the path)
from test_python_event_loop import Loop  # noqa: E402
from test_python_tasks import pyroot  # noqa: E402

RUNS = int(os.environ.get("RUNS", "5"))
# (action, payload, what py_big.py runs in-process for it)
ACTIONS = [("lru_stats", {}, "lru"),
           ("log_event_loop_scheduled", {}, "scheduled"),
           ("log_current_tasks", {}, "tasks"),
           ("set_asyncio_debug", {"enabled": False}, "debug"),
           ("dump_log_objects", {"type": "dict"}, "dict"),
           ("memory", {"seconds": 1}, "heap")]
PYTHONS = [("3.14", "python3.14"), ("3.11", None)]


def started(python):
    """py_big.py on python (None: Debian's python3), or None and a note when it cannot run."""
    if python is None:
        return Loop(script="py_big.py")
    try:
        root = pyroot(python)
    except pytest.skip.Exception as e:
        print(f"{python}: skipped: {e.msg}")
        return None
    return Loop(f"/usr/bin/{python}", root, "py_big.py")


def in_process(t, what, logged=False):
    """ms py_big.py took to run what itself (and to log its lines, when logged)."""
    t.proc.stdin.write(f"{'l' if logged else 't'} {what}\n")
    t.proc.stdin.flush()
    words = t.proc.stdout.readline().split()
    assert words[:2] == ["took", what], words
    return float(words[2])


def inside(summary, key):
    """key (held_ms, wait_ms) of an answer from inside (memory's under python_heap), else None."""
    return summary.get("python_heap", summary).get(key)


def measure(s, t, action, payload, what):
    """(median round trip ms, median held ms and wait ms or None, median in-process ms bare and
    logged, the last result), over the runs before the first that failed (its error printed),
    or None if the first did."""
    trips, helds, waits, own, logged = [], [], [], [], []
    result = None
    for _ in range(RUNS):
        t0 = time.monotonic()
        result, _ = s.command(action, payload, timeout=60)
        if result["status"] != "ok":
            print(f"{action:26} run {len(trips) + 1} failed: {result['error']}")
            break
        trips.append((time.monotonic() - t0) * 1000)
        if inside(result["summary"], "held_ms") is not None:
            helds.append(inside(result["summary"], "held_ms"))
            waits.append(inside(result["summary"], "wait_ms"))
        own.append(in_process(t, what))
        logged.append(in_process(t, what, logged=True))
    if not trips:
        return None
    med = statistics.median
    return (med(trips), med(helds) if helds else None, med(waits) if waits else None, med(own),
            med(logged), result)


def row(action, trip, held_ms, wait_ms, own, logged):
    def ratio(anchor):
        return f"{held_ms / anchor:8.2f}" if held_ms is not None and anchor > 0 else "       -"
    held_txt = f"{held_ms:9.1f} {wait_ms:9.1f}" if held_ms is not None else "  outside" + " " * 10
    print(f"{action:26} {trip:11.1f} {held_txt} {own:11.1f} {ratio(own)} {logged:9.1f} "
          f"{ratio(logged)}")


def bench(label, python):
    t = started(python)
    if t is None:
        return
    work = tempfile.mkdtemp(prefix="bench-python-inside-")
    try:
        with agent_session(work, "benchpy", f"pid:{t.pid}") as s:
            print(f"\n{label} ({t.view()['version']}): 200 tasks, 1,000 timers, 500,000 objects; "
                  f"medians of {RUNS}")
            print(f"{'action':26} {'round trip':>11} {'held ms':>9} {'wait ms':>9} "
                  f"{'in-process':>11} {'held/':>8} {'Profiler':>9} {'held/':>8}")
            for action, payload, what in ACTIONS:
                got = measure(s, t, action, payload, what)
                if got is None:
                    continue
                trip, held_ms, wait_ms, own, logged, result = got
                if action == "dump_log_objects" and "method" not in result["summary"]:
                    print(f"{action:26} skipped: not answered from inside yet "
                          f"({result.get('warnings')})")
                    continue
                row(action, trip, held_ms, wait_ms, own, logged)
            print("(round trip: publish to result; held, wait: the summary's held_ms, wait_ms; "
                  "in-process: the program's own run of the same work; Profiler: that and "
                  "_LOGGER.critical of each line, as the Profiler runs it; ms)")
    finally:
        t.stop()
        shutil.rmtree(work, ignore_errors=True)


def main():
    for label, python in PYTHONS:
        bench(label, python)


if __name__ == "__main__":
    sys.exit(main())
