"""Routers and aggregators, applied by the coordinator itself (no I/O): the agent's new state,
and whether it completes or fails the job. Semantics: :mod:`mn_node.jobs.graph` (what an
agent receives) and :mod:`mn_node.bundles.agents` (the original's aggregator)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mn_node.bundles.agents import AggregatorState, aggregate, emit_and_complete, receive
from mn_node.jobs.graph import body_of, inbox, legacy_inputs
from mn_node.jobs.manifest import Manifest
from mn_node.jobs.reducers import REDUCERS
from mn_node.jobs.state import AgentState

MISSING: Any = object()


@dataclass
class Inline:
    state: AgentState
    complete: Any = MISSING  # the job's result, when this agent completes the job
    fail: str = ""  # why the job fails, when it does


def skipped(node: str) -> AgentState:
    """An agent that received nothing: completed without running, sending nothing."""
    return AgentState("completed", 1, node, None, "", {"skipped": True})


def run_inline(m: Manifest, aid: str, states: Mapping[str, AgentState], node: str) -> Inline:
    agent = m.agents[aid]
    if agent.type == "aggregator" and "reduce" in agent.config:
        nodes_of = {a: st.node for a, st in states.items()}
        out = REDUCERS[str(agent.config["reduce"])](legacy_inputs(m, aid, states), nodes_of)
        return Inline(AgentState("completed", 1, node, out))
    msgs = inbox(m, aid, states)
    if not msgs:
        return Inline(skipped(node))
    if agent.type == "router":
        return Inline(AgentState("completed", 1, node, body_of(msgs)))
    return _aggregator(m, aid, [msg.body for msg in msgs], node)


def _aggregator(m: Manifest, aid: str, bodies: list[Any], node: str) -> Inline:
    """The original's aggregator over every body it received (duplicates by agent_id dropped).
    Without complete_after / complete_on_message it completes once all its upstream agents have."""
    config = m.agents[aid].config
    state = AggregatorState()
    result: dict[str, Any] | None = None
    complete_job = False
    for body in bodies:
        out = receive(config, state, body)
        state = out.state
        if out.result is not None:
            result, complete_job = out.result, out.complete_job
    if result is None:
        after = config.get("complete_after")
        if after is not None or config.get("complete_on_message") is True:
            why = (f"aggregator {aid} received {len(state.messages)} message(s) but complete_after is {after}; "
                   "fix: set complete_after to the number of upstream results it gets")
            return Inline(AgentState("failed", 1, node, None, why), fail=why)
        result = aggregate(state.messages, state.messages[-1] if state.messages else None)
        complete_job = emit_and_complete(config)[1]
    st = AgentState("completed", 1, node, result, "", {"count": result["count"]})
    return Inline(st, result if complete_job else MISSING)
