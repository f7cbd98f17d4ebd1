"""A workload of tests/workloads running as the agent's Python target: on Debian's python3 or
under chroot of a tests/pyroot.sh root, with the workloads bind-mounted at /mnt in a private mount
namespace (the pid namespace stays ours, so the pid it prints is the one the agent sees). Talks the
workloads' stdin protocol: "ready <pid>" first, then one answer line per command line. Which
Pythons and roots to use is each test's business (test_python_tasks.pyroot)."""
import glob
import json
import os
import subprocess
import time

WORKLOADS = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", "workloads"))
# The name every file the agent places in a target's /tmp starts with.
AGENT_FILES = "profiler-agent-py.*"


class PyTarget:
    """script (a file of tests/workloads) running on python, chrooted to root when given, with
    args and env ("NAME=value" strings); .proc, .pid, .tmp (its /tmp as the agent sees it).
    leftovers() waits up to linger seconds for files to go: other test runs on this machine may
    pass their own through the same /tmp meanwhile, each for a moment."""

    def __init__(self, script, python="/usr/bin/python3", root=None, args=(), env=(), linger=0):
        if root:
            sh = ('mount -t proc proc "$1/proc" && mount --bind "$2" "$1/mnt" && '
                  'shift 2 && exec chroot "$R" "$@"')
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", sh, "sh", root,
                   WORKLOADS, "env", *env, python, f"/mnt/{script}", *args]
            self.tmp = os.path.join(root, "tmp")
            environ = dict(os.environ, R=root)
        else:
            cmd = ["env", *env, python, os.path.join(WORKLOADS, script), *args]
            self.tmp = "/tmp"
            environ = None
        self.linger = linger
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=environ)
        ready = self.proc.stdout.readline().split()
        assert len(ready) == 2 and ready[0] == "ready", (ready, self.proc.stderr.read())
        self.pid = int(ready[1])

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def ask(self, line):
        """The line the workload answers line with."""
        self.send(line)
        return self.proc.stdout.readline()

    def read_json(self, word):
        """The JSON of the next line, which must be "word <JSON>"."""
        line = self.proc.stdout.readline()
        # An empty line is the end of its output: it has exited and its stderr says why (read
        # only then, as a running target's would never end).
        assert line.startswith(word + " "), (line, "" if line else self.proc.stderr.read())
        return json.loads(line[len(word) + 1:])

    def ask_json(self, line, word):
        """The JSON of the workload's "word <JSON>" answer to line."""
        self.send(line)
        return self.read_json(word)

    def alive(self):
        """Still running Python: answers a ping from its main thread."""
        return self.ask("p").strip() == "pong"

    def files(self):
        """The agent's files in the target's /tmp now."""
        return glob.glob(os.path.join(self.tmp, AGENT_FILES))

    def leftovers(self):
        """The agent's files in the target's /tmp still there after linger seconds."""
        deadline = time.monotonic() + self.linger
        while True:
            left = self.files()
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)

    def stop(self):
        """Ends it (EOF on stdin, then a kill after 5 s); returns its stderr."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stderr.read()
