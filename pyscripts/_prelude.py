"""profiler-agent's prelude to the scripts it runs inside a Python process: the agent places one
file in the target's /tmp, this prelude, then the script (lru_stats.py, event_loop.py...), then one
line calling main() with the three paths, and has the interpreter run it at a safe point (between
bytecodes, holding the GIL), in a fresh namespace; it is never imported. A script defines
work(request, started): the input file's JSON (data only: limits and options) and
time.perf_counter() at the start, returning a JSON-able dict. main() removes the three files before
any work, so that nothing is left behind whoever waits for the answer; a script's error becomes
{"error": traceback}; "held_ms" is added. A script that still defines its own main() replaces this
one (it comes later in the file)."""



def scan_objects(limits, started, wanted, visit):
    """Calls visit(obj) on each object the garbage collector tracks whose type is in wanted (types,
    compared by id: a metaclass's own __hash__ or __eq__ is the target's code) until visit
    returns true or a limit is reached: limits["max_objects"] objects, or limits["budget_s"]
    seconds since started (looked at every CHUNK objects). The types are picked by a
    comprehension, as fast as the Profiler's own scans, rather than by a call per object.
    Returns (objects looked at, which limit stopped it or None)."""
    import gc
    import time

    chunk = 65536
    ids = {id(t) for t in wanted}
    scanned, stopped = 0, None
    objects = gc.get_objects()
    try:
        total = len(objects)
        for at in range(0, total, chunk):
            if at >= limits["max_objects"]:
                stopped = "stopped after %d of %d objects (the object limit)" % (scanned, total)
                break
            if time.perf_counter() - started > limits["budget_s"]:
                stopped = "stopped after %d of %d objects (the time limit, %.1f s)" % (
                    scanned, total, limits["budget_s"])
                break
            part = objects[at:min(at + chunk, limits["max_objects"])]
            scanned += len(part)
            picked = [o for o in part if id(type(o)) in ids]
            del part
            if any(visit(o) for o in picked):
                break
    finally:
        del objects
    return scanned, stopped


def main(script_path, input_path, output_path):
    import os
    import time

    started = time.perf_counter()
    out = None
    try:
        with open(input_path, "rb") as f:
            raw = f.read()
        out = os.open(output_path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        pass  # the agent withdrew the request: nothing to answer
    finally:
        # Gone before any work, so that nothing is left behind whoever waits for the answer.
        for path in (script_path, input_path, output_path):
            try:
                os.unlink(path)
            except OSError:
                pass
    if out is None:
        return
    import json

    try:
        answer = work(json.loads(raw), started)
    except KeyboardInterrupt:
        import _thread

        _thread.interrupt_main()  # the target's own Ctrl-C: delivered again once we are done
        answer = {"error": "KeyboardInterrupt: the target was interrupted meanwhile"}
    except BaseException:
        import traceback

        answer = {"error": traceback.format_exc()}
    answer["held_ms"] = (time.perf_counter() - started) * 1000.0
    data = (json.dumps(answer) + "\n").encode()
    try:
        while data:
            data = data[os.write(out, data):]
    finally:
        os.close(out)
