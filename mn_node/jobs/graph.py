"""What travels along a job's edges: pure functions of the manifest and the agent states.

The engine's model: an agent runs once, when every agent with an edge into it has completed.
What it is given is its **inbox**: the initial inputs when it is an entrypoint (one message
each, type ``initial_input``), then, for each upstream agent in manifest order, the messages
that agent sent to it:

* a router sends its body on as ``emit_type``; without ``emit_type``, to every downstream agent;
* a command executor sends ``{agent_id, sandbox, input}`` as ``output_message_type`` (default
  ``executor_result``; null: nothing). When its stdout carried ``emit_messages``, those are
  sent *instead*, each as its ``type`` (``to``: only to that agent, which must be one of its
  downstream agents, else the message is dropped and a ``message_dropped`` event says so);
* an aggregator sends its ``{messages, count, last_message}`` as ``output_message_type``;
* a message goes along an edge only when the edge's ``message_type`` is the message's type.

The **body** an agent works on: with one message, that message's body; with several,
``{"messages": [body, ...]}`` in inbox order. An agent whose inbox is empty is *skipped*
(completed without running, sending nothing). Entry-point tasks (``config.task``) and
``reduce`` aggregators keep this project's older form: they see ``{upstream id: output}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mn_node.bundles.agents import route
from mn_node.jobs.manifest import Agent, Manifest
from mn_node.jobs.state import AgentState

EVERY_EDGE = "*"  # a router without emit_type, a task executor, a reduce aggregator
DEFAULT_EXECUTOR_TYPE = "executor_result"
INITIAL_TYPE = "initial_input"


@dataclass(frozen=True)
class Message:
    sender: str
    type: str
    body: Any


def json_field(st: AgentState, key: str) -> Any:
    """An extra field stored as a JSON string (complete_job, emits, next_state)."""
    raw = st.extra.get(key)
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return None
    return raw


def emit_type(agent: Agent) -> str | None:
    """The type an agent's output is sent as (EVERY_EDGE: along every outgoing edge; None: not sent)."""
    cfg = agent.config
    if agent.type == "router":
        return route(cfg, EVERY_EDGE)
    if agent.type == "executor" and agent.runner == "command":
        t = cfg.get("output_message_type", DEFAULT_EXECUTOR_TYPE)
        return t if isinstance(t, str) and t else None
    if agent.type == "aggregator" and "reduce" not in cfg:
        t = cfg.get("output_message_type")
        return t if isinstance(t, str) and t else None
    return EVERY_EDGE


def sent(m: Manifest, aid: str, st: AgentState) -> list[tuple[str | None, str, Any]]:
    """(to or None, type, body) of every message a completed agent sent."""
    if st.status != "completed" or st.extra.get("skipped"):
        return []
    emits = json_field(st, "emits")
    if isinstance(emits, list):
        return [(e.get("to"), str(e.get("type")), e.get("body")) for e in emits if isinstance(e, dict)]
    t = emit_type(m.agents[aid])
    return [] if t is None else [(None, t, st.output)]


def messages_between(m: Manifest, src: str, dst: str, st: AgentState) -> list[Message]:
    out = []
    edges = m.edges_between(src, dst)
    for to, mtype, body in sent(m, src, st):
        if to is not None:
            if to == dst:
                out.append(Message(src, mtype, body))
        elif mtype == EVERY_EDGE:
            out.append(Message(src, edges[0].message_type or "message" if edges else "message", body))
        elif any(e.message_type in (None, mtype) for e in edges):
            out.append(Message(src, mtype, body))
    return out


def inbox(m: Manifest, aid: str, states: Mapping[str, AgentState]) -> list[Message]:
    msgs = [Message("runtime", INITIAL_TYPE, body) for body in m.initial_inputs.get(aid, [])]
    for up in m.upstream(aid):
        msgs += messages_between(m, up, aid, states[up])
    return msgs


def body_of(msgs: list[Message]) -> Any:
    if len(msgs) == 1:
        return msgs[0].body
    return {"messages": [msg.body for msg in msgs]}


def legacy_inputs(m: Manifest, aid: str, states: Mapping[str, AgentState]) -> dict[str, Any]:
    """``{upstream id: output}``: what entry-point tasks and ``reduce`` aggregators see."""
    return {u: states[u].output for u in m.upstream(aid)}

