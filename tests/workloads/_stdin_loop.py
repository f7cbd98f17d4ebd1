"""The Python workloads' command loop: the main thread idles in short sleeps (each turn a safe
point, where the agent's scripts run) and runs each command line that a thread reads from stdin,
so an answer shows the main thread still runs Python. "p" prints "pong"; EOF returns. Imported by
name: a workload's own folder is on sys.path, run directly or under chroot from /mnt."""
import sys
import threading
import time


def serve(commands, nap=0.0, tick=None):
    """Runs commands[line]() for each line read (unknown lines are passed over) until EOF; with
    nap, first sleeps nap seconds at once (no safe point meanwhile); tick() at each turn."""
    lines = []
    done = threading.Event()

    def read():
        for line in sys.stdin:
            lines.append(line.strip())
        done.set()

    threading.Thread(target=read, daemon=True).start()
    if nap:
        time.sleep(nap)
    commands = dict(commands, p=lambda: print("pong", flush=True))
    while not done.is_set():
        while lines:
            commands.get(lines.pop(0), lambda: None)()
        if tick:
            tick()
        time.sleep(0.01)
