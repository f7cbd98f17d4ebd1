"""Test target for the memory action's Python heap: 5000 Widget instances whose __dict__ exists
(their __init__ asks for it), 3000 Gadget instances whose attributes the interpreter may keep
inline without a __dict__ (3.11 on), 2000 Slotted instances (__slots__, no __dict__), all kept
alive and never touched again. Prints "ready PID". On stdin: "c" prints "counts JSON", what the
process says of itself through gc: {kind as guppy names it: count}, a __dict__ counted where it
exists among its owner's referents (asking for it would make one); "p" prints "pong" (from the
main thread: it still runs Python); EOF exits. The main thread idles in short sleeps (each turn
a safe point), each turn a 64 KiB block from malloc and back, so that the allocation profile has
something to see. "g" starts growing: each turn then keeps a 4 KiB bytearray made in grow(), the
line tracemalloc must name; "t" prints "tracing true|false", whether tracemalloc traces."""
import gc
import json
import os
import tracemalloc

from _stdin_loop import serve

WIDGETS, GADGETS, SLOTTED = 5000, 3000, 2000


class Widget:
    def __init__(self, i):
        self.__dict__.update(number=i, label="widget %d" % i)


class Gadget:
    def __init__(self, i):
        self.number = i


class Slotted:
    __slots__ = ("number",)

    def __init__(self, i):
        self.number = i


def counts():
    got = {}
    for o in gc.get_objects():
        t = type(o)
        if t in (Widget, Gadget, Slotted):
            name = __name__ + "." + t.__qualname__
            got[name] = got.get(name, 0) + 1
            if any(type(r) is dict for r in gc.get_referents(o)):
                got["dict of " + name] = got.get("dict of " + name, 0) + 1
    return got


GROWN = []
GROWING = []


def grow():
    GROWN.append(bytearray(4096))  # the line tracemalloc names


def tick():
    bytes(65536)
    if GROWING:
        grow()


def main():
    keep = ([Widget(i) for i in range(WIDGETS)], [Gadget(i) for i in range(GADGETS)],
            [Slotted(i) for i in range(SLOTTED)])
    print("ready", os.getpid(), flush=True)
    serve({"c": lambda: print("counts", json.dumps(counts()), flush=True),
           "g": lambda: GROWING.append(True),
           "t": lambda: print("tracing", json.dumps(tracemalloc.is_tracing()), flush=True)},
          tick=tick)
    return keep


main()
