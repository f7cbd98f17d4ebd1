"""Test target for Python-level stacks: threads parked in known Python functions. Prints "ready"
once all are parked (each marks itself just before it blocks), then "tids main=T sleeper=T ..."
(OS thread ids by name). Usage: py_parked.py [EXTRA [deep]]: EXTRA more threads, and with "deep"
a thread DEPTH calls deep. On stdin: 's' prints every other thread's stack as Python itself sees
it (sys._current_frames), one line per thread, "stack IDENT FILE:LINE:QUALNAME|..." outermost
first, then "end"; 'x' exits through interpreter finalization; EOF exits at once (os._exit).
The lines marked "# @NAME" are where the threads wait:
  main     <module> -> main -> main_inner -> stdin read                 (# @read)
  sleeper  ... Thread.run -> sleeper_outer -> sleeper_inner -> time.sleep (# @sleep)
  waiter   ... Thread.run -> waiter_outer -> waiter_inner -> lock.acquire (# @acquire)
  spinner  ... Thread.run -> spinner_outer -> spinner_inner (CPU loop)    (# @spin)
  gen      ... Thread.run -> gen_outer -> gen_source (a generator) -> time.sleep (# @gen)
  uni      ... Thread.run -> uni_outer -> grüße_δ (a non-ASCII name) -> time.sleep (# @uni)
  deleter  ... Thread.run -> deleter_outer -> deleter_inner -> Parker.__del__ -> time.sleep
           (# @del: not at a call, so its line is not the next instruction's; # @delsleep)
  deep     ... Thread.run -> deep_outer -> deep x DEPTH -> time.sleep   (# @deep)
  extra-N  ... Thread.run -> extra_inner -> Event.wait -> Condition.wait (# @extra)
"""
import os
import sys
import threading
import time

held = threading.Lock()
stop = threading.Event()
arrived = threading.Semaphore(0)
tids = {}


def mark(name):
    tids[name] = threading.get_native_id()
    arrived.release()


def sleeper_inner():
    mark("sleeper")
    while True:
        time.sleep(3600)  # @sleep


def sleeper_outer():
    sleeper_inner()


def waiter_inner():
    # Its Thread's attributes move to a materialised instance dict, where names are read too.
    threading.current_thread().__dict__
    mark("waiter")
    held.acquire()  # @acquire


def waiter_outer():
    waiter_inner()


def spinner_inner():
    mark("spinner")
    x = 0
    while True:
        x = (x * 31 + 7) % 1000003  # @spin


def spinner_outer():
    spinner_inner()


def gen_source():
    mark("gen")
    while True:
        time.sleep(3600)  # @gen
        yield 1


def gen_outer():
    for _ in gen_source():
        pass


def grüße_δ():
    mark("uni")
    while True:
        time.sleep(3600)  # @uni


def uni_outer():
    grüße_δ()


class Parker:
    def __del__(self):
        mark("deleter")
        while True:
            time.sleep(3600)  # @delsleep


def deleter_inner():
    obj = Parker()
    del obj  # @del
    return 1


def deleter_outer():
    deleter_inner()


DEPTH = 600


def deep(n):
    if n > 1:
        deep(n - 1)  # @deeper
    mark("deep")
    while True:
        time.sleep(3600)  # @deep


def deep_outer():
    deep(DEPTH)


def extra_inner():
    arrived.release()
    stop.wait()  # @extra


def print_stacks():
    me = threading.get_ident()
    out = []
    for ident, f in sys._current_frames().items():
        if ident == me:
            continue
        chain = []
        while f is not None:
            chain.append("%s:%d:%s" % (f.f_code.co_filename, f.f_lineno, f.f_code.co_qualname))
            f = f.f_back
        out.append("stack %d %s\n" % (ident, "|".join(reversed(chain))))
    out.append("end\n")
    sys.stdout.buffer.write("".join(out).encode("utf-8"))
    sys.stdout.buffer.flush()


def main_inner():
    while True:
        c = sys.stdin.buffer.read(1)  # @read
        if not c:
            os._exit(0)
        if c == b"s":
            print_stacks()
        elif c == b"x":
            sys.exit(0)


def main():
    extra = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    held.acquire()
    targets = [sleeper_outer, waiter_outer, spinner_outer, gen_outer, uni_outer, deleter_outer]
    names = ["main", "sleeper", "waiter", "spinner", "gen", "uni", "deleter"]
    if len(sys.argv) > 2 and sys.argv[2] == "deep":
        targets.append(deep_outer)
        names.append("deep")
    named = len(targets)
    targets += [extra_inner] * extra
    for i, t in enumerate(targets):
        name = t.__name__.split("_")[0] if i < named else "extra-%d" % (i - named)
        threading.Thread(target=t, name=name, daemon=True).start()
    for _ in targets:
        arrived.acquire()
    tids["main"] = threading.get_native_id()
    print("ready", flush=True)
    print("tids " + " ".join("%s=%d" % (k, tids[k]) for k in names), flush=True)
    main_inner()


main()
