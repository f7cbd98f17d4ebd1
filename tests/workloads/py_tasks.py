"""Test target for asyncio tasks read from outside: a TaskGroup tree of known names, every task
parked in a sleep. The main task (unnamed: "Task-1") runs main, whose TaskGroup holds BRANCHES
tasks "branch-I" and a "reporter"; each branch's TaskGroup holds LEAVES tasks "leaf-I-J" that
await leaf -> nap -> asyncio.sleep. Once every leaf sleeps, the reporter prints "ready PID", then
one line "tasks JSON": {"version": "3.X.Y", "tasks": [{"name", "repr"}...]} for every task but
itself (asyncio.all_tasks() and repr(task), as Python sees them), then sleeps too.
Usage: py_tasks.py [BRANCHES [LEAVES]] (default 5 and 8: 47 tasks with main and the reporter)."""
import asyncio
import json
import os
import sys

BRANCHES = int(sys.argv[1]) if len(sys.argv) > 1 else 5
LEAVES = int(sys.argv[2]) if len(sys.argv) > 2 else 8
started = 0
all_started = None


async def nap():
    await asyncio.sleep(3600)  # @nap


async def leaf():
    global started
    started += 1
    if started == BRANCHES * LEAVES:
        all_started.set()
    await nap()  # @leaf


async def branch(i):
    async with asyncio.TaskGroup() as tg:  # @branch
        for j in range(LEAVES):
            tg.create_task(leaf(), name=f"leaf-{i}-{j}")


async def reporter():
    await all_started.wait()
    me = asyncio.current_task()
    tasks = [{"name": t.get_name(), "repr": repr(t)} for t in asyncio.all_tasks() if t is not me]
    print("ready", os.getpid(), flush=True)
    print("tasks", json.dumps({"version": sys.version.split()[0], "tasks": tasks}), flush=True)
    await nap()


async def main():
    global all_started
    all_started = asyncio.Event()
    async with asyncio.TaskGroup() as tg:  # @main
        for i in range(BRANCHES):
            tg.create_task(branch(i), name=f"branch-{i}")
        tg.create_task(reporter(), name="reporter")


asyncio.run(main())
