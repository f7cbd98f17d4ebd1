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
CHUNK = 65536  # referents of one object looked at between two looks at the clock
# Read through type's own descriptors: a metaclass's property of the same name is target code.
TYPE_ATTRS = ("__module__", "__qualname__", "__mro__", "__dict__", "__flags__", "__dictoffset__")


class Census:
    """The rows by kind, and what is known of each type met (by id: a type's own __hash__ is
    the target's code)."""

    def __init__(self, limits, started):
        import gc
        import sys
        import time

        import types

        self.gc, self.sys, self.time = gc, sys, time
        self.module_type = types.ModuleType
        self.limits, self.started = limits, started
        self.attr = {name: type.__dict__[name].__get__ for name in TYPE_ATTRS}
        self.rows = {}  # kind -> [count, size]
        self.seen = set()  # ids of the untracked objects counted
        self.owned = {}  # id(a __dict__) -> its kind, "dict of ..."
        # id(type) -> (type, name, sizer, the kind of its instances' own __dict__ or None)
        self.types = {}
        self.counted = 0
        self.stopped = None
        self.gc_header = sys.getsizeof([]) - [].__sizeof__()

    def describe(self, t):
        """(t, name, sizer, owner) of type t, found once per type. sizer is None when
        sys.getsizeof runs only built-in code for t, else the built-in __sizeof__ under the
        class's own; owner is the kind of the __dict__ its instances own: `dict of
        module.Class` for an instance of a class, `dict of type` for a class, `dict of module`
        for a module, None when they own none."""
        got = self.types.get(id(t))
        if got is not None:
            return got
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
        name = name[:NAME_MAX]
        if t is self.module_type:
            owner = "dict of module"
        elif issubclass(t, type):  # a metaclass: its instances are classes
            owner = "dict of type"
        elif heap and a["__dictoffset__"](t) != 0 and not value_slots:
            owner = "dict of " + name
        else:
            owner = None
        got = (t, name, sizer, owner)
        self.types[id(t)] = got
        return got

    def size_of(self, o, sizer):
        """sys.getsizeof(o), or what it would say with the built-in __sizeof__ under a class's
        own."""
        if sizer is None:
            return self.sys.getsizeof(o, 0)
        return sizer(o) + (self.gc_header if self.gc.is_tracked(o) else 0)

    def over(self):
        return self.time.perf_counter() - self.started > self.limits["budget_s"]

    def late(self):
        if self.over():
            self.stopped = "stopped after %d objects (the time limit, %.1f s)" % (
                self.counted, self.limits["budget_s"])
            return True
        return False

    def walk(self, objects, mine):
        """One pass: counts objects (but those in mine) and what they reach through untracked
        objects, each once (a tracked one is counted in its own turn), and notes each owner's
        __dict__ among its referents: the only dict among them for a class, a module and an
        instance whose class has no __slots__ holding other dicts. Dicts are counted at the end,
        when every owner has been met. The time limit is looked at every 4096 objects counted,
        inside one object's referents too (one list can hold millions)."""
        gc, seen, rows, types = self.gc, self.seen, self.rows, self.types
        is_tracked, get_referents, getsizeof = gc.is_tracked, gc.get_referents, self.sys.getsizeof
        owned, dicts = self.owned, []
        # By id: hashing a type runs its metaclass's __hash__, the target's code.
        leaves = {id(t) for t in (str, int, float, bytes, bool, complex, type(None))}
        limit = self.limits["max_objects"]
        for o in objects:
            if self.stopped:
                break
            if id(o) in mine:
                continue
            pending = [o]
            while pending:
                if self.counted % 4096 == 0 and self.late():
                    break
                r = pending.pop()
                t = type(r)
                # str, int, float, bytes... refer to nothing: no call to ask.
                referents = () if id(t) in leaves else get_referents(r)
                if t is dict:
                    dicts.append((id(r), getsizeof(r, 0)))
                else:
                    got = types.get(id(t))
                    if got is None:
                        got = self.describe(t)
                    kind, sizer, owner = got[1], got[2], got[3]
                    try:
                        size = getsizeof(r, 0) if sizer is None else self.size_of(r, sizer)
                    except Exception:
                        size = 0
                    row = rows.get(kind)
                    if row is None:
                        rows[kind] = [1, size]
                    else:
                        row[0] += 1
                        row[1] += size
                    if owner is not None:
                        for d in referents:
                            if type(d) is dict:
                                owned.setdefault(id(d), owner)
                                break
                self.counted += 1
                # What it reaches, a slice at a time: one list may refer to millions.
                parts = (referents,) if len(referents) <= CHUNK else \
                    [referents[at:at + CHUNK] for at in range(0, len(referents), CHUNK)]
                for k, part in enumerate(parts):
                    if k and self.late():
                        break
                    for d in part:
                        if not is_tracked(d):
                            i = id(d)
                            if i not in seen:
                                seen.add(i)
                                pending.append(d)
            if self.counted >= limit:
                self.stopped = "stopped after %d objects (the object limit)" % self.counted
        for n, (key, size) in enumerate(dicts):
            if n % 4096 == 0 and self.over():
                self.stopped = self.stopped or "stopped after %d objects (the time limit, %.1f s)" % (
                    self.counted, self.limits["budget_s"])
                break
            kind = owned.get(key, "dict (no owner)")
            row = rows.get(kind)
            if row is None:
                rows[kind] = [1, size]
            else:
                row[0] += 1
                row[1] += size


def work(limits, started):
    import gc

    census = Census(limits, started)
    objects = gc.get_objects()
    try:
        # The census's own containers are not the target's heap.
        mine = {id(x) for x in (objects, census, census.rows, census.seen, census.owned,
                                census.types, census.attr, vars(census), limits)}
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
