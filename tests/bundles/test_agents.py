"""Router and aggregator semantics (pure functions)."""

from __future__ import annotations

from mn_node.bundles.agents import AggregatorState, emit_and_complete, receive, route


def body(agent: str, n: int) -> dict[str, object]:
    return {"agent_id": agent, "sandbox": {"stdout": str(n)}}


def test_router_emit_type() -> None:
    assert route({"emit_type": "x"}, "in") == "x"
    assert route({}, "in") == "in"


def test_complete_after_with_duplicates_dropped() -> None:
    cfg = {"complete_after": 2, "output_message_type": "coll"}
    s = AggregatorState()
    o = receive(cfg, s, body("a", 1))
    assert o.kind == "collected" and o.result is None
    o2 = receive(cfg, o.state, body("a", 1))
    assert o2.kind == "duplicate" and o2.state == o.state
    o3 = receive(cfg, o2.state, body("b", 2))
    assert o3.result == {"messages": [body("a", 1), body("b", 2)], "count": 2, "last_message": body("b", 2)}
    assert o3.emit_type == "coll" and not o3.complete_job
    assert receive(cfg, o3.state, body("c", 3)).kind == "late"
    assert AggregatorState.from_json(o3.state.to_json()) == o3.state


def test_completes_the_job_when_there_is_no_output_type() -> None:
    assert emit_and_complete({"complete_after": 1}) == (None, True)
    assert emit_and_complete({"output_message_type": "t"}) == ("t", False)
    assert emit_and_complete({"output_message_type": "t", "complete_job": True}) == ("t", True)
    o = receive({"complete_after": 1}, AggregatorState(), {"no": "agent id"})
    assert o.complete_job and o.result is not None and o.result["count"] == 1


def test_complete_on_message_emits_on_every_message() -> None:
    cfg = {"complete_on_message": True, "output_message_type": "t"}
    o1 = receive(cfg, AggregatorState(), body("a", 1))
    o2 = receive(cfg, o1.state, body("b", 2))
    assert o1.result is not None and o1.result["count"] == 1
    assert o2.result is not None and o2.result["count"] == 2
