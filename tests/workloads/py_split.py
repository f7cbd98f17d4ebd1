"""Test target for Python-level CPU attribution: the main thread loops over heavy() and light(),
whose loops have the same body and run 3 to 1 iterations, so about 75% of the CPU time is spent
in heavy and 25% in light. Prints "ready" after the first round. Usage: py_split.py [UNITS
[timed]] (iterations of light per round, default 20000). EOF on stdin exits. Without "timed" it
loops for ever; with it, each line N on stdin runs N rounds and prints "done WALL CPU", the wall
and CPU seconds (time.process_time: the process's, kernel time spent in it included) they took
by the program's own clocks (a fixed amount of work, for measuring slowdown).
"""
import os
import sys
import threading
import time

UNITS = int(sys.argv[1]) if len(sys.argv) > 1 else 20000


def heavy(x):
    for i in range(3 * UNITS):
        x = (x * 31 + i) % 1000003  # @heavy
    return x


def light(x):
    for i in range(UNITS):
        x = (x * 31 + i) % 1000003  # @light
    return x


def watch_stdin():
    while sys.stdin.buffer.read(1):
        pass
    os._exit(0)


def timed(x):
    for line in sys.stdin:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(int(line)):
            x = light(heavy(x))
        print("done %.6f %.6f" % (time.perf_counter() - wall, time.process_time() - cpu),
              flush=True)
    os._exit(0)


def main():
    if sys.argv[2:] != ["timed"]:
        threading.Thread(target=watch_stdin, daemon=True).start()
    x = light(heavy(1))
    print("ready", flush=True)
    if sys.argv[2:] == ["timed"]:
        timed(x)
    while True:
        x = light(heavy(x))


main()
