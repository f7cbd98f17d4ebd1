"""Test target for waking an idle event loop: an asyncio program whose loop, on its main thread,
has nothing to do: no timer, no ready handle, one task awaiting a future, and no I/O but stdin,
which the test leaves silent while the agent asks. Its thread sleeps in epoll_wait and runs no
bytecode until something wakes it. Prints "ready PID". On stdin: "c" checks that the loop still
works (a call_soon, a short sleep, a task) and that its self-pipe was drained, then prints
"checked JSON" ({"ok": true, "pending": bytes left in the self-pipe}); "p" prints "pong"; EOF
ends it."""
import asyncio
import json
import os
import sys


async def check(loop):
    ran = loop.create_future()
    loop.call_soon(ran.set_result, True)
    await asyncio.sleep(0.01)
    await asyncio.create_task(asyncio.sleep(0))
    try:
        pending = len(loop._ssock.recv(4096))  # the wake-up bytes were read by the loop already
    except BlockingIOError:
        pending = 0
    return {"ok": await ran, "pending": pending}


async def main():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    fd = sys.stdin.fileno()
    buf = bytearray()

    def on_stdin():
        data = os.read(fd, 4096)
        if not data:
            loop.remove_reader(fd)
            done.set_result(None)
            return
        buf.extend(data)
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            if line == b"p":
                print("pong", flush=True)
            elif line == b"c":
                task = loop.create_task(check(loop))
                task.add_done_callback(
                    lambda t: print("checked " + json.dumps(t.result()), flush=True))

    loop.add_reader(fd, on_stdin)
    print("ready", os.getpid(), flush=True)
    await done


asyncio.run(main())
