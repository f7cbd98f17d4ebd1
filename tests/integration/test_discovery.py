"""Home Assistant's view of the agent: the device-based discovery config, expanded as Home
Assistant expands it and checked against its rules; every button pressed; numbers, text and
switches through P/N/set/NAME; settings kept across a restart; the config sent again after Home
Assistant's birth message and removed by `discovery = off`; P/N/state and the run events; sensors
that expire without the heartbeat, and the config sent again with it when asked."""
import json
import re
import sqlite3
import time

import jinja2
import pytest

from conftest import TIMEOUT, Agent, Broker, Client, Session, running_workload, wait_online

NODE = "hanode"
P = f"profiler/{NODE}"
CONFIG_TOPIC = f"homeassistant/device/{NODE}/config"

# Home Assistant's tables (components/mqtt/abbreviations.py), for the keys a discovery payload of
# this kind may use. A key the agent abbreviates wrongly stays unexpanded and fails the checks.
ABBREVIATIONS = {
    "avty": "availability", "cmd_t": "command_topic", "cmd_tpl": "command_template",
    "cmps": "components", "dev": "device", "dev_cla": "device_class", "e": "encoding",
    "en": "enabled_by_default", "ent_cat": "entity_category", "evt_typ": "event_types",
    "exp_aft": "expire_after",
    "ic": "icon", "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template", "max": "max", "min": "min", "mode": "mode",
    "name": "name", "o": "origin", "ops": "options", "p": "platform",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available", "pl_off": "payload_off", "pl_on": "payload_on",
    "pl_prs": "payload_press", "ptrn": "pattern", "stat_cla": "state_class",
    "stat_off": "state_off", "stat_on": "state_on", "stat_t": "state_topic", "step": "step",
    "t": "topic", "uniq_id": "unique_id", "unit_of_meas": "unit_of_measurement",
    "val_tpl": "value_template",
}
DEVICE_ABBREVIATIONS = {"cu": "configuration_url", "ids": "identifiers", "name": "name",
                        "mf": "manufacturer", "mdl": "model", "sw": "sw_version",
                        "hw": "hw_version", "sn": "serial_number", "sa": "suggested_area"}
ORIGIN_ABBREVIATIONS = {"name": "name", "sw": "sw_version", "url": "support_url"}
# components/mqtt/schemas.py: what a device payload's root may hold, and what it passes down.
ROOT_KEYS = {"availability", "availability_mode", "availability_template", "availability_topic",
             "payload_available", "payload_not_available", "device", "components", "origin",
             "state_topic", "command_topic", "qos", "encoding"}
SHARED_OPTIONS = ["availability", "availability_mode", "availability_template",
                  "availability_topic", "command_topic", "payload_available",
                  "payload_not_available", "state_topic"]
ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def _abbrev(d, table):
    return {table.get(k, k): v for k, v in d.items()}


def expand(payload):
    """A device discovery payload as Home Assistant's discovery.py turns it into one config per
    component: abbreviations (root, device, origin, availability, each component), shared options
    passed down, then `~` replaced at the start or end of *_topic values and availability topics."""
    root = _abbrev(json.loads(payload), ABBREVIATIONS)
    root["device"] = _abbrev(root["device"], DEVICE_ABBREVIATIONS)
    root["origin"] = _abbrev(root["origin"], ORIGIN_ABBREVIATIONS)
    root["availability"] = [_abbrev(a, ABBREVIATIONS) for a in root.get("availability", [])]
    components = {}
    for cid, comp in root["components"].items():
        comp = _abbrev(comp, ABBREVIATIONS)
        comp["availability"] = [_abbrev(a, ABBREVIATIONS) for a in comp.get("availability", [])]
        if not comp["availability"]:
            del comp["availability"]
        for option in SHARED_OPTIONS:
            if option in root and option not in comp:
                comp[option] = root[option]
        if "~" in comp:
            base = comp.pop("~")
            for key, value in list(comp.items()):
                if isinstance(value, str) and value and key.endswith("topic"):
                    if value[0] == "~":
                        value = base + value[1:]
                    if value[-1] == "~":
                        value = value[:-1] + base
                    comp[key] = value
            for a in comp.get("availability", []):
                if a["topic"][0] == "~":
                    a["topic"] = base + a["topic"][1:]
        components[cid] = comp
    return root, components


def render(template, state):
    """A value template as Home Assistant renders it for an MQTT message: value_json is the
    payload parsed as JSON."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["tojson"] = json.dumps
    return env.from_string(template).render(value_json=state, value=json.dumps(state)).strip()


@pytest.fixture(scope="module")
def ha(workdir):
    """A broker, the demo workload as target, an agent with discovery on and a client that sees
    both its topics and Home Assistant's."""
    broker = Broker(workdir)
    broker.start()
    with running_workload("demo_service") as demo:
        client = Client(broker.port)
        client.subscribe(f"{P}/#")
        client.subscribe("homeassistant/#")
        # The recorder on: the button "Profile the last 5 minutes" has a ring to read.
        agent = Agent(broker, workdir, NODE, f"pid:{demo.pid}", "discovery = on\nrecorder = on\n")
        agent.start()
        wait_online(client, NODE)
        s = Session(broker, agent, client)
        s.demo = demo
        yield s
        client.close()
        if agent.proc:
            agent.stop()
    broker.stop()


def mark(s):
    """An index into the client's messages: what arrives from now on is at or after it."""
    s.client.drain()
    return len(s.client.seen)


def after(s, start, pred, timeout=TIMEOUT):
    """The first message at or after index start for which pred holds."""
    return s.client.wait_for(lambda m: s.client.seen.index(m) >= start and pred(m), timeout)


def config_message(s, start=0, timeout=TIMEOUT):
    return after(s, start, lambda m: m.topic == CONFIG_TOPIC and m.payload, timeout)


def latest_state(s, pred=lambda st: True, timeout=TIMEOUT):
    """The newest P/N/state if pred holds for it, else the next one for which it does."""
    start = mark(s)
    states = [i for i, m in enumerate(s.client.seen) if m.topic == f"{P}/state"]
    if states and pred(json.loads(s.client.seen[states[-1]].payload)):
        return json.loads(s.client.seen[states[-1]].payload)
    m = after(s, start, lambda m: m.topic == f"{P}/state" and pred(json.loads(m.payload)),
              timeout)
    return json.loads(m.payload)


def press(s, topic, payload, timeout=TIMEOUT):
    """Publishes as Home Assistant does (no request_id) and returns the next result."""
    start = mark(s)
    s.client.publish(topic, payload)
    return json.loads(after(s, start, lambda m: m.topic == f"{P}/result", timeout).payload)


def set_value(s, name, value, pred):
    s.client.publish(f"{P}/set/{name}", value)
    return latest_state(s, pred)


def test_config_follows_home_assistants_rules(ha):
    root, comps = expand(config_message(ha).payload)
    assert set(root) <= ROOT_KEYS
    assert root["device"]["identifiers"] and root["device"]["name"]
    assert root["device"]["sw_version"] and root["device"]["manufacturer"]
    assert root["device"]["model"]
    assert root["origin"]["name"] == "profiler-agent" and root["origin"]["sw_version"]
    assert all(ID.match(cid) for cid in comps)
    uids = [c["unique_id"] for c in comps.values()]
    assert len(uids) == len(set(uids)) and all(ID.match(u) and NODE in u for u in uids)
    for cid, c in comps.items():
        assert c["platform"] in {"button", "number", "select", "text", "switch", "sensor",
                                 "binary_sensor", "event"}, cid
        assert c["availability"] == [{"topic": f"{P}/status", "payload_available": "online",
                                      "payload_not_available": "offline"}], cid
        assert c.get("qos") == 1, cid
        for key, value in c.items():
            if key.endswith("topic"):
                assert "~" not in value and value.startswith(f"{P}/"), (cid, key)
        # Every key is one Home Assistant knows by its full name once expanded.
        assert set(c) <= set(ABBREVIATIONS.values()) | {"qos"}, cid
        if c["platform"] in {"button", "number", "select", "text", "switch"}:
            assert "command_topic" in c, cid
        if c["platform"] in {"sensor", "binary_sensor", "switch", "number", "select", "text",
                             "event"}:
            assert "state_topic" in c, cid
        if c["platform"] == "sensor" and "entity_category" in c:
            assert c["entity_category"] == "diagnostic", cid
    by_platform = {}
    for cid, c in comps.items():
        by_platform.setdefault(c["platform"], {})[cid] = c
    buttons = {c["command_topic"][len(P) + 1:] for c in by_platform["button"].values()}
    assert buttons == {"log_thread_frames", "dump_sockets", "log_event_loop_scheduled",
                       "lru_stats", "log_current_tasks", "start", "memory", "dump_log_objects"}
    numbers = by_platform["number"]
    assert {(c["min"], c["max"]) for c in numbers.values()} >= {(1, 3600), (1, 4999),
                                                                 (0, 1073741824)}
    mode, = by_platform["select"].values()
    assert mode["options"] == ["cpu", "wall", "off"]
    text, = by_platform["text"].values()
    assert text["max"] <= 255 and re.match(text["pattern"], "pipe")
    assert not re.match(text["pattern"], "bogus")
    assert len(by_platform["switch"]) == 4
    assert by_platform["binary_sensor"]["profiling"]["device_class"] == "running"
    # Unavailable when no state came for a heartbeat (60 s by default) and a half, plus 5 s.
    for c in [*by_platform["sensor"].values(), *by_platform["binary_sensor"].values()]:
        assert c["expire_after"] == 95, c
    assert set(by_platform["event"]) == {"run", "stall"}
    assert by_platform["event"]["run"]["event_types"] == ["finished", "failed"]
    assert by_platform["event"]["stall"]["event_types"] == ["stall", "stall_ended"]
    assert all(e["state_topic"] == f"{P}/event" for e in by_platform["event"].values())


def test_templates_render_against_the_state(ha):
    _, comps = expand(config_message(ha).payload)
    state = latest_state(ha)
    for cid, c in comps.items():
        if "value_template" not in c:
            continue
        if c["platform"] == "event":
            # An event entity's template sees events: its own types pass, the others' do not.
            for other in comps.values():
                for kind in other.get("event_types", []):
                    ev = {"event_type": kind}
                    out = render(c["value_template"], ev)
                    assert out == (json.dumps(ev) if kind in c["event_types"] else ""), cid
            continue
        out = render(c["value_template"], state)
        if c["platform"] == "number":
            assert c["min"] <= float(out) <= c["max"], cid
        elif c["platform"] == "text":
            assert re.match(c["pattern"], out), cid
        elif c["platform"] == "switch":
            assert out in (c.get("state_on", c["payload_on"]),
                           c.get("state_off", c["payload_off"])), cid
        elif c["platform"] == "binary_sensor":
            assert out in ("ON", "OFF"), cid
        else:
            assert out, cid
    attrs = comps["last_run"]["json_attributes_template"]
    assert isinstance(json.loads(render(attrs, state)), dict)


def test_every_button_runs_its_action(ha):
    _, comps = expand(config_message(ha).payload)
    set_value(ha, "start_seconds", "1", lambda st: st["settings"]["start"]["seconds"] == 1)
    set_value(ha, "memory_seconds", "1", lambda st: st["settings"]["memory"]["seconds"] == 1)
    set_value(ha, "dump_type", "pipe",
              lambda st: st["settings"]["dump_log_objects"].get("type") == "pipe")
    pressed = 0
    for cid, c in comps.items():
        if c["platform"] != "button":
            continue
        result = press(ha, c["command_topic"], c.get("payload_press", "PRESS"), timeout=60)
        assert result["action"] == c["command_topic"].rsplit("/", 1)[1], cid
        assert result["status"] == "ok", (cid, result)
        pressed += 1
    assert pressed == 9


def test_numbers_set_what_the_cpu_profile_button_does(ha):
    _, comps = expand(config_message(ha).payload)
    seconds, frequency = comps["start_seconds"], comps["start_frequency"]
    ha.client.publish(seconds["command_topic"], "1")
    ha.client.publish(frequency["command_topic"], "47")
    state = latest_state(ha, lambda st: st["settings"]["start"] == {"seconds": 1, "frequency": 47,
                                                                    "mode": "cpu"})
    assert render(seconds["value_template"], state) == "1"
    result = press(ha, comps["start"]["command_topic"], comps["start"]["payload_press"])
    assert result["status"] == "ok"
    assert 0.8 <= result["summary"]["seconds"] < 1.8  # 1 s, not the 2 s below
    assert result["summary"]["frequency"] <= 47
    # A command's own field still wins over the setting.
    result, _ = ha.command("start", {"seconds": 2})
    assert result["summary"]["seconds"] >= 1.8


def test_bad_settings_are_logged_and_ignored(ha):
    before = latest_state(ha)["settings"]
    for name, value in [("start_seconds", "0"), ("start_seconds", "3601"),
                        ("start_frequency", "1.5"), ("memory_sample_bytes", "-1"),
                        ("start_seconds", "abc"), ("start_seconds", "nan"),
                        ("dump_type", "bogus"), ("dump_type", "x" * 300),
                        ("object_logging", "MAYBE"), ("nonesuch", "1")]:
        start = mark(ha)
        ha.client.publish(f"{P}/set/{name}", value)
        after(ha, start, lambda m: m.topic == f"{P}/log" and
              m.payload.startswith(f"set/{name}: ".encode()) and m.payload.endswith(b"ignored"))
    result, _ = ha.command("lru_stats")
    assert result["status"] == "ok"
    assert latest_state(ha)["settings"] == before


def test_switches_start_and_stop_loggers(ha):
    _, comps = expand(config_message(ha).payload)
    for cid, logger in [("object_logging", "objects")]:
        sw = comps[cid]
        result = press(ha, sw["command_topic"], sw["payload_on"])
        assert result["action"] == "start_log_objects" and result["status"] == "ok"
        state = latest_state(ha, lambda st: any(g["logger"] == logger for g in st["loggers"]))
        assert render(sw["value_template"], state) == sw["payload_on"]
        result = press(ha, sw["command_topic"], sw["payload_off"])
        assert result["action"] == "stop_log_objects" and result["status"] == "ok"
        state = latest_state(ha, lambda st: not st["loggers"])
        assert render(sw["value_template"], state) == sw["payload_off"]
    debug = comps["debug"]
    result = press(ha, debug["command_topic"], debug["payload_on"])
    assert result["action"] == "set_asyncio_debug" and result["summary"] == {"enabled": True}
    state = latest_state(ha, lambda st: st["debug"])
    assert render(debug["value_template"], state) == debug["state_on"]
    result = press(ha, debug["command_topic"], debug["payload_off"])
    assert result["summary"] == {"enabled": False}
    state = latest_state(ha, lambda st: not st["debug"])
    assert render(debug["value_template"], state) == debug["state_off"]


def test_state_and_events_follow_a_long_run(ha):
    _, comps = expand(config_message(ha).payload)
    start = mark(ha)
    ha.client.publish(f"{P}/start", {"seconds": 2, "request_id": "ev1"})
    running = latest_state(ha, lambda st: st["profiling"])
    assert running["running"] == 1 and running["jobs"][0]["action"] == "start"
    assert render(comps["profiling"]["value_template"], running) == "ON"
    assert render(comps["running_jobs"]["value_template"], running) == "1"
    event = after(ha, start, lambda m: m.topic == f"{P}/event")
    assert not event.retain
    event = json.loads(event.payload)
    result = [json.loads(m.payload) for m in ha.client.seen[start:]
              if m.topic == f"{P}/result" and json.loads(m.payload).get("request_id") == "ev1"][0]
    assert event["event_type"] == "finished" and event["event_type"] in \
        comps["run"]["event_types"]
    assert event["run_id"] == result["run_id"] and event["files"] == result["files"]
    done = latest_state(ha, lambda st: not st["profiling"] and
                        st["last"].get("run_id") == result["run_id"])
    assert done["last"] == {k: result[k] for k in ("status", "run_id", "action", "files")}
    assert render(comps["last_run"]["value_template"], done) == "ok"
    assert json.loads(render(comps["last_run"]["json_attributes_template"], done))["files"]
    # A failed long run: dump_log_objects with no type set and none given.
    ha.client.publish(f"{P}/set/dump_type", "")
    latest_state(ha, lambda st: "type" not in st["settings"]["dump_log_objects"])
    result = press(ha, f"{P}/dump_log_objects", "{}")
    assert result["status"] == "error" and "type" in result["error"]
    event = after(ha, start, lambda m: m.topic == f"{P}/event" and
                  json.loads(m.payload)["event_type"] == "failed")
    assert json.loads(event.payload)["error"] == result["error"]
    assert latest_state(ha, lambda st: st["last"]["status"] == "error")["last"]["error"] == \
        result["error"]


def test_birth_message_brings_the_config_back(ha):
    ha.client.publish(CONFIG_TOPIC, "", retain=True)
    start = mark(ha)
    t0 = time.monotonic()
    ha.client.publish("homeassistant/status", "online")
    msg = config_message(ha, start, timeout=5)
    took = time.monotonic() - t0
    assert msg.payload and took >= 0.4  # bench/discovery.py has how long it takes
    # Retained again: Home Assistant starting later finds it.
    late = Client(ha.broker.port)
    late.subscribe(CONFIG_TOPIC)
    m = late.wait_for(lambda m: m.topic == CONFIG_TOPIC)
    assert m.retain and json.loads(m.payload)["cmps"]
    late.close()
    # Anything but `online` (Home Assistant's last will says offline) sends nothing.
    start = mark(ha)
    ha.client.publish("homeassistant/status", "offline")
    with pytest.raises(TimeoutError):
        config_message(ha, start, timeout=3.5)


def test_settings_survive_a_restart(ha):
    ha.client.publish(f"{P}/set/start_frequency", "97")
    ha.client.publish(f"{P}/set/dump_type", "socket")
    latest_state(ha, lambda st: st["settings"]["start"]["frequency"] == 97 and
                 st["settings"]["dump_log_objects"].get("type") == "socket")
    assert ha.agent.stop() == 0
    db = sqlite3.connect(ha.agent.db)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    stored = dict(db.execute("SELECT name, value FROM settings"))
    assert stored["start_frequency"] == "97" and stored["dump_type"] == '"socket"'
    db.close()
    start = mark(ha)
    ha.agent.start()
    state = json.loads(after(ha, start, lambda m: m.topic == f"{P}/state").payload)
    assert state["settings"]["start"]["frequency"] == 97
    assert state["settings"]["dump_log_objects"]["type"] == "socket"
    # The config is published again at connect.
    assert json.loads(config_message(ha, start).payload)["cmps"]
    result = press(ha, f"{P}/dump_log_objects", "{}")
    assert result["status"] == "ok"


def test_discovery_off_removes_the_config(ha):
    config_message(ha)
    ha.agent.stop()
    with open(ha.agent.config, "a") as f:
        f.write("discovery = off\n")
    start = mark(ha)
    ha.agent.start()
    after(ha, start, lambda m: m.topic == CONFIG_TOPIC and not m.payload)
    late = Client(ha.broker.port)
    late.subscribe(CONFIG_TOPIC)
    with pytest.raises(TimeoutError):
        late.wait_for(lambda m: m.topic == CONFIG_TOPIC, timeout=1)
    late.close()
    # Settings and switches still work without discovery.
    result = press(ha, f"{P}/set/object_logging", "ON")
    assert result["action"] == "start_log_objects" and result["status"] == "ok"
    assert press(ha, f"{P}/set/object_logging", "OFF")["status"] == "ok"


def test_heartbeat_sends_the_config_again_when_asked(workdir):
    broker = Broker(workdir)
    broker.start()
    client = Client(broker.port)
    client.subscribe("homeassistant/device/beatha/config")
    client.subscribe("profiler/beatha/status")
    agent = Agent(broker, workdir, "beatha", "self",
                  "discovery = on\nheartbeat_seconds = 1\nheartbeat_discovery = on\n")
    quiet = Agent(broker, workdir, "quietha", "self", "discovery = on\nheartbeat_seconds = 0\n")
    try:
        agent.start()
        wait_online(client, "beatha")
        time.sleep(2.5)
        client.drain()
        configs = [m for m in client.seen if m.topic == "homeassistant/device/beatha/config"]
        assert len(configs) >= 3, len(configs)  # at connect, then each heartbeat
        _, comps = expand(configs[-1].payload)
        assert comps["running_jobs"]["expire_after"] == 6  # 1 s, half of it in whole s, 5 s
        # No heartbeat: sensors that never expire.
        client.subscribe("homeassistant/device/quietha/config")
        quiet.start()
        m = client.wait_for(lambda m: m.topic == "homeassistant/device/quietha/config")
        _, comps = expand(m.payload)
        assert all("expire_after" not in c for c in comps.values())
    finally:
        client.close()
        agent.stop()
        if quiet.proc:
            quiet.stop()
        broker.stop()
