"""Test target for lru_stats from inside: functools.lru_cache wrappers with known statistics (a
module-level one, a bounded one, an unbounded one, a method's), used once at start and never
again, so what the agent reports must equal what the process says of itself. Prints "ready PID",
then "caches JSON": {repr(wrapped function): str(cache_info())}. Then, with --nap S, its main
thread sleeps S seconds at once (no safe point meanwhile), then idles in a loop of short sleeps
(each turn a safe point). On stdin: "p" prints "pong" (from the main thread: it still runs
Python); EOF exits."""
import functools
import json
import os
import sys

from _stdin_loop import serve


@functools.lru_cache(maxsize=32)
def square(n):
    return n * n


@functools.lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


@functools.lru_cache(maxsize=2)
def tiny(n):
    return str(n)


class Shape:
    @functools.lru_cache(maxsize=8)
    def area(self, side):
        return side * side


def warm():
    for n in (1, 2, 3, 1, 2, 1):
        square(n)
    fib(20)
    for n in (1, 2, 3, 4, 1):
        tiny(n)
    s = Shape()
    for side in (2, 2, 3):
        s.area(side)
    return s


def main():
    keep = warm()
    caches = {repr(f.__wrapped__): str(f.cache_info()) for f in (square, fib, tiny, Shape.area)}
    print("ready", os.getpid(), flush=True)
    print("caches", json.dumps(caches), flush=True)
    serve({}, float(sys.argv[2]) if len(sys.argv) == 3 and sys.argv[1] == "--nap" else 0.0)
    return keep


main()
