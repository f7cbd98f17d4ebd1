"""profiler-agent's object census, run inside a Python process: the agent copies this file into
the target's /tmp and has the interpreter run it at a safe point (between bytecodes, holding the
GIL), after _prelude.py, whose main() calls work() with the input; it is never imported. It
counts the objects the garbage collector tracks as objgraph does (gc.get_objects(), by
type(o).__name__, or by module-qualified name when a name has a dot), and the input's "op" picks
what it answers:

- counts: {type name: count} of every type, largest first (objgraph.typestats);
- dump: the reprs of the objects of one type, at most max_objects (objgraph.by_type);
- sources: counts, then for up to max_objects objects not seen by the previous scan, of types
  that grew past their peak, the chain of referrers that holds each (objgraph's
  find_backref_chain towards a module, found with gc.get_referrers).

It keeps nothing in the target between scans: the agent hands back the previous scan's peaks and
its "seen" filter (a bitmap of hashed object ids, zlib and base64) as data. Its limits come from
the input, as data: it stops at the object or time limit and says so. It does not call
gc.collect() (that would run the target's finalizers), runs no code of the target's objects but
their repr(), and imports nothing but the standard library.
"""

CHUNK = 16384  # objects between two looks at the clock
HASH = 0x9E3779B97F4A7C15  # Fibonacci hashing spreads ids (aligned addresses) over the filter


def type_name(kind, qualified):
    """objgraph's short or long name, read through type's own descriptors so that a metaclass's
    __getattribute__ or properties (target code) are never called."""
    name = type.__dict__["__name__"].__get__(kind)
    if not qualified:
        return name
    module = type.__dict__["__module__"].__get__(kind)
    return "%s.%s" % (module, name) if isinstance(module, str) and module else name


def own_objects(namespace, req):
    """Ids of this script's own objects, left out of every count, dump and chain: its namespace,
    functions and classes, their code's constants, and the request. What remains of it (a few
    name tuples of its code) is what a collection untracks, which walk() leaves out too."""
    import gc
    import types

    own = set()
    own.update((id(own), id(namespace), id(req)))
    own.update(id(v) for v in req.values())
    todo = [v for v in namespace.values()
            if (type(v) is types.FunctionType and v.__globals__ is namespace)
            ]
    while todo:
        v = todo.pop()
        if id(v) in own:
            continue
        own.add(id(v))
        if type(v) is types.FunctionType:
            todo.append(v.__code__)
        elif type(v) is types.CodeType:
            own.update((id(v.co_consts), id(v.co_names)))
            todo.extend(c for c in v.co_consts if type(c) in (types.CodeType, tuple, frozenset))
        elif type(v) is tuple or type(v) is frozenset:
            todo.extend(c for c in v if type(c) in (types.CodeType, tuple, frozenset))
    return own


def walk(objects, limits, started, visit):
    """Calls visit(obj) for each object but this script's own and the tuples the collector would
    untrack at its next pass (no tracked item: how many of those are still tracked depends on
    when it last ran, not on the program), a chunk at a time. None, or at a limit why it
    stopped."""
    import gc
    import itertools
    import time

    own = limits["own"]
    tracked = gc.is_tracked
    total = len(objects)
    done = 0
    while done < total:
        if done >= limits["max_scan"]:
            return "stopped after %d of %d objects (the object limit)" % (done, total)
        if time.perf_counter() - started > limits["budget_s"]:
            return "stopped after %d of %d objects (the time limit, %.1f s)" % (
                done, total, limits["budget_s"])
        for obj in itertools.islice(objects, done, done + CHUNK):
            if id(obj) in own or (type(obj) is tuple and not any(map(tracked, obj))):
                continue
            visit(obj)
        done += CHUNK
    return None


def count_types(objects, limits, started):
    """{id(type): [type, count]} over objects, and walk()'s stop."""
    counts = {}

    def visit(obj):
        kind = type(obj)
        entry = counts.get(id(kind))
        if entry is None:
            counts[id(kind)] = [kind, 1]
        else:
            entry[1] += 1

    return counts, walk(objects, limits, started, visit)


def by_name(counts, qualify):
    """{name: count}: short names, but module-qualified for the names in qualify (the agent's own
    kinds of objects: a Python `socket` is `socket.socket` beside the target's socket fds)."""
    names = {}
    for kind, n in counts.values():
        name = type_name(kind, False)
        if name in qualify:
            name = type_name(kind, True)
        names[name] = names.get(name, 0) + n
    return names


def census(names, limits):
    """The answer's counts: largest first, at most max_types of them."""
    rows = sorted(names.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"types": rows[:limits["max_types"]], "types_total": len(rows)}


def cut(text, limit):
    return text if len(text) <= limit else text[:max(limit - 3, 0)] + "..."


def short_repr(obj, limit, depth=0):
    """repr(obj) cut to limit characters. Built-in containers and strings are shown a few items
    deep without building their whole repr (a dict of a million entries); any other object's own
    repr() runs, and when it raises, says so instead, as the Profiler's _safe_repr does."""
    import itertools

    kind = type(obj)
    try:
        if kind is str or kind is bytes:
            return cut(repr(obj[:limit]), limit)
        shells = {list: ("[", "]"), tuple: ("(", ")"), set: ("{", "}"), dict: ("{", "}"),
                  frozenset: ("frozenset({", "})")}
        if kind in shells:
            left, right = shells[kind]
            if not obj:
                return {set: "set()", frozenset: "frozenset()"}.get(kind, left + right)
            if depth >= 2:
                return left + "..." + right
            items = list(itertools.islice(obj.items() if kind is dict else obj, 32))
            parts, size = [], len(left)
            for item in items:
                if kind is dict:
                    part = "%s: %s" % (short_repr(item[0], limit, depth + 1),
                                       short_repr(item[1], limit, depth + 1))
                else:
                    part = short_repr(item, limit, depth + 1)
                parts.append(part)
                size += len(part) + 2
                if size > limit:
                    break
            if len(parts) < len(obj):
                parts.append("...")
            elif kind is tuple and len(parts) == 1:
                parts[0] += ","
            return cut(left + ", ".join(parts) + right, limit)
        return cut(repr(obj), limit)
    except Exception as e:
        return cut("<%s object at %#x (repr failed: %s)>"
                   % (type_name(kind, True), id(obj), type_name(type(e), False)), limit)


def dump(req, started):
    import gc

    objects = gc.get_objects()
    want = req["type"]
    qualified = "." in want
    matches = {}  # id(type) -> bool
    found, shown = [0], []

    def visit(obj):
        kind = type(obj)
        hit = matches.get(id(kind))
        if hit is None:
            hit = matches[id(kind)] = type_name(kind, qualified) == want
        if hit:
            found[0] += 1
            if len(shown) < req["max_objects"]:
                shown.append(obj)

    try:
        stopped = walk(objects, req, started, visit)
        total = len(objects)
    finally:
        del objects
    reprs = [short_repr(obj, req["repr_max"]) for obj in shown]
    del shown[:]
    return {"objects": reprs, "matched": found[0], "scanned": total, "stopped": stopped}


def counts(req, started):
    import gc

    objects = gc.get_objects()
    try:
        per_type, stopped = count_types(objects, req, started)
        answer = {"scanned": len(objects), "stopped": stopped}
        if stopped:
            return answer
        names = by_name(per_type, set(req["qualify"]))
    finally:
        del objects
    answer.update(census(names, req))
    return answer


def seen_bits(n):
    """The seen filter's size, log2 of its slots: 32 per object, up to 2**24 slots (2 MiB). A
    Bloom filter of ids with two slots an object, both from one multiplication: an object whose
    two bits are set was probably there before, and about one new object in 250 is hidden (a
    false match; one in 32 with a single slot). A reused id is missed, as the Profiler's own set
    of ids misses it."""
    bits = 16
    while (1 << bits) < 32 * n and bits < 24:
        bits += 1
    return bits


def seen_slots(obj, bits):
    """The object's two slots: the product's top bits, and the bits below the top 32 (both
    mixed by Fibonacci hashing of the id, an aligned address)."""
    h = ((id(obj) >> 4) * HASH) & 0xFFFFFFFFFFFFFFFF
    return h >> (64 - bits), (h >> (32 - bits)) & ((1 << bits) - 1)


def absfile(obj):
    """Where code that creates functions lives, for a new function or code object (as the
    Profiler names a new function by inspect.getabsfile)."""
    import os
    import types

    code = None
    if type(obj) is types.FunctionType:
        code = obj.__code__
    elif type(obj) is types.MethodType and type(obj.__func__) is types.FunctionType:
        code = obj.__func__.__code__
    elif type(obj) is types.CodeType:
        code = obj
    if code is None:
        return None
    return os.path.normcase(os.path.abspath(code.co_filename))


def chain(obj, req, own, deadline):
    """The referrers that hold obj, nearest first: a breadth-first search back through
    gc.get_referrers towards a module of sys.modules (objgraph.find_backref_chain with
    is_proper_module), bounded in depth and in get_referrers calls; when no module is reached,
    the chain to the first referrer found, as the Profiler's own does. own: ids of this script's
    objects, never part of a chain."""
    import gc
    import sys
    import time
    import types

    here = chain.__code__.co_filename
    queue, depth, parent = [obj], {id(obj): 0}, {id(obj): None}
    own = own | req["own"] | {id(queue), id(depth), id(parent)}
    first, visits, found, head = None, 0, None, 0
    while head < len(queue) and found is None:
        target = queue[head]
        head += 1
        if target is not obj and type(target) is types.ModuleType and \
                sys.modules.get(getattr(target, "__name__", None)) is target:
            found = target
            break
        if depth[id(target)] >= req["max_depth"] or visits >= req["max_visits"] or \
                time.perf_counter() > deadline:
            continue
        visits += 1
        referrers = gc.get_referrers(target)
        own.add(id(referrers))
        for source in referrers:
            if id(source) in own or id(source) in depth:
                continue
            if type(source) is types.FrameType and source.f_code.co_filename == here:
                continue
            depth[id(source)] = depth[id(target)] + 1
            parent[id(source)] = target
            queue.append(source)
            if first is None:
                first = source
        del referrers
    end = found if found is not None else first
    links = []
    while end is not None and end is not obj:
        links.append({"type": type_name(type(end), False),
                      "repr": short_repr(end, req["link_repr_max"])})
        end = parent[id(end)]
    del queue[:]
    return links[::-1]


def sources(req, started):
    """counts, and the new objects of the types that grew (none on the first scan: it sets the
    baseline the next one compares with)."""
    import base64
    import gc
    import time
    import zlib

    objects = gc.get_objects()
    new, overflow = [], {}
    answer = {"scanned": len(objects), "stopped": None, "new": []}
    try:
        per_type, answer["stopped"] = count_types(objects, req, started)
        if answer["stopped"]:
            return answer
        qualify = set(req["qualify"])
        names = by_name(per_type, qualify)
        last = req["last"]
        grew = {}  # id(type) -> name, for the types past their peak
        for key, (kind, _) in per_type.items():
            name = type_name(kind, False)
            if name in qualify:
                name = type_name(kind, True)
            if names[name] > last.get(name, 0):
                grew[key] = name
        before, old_bits = None, req.get("seen_bits", 0)
        if req.get("seen"):
            before = zlib.decompress(base64.b64decode(req["seen"]))
        bits = seen_bits(len(objects))
        seen = bytearray(1 << (bits - 3))

        def visit(obj):
            a, b = seen_slots(obj, bits)
            seen[a >> 3] |= 1 << (a & 7)
            seen[b >> 3] |= 1 << (b & 7)
            name = grew.get(id(type(obj)))
            if name is None or before is None:
                return
            a, b = seen_slots(obj, old_bits)
            if before[a >> 3] >> (a & 7) & 1 and before[b >> 3] >> (b & 7) & 1:
                return
            if len(new) < req["max_objects"]:
                new.append(obj)
            elif len(overflow) < req["max_types"] or name in overflow:
                overflow[name] = overflow.get(name, 0) + 1

        answer["stopped"] = walk(objects, req, started, visit)
        if answer["stopped"]:
            return answer
        answer.update(census(names, req))
        answer["seen"] = base64.b64encode(zlib.compress(bytes(seen), 1)).decode()
        answer["seen_bits"] = bits
        own = {id(objects), id(new), id(seen)}
        del objects[:]
        deadline = started + req["budget_s"]
        for obj in new:
            name = grew[id(type(obj))]
            entry = {"type": name, "before": last.get(name, 0), "now": names[name],
                     "repr": short_repr(obj, req["repr_max"])}
            where = absfile(obj)
            if where is not None:
                entry["file"] = where
            elif time.perf_counter() > deadline:
                entry["chain_stopped"] = "the time limit, %.1f s" % req["budget_s"]
            else:
                entry["chain"] = chain(obj, req, own, deadline)
            answer["new"].append(entry)
        answer["overflow"] = overflow
    finally:
        del objects
        del new[:]
    return answer


def work(req, started):
    """The prelude's entry point: the operation the input names."""
    req["own"] = own_objects(globals(), req)
    return {"counts": counts, "dump": dump, "sources": sources}[req["op"]](req, started)


prelude_main = main


def main(script_path, input_path, output_path):
    """The prelude's main(), then the namespace emptied: its functions and it refer to each
    other, so they would stay, as garbage, until the target's collector runs, and the next scan
    would count them."""
    try:
        prelude_main(script_path, input_path, output_path)
    finally:
        globals().clear()
