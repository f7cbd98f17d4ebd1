"""Faults, each through a real broker: the broker killed and restarted mid-profile, the agent
killed with -9 mid-run, the target killed mid-run, a full disk, a locked or damaged run database,
a target with thousands of threads, a target held by gdb; and the refusal to run as root."""
import json
import marshal
import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
import pytest

from conftest import (AGENT, BUILD, ROOT_FLAGS, TIMEOUT, Agent, Broker, Client, Session,
                      agent_session, free_port, running_workload, unprivileged_session,
                      wait_online)

FINAL = re.compile(r"^(profile\.\d+\.cprof|callgrind\.out\.\d+|flamegraph\.\d+\.svg|"
                   r"heap_profile\.\d+\.hpy|massif\.out\.\d+)$")


def files_in(d):
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def complete(path):
    """A final-named file is whole: the pstats dict loads, the SVG and Callgrind files end."""
    data = open(path, "rb").read()
    name = os.path.basename(path)
    if name.endswith(".cprof"):
        return isinstance(marshal.loads(data), dict)
    if name.endswith(".svg"):
        return data.rstrip().endswith(b"</svg>")
    return len(data) > 0 and data.endswith(b"\n")


def restart(agent, client):
    """Starts agent again and waits for its new "online", not an old one."""
    agent.stderr.close()
    client.drain()
    client.seen.clear()
    agent.start()
    wait_online(client, agent.node)


def runs_of(session, **query):
    result, _ = session.command("runs", {"limit": 100, **query})
    assert result["status"] == "ok", result
    return result["summary"]["runs"]


def test_refuses_root_without_allow_root(workdir):
    if os.geteuid() != 0:
        pytest.skip("the refusal is of root")
    for args in (["--broker", "127.0.0.1:1"], ["run", "lru_stats"]):
        p = subprocess.run([AGENT, *args], capture_output=True, text=True, timeout=30)
        assert p.returncode == 2, p
        assert "refusing to run as root" in p.stderr
        for word in ("CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "--allow-root"):
            assert word in p.stderr
    p = subprocess.run([AGENT, "run", "lru_stats", "--allow-root"], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0 and json.loads(p.stdout.strip().split("\n")[-1])["status"] == "ok"


def test_ping_names_missing_capabilities(workdir):
    """As root every capability is there; as nobody with none, ping names all three."""
    with agent_session(workdir, "capsroot", "self") as s:
        result, _ = s.command("ping")
        assert result["status"] == "ok", result
        assert result["summary"]["missing_capabilities"] == []
    if os.geteuid() != 0:
        pytest.skip("needs root to run the agent as another user")
    with unprivileged_session("capsnobody", "self") as s:
        result, _ = s.command("ping")
        assert result["status"] == "ok", result
        assert result["summary"]["uid"] == 65534
        assert sorted(result["summary"]["missing_capabilities"]) == [
            "CAP_DAC_READ_SEARCH", "CAP_PERFMON", "CAP_SYS_PTRACE"]


class PersistentClient:
    """A paho client whose session (subscriptions, messages for it) outlives a broker restart
    and which reconnects by itself, as Home Assistant's does."""

    def __init__(self, port, topic):
        self.messages = []
        self.client = mqtt.Client(client_id=f"faults-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.messages.append(
            (time.monotonic(), m.topic, m.payload))
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)

    def publish(self, topic, payload):
        # While the broker is down paho keeps a QoS 1 message and sends it on reconnect.
        return self.client.publish(topic, json.dumps(payload), qos=1)

    def result(self, rid, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, topic, payload in list(self.messages):
                if topic.endswith("/result") and json.loads(payload).get("request_id") == rid:
                    return t, json.loads(payload)
            time.sleep(0.02)
        raise TimeoutError(f"no result for {rid}")

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def test_broker_restart_mid_profile_loses_nothing(workdir):
    """The broker dies 1 s into a 4 s profile and comes back 2 s later with its saved sessions.
    The profile's result, and every command sent while the broker was down, are answered."""
    work = tempfile.mkdtemp(prefix="profiler-agent-restart-", dir=workdir)
    broker = Broker(work, persistent=True)
    broker.start()
    with running_workload("cpu_split") as target:
        agent = Agent(broker, work, "restart", f"pid:{target.pid}")
        client = PersistentClient(broker.port, "profiler/restart/#")
        try:
            agent.start()
            deadline = time.monotonic() + TIMEOUT
            while not any(m[1].endswith("/status") and m[2] == b"online"
                          for m in client.messages):
                assert time.monotonic() < deadline, "agent not online"
                time.sleep(0.05)
            time.sleep(1.5)     # both sessions saved by the broker's autosave
            client.publish("profiler/restart/start", {"seconds": 4, "request_id": "long"})
            deadline = time.monotonic() + TIMEOUT
            while not any(m[1].endswith("/progress") for m in client.messages):
                assert time.monotonic() < deadline, "no progress"
                time.sleep(0.05)
            broker.kill()
            down = [f"down{i}" for i in range(5)]
            for rid in down:
                client.publish("profiler/restart/ping", {"request_id": rid})
            time.sleep(2)
            broker.start()
            restarted = time.monotonic()
            _, first = client.result("down0", 15)
            answered = time.monotonic() - restarted
            _, result = client.result("long", 20)
            assert result["status"] == "ok", result
            assert result["summary"]["seconds"] >= 3.5
            assert all(os.path.exists(f) and complete(f) for f in result["files"])
            lost = 0
            for rid in down:
                try:
                    client.result(rid, 5)
                except TimeoutError:
                    lost += 1
            print(f"\nbroker restart: answering again {answered:.2f} s after the broker "
                  f"was back; commands lost {lost} of {len(down)}")
            assert first["status"] == "ok" and lost == 0
            assert answered <= 5
            assert "lost the connection to broker" in agent.log_text()
        finally:
            client.close()
            if agent.proc:
                agent.stop()
            broker.stop()


def test_agent_killed_mid_run(workdir):
    """kill -9 mid-profile: the run is interrupted at the next start, nothing but *.tmp.* is ever
    left under the output names, and the next start removes temporary files of dead agents (and
    only those)."""
    work = tempfile.mkdtemp(prefix="profiler-agent-kill9-", dir=workdir)
    profiles = os.path.join(work, "profiles")
    with running_workload("cpu_split") as target:
        broker = Broker(work)
        broker.start()
        try:
            with agent_session(work, "kill9", f"pid:{target.pid}", broker=broker) as s:
                s.client.publish("profiler/kill9/start", {"seconds": 5, "request_id": "k"})
                s.client.wait_for(lambda m: m.topic.endswith("/progress"))
                s.agent.proc.kill()
                s.agent.proc.wait(5)
                assert not [f for f in files_in(profiles) if FINAL.match(f)]
                # Killed while writing: whatever made it to a final name is whole.
                for delay in (0.9, 1.0, 1.1, 1.2):
                    restart(s.agent, s.client)
                    s.client.publish("profiler/kill9/start", {"seconds": 1})
                    time.sleep(delay)
                    s.agent.proc.kill()
                    s.agent.proc.wait(5)
                for f in files_in(profiles):
                    assert FINAL.match(f) or ".tmp." in f, f
                    if FINAL.match(f):
                        assert complete(os.path.join(profiles, f)), f
                dead = subprocess.Popen(["true"])
                dead.wait()
                stale = f"flamegraph.1.svg.tmp.{dead.pid}"
                mine = f"flamegraph.2.svg.tmp.{os.getpid()}"
                other = "notes.txt.tmp.1"
                for name in (stale, mine, other):
                    open(os.path.join(profiles, name), "w").write("partial")
                restart(s.agent, s.client)
                runs = runs_of(s)
                killed = [r for r in runs if r.get("request_id") == "k"]
                assert killed and killed[0]["status"] == "interrupted", killed
                assert "stopped before the run finished" in killed[0]["error"]
                assert not [r for r in runs if r["status"] == "running"]
                left = files_in(profiles)
                assert stale not in left and mine not in left and other in left
                assert not [f for f in left if ".tmp." in f and f != other], left
        finally:
            broker.stop()


def test_target_killed_mid_run_keeps_partial_results(workdir):
    """The target killed with -9 mid-run: start and memory both answer ok with what they had."""
    with running_workload("cpu_split") as cpu, running_workload("allocs") as allocs, \
            agent_session(workdir, "tkill", f"pid:{cpu.pid}",
                          f"allowed_targets = pid:{allocs.pid}\n") as s:
        s.client.publish("profiler/tkill/start", {"seconds": 4, "request_id": "cpu"})
        s.client.publish("profiler/tkill/memory",
                         {"seconds": 4, "request_id": "mem", "target": f"pid:{allocs.pid}"})
        s.client.wait_for(lambda m: m.topic.endswith("/progress") and
                          json.loads(m.payload).get("request_id") == "cpu")
        time.sleep(1.5)
        cpu.kill()
        allocs.kill()
        for rid in ("cpu", "mem"):
            m = s.client.wait_for(lambda m: m.topic.endswith("/result") and
                                  json.loads(m.payload).get("request_id") == rid, 30)
            result = json.loads(m.payload)
            assert result["status"] == "ok", result
            assert any("exited" in w for w in result.get("warnings", [])), result
            assert result["files"] and all(complete(f) for f in result["files"]), result


def test_disk_full_in_output_dir(workdir):
    """output_dir on a 64 KiB tmpfs with one page free: a clear error naming the file and the
    cause, no temporary file left, whole files only; room again, and the next profile works."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    work = tempfile.mkdtemp(prefix="profiler-agent-full-", dir=workdir)
    profiles = os.path.join(work, "profiles")
    os.makedirs(profiles)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0750", "tmpfs", profiles],
                   check=True)
    try:
        filler = os.path.join(profiles, "filler")
        with open(filler, "wb") as f:
            f.write(b"x" * 60 * 1024)
        with running_workload("cpu_split") as target, \
                agent_session(work, "full", f"pid:{target.pid}") as s:
            result, _ = s.command("start", {"seconds": 1}, timeout=30)
            assert result["status"] == "error", result
            assert "No space left on device" in result["error"], result
            assert result["error"].startswith(f"cannot write {profiles}/"), result
            for f in files_in(profiles):
                assert f == "filler" or FINAL.match(f), f
                if FINAL.match(f):
                    assert complete(os.path.join(profiles, f))
                    assert os.path.join(profiles, f) in result["files"]
            os.unlink(filler)
            again, _ = s.command("start", {"seconds": 1}, timeout=30)
            assert again["status"] == "ok", again
            assert len(again["files"]) == 3
    finally:
        subprocess.run(["umount", profiles], check=True)


def test_database_locked_by_another_process(workdir, demo):
    """Another process holds the write lock: commands are answered all the same, each saying its
    run is not recorded, and recording resumes when the lock goes."""
    with agent_session(workdir, "locked", f"pid:{demo.pid}") as s:
        db = sqlite3.connect(s.agent.db, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        try:
            t0 = time.monotonic()
            result, _ = s.command("lru_stats")
            took = time.monotonic() - t0
            assert result["status"] == "ok", result
            assert result["run_id"] is None
            assert any("not recorded in the database" in w and "locked" in w
                       for w in result["warnings"]), result
            assert took < 5
            dump, _ = s.command("log_thread_frames")
            assert dump["status"] == "ok", dump
        finally:
            db.execute("ROLLBACK")
            db.close()
        assert "database is locked" in s.agent.log_text()
        result, _ = s.command("lru_stats")
        assert result["status"] == "ok" and result["run_id"] and "warnings" not in result

    # Locked already when the agent starts: it starts, says so, and answers.
    db = sqlite3.connect(os.path.join(workdir, "locked.db"), isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        with agent_session(workdir, "locked", f"pid:{demo.pid}") as s:
            result, _ = s.command("ping")
            assert result["status"] == "ok", result
            assert "runs are not recorded until the agent is restarted" in s.agent.log_text()
            runs, _ = s.command("runs")
            assert runs["status"] == "error" and "no run database" in runs["error"]
    finally:
        db.execute("ROLLBACK")
        db.close()


def test_damaged_database_is_set_aside(workdir, demo):
    """A database file of garbage: the agent names it, moves it aside, starts a new one and
    answers; the damaged file is kept for whoever wants to look at it."""
    db = os.path.join(workdir, "damaged.db")
    garbage = os.urandom(8192)
    with open(db, "wb") as f:
        f.write(garbage)
    with agent_session(workdir, "damaged", f"pid:{demo.pid}") as s:
        result, _ = s.command("ping")
        assert result["status"] == "ok", result
        log = s.agent.log_text()
        assert f"cannot use the run database {db}" in log
        m = re.search(r"moved the damaged run database \S+ to (\S+);", log)
        assert m, log
        assert open(m.group(1), "rb").read() == garbage
        runs, _ = s.command("runs")
        assert runs["status"] == "ok" and runs["summary"]["runs"][0]["action"] == "ping"


def test_thousands_of_threads(workdir):
    """2000 threads: every one logged (one record each, so the broker must be allowed to queue
    that many for a subscriber: mosquitto's default max_queued_messages is 1000)."""
    broker = Broker(workdir, "allow_anonymous true\nmax_queued_messages 10000\n")
    broker.start()
    with running_workload("many_threads", "2000") as target, \
            agent_session(workdir, "threads", f"pid:{target.pid}", broker=broker) as s:
        t0 = time.monotonic()
        result, logs = s.command("log_thread_frames", timeout=120)
        took = time.monotonic() - t0
        assert result["status"] == "ok", result
        assert result["summary"]["threads"] >= 2000
        assert sum(1 for l in logs if l.startswith("Thread [")) == result["summary"]["threads"]
        print(f"\n2000 threads: log_thread_frames answered in {took:.2f} s")
        assert s.command("ping")[0]["status"] == "ok"
    broker.stop()


def test_target_held_by_gdb(workdir):
    """gdb attached to the target: the dump fails saying the process is traced, by whom."""
    with running_workload("parked", stdin=subprocess.PIPE) as target, \
            agent_session(workdir, "gdbheld", f"pid:{target.pid}") as s:
        gdb = subprocess.Popen(["gdb", "-nx", "-batch", "-p", str(target.pid),
                                "-ex", "shell sleep 60"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            tracer = 0
            while not tracer:
                assert time.monotonic() < deadline, "gdb did not attach"
                status = open(f"/proc/{target.pid}/status").read()
                tracer = int(re.search(r"TracerPid:\s+(\d+)", status).group(1))
                time.sleep(0.1)
            assert tracer == gdb.pid
            result, _ = s.command("log_thread_frames", timeout=30)
            assert result["status"] == "error", result
            said = " ".join([result["error"], *result.get("warnings", [])])
            assert f"traced by gdb (pid {gdb.pid})" in said, result
            assert s.command("ping")[0]["status"] == "ok"
        finally:
            gdb.kill()
            gdb.wait()


class RefusesMqtt5:
    """A broker that speaks only MQTT 3.1.1, like RabbitMQ's plugin before 3.13: a CONNECT of
    protocol level 5 gets a 3.1.1 CONNACK "unacceptable protocol version"; others are relayed
    to a real mosquitto."""

    def __init__(self, upstream):
        self.upstream, self.refused = upstream, 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.relay, args=(conn,), daemon=True).start()

    def relay(self, conn):
        first = conn.recv(4096)
        # CONNECT: fixed header, remaining length (1 byte here), "\0\4MQTT", protocol level.
        if len(first) > 8 and first[0] == 0x10 and first[8] == 5:
            self.refused += 1
            conn.sendall(bytes([0x20, 2, 0, 1]))
            conn.close()
            return
        up = socket.create_connection(("127.0.0.1", self.upstream))
        up.sendall(first)
        pair = {conn: up, up: conn}
        try:
            while True:
                ready, _, _ = select.select(list(pair), [], [])
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    pair[s].sendall(data)
        except OSError:
            return
        finally:
            conn.close()
            up.close()

    def close(self):
        self.sock.close()


def test_broker_without_mqtt5_gets_311(workdir, demo):
    """Refused MQTT 5, the agent says so once, connects with 3.1.1 and answers."""
    broker = Broker(workdir)
    broker.start()
    proxy = RefusesMqtt5(broker.port)
    client = Client(broker.port)
    client.subscribe("profiler/no5/#")
    agent = Agent(broker, workdir, "no5", f"pid:{demo.pid}")
    agent.stderr = open(agent.stderr_path, "ab")
    agent.proc = subprocess.Popen(
        [AGENT, "--config", agent.config, "--broker", f"127.0.0.1:{proxy.port}",
         "--database", agent.db, "--output-dir", os.path.join(workdir, "profiles"),
         *ROOT_FLAGS], stdout=agent.stderr, stderr=agent.stderr)
    try:
        wait_online(client, "no5", timeout=15)
        result, _ = Session(broker, agent, client).command("lru_stats")
        assert result["status"] == "ok", result
        log = agent.log_text()
        assert log.count("does not speak MQTT 5; using MQTT 3.1.1") == 1, log
        assert "(MQTT 3.1.1)" in log and proxy.refused >= 1
    finally:
        client.close()
        assert agent.stop() == 0
        proxy.close()
        broker.stop()
