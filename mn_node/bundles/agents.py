"""The built-in agents' semantics as pure functions (no I/O), for the engine to apply.

Router: passes each message on as ``config.emit_type`` (default: the incoming type).

Aggregator (as in the original): collects message bodies in arrival order, dropping a body
whose ``agent_id`` was already collected (a replayed executor never counts twice). It
completes when ``complete_on_message`` is true (on every message) or when ``complete_after``
bodies are collected. Its output is ``{messages, count, last_message}``; it is emitted as
``output_message_type`` when that is set, and completes the job when ``complete_job`` is true,
which is the default exactly when there is no ``output_message_type``. Unlike the original,
which emitted again on every message past ``complete_after``, an aggregator here completes
once: later bodies are reported as ``late`` and change nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any


def route(config: Mapping[str, Any], incoming_type: str) -> str:
    """The type a router emits for a message of ``incoming_type``."""
    emit = config.get("emit_type")
    return emit if isinstance(emit, str) and emit else incoming_type


@dataclass(frozen=True)
class AggregatorState:
    messages: tuple[Any, ...] = ()
    seen: frozenset[str] = field(default_factory=frozenset)
    completed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"messages": list(self.messages), "seen": sorted(self.seen), "completed": self.completed}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AggregatorState:
        return cls(tuple(data.get("messages", [])), frozenset(data.get("seen", [])), bool(data.get("completed")))


@dataclass(frozen=True)
class Outcome:
    """What one message did: ``kind`` is ``collected``, ``duplicate`` or ``late``; when the
    aggregator completes on it, ``result`` is the output, ``emit_type`` the type to send it
    as (None: not sent on) and ``complete_job`` whether the job completes with it."""

    state: AggregatorState
    kind: str
    result: dict[str, Any] | None = None
    emit_type: str | None = None
    complete_job: bool = False


def aggregate(messages: tuple[Any, ...] | list[Any], last_message: Any) -> dict[str, Any]:
    return {"messages": list(messages), "count": len(messages), "last_message": last_message}


def should_complete(config: Mapping[str, Any], count: int) -> bool:
    if config.get("complete_on_message") is True:
        return True
    after = config.get("complete_after")
    return isinstance(after, int) and not isinstance(after, bool) and after > 0 and count >= after


def emit_and_complete(config: Mapping[str, Any]) -> tuple[str | None, bool]:
    """(output message type or None, whether completing the aggregator completes the job)."""
    out = config.get("output_message_type")
    emit_type = out if isinstance(out, str) and out else None
    default_complete = "output_message_type" not in config
    complete = config.get("complete_job", default_complete)
    return emit_type, complete is True


def receive(config: Mapping[str, Any], state: AggregatorState, body: Any) -> Outcome:
    """Apply one incoming message body to the aggregator."""
    agent_id = body.get("agent_id") if isinstance(body, dict) else None
    if isinstance(agent_id, str) and agent_id in state.seen:
        return Outcome(state, "duplicate")
    if state.completed:
        return Outcome(state, "late")
    seen = state.seen | {agent_id} if isinstance(agent_id, str) else state.seen
    new = replace(state, messages=(*state.messages, body), seen=seen)
    if not should_complete(config, len(new.messages)):
        return Outcome(new, "collected")
    emit_type, complete_job = emit_and_complete(config)
    done = replace(new, completed=config.get("complete_on_message") is not True)
    return Outcome(done, "collected", aggregate(new.messages, body), emit_type, complete_job)
