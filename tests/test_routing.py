from __future__ import annotations

import pytest

from evcore.event import Event, group_from, multi_routing_key, routing_key_for
from evcore.routing import EXCHANGE_RULES, binding_matches, rule_for

# (binding key, routing key, matches) with AMQP topic semantics.
BINDING_TABLE = [
    ("#", "", True),
    ("#", "task.succeeded", True),
    ("#", "a.b.c.d", True),
    ("*", "task", True),
    ("*", "task.multi", False),
    ("task.*", "task.multi", True),
    ("task.*", "task", False),
    ("task.*", "task.a.b", False),
    ("worker.#", "worker", True),
    ("worker.#", "worker.online", True),
    ("worker.#", "worker.a.b", True),
    ("worker.#", "workers.online", False),
    ("worker.#", "task.worker", False),
    ("*.multi", "task.multi", True),
    ("*.multi", "multi", False),
    ("#.multi", "multi", True),
    ("#.multi", "a.b.multi", True),
    ("a.#.z", "a.z", True),
    ("a.#.z", "a.b.c.z", True),
    ("a.#.z", "a.b.c", False),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("#.#", "x", True),
    ("task.succeeded", "task.succeeded", True),
    ("task.succeeded", "task.failed", False),
    ("task.succeeded", "task.succeeded.x", False),
]


@pytest.mark.parametrize(("binding", "routing", "expected"), BINDING_TABLE)
def test_binding_matches_amqp_semantics(binding: str, routing: str, expected: bool) -> None:
    assert binding_matches(binding, routing) is expected


def test_exchange_rules_table() -> None:
    assert rule_for("redis").exchange_type == "fanout"
    assert rule_for("gcpubsub").exchange_type == "fanout"
    assert rule_for("amqp").exchange_type == "topic"
    assert rule_for("memory").exchange_type == "topic"
    assert rule_for("pgmq").disabled_because is None
    sql = rule_for("sql")
    assert sql.disabled_because is not None
    assert "sql" in sql.disabled_because
    assert set(EXCHANGE_RULES) == {"redis", "gcpubsub", "sql"}


def test_routing_keys_and_groups() -> None:
    assert routing_key_for("task-succeeded") == "task.succeeded"
    assert routing_key_for("custom-my-event") == "custom.my.event"
    assert multi_routing_key("task") == "task.multi"
    assert group_from("task-sent") == "task"
    assert group_from("custom-my-event") == "custom"
    assert group_from("heartbeat") == "heartbeat"


def test_event_builds_a_plain_dict() -> None:
    event = Event("task-started", uuid="u1")
    assert event["type"] == "task-started"
    assert isinstance(event["timestamp"], float)
    kept = Event("x-y", {"type": "ignored"}, timestamp=3.0)
    assert kept == {"timestamp": 3.0, "type": "x-y"}
    merged = Event("a-b", {"uuid": "1", "n": 1}, n=2)
    assert merged["uuid"] == "1"
    assert merged["n"] == 2


def test_json_nesting_is_bounded_on_both_decoders() -> None:
    from evcore import codec

    deep = b"[" * (codec.MAX_NESTING + 1) + b"]" * (codec.MAX_NESTING + 1)
    shallow = b'{"a": "[[[[{{{{", "b": [[1]]}'
    assert codec.nesting_depth(deep) == codec.MAX_NESTING + 1
    assert codec.nesting_depth(shallow) == 3
    assert codec.nesting_depth(b'["\\\\", ["\\"["]]') == 2
    for loads in (codec.loads, codec._stdlib_loads):
        with pytest.raises((ValueError, RecursionError)):
            loads(deep)
        assert loads(shallow)["b"] == [[1]]
