"""The agent as a long-lived service: its status topic and last will, a broker restart, a crash
that leaves runs behind, a clean stop, and the `run` command line."""
import json
import os
import signal
import sqlite3
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import AGENT, ROOT_FLAGS, Agent, Broker, Client, Session, wait_online


@pytest.fixture
def fresh(workdir, demo, request):
    broker = Broker(workdir)
    broker.start()
    node = f"life{abs(hash(request.node.name)) % 100000}"
    client = Client(broker.port)
    client.subscribe(f"profiler/{node}/#")
    agent = Agent(broker, workdir, node, f"pid:{demo.pid}")
    yield broker, agent, client
    client.close()
    if agent.proc:
        agent.stop(signal.SIGKILL)
    broker.stop()


def test_online_then_offline_on_clean_stop(fresh):
    broker, agent, client = fresh
    agent.start()
    msg = wait_online(client, agent.node)
    assert msg.retain or msg.payload == b"online"
    assert agent.stop(signal.SIGTERM) == 0
    msg = client.wait_for(lambda m: m.topic == f"profiler/{agent.node}/status" and
                          m.payload == b"offline")
    # Retained: a client that connects later sees it.
    late = Client(broker.port)
    late.subscribe(f"profiler/{agent.node}/status")
    m = late.wait_for(lambda m: m.topic.endswith("/status"))
    assert m.payload == b"offline" and m.retain
    late.close()


def test_kill_9_leaves_retained_offline_will(fresh):
    broker, agent, client = fresh
    agent.start()
    wait_online(client, agent.node)
    agent.proc.kill()
    agent.proc.wait()
    agent.proc = None
    agent.stderr.close()
    client.wait_for(lambda m: m.topic == f"profiler/{agent.node}/status" and
                    m.payload == b"offline", timeout=5)


def test_broker_restart_back_online_within_5s(fresh):
    broker, agent, client = fresh
    agent.start()
    wait_online(client, agent.node)
    client.close()
    broker.stop()
    time.sleep(0.5)
    broker.start()
    back = time.monotonic()
    client = Client(broker.port)
    client.subscribe(f"profiler/{agent.node}/#")
    wait_online(client, agent.node, timeout=5)
    result, _ = Session(broker, agent, client).command("lru_stats", timeout=5)
    assert result["status"] == "ok"
    assert time.monotonic() - back <= 5.0
    client.close()


def test_runs_left_running_by_a_crash_become_interrupted(fresh):
    broker, agent, client = fresh
    agent.start()
    wait_online(client, agent.node)
    result, _ = Session(broker, agent, client).command("lru_stats")
    agent.proc.kill()
    agent.proc.wait()
    agent.proc = None
    agent.stderr.close()
    # What a crash mid-run leaves behind: a row still marked running.
    db = sqlite3.connect(agent.db)
    # Started now: retention (30 days by default) would delete an older run at the next start.
    db.execute("INSERT INTO runs (action, status, started) VALUES ('start', 'running', "
               "strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))")
    db.commit()
    crashed = db.execute("SELECT max(id) FROM runs").fetchone()[0]
    db.close()
    client.drain()
    client.seen.clear()
    agent.start()
    wait_online(client, agent.node)
    db = sqlite3.connect(agent.db)
    status, finished = db.execute("SELECT status, finished FROM runs WHERE id = ?",
                                  (crashed,)).fetchone()
    assert status == "interrupted" and finished
    assert db.execute("SELECT status FROM runs WHERE id = ?",
                      (result["run_id"],)).fetchone()[0] == "ok"
    db.close()


def test_retained_command_waiting_at_connect_is_not_run(fresh):
    broker, agent, client = fresh
    client.publish(f"profiler/{agent.node}/lru_stats", {"request_id": "old"}, retain=True)
    agent.start()
    wait_online(client, agent.node)
    result, _ = Session(broker, agent, client).command("lru_stats")
    assert result["status"] == "ok"
    rids = [json.loads(m.payload).get("request_id") for m in client.seen
            if m.topic.endswith("/result")]
    assert "old" not in rids


def test_mqtt_311_client_gets_results_by_request_id(fresh):
    broker, agent, client = fresh
    agent.start()
    wait_online(client, agent.node)
    old = Client(broker.port, protocol=mqtt.MQTTv311)
    old.subscribe(f"profiler/{agent.node}/result")
    old.publish(f"profiler/{agent.node}/lru_stats", {"request_id": "v311"})
    m = old.wait_for(lambda m: json.loads(m.payload).get("request_id") == "v311")
    assert json.loads(m.payload)["status"] == "ok"
    old.close()


def run_cli(*args, **kw):
    return subprocess.run([AGENT, *args, *ROOT_FLAGS], capture_output=True, text=True,
                          timeout=30, **kw)


def test_run_prints_records_then_result(demo):
    p = run_cli("run", "log_thread_frames", "--target", f"pid:{demo.pid}")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().split("\n")
    result = json.loads(lines[-1])
    assert result["status"] == "ok" and result["target"]["pid"] == demo.pid
    assert sum(1 for l in lines if l.startswith("Thread [")) == 5
    assert "serve_connections" in p.stdout


def test_run_self_and_errors():
    p = run_cli("run", "log_thread_frames")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().split("\n")[-1])["target"]["spec"] == "self"
    assert "Thread [profiler-agent]" in p.stdout or "Thread [" in p.stdout
    p = run_cli("run", "start", '{"seconds": -1}')
    assert p.returncode == 1
    assert json.loads(p.stdout)["error"] == "seconds: must be greater than 0"
    p = run_cli("run", "log_thread_frames", "--target", "pid:999999999")
    assert p.returncode == 1
    assert "no such process" in json.loads(p.stdout)["error"]


def test_command_line_and_config_errors(workdir):
    assert run_cli("--version").stdout.startswith("profiler-agent ")
    h = run_cli("--help")
    assert h.returncode == 0
    for word in ["--broker", "--node-id", "--target", "--output-dir", "--database",
                 "--log-level", "allowed_targets", "log_thread_frames", "run ACTION"]:
        assert word in h.stdout
    conf = os.path.join(workdir, "bad.conf")
    with open(conf, "w") as f:
        f.write("# comment\nbroker_port = 1883\nbogus_key = 1\n")
    p = run_cli("--config", conf)
    assert p.returncode == 2
    assert "bogus_key" in p.stderr and ":3:" in p.stderr
    assert run_cli("--no-such-flag", "x").returncode == 2
    p = run_cli("run", "lru_stats", "--target", "nonsense")
    assert p.returncode == 2


def test_config_example_lists_every_key():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    text = open(os.path.join(root, "config.example")).read()
    p = run_cli("run", "lru_stats", "--config", os.path.join(root, "config.example"))
    assert p.returncode == 0, p.stderr
    for key in ["broker_host", "broker_port", "username", "password", "password_file",
                "tls_ca_file", "tls_cert_file", "tls_key_file", "client_id", "keepalive",
                "mqtt_version", "node_id", "topic_prefix", "discovery", "discovery_prefix",
                "output_dir", "database", "target", "allowed_targets", "max_payload_bytes"]:
        assert f"{key} =" in text, key


def test_broker_credentials_from_password_file(workdir, demo):
    passwd = os.path.join(workdir, "broker.passwd")
    subprocess.run(["mosquitto_passwd", "-c", "-b", passwd, "agent", "s3cret pass"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", passwd, "tester", "t"], check=True)
    os.chmod(passwd, 0o600)
    # As root mosquitto drops to its own user, who could not read our 0600 file.
    broker = Broker(workdir, f"allow_anonymous false\npassword_file {passwd}\nuser root\n")
    broker.start()
    client = Client(broker.port, auth=("tester", "t"))
    client.subscribe("profiler/authed/#")
    secret = os.path.join(workdir, "agent.secret")
    with open(secret, "w") as f:
        f.write("s3cret pass\n")
    agent = Agent(broker, workdir, "authed", f"pid:{demo.pid}",
                  f"username = agent\npassword_file = {secret}\n")
    wrong = Agent(broker, workdir, "wrongpw", f"pid:{demo.pid}",
                  "username = agent\npassword = nope\n")
    try:
        agent.start()
        wait_online(client, "authed")
        result, _ = Session(broker, agent, client).command("lru_stats")
        assert result["status"] == "ok"
        wrong.start()
        deadline = time.monotonic() + 10
        while "refused the connection" not in wrong.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "broker 127.0.0.1:%d refused the connection: bad user name or password" \
            % broker.port in wrong.log_text()
        assert wrong.proc.poll() is None
    finally:
        client.close()
        agent.stop()
        wrong.stop()
        broker.stop()


def test_mqtt_311_agent_skips_retained_commands(workdir, demo):
    broker = Broker(workdir)
    broker.start()
    client = Client(broker.port)
    client.subscribe("profiler/old311/#")
    client.publish("profiler/old311/lru_stats", {"request_id": "stale"}, retain=True)
    agent = Agent(broker, workdir, "old311", f"pid:{demo.pid}", "mqtt_version = 3.1.1\n")
    try:
        agent.start()
        wait_online(client, "old311")
        result, _ = Session(broker, agent, client).command("lru_stats")
        assert result["status"] == "ok"
        assert "stale" not in [json.loads(m.payload).get("request_id") for m in client.seen
                               if m.topic.endswith("/result")]
        client.wait_for(lambda m: m.topic.endswith("/log") and b"retained command" in m.payload)
        assert "(MQTT 3.1.1)" in agent.log_text()
    finally:
        client.close()
        agent.stop()
        broker.stop()
