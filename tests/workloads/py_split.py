"""Test target for Python-level CPU attribution: the main thread loops over heavy() and light(),
whose loops have the same body and run 3 to 1 iterations, so about 75% of the CPU time is spent
in heavy and 25% in light. Prints "ready" after the first round. Usage: py_split.py [UNITS]
(iterations of light per round, default 20000). EOF on stdin exits.
"""
import os
import sys
import threading

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


def main():
    threading.Thread(target=watch_stdin, daemon=True).start()
    x = light(heavy(1))
    print("ready", flush=True)
    while True:
        x = light(heavy(x))


main()
