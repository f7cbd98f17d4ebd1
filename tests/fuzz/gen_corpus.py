#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/) and the command dictionary
from schemas/*.json and config.example, so the seeds follow the schemas when they change.
Run from the repository root; the files it writes are committed, this only regenerates them."""
import glob
import hashlib
import json
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fuzz")


def schemas():
    for path in sorted(glob.glob(os.path.join(ROOT, "schemas", "*.json"))):
        with open(path) as f:
            yield os.path.basename(path)[:-5], json.load(f)


def good_value(name, prop):
    if "default" in prop:
        return prop["default"]
    if "enum" in prop:
        return prop["enum"][0]
    if name == "target":
        return "pid:2147483647"
    if name == "name":
        return "profile.1.cprof"
    if prop.get("type") == "string":
        return "pipe"
    if prop.get("type") == "integer":
        return prop.get("minimum", 1)
    if prop.get("type") == "number":
        return 1.5
    if prop.get("type") == "boolean":
        return False
    return None


def bad_values(prop):
    """Values of the wrong type, out of range, or at the edge of a limit."""
    t = prop.get("type")
    vals = ['"x"', "true", "null", "[]", "{}", "1e400", "-1e400", "9007199254740993",
            "-9223372036854775809", "18446744073709551616", "0", "-0", "1e-400", "0.5"]
    if t == "string":
        vals += ['"' + "a" * (prop.get("maxLength", 64) + 1) + '"', '""', '"A B"', '"\\u0000"',
                 '"\\ud800"', '"\xc3\xa9"']
    if "maximum" in prop:
        vals += [json.dumps(prop["maximum"]), json.dumps(prop["maximum"] + 1)]
    if "minimum" in prop:
        vals += [json.dumps(prop["minimum"]), json.dumps(prop["minimum"] - 1)]
    return vals


def command_seeds():
    seeds = []
    for action, schema in schemas():
        props = schema.get("properties", {})
        full = {k: good_value(k, p) for k, p in props.items()}
        full["request_id"] = f"seed-{action}"
        seeds.append(f"{action}\n")
        seeds.append(f"{action}\n{{}}")
        seeds.append(f"{action}\n" + json.dumps(full))
        seeds.append(f"{action}\n" + json.dumps({"request_id": "r", "bogus": 1}))
        for key, prop in props.items():
            if key == "request_id":
                continue
            for v in bad_values(prop):
                seeds.append(f'{action}\n{{"request_id": "{action}-{key}", "{key}": {v}}}')
    broken = [
        '{"request_id": "cut", "seconds": ',
        '{"request_id": "trail"} x',
        '{"request_id": "twice", "request_id": "again"}',
        '{"request_id": ' + '"' + "r" * 129 + '"}',
        '{"request_id": "\\u00e9\\ud83d\\ude00"}',
        '{"request_id": "\\ud800"}',
        '{"request_id": "nul\\u0000id"}',
        '{"request_id": 17}',
        '{"request_id": "bad-utf8", "a": "\xff\xfe"}',
        '{"request_id": "\xc0\xaf"}',
        '{"request_id": "\xed\xa0\x80"}',
        '{"request_id": "deep", "a": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}",
        '{"request_id": "deep31", "a": ' + "[" * 30 + "1" + "]" * 30 + "}",
        '{"request_id": "big", "pad": "' + "x" * 3000 + '"}',
        '{"pad": "' + "x" * 3000 + '", "request_id": "big-late"}',
        "[1, 2, 3]",
        '"just a string"',
        "not json",
        "\x00\x01\x02",
        "{" * 100,
        '{"request_id": "esc\\"aped\\\\"}',
        '{"request_id" : "spaced" , "x": [}',
        "{'request_id': 'single'}",
        '{"request_id": "nan", "seconds": NaN}',
        '{"request_id": "inf", "seconds": Infinity}',
        '{"request_id": "long-target", "target": "comm:x' + "\xc3\xa9" * 200 + '"}',
        '{"request_id": "long-key", "' + "\xc3\xa9" * 200 + '": 1}',
    ]
    for b in broken:
        seeds.append("lru_stats\n" + b)
        seeds.append("start\n" + b)
    seeds.append('no_such_action\n{"request_id": "unknown"}')
    seeds.append("\xc3\xa9" * 40 + '\n{"request_id": "long-utf8-action"}')
    seeds.append("result\n{}")
    return seeds


def config_seeds():
    with open(os.path.join(ROOT, "config.example"), encoding="utf-8") as f:
        example = f.read()
    seeds = [example, ""]
    seeds += [
        "node_id = a/b\n",
        "topic_prefix = #\n",
        "broker_port = 70000\n",
        "broker_port = 12abc\n",
        "keepalive = -5\n",
        "max_payload_bytes = 99999999999999999999\n",
        "discovery = maybe\n",
        "mqtt_version = 3\n",
        "log_level = loud\n",
        "no_such_key = 1\n",
        "just words\n",
        "target = pid:0\n",
        "target = comm:\n",
        "target = exe:relative\n",
        "allowed_targets = self, pid:1, comm:hass, exe:/usr/bin/python3, pidfile:/run/x.pid\n",
        "allowed_targets = self,,bogus\n",
        "allowed_targets = " + "comm:" + "x" * 300 + "\n",
        "tls_cert_file = /tmp/c.pem\n",
        "node_id = " + "n" * 300 + "\n",
        "broker_host = " + "h" * 8200 + "\n",
        "key = value = more # comment = x\n",
        "  \t broker_host\t=\t10.0.0.1  \r\n",
        "node_id = \xff\xfe\n",
        "broker = a:1883, [::1]:8883, b\n",
        "broker = " + ", ".join(f"h{i}:{1000 + i}" for i in range(9)) + "\n",
        "broker = [::1\n",
        "broker = h:0, h:65536, :1883\n",
        "broker = ,\n",
        "heartbeat_seconds = 86401\n",
        "stall_thread = " + "t" * 20 + "\n",
        "recorder = on\nrecorder_max_mb = 0\n",
        "password_file = /nonexistent/pw\n",
        "# only a comment\n" * 50,
        "broker_host = x\x00y\n",
    ]
    return seeds


def write(target, seeds):
    d = os.path.join(OUT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for s in seeds:
        data = s.encode("latin-1") if all(ord(c) < 256 for c in s) else s.encode()
        with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
            f.write(data)


def write_dict():
    words = set()
    for action, schema in schemas():
        words.add(action)
        words.update(schema.get("properties", {}))
    words.update(["request_id", "true", "false", "null", "1e400", "\\u0000", "\\ud800"])
    with open(os.path.join(OUT, "command.dict"), "w") as f:
        f.write("# Action and field names from schemas/*.json, written by gen_corpus.py.\n")
        for w in sorted(words):
            f.write(json.dumps(w) + "\n")


if __name__ == "__main__":
    write("command", command_seeds())
    write("config", config_seeds())
    write_dict()
