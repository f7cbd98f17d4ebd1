"""Test target for the object actions from inside: objects of known classes, held where a
referrer chain can name them (Widgets in the module-level list HELD, Gadgets in the dict PARTS).
Prints "ready PID", then runs each command read from stdin in its main thread (_stdin_loop.py):
"g" grows Widget by 100 and prints "grown N"; "c" prints "counts JSON", its own gc view
({type(o).__name__: count} over gc.get_objects(), as objgraph counts, but for the tuples the
collector untracks at its next pass, as the agent leaves them out); "p" prints "pong"; EOF exits."""
import gc
import json
import os

from _stdin_loop import serve


class Widget:
    def __init__(self, n):
        self.n = n

    def __repr__(self):
        return "<Widget n=%d>" % self.n


class Gadget:
    def __repr__(self):
        return "<Gadget\nwith a newline>"  # a repr that must not forge a second log line


HELD = [Widget(n) for n in range(50)]
PARTS = {n: Gadget() for n in range(7)}


def counts():
    seen = {}
    for obj in gc.get_objects():
        if type(obj) is tuple and not any(map(gc.is_tracked, obj)):
            continue
        name = type(obj).__name__
        seen[name] = seen.get(name, 0) + 1
    return seen


def grow():
    base = len(HELD)
    HELD.extend(Widget(base + n) for n in range(100))
    print("grown", len(HELD), flush=True)


def main():
    print("ready", os.getpid(), flush=True)
    serve({"g": grow, "c": lambda: print("counts", json.dumps(counts()), flush=True)})


main()
