"""Structured stdout parsing."""

from __future__ import annotations

import json

from mn_node.runners.structured import parse


def test_plain_output_is_not_structured() -> None:
    assert parse("hello") is None
    assert parse(json.dumps({"prime_count": 3})) is None
    assert parse("{not json") is None


def test_directives() -> None:
    s = parse(json.dumps({"complete_job": {"r": 1},
                          "emit_messages": [{"type": "a", "body": 1}, {"to": "n", "type": "b", "payload": 2},
                                            {"type": "c", "body_base64": "aGk="}, {"body": "no type"}],
                          "events": [{"type": "e", "payload": {"k": 1}}, {"type": "bad"}],
                          "next_state": {"s": 1}}))
    assert s is not None and s.completes and s.complete_job == {"r": 1}
    assert [(e.message_type, e.to, e.body) for e in s.emit_messages] == [("a", None, 1), ("b", "n", 2),
                                                                          ("c", None, b"hi")]
    assert [e.event_type for e in s.events] == ["e"]
    assert s.next_state == {"s": 1} and s.has_next_state
    assert s.ignored == ("emit_messages[3]: needs a string 'type'",
                         "events[1]: needs a string 'type' and an object 'payload'")


def test_complete_with_default_and_null() -> None:
    s = parse(json.dumps({"complete_job?": True}))
    assert s is not None and s.completes and s.complete_with_default
    n = parse(json.dumps({"complete_job": None, "events": []}))
    assert n is not None and not n.completes
