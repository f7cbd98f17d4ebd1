"""profiler-agent's Python heap for the memory action, run inside a Python process after _prelude.py
(which reads the input, removes the files and calls work()) at a safe point (between bytecodes,
holding the GIL); it is never imported. It counts the target's objects by kind as guppy's
hpy().heap() partitions them ("by class / dict of class"): `str`, `module.Class`, `dict of
module.Class` for an instance's __dict__, `dict of type`, `dict of module`, `dict (no owner)`, with
sys.getsizeof sizes, and writes the rows as JSON.

What it counts: every object the garbage collector tracks, and every object reached from those
through objects it does not track (str, int, float, and tuples and dicts of only those). guppy
walks from the interpreter's roots instead; what neither a tracked object nor such a chain
refers to (text held only by C code) is missing here. An instance's __dict__ is counted where
the interpreter has made one: on 3.11 and later, an instance whose attributes live inline and
whose __dict__ was never asked for has none, and none is made here. It runs no code of the
target's classes (no __sizeof__, __eq__, __hash__ or property of theirs), stops at the object or
time limit and says so, and imports nothing but what the standard library has loaded already.
"""

HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement, not built in
NAME_MAX = 512  # characters kept of a kind's name
# Read through type's own descriptors: a metaclass's property of the same name is target code.
TYPE_ATTRS = ("__module__", "__qualname__", "__mro__", "__dict__", "__flags__", "__dictoffset__")


class Census:
    """The rows by kind, and what is known of each type met (by id: a type's own __hash__ is
    the target's code)."""

    def __init__(self, limits, started):
        import gc
        import sys
        import time

        self.gc, self.sys, self.time = gc, sys, time
        self.limits, self.started = limits, started
        self.attr = {name: type.__dict__[name].__get__ for name in TYPE_ATTRS}
        self.rows = {}  # kind -> [count, size]
        self.seen = set()  # ids of the untracked objects counted
        self.owned = {}  # id(a __dict__) -> its kind, "dict of ..."
        self.types = {}  # id(type) -> (type, name, sizer, whether instances own a __dict__)
        self.counted = 0
        self.stopped = None
        self.gc_header = sys.getsizeof([]) - [].__sizeof__()

    def describe(self, t):
        """(name, sizer, owns_dict) of type t, found once per type. sizer is None when
        sys.getsizeof runs only built-in code for t, else the built-in __sizeof__ under the
        class's own."""
        got = self.types.get(id(t))
        if got is not None:
            return got[1:]
        a = self.attr
        module, qualname = a["__module__"](t), a["__qualname__"](t)
        if not isinstance(qualname, str):
            qualname = "?"
        if not isinstance(module, str) or module == "builtins":
            name = qualname
        else:
            name = module + "." + qualname
        sizer, python_sizeof, builtin_sizeof, value_slots = None, False, False, False
        for base in a["__mro__"](t):
            own = a["__dict__"](base)
            if "__sizeof__" in own and not builtin_sizeof:
                if a["__flags__"](base) & HEAPTYPE:
                    python_sizeof = True
                else:
                    builtin_sizeof = True
                    sizer = own["__sizeof__"] if python_sizeof else None
            slots = own.get("__slots__", ())
            slots = (slots,) if isinstance(slots, str) else slots
            if isinstance(slots, (tuple, list)) and \
                    any(type(s) is not str or s not in ("__dict__", "__weakref__")
                        for s in slots):
                value_slots = True
        heap = bool(a["__flags__"](t) & HEAPTYPE) and not issubclass(t, type)
        # Only without value __slots__ is the one dict among an instance's referents its
        # __dict__ (a slot may hold another dict).
        owns = heap and a["__dictoffset__"](t) != 0 and not value_slots
        got = (t, name[:NAME_MAX], sizer, owns)
        self.types[id(t)] = got
        return got[1:]

    def size_of(self, o, sizer):
        """sys.getsizeof(o), or what it would say with the built-in __sizeof__ under a class's
        own."""
        if sizer is None:
            return self.sys.getsizeof(o, 0)
        return sizer(o) + (self.gc_header if self.gc.is_tracked(o) else 0)

    def own_dicts(self, objects):
        """The kind of each __dict__ an object of objects has: `dict of module.Class` for an
        instance of a class, `dict of type` for a class, `dict of module` for a module."""
        import types

        gc, owned = self.gc, self.owned
        module_type = types.ModuleType
        for n, o in enumerate(objects):
            if n % 4096 == 0 and self.late():
                return False
            t = type(o)
            if t is module_type:
                kind = "dict of module"
            elif issubclass(t, type):  # isinstance could ask o's own __class__
                kind = "dict of type"
            else:
                name, _, owns = self.describe(t)
                if not owns:
                    continue
                kind = "dict of " + name
            # The owner's referents: its __dict__ is the only dict among them for a class,
            # a module and an instance whose class has no __slots__ holding other dicts.
            for r in gc.get_referents(o):
                if type(r) is dict:
                    owned.setdefault(id(r), kind)
                    break
        return True

    def late(self):
        if self.time.perf_counter() - self.started > self.limits["budget_s"]:
            self.stopped = "stopped after %d objects (the time limit, %.1f s)" % (
                self.counted, self.limits["budget_s"])
            return True
        return False

    def count(self, o):
        t = type(o)
        if t is dict:
            kind, sizer = self.owned.get(id(o), "dict (no owner)"), None
        else:
            kind, sizer, _ = self.describe(t)
        try:
            size = self.size_of(o, sizer)
        except Exception:
            size = 0
        row = self.rows.get(kind)
        if row is None:
            self.rows[kind] = [1, size]
        else:
            row[0] += 1
            row[1] += size
        self.counted += 1

    def walk(self, objects, mine):
        """Counts objects (but those in mine) and what they reach through untracked objects,
        each once: a tracked one is counted in its own turn."""
        gc, seen = self.gc, self.seen
        is_tracked, get_referents = gc.is_tracked, gc.get_referents
        limit = self.limits["max_objects"]
        for n, o in enumerate(objects):
            if n % 4096 == 0 and self.late():
                return
            if id(o) in mine:
                continue
            self.count(o)
            pending = get_referents(o)
            while pending:
                r = pending.pop()
                if is_tracked(r) or id(r) in seen:
                    continue
                seen.add(id(r))
                self.count(r)
                pending.extend(get_referents(r))
            if self.counted >= limit:
                self.stopped = "stopped after %d objects (the object limit)" % self.counted
                return


def work(limits, started):
    import gc

    census = Census(limits, started)
    objects = gc.get_objects()
    try:
        # The census's own containers are not the target's heap.
        mine = {id(x) for x in (objects, census, census.rows, census.seen, census.owned,
                                census.types, census.attr, vars(census), limits)}
        if census.own_dicts(objects):
            census.walk(objects, mine)
    finally:
        del objects
    # The order of the agent's hpy writer: largest size, then count, then kind.
    rows = sorted(([k, c, s] for k, (c, s) in census.rows.items()),
                  key=lambda r: (-r[2], -r[1], r[0]))
    kept, rest = rows[:limits["max_kinds"]], rows[limits["max_kinds"]:]
    if rest:
        kept.append(["<%d other kinds>" % len(rest), sum(r[1] for r in rest),
                     sum(r[2] for r in rest)])
    return {"kinds": kept, "objects": census.counted,
            "size": sum(r[2] for r in rows), "stopped": census.stopped,
            "counted": "objects the garbage collector tracks and what they reach through "
                       "objects it does not track"}
