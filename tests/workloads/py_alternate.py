"""Test target for attribution at the sample's own moment: the main thread alternates two kinds
of work in short phases and measures each phase's time itself, so a profile's shares can be held
against the program's own. Modes:
  py     a() and b(), the same pure-Python loop, 3:1 units per round (0.3 and 0.1 ms turns);
  hash   py_loop() (pure Python) and hashlib.sha256 of a buffer (C, under the same caller);
  sleep  busy() for 3 units then pause() (time.sleep) for 1 unit: a 75/25 split of wall time,
         the pause off CPU;
  gil    busy() in the main thread and in a second one: one runs while the other waits for
         the GIL.
Usage: py_alternate.py MODE [UNIT_MS] (default 0.1). Prints "ready" after calibrating. On stdin,
"reset" zeroes the counters and "report" prints one JSON line: per phase, CPU seconds (thread
time) and wall seconds since the last reset. EOF exits.
"""
import hashlib
import json
import os
import sys
import threading
import time
import types

MODE = sys.argv[1] if len(sys.argv) > 1 else "py"
UNIT = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.0001
lock = threading.Lock()
cpu = {}
wall = {}


def _loop(n):
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    return x


def _named(name):
    """_loop's code under another name: the same work, told apart by name in a profile, so the
    shares compare like with like."""
    code = _loop.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, globals(), name)


spin, a, b, busy = (_named(n) for n in ("spin", "a", "b", "busy"))


def py_loop(n):
    return spin(n)


def pause(seconds):
    time.sleep(seconds)


def hash_data(data):
    return hashlib.sha256(data).digest()


def calibrate():
    """Loop iterations, and sha256 bytes, that take about UNIT seconds."""
    n = 1000
    while True:
        t = time.perf_counter()
        spin(n)
        d = time.perf_counter() - t
        if d > 0.02:
            break
        n *= 2
    iters = max(1, int(n * UNIT / d))
    size = 1 << 16
    data = bytes(size)
    t = time.perf_counter()
    for _ in range(20):
        hashlib.sha256(data).digest()
    d = (time.perf_counter() - t) / 20
    return iters, bytes(max(64, int(size * UNIT / d)))


def timed(name, fn, *args):
    # The wall clock (vDSO, no system call) innermost: time.thread_time is a system call, where a
    # loaded machine preempts the thread, and that time is the wrapper's, not fn's.
    c0 = time.thread_time()
    w0 = time.perf_counter()
    fn(*args)
    w1 = time.perf_counter()
    c1 = time.thread_time()
    with lock:
        cpu[name] = cpu.get(name, 0.0) + c1 - c0
        wall[name] = wall.get(name, 0.0) + w1 - w0


def commands():
    for line in sys.stdin:
        with lock:
            if line.strip() == "reset":
                cpu.clear()
                wall.clear()
            elif line.strip() == "report":
                print(json.dumps({"cpu": cpu, "wall": wall}), flush=True)
    os._exit(0)


def rival(iters):
    while True:
        busy(iters)


def main():
    iters, data = calibrate()
    threading.Thread(target=commands, daemon=True).start()
    if MODE == "gil":
        threading.Thread(target=rival, args=(iters,), daemon=True).start()
    print("ready", flush=True)
    while True:
        if MODE == "py":
            timed("a", a, 3 * iters)
            timed("b", b, iters)
        elif MODE == "hash":
            timed("py_loop", py_loop, 2 * iters)
            timed("hash_data", hash_data, data)
            timed("hash_data", hash_data, data)
        elif MODE == "sleep":
            timed("busy", busy, 3 * iters)
            timed("pause", pause, UNIT)
        else:
            timed("busy", busy, iters)


main()
