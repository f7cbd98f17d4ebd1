"""profiler-agent's event-loop actions, run inside a Python process: the agent copies this file into
the target's /tmp and has the interpreter run it at a safe point (between bytecodes, holding the
GIL), after _prelude.py, whose main() calls work() with the input; it is never imported. The
input's "op" chooses what it does to the target's running asyncio event loop(s), as Home Assistant's
Profiler does to its own loop:
  scheduled  the repr of every handle not cancelled in loop._scheduled (timers), then loop._ready;
  set_debug  loop.set_debug(enabled);
  tasks      repr(task) and task.print_stack() of every task of asyncio.all_tasks(loop) not
             cancelled.
The loop is the one running on this thread (the agent picks the loop's thread where it can), else
the running loops found among the objects the garbage collector tracks. Its limits (items, repr
length, stack depth, answer bytes, objects scanned, time) come from the input file, as data; it
says when it stopped early. It runs no code of the target's beyond what the Profiler runs (reprs,
print_stack, set_debug), imports nothing the target has not loaded but json and io, and never
imports asyncio: a target without it has no loop.
"""


def type_name(obj):
    """type(obj) as repr shows a class, without running a metaclass's own __repr__."""
    return type.__repr__(type(obj))


def safe_repr(obj, limits):
    """repr(obj) as the Profiler's _safe_repr gives it, cut to max_repr characters."""
    try:
        text = repr(obj)
    except Exception:
        text = "Failed to serialize %s" % type_name(obj)
    if len(text) > limits["max_repr"]:
        text = text[:limits["max_repr"]] + "..."
    return text


def json_size(obj, dumps):
    """len(json.dumps(obj)), counted without encoding the common cases (a dict of printable ASCII
    strings and ints): a json.dumps per item cost as much as the reprs themselves, and held the
    target's loop 2 ms longer for 1,000 timers. Anything else is measured by dumps itself."""
    kind = type(obj)
    if kind is str:
        if obj.isascii() and obj.isprintable():
            return len(obj) + 2 + obj.count('"') + obj.count("\\")
    elif kind is int:
        return len(int.__repr__(obj))
    elif kind is bool:
        return 4 if obj else 5
    elif obj is None:
        return 4
    elif kind is dict and all(type(k) is str for k in obj):  # "{k: v, k: v}"
        return max(2, sum(json_size(k, dumps) + 2 + json_size(v, dumps) + 2
                          for k, v in obj.items()))
    elif kind is list:
        return max(2, sum(json_size(v, dumps) + 2 for v in obj))
    return len(dumps(obj))


class Answer:
    """What the script gives back, bounded: items are taken while the JSON stays under max_bytes
    and max_items, and the time under budget_s; the first limit hit is said in "stopped"."""

    def __init__(self, limits, started):
        import json
        import time

        self.limits, self.started, self.dumps = limits, started, json.dumps
        self.clock = time.perf_counter
        self.size, self.count, self.stopped = 0, 0, None

    def full(self):
        if self.stopped is None:
            if self.count >= self.limits["max_items"]:
                self.stopped = "stopped at %d items (the item limit)" % self.count
            elif self.clock() - self.started > self.limits["budget_s"]:
                self.stopped = "stopped after %d items (the time limit, %.1f s)" % (
                    self.count, self.limits["budget_s"])
        return self.stopped is not None

    def take(self, item):
        """item (JSON-able) counted in; False, and nothing taken, once a limit is reached."""
        if self.full():
            return False
        size = json_size(item, self.dumps) + 2
        if self.size + size > self.limits["max_bytes"]:
            self.stopped = "stopped after %d items (the answer limit, %d bytes)" % (
                self.count, self.limits["max_bytes"])
            return False
        self.size += size
        self.count += 1
        return True


def running_loops(asyncio, limits, started):
    """The loop running on this thread; else every running loop the garbage collector tracks.
    Returns (loops, how, scanned, stopped)."""
    loop = asyncio.events._get_running_loop()
    if loop is not None:
        return [loop], "this thread", 0, None
    base = asyncio.events.AbstractEventLoop
    loops = []

    def visit(obj):
        if obj.is_running():
            loops.append(obj)
            return len(loops) >= limits["max_loops"]
        return False

    # Every loop class, by type's own __subclasses__ (not a metaclass's): type(), not
    # isinstance(), as an object's own __class__ could run code.
    wanted, pending = {}, [base]
    while pending and len(wanted) < 4096:
        t = pending.pop()
        if id(t) not in wanted:
            wanted[id(t)] = t
            pending.extend(type.__subclasses__(t))
    wanted = wanted.values()
    scanned, stopped = scan_objects(limits, started, wanted, visit)
    return loops, "scan", scanned, stopped


class ReprLimit:
    """The Profiler's _increase_repr_limit: reprlib's string and other limits at 300 while it
    takes reprs, as Handle and Task reprs format their arguments with reprlib."""

    def __init__(self, reprlib):
        self.arepr = reprlib.aRepr if reprlib is not None else None

    def __enter__(self):
        if self.arepr is not None:
            self.saved = (self.arepr.maxstring, self.arepr.maxother)
            self.arepr.maxstring = self.arepr.maxother = 300

    def __exit__(self, *exc):
        if self.arepr is not None:
            self.arepr.maxstring, self.arepr.maxother = self.saved


def scheduled(asyncio, loop, index, answer, limits):
    handles = []
    if not issubclass(type(loop), asyncio.base_events.BaseEventLoop):
        # uvloop and other loops of C code keep their handles where no Python sees them.
        return {"handles": handles, "cancelled": 0, "opaque": True}
    cancelled = 0
    # Copies first: a repr may let another thread run, which may change the loop.
    for kind, queue in (("timer", list(loop._scheduled)), ("ready", list(loop._ready))):
        for handle in queue:
            if handle.cancelled():
                cancelled += 1
                continue
            item = {"loop": index, "kind": kind, "repr": safe_repr(handle, limits)}
            if not answer.take(item):
                return {"handles": handles, "cancelled": cancelled}
            handles.append(item)
    return {"handles": handles, "cancelled": cancelled}


def stack_lines(task, limits):
    """task.print_stack(limit=max_stack) as lines, cut to max_repr characters each."""
    import io

    buf = io.StringIO()
    try:
        task.print_stack(limit=limits["max_stack"], file=buf)
    except Exception as exc:
        return ["Failed to print the stack: %s" % type_name(exc)]
    lines = buf.getvalue().splitlines()[:2 * limits["max_stack"] + 4]
    return [line[:limits["max_repr"]] + ("..." if len(line) > limits["max_repr"] else "")
            for line in lines]


def tasks(asyncio, loop, index, answer, limits):
    found = []
    for task in list(asyncio.all_tasks(loop)):
        if task.cancelled():
            continue
        item = {"loop": index, "repr": safe_repr(task, limits),
                "stack": stack_lines(task, limits)}
        if not answer.take(item):
            break
        found.append(item)
    return found


def work(limits, started):
    import sys

    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return {"asyncio": False, "loops": []}
    loops, how, scanned, stopped = running_loops(asyncio, limits, started)
    answer = Answer(limits, started)
    out = {"asyncio": True, "found": how, "objects_scanned": scanned, "loops": []}
    op = limits["op"]
    handles, found_tasks, cancelled, opaque = [], [], 0, False
    with ReprLimit(sys.modules.get("reprlib")):
        for index, loop in enumerate(loops):
            desc = {"type": type_name(loop), "thread": getattr(loop, "_thread_id", None)}
            if op == "scheduled":
                got = scheduled(asyncio, loop, index, answer, limits)
                handles += got["handles"]
                cancelled += got["cancelled"]
                opaque = opaque or got.get("opaque", False)
            elif op == "set_debug":
                desc["was"] = bool(loop.get_debug())
                loop.set_debug(bool(limits["enabled"]))
                desc["debug"] = bool(loop.get_debug())
            elif op == "tasks":
                found_tasks += tasks(asyncio, loop, index, answer, limits)
            else:
                raise ValueError("unknown op %r" % op)
            out["loops"].append(desc)
    if op == "scheduled":
        out.update(handles=handles, cancelled=cancelled, opaque=opaque)
    elif op == "tasks":
        out["tasks"] = found_tasks
    out["stopped"] = stopped or answer.stopped
    return out
