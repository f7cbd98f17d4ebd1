"""Test target for the event-loop actions from inside: an asyncio program on its main thread with
known timers (call_later, far in the future: they never fire during a test; one whose callback's
repr raises, one whose repr holds a newline and a long string), known ready handles and named
tasks. Its loop turns on one callback, tick, which queues SOON handles soon(I) and itself, then
sleeps 20 ms: while it sleeps (where a request from outside lands, at the next safe point),
loop._ready is exactly [soon(0), ..., soon(SOON-1), tick] and loop._scheduled holds the timers.
Prints "ready PID". On stdin, answered from tick after its sleep, so at that same point: "v"
prints "view JSON", the program's own view as Home Assistant's Profiler would log it ("scheduled":
repr of every handle not cancelled in loop._scheduled then loop._ready; "tasks": repr(task) and
the task.print_stack() lines of every task not cancelled; "debug": loop.get_debug()); "p" prints
"pong"; EOF ends it."""
import asyncio
import io
import json
import os
import reprlib
import sys
import threading
import time

SOON = 3
STACK = 32  # frames of print_stack, as the agent asks for
requests = []


class Raising:
    """A callback whose repr raises: the handle's repr fails."""

    def __call__(self):
        pass

    def __repr__(self):
        raise RuntimeError("no repr")


class Forging:
    """A callback whose repr would forge a second record if it were not cleaned."""

    def __call__(self):
        pass

    def __repr__(self):
        return "forged\nScheduled: <TimerHandle when=0 forged() at nowhere:1>"


def later(*args):
    pass


def soon(i):
    pass


def safe_repr(obj):
    """The Profiler's _safe_repr."""
    try:
        return repr(obj)
    except Exception:
        return f"Failed to serialize {type(obj)}"


def view(loop):
    """What the Profiler logs, under its _increase_repr_limit."""
    saved = reprlib.aRepr.maxstring, reprlib.aRepr.maxother
    reprlib.aRepr.maxstring = reprlib.aRepr.maxother = 300
    try:
        handles = [safe_repr(h) for q in (loop._scheduled, loop._ready) for h in q
                   if not h.cancelled()]
        tasks = []
        for t in asyncio.all_tasks(loop):
            if not t.cancelled():
                buf = io.StringIO()
                t.print_stack(limit=STACK, file=buf)
                tasks.append({"repr": safe_repr(t), "stack": buf.getvalue().splitlines()})
    finally:
        reprlib.aRepr.maxstring, reprlib.aRepr.maxother = saved
    return {"version": sys.version.split()[0], "scheduled": handles, "tasks": tasks,
            "debug": loop.get_debug()}


def tick(loop, stop):
    for i in range(SOON):
        loop.call_soon(soon, i)
    loop.call_soon(tick, loop, stop)
    time.sleep(0.02)  # the safe point lands here
    while requests:
        cmd = requests.pop(0)
        if cmd == "v":
            print("view", json.dumps(view(loop)), flush=True)
        elif cmd == "p":
            print("pong", flush=True)
        elif cmd is None:
            stop.set()


async def worker(event):
    await event.wait()  # @worker


async def sleeper():
    await asyncio.sleep(3600)  # @sleeper


async def main():
    loop = asyncio.get_running_loop()
    stop, never = asyncio.Event(), asyncio.Event()
    loop.call_later(3600, later, 1)
    loop.call_later(7200, later, "x" * 1000)
    loop.call_later(5400, Raising())
    loop.call_later(4000, Forging())
    loop.call_later(4500, later, 2).cancel()  # cancelled: not listed
    for i in range(3):
        asyncio.create_task(worker(never), name=f"worker-{i}")
    asyncio.create_task(sleeper(), name="sleeper")
    await asyncio.sleep(0)  # every task starts and parks

    def read():
        for line in sys.stdin:
            requests.append(line.strip())
        requests.append(None)

    threading.Thread(target=read, daemon=True).start()
    print("ready", os.getpid(), flush=True)
    loop.call_soon(tick, loop, stop)
    await stop.wait()  # @main


asyncio.run(main())
