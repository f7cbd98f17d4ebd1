"""profiler-agent's Python allocation trace for the memory action, run inside a Python process after
_prelude.py (which reads the input, removes the files and calls work()) at a safe point (between
bytecodes, holding the GIL); it is never imported. With {"op": "start"} it starts the
interpreter's own tracemalloc for the run, unless the target traces already (then its own trace is
read and left on); with {"op": "stop"} it reads what was allocated since and is still live,
grouped by traceback as tracemalloc's Snapshot.statistics("traceback") groups it, and stops the
trace it started.

A run the agent never finishes (killed, its host gone) must not leave the target tracing, which
slows every allocation: the start arms a guard thread that stops the trace after guard_s seconds;
the stop cancels it. It uses the C half of tracemalloc (_tracemalloc, built into every CPython),
so nothing is imported but threading, which nearly every program has loaded, and it runs no code
of the target's objects. Its own allocations, in this file, are left out of the answer.
"""

GUARD = "profiler-agent tracemalloc guard"
FILE_MAX = 512  # characters kept of a frame's file name


def guards():
    import threading

    return [t for t in threading.enumerate() if t.name == GUARD]


def start(request):
    import _tracemalloc
    import threading

    if _tracemalloc.is_tracing():
        return {"started": False, "frames": _tracemalloc.get_traceback_limit()}
    _tracemalloc.start(request["frames"])
    guard = threading.Timer(request["guard_s"], _tracemalloc.stop)
    guard.name, guard.daemon = GUARD, True
    guard.start()
    return {"started": True, "frames": request["frames"]}


def stop(request, started):
    import _tracemalloc
    import time

    if not _tracemalloc.is_tracing():
        return {"tracing": False}
    current, peak = _tracemalloc.get_traced_memory()
    traces = _tracemalloc._get_traces()
    ours = guards()
    if request["started"] and ours:
        _tracemalloc.stop()
    for guard in ours:
        guard.cancel()
    own = work.__code__.co_filename
    groups, stopped = {}, None
    # (domain, size, frames most recent first, total frames) since 3.9
    for n, trace in enumerate(traces):
        if n % 4096 == 0 and time.perf_counter() - started > request["budget_s"]:
            stopped = "stopped after %d of %d traces (the time limit, %.1f s)" % (
                n, len(traces), request["budget_s"])
            break
        frames = trace[2]
        if any(f[0] == own for f in frames):
            continue
        group = groups.get(frames)
        if group is None:
            groups[frames] = [trace[1], 1]
        else:
            group[0] += trace[1]
            group[1] += 1
    del traces
    top = sorted(groups.items(), key=lambda g: -g[1][0])[:request["max_sites"]]
    return {"tracing": True, "current": current, "peak": peak, "sites": len(groups),
            "stopped": stopped,
            "top": [{"size": size, "count": count,
                     "traceback": [[str(f[0])[:FILE_MAX], int(f[1])] for f in frames]}
                    for frames, (size, count) in top]}


def work(request, started):
    if request["op"] == "start":
        return start(request)
    return stop(request, started)
