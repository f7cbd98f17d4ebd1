"""Target for the figures and the safety checks of answers from inside: a Home Assistant-sized
asyncio program on its main thread. TASKS named tasks parked on an event, TIMERS call_later
timers far in the future (they never fire during a run), OBJECTS objects of its own (half Item
instances, half dicts), a few functools.lru_caches used once at start, and a ticker that wakes
the loop every 100 ms. Prints "ready PID". Its stdin is read by a thread and each line handled on
the loop's thread, between two callbacks:
  "p"        prints "pong";
  "v"        prints "view JSON": {"version", "caches": {repr(wrapped function): str(cache_info())},
             "items": how many Item objects it holds};
  "grow N"   adds N objects (half Item instances, half dicts), prints "grown TOTAL";
  "t WHAT"   runs in-process what Home Assistant's Profiler runs for one action, prints
             "took WHAT MS": lru (lru_stats), scheduled (log_event_loop_scheduled), tasks
             (log_current_tasks), debug (set_asyncio_debug, to the state it has), dict
             (dump_log_objects of dict, 1,000 reprs), heap (a census of the heap by type with
             sys.getsizeof, as far as the gc reaches: what memory's Python heap counts);
  "l WHAT"   the same, and each line it makes logged as the Profiler logs it (_LOGGER.critical)
             through a QueueHandler, as Home Assistant's loop hands its records to a thread
             (which then formats and writes them; not timed); prints "took WHAT MS".
EOF ends it."""
import asyncio
import functools
import gc
import io
import json
import logging
import logging.handlers
import os
import queue
import reprlib
import sys
import threading
import time

TASKS, TIMERS, OBJECTS = 200, 1000, 500_000
REPRS = 1000  # dump_log_objects' max_objects default
kept = []
RECORDS = queue.SimpleQueue()  # emptied after each "l": nothing writes them
LOG = logging.getLogger("py_big.profiler")
LOG.propagate = False
LOG.addHandler(logging.handlers.QueueHandler(RECORDS))


class Item:
    def __init__(self, n):
        self.n = n
        self.name = "item"


@functools.lru_cache(maxsize=64)
def entity_id(domain, n):
    return f"{domain}.item_{n}"


@functools.lru_cache(maxsize=None)
def split_id(eid):
    return tuple(eid.split(".", 1))


class Template:
    @functools.lru_cache(maxsize=16)
    def render(self, value):
        return f"<{value}>"


CACHED = (entity_id, split_id, Template.render)


def warm():
    for n in (1, 2, 3, 1, 2, 1):
        split_id(entity_id("sensor", n))
    t = Template()
    for value in (2, 2, 3, 4):
        t.render(value)
    kept.append(t)


def grow(n):
    kept.extend(Item(i) if i % 2 else {"n": i} for i in range(n))


def safe_repr(obj):
    try:
        return repr(obj)
    except Exception:
        return f"Failed to serialize {type(obj)}"


def lru(loop):
    wrapper = functools._lru_cache_wrapper
    return [f"Cache stats for lru_cache {obj.__wrapped__} at {obj.cache_info()}"
            for obj in [o for o in gc.get_objects() if isinstance(o, wrapper)]]


def scheduled(loop):
    saved = reprlib.aRepr.maxstring, reprlib.aRepr.maxother
    reprlib.aRepr.maxstring = reprlib.aRepr.maxother = 300
    try:
        return ["Scheduled: " + safe_repr(h) for q in (loop._scheduled, loop._ready) for h in q
                if not h.cancelled()]
    finally:
        reprlib.aRepr.maxstring, reprlib.aRepr.maxother = saved


def tasks(loop):
    lines = []
    for t in asyncio.all_tasks(loop):
        buf = io.StringIO()
        t.print_stack(limit=32, file=buf)
        lines.append("Task: " + safe_repr(t) + "\n" + buf.getvalue())
    return lines


def debug(loop):
    loop.set_debug(loop.get_debug())
    return []


def dicts(loop):
    found = [o for o in gc.get_objects() if type(o).__name__ == "dict"]
    return ["dict object in memory: " + safe_repr(o) for o in found[:REPRS]]


def heap(loop):
    kinds = {}
    for obj in gc.get_objects():
        for o in (obj, *(r for r in gc.get_referents(obj) if not gc.is_tracked(r))):
            row = kinds.setdefault(type(o).__name__, [0, 0])
            row[0] += 1
            row[1] += sys.getsizeof(o)
    return []


WORK = {"lru": lru, "scheduled": scheduled, "tasks": tasks, "debug": debug, "dict": dicts,
        "heap": heap}


def view():
    caches = {repr(f.__wrapped__): str(f.cache_info()) for f in CACHED}
    return {"version": sys.version.split()[0], "caches": caches,
            "items": sum(type(o) is Item for o in kept)}


def handle(loop, stop, line):
    if line is None:
        stop.set()
        return
    cmd, _, arg = line.partition(" ")
    if cmd == "p":
        print("pong", flush=True)
    elif cmd == "v":
        print("view", json.dumps(view()), flush=True)
    elif cmd == "grow":
        grow(int(arg))
        print("grown", len(kept), flush=True)
    elif cmd in ("t", "l"):
        t0 = time.perf_counter()
        lines = WORK[arg](loop)
        if cmd == "l":
            for line in lines:
                LOG.critical("%s", line)
        took = (time.perf_counter() - t0) * 1000
        while not RECORDS.empty():
            RECORDS.get()
        print("took", arg, took, flush=True)


def later(*args):
    pass


async def parked(event, i):
    await event.wait()


async def ticker():
    while True:
        await asyncio.sleep(0.1)


async def main():
    loop = asyncio.get_running_loop()
    stop, never = asyncio.Event(), asyncio.Event()
    for i in range(TIMERS):
        loop.call_later(3600 + i, later, i)
    for i in range(TASKS):
        asyncio.create_task(parked(never, i), name=f"parked-{i}")
    asyncio.create_task(ticker(), name="ticker")
    warm()
    grow(OBJECTS)
    await asyncio.sleep(0)

    def read():
        for line in sys.stdin:
            loop.call_soon_threadsafe(handle, loop, stop, line.strip())
        loop.call_soon_threadsafe(handle, loop, stop, None)

    threading.Thread(target=read, daemon=True).start()
    print("ready", os.getpid(), flush=True)
    await stop.wait()


asyncio.run(main())
