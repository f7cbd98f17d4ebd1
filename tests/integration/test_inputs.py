"""Every bad command gets exactly one clear result, with its request_id whenever it can be read;
retained commands are never run."""
import json

import pytest

BAD = [
    # (raw payload, action, expected error, request_id echoed)
    ('{"request_id": "p1", "seconds": ', "start", "payload is not valid JSON", "p1"),
    ("not json at all", "lru_stats", "payload is not valid JSON", None),
    ('[1, 2, 3]', "lru_stats", "payload must be a JSON object", None),
    ('"just a string"', "lru_stats", "payload must be a JSON object", None),
    ('{"request_id": "p2"}', "no_such_action", "unknown action 'no_such_action'", "p2"),
    ('{"request_id": "p3", "bogus": 1}', "lru_stats", "unknown field 'bogus'", "p3"),
    ('{"request_id": "p4", "seconds": "ten"}', "start", "seconds: must be a number", "p4"),
    ('{"request_id": "p5", "seconds": 0}', "start", "seconds: must be greater than 0", "p5"),
    ('{"request_id": "p6", "seconds": 3601}', "start", "seconds: must be at most 3600", "p6"),
    ('{"request_id": "p7", "frequency": 2.5}', "start", "frequency: must be an integer", "p7"),
    ('{"request_id": "p8", "enabled": "yes"}', "set_asyncio_debug", "enabled: must be a boolean",
     "p8"),
    ('{"request_id": "p9"}', "dump_log_objects", "type: required field is missing", "p9"),
    ('{"request_id": "p10", "target": "pid:1"}', "log_thread_frames",
     "target pid:1 is not allowed", "p10"),
    ('{"request_id": "p11", "target": "nonsense"}', "log_thread_frames", "target: ", "p11"),
    ('{"request_id": "p12", "seconds": 1e400}', "start", "", "p12"),
    ('{"request_id": "p13", "a": "\xff\xfe"}', "lru_stats", "", "p13"),
    # Found by the fuzzer: a request_id read from broken JSON obeys the same 128-character limit.
    ('x{"request_id": "' + "r" * 129 + '"}', "start", "payload is not valid JSON", None),
]


@pytest.mark.parametrize("raw,action,error,rid", BAD)
def test_bad_command_gets_one_clear_error(session, raw, action, error, rid):
    body = raw.encode("latin-1") if "\xff" in raw else raw
    session.client.drain()
    start = len(session.client.seen)
    session.client.publish(f"{session.prefix}/{action}", body)
    msg = session.client.wait_for(lambda m: m.topic == f"{session.prefix}/result" and
                                  m not in session.client.seen[:start])
    result = json.loads(msg.payload)
    assert result["status"] == "error"
    assert result["action"] == action
    assert error in result["error"]
    assert result["error"].strip() and "\n" not in result["error"]
    assert result.get("request_id") == rid
    # Exactly one result: a following command's result is the next one.
    follow, _ = session.command("lru_stats")
    later = [m for m in session.client.seen[start:] if m.topic == f"{session.prefix}/result"]
    assert [json.loads(m.payload).get("request_id") for m in later][-2:] == \
        [rid, follow["request_id"]]


def test_empty_payload_means_empty_object(session):
    session.client.drain()
    session.client.publish(f"{session.prefix}/lru_stats", "")
    assert session.next_result()["status"] == "ok"


def test_oversized_payload_is_rejected_with_its_request_id(session):
    body = json.dumps({"request_id": "big", "pad": "x" * 70000})
    result, _ = session.command("lru_stats", raw=body, rid="big")
    assert result["status"] == "error"
    assert "max_payload_bytes" in result["error"]


def test_200_levels_of_nesting_are_answered(session):
    body = '{"request_id": "deep", "a": ' + '{"a": ' * 200 + '1' + '}' * 200 + '}'
    result, _ = session.command("lru_stats", raw=body, rid="deep")
    assert result["status"] == "error"
    assert "nested" in result["error"]


def test_32_levels_parse_and_33_do_not(session):
    for depth, error in ((32, "unknown field 'a'"),
                         (33, "payload is nested more than 32 levels deep")):
        rid = f"depth-{depth}"
        body = f'{{"request_id": "{rid}", "a": ' + "[" * (depth - 1) + "1" + "]" * (depth - 1) + "}"
        result, _ = session.command("lru_stats", raw=body, rid=rid)
        assert result["error"] == error, (depth, result)


def test_too_many_values_are_refused_before_parsing(session):
    # 5,000 small objects in 40 KB: json-c would build each one's hash table first.
    body = json.dumps({"request_id": "many", "pad": [{"k": 1}] * 5000})
    result, _ = session.command("lru_stats", raw=body, rid="many")
    assert result["error"] == "payload holds more than 4096 JSON values; no command needs so many"
    # A comma inside a string is not a value.
    result, _ = session.command("lru_stats", {"target": "comm:" + "," * 250})
    assert "JSON values" not in result.get("error", ""), result


def test_memory_payload_is_validated_before_anything_runs(session):
    result, _ = session.command("memory", {"seconds": 0})
    assert result["error"] == "seconds: must be greater than 0"
    result, _ = session.command("memory", {"sample_bytes": 1073741825})
    assert result["status"] == "error" and result["error"].startswith("sample_bytes:"), result


def test_retained_command_is_never_run(session):
    topic = f"{session.prefix}/lru_stats"
    session.client.publish(topic, {"request_id": "retained1"}, retain=True)
    # A command sent after it is answered; by then the retained one would have been too.
    session.command("lru_stats")
    results = [json.loads(m.payload) for m in session.client.seen
               if m.topic == f"{session.prefix}/result"]
    assert "retained1" not in [r.get("request_id") for r in results]
    session.client.wait_for(lambda m: m.topic == f"{session.prefix}/log" and
                            b"retained command" in m.payload)
    session.client.publish(topic, b"", retain=True)


def test_long_unicode_action_name_gets_a_valid_utf8_result(session):
    action = "é" * 70
    result, _ = session.command(action)
    assert result["status"] == "error"
    assert result["error"].startswith("unknown action 'éé")
    assert len(result["action"]) < 64 and set(result["action"]) == {"é"}
