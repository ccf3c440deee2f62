"""What travels along a job's edges and what routers and aggregators make of it (pure)."""

from __future__ import annotations

import json
from typing import Any

from mn_node.jobs.graph import body_of, inbox
from mn_node.jobs.inline import MISSING, run_inline
from mn_node.jobs.manifest import validate
from mn_node.jobs.state import AgentState


def manifest(nodes: list[dict[str, Any]], edges: list[tuple[str, str, str]], initial: Any = None):
    return validate({
        "manifest_version": "1.0", "graph_id": "g", "entrypoints": ["in"],
        "initial_inputs": {"in": [initial if initial is not None else {"x": 1}]},
        "nodes": [{"node_id": "in", "agent_type": "router", "config": {"emit_type": "go"}}, *nodes],
        "edges": [{"from_node": a, "to_node": b, "message_type": t} for a, b, t in edges]})


def cmd(node_id: str, **config: Any) -> dict[str, Any]:
    return {"node_id": node_id, "agent_type": "executor", "config": {"command": ["true"], **config}}


def done(output: Any, **extra: Any) -> AgentState:
    return AgentState("completed", 1, "n1", output, "", extra)


def test_one_message_is_its_body_several_are_a_list_in_manifest_order():
    m = manifest([cmd("a", output_message_type="r"), cmd("b", output_message_type="r"), cmd("c")],
                 [("in", "a", "go"), ("in", "b", "go"), ("a", "c", "r"), ("b", "c", "r")])
    states = {"in": done({"x": 1}), "a": done({"agent_id": "a"}), "b": done({"agent_id": "b"}),
              "c": AgentState()}
    assert body_of(inbox(m, "a", states)) == {"x": 1}  # the router passed its input on
    assert body_of(inbox(m, "c", states)) == {"messages": [{"agent_id": "a"}, {"agent_id": "b"}]}


def test_edges_carry_only_their_type_and_emits_replace_the_default():
    m = manifest([cmd("a"), cmd("b"), cmd("c")], [("in", "a", "go"), ("a", "b", "x"), ("a", "c", "executor_result")])
    emits = json.dumps([{"type": "x", "body": {"n": 7}, "to": None}])
    states = {"in": done({}), "a": done({"agent_id": "a"}, emits=emits), "b": AgentState(), "c": AgentState()}
    assert body_of(inbox(m, "b", states)) == {"n": 7}
    assert inbox(m, "c", states) == []  # the default payload is not sent when emit_messages were
    states["a"] = done({"agent_id": "a"})
    assert inbox(m, "b", states) == [] and body_of(inbox(m, "c", states)) == {"agent_id": "a"}


def test_aggregator_drops_duplicates_and_completes_the_job_by_default():
    m = manifest([cmd("a", output_message_type="r"), cmd("b", output_message_type="r"),
                  {"node_id": "agg", "agent_type": "aggregator", "config": {"complete_after": 2}}],
                 [("in", "a", "go"), ("in", "b", "go"), ("a", "agg", "r"), ("b", "agg", "r")])
    states = {"in": done({}), "a": done({"agent_id": "a", "v": 1}), "b": done({"agent_id": "b", "v": 2})}
    out = run_inline(m, "agg", states, "n1")
    assert out.state.status == "completed" and out.complete is not MISSING
    assert out.complete["count"] == 2 and out.complete["last_message"] == {"agent_id": "b", "v": 2}
    states["b"] = done({"agent_id": "a", "v": 3})  # the same agent_id twice counts once
    out = run_inline(m, "agg", states, "n1")
    assert out.fail.startswith("aggregator agg received 1 message(s) but complete_after is 2; fix:")


def test_aggregator_with_an_output_type_passes_on_instead_of_completing():
    m = manifest([cmd("a", output_message_type="r"),
                  {"node_id": "agg", "agent_type": "aggregator", "config": {"output_message_type": "all"}}, cmd("s")],
                 [("in", "a", "go"), ("a", "agg", "r"), ("agg", "s", "all")])
    states = {"in": done({}), "a": done({"agent_id": "a"})}
    out = run_inline(m, "agg", states, "n1")
    assert out.complete is MISSING and out.state.output["count"] == 1
    states["agg"] = out.state
    assert body_of(inbox(m, "s", states))["messages"] == [{"agent_id": "a"}]


def test_an_agent_that_receives_nothing_is_skipped():
    m = manifest([cmd("a", output_message_type=None), {"node_id": "r", "agent_type": "router", "config": {}}],
                 [("in", "a", "go"), ("a", "r", "executor_result")])
    out = run_inline(m, "r", {"in": done({}), "a": done({"agent_id": "a"})}, "n1")
    assert out.state.status == "completed" and out.state.extra == {"skipped": True}
