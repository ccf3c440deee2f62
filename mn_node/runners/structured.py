"""Structured stdout: an executor whose stdout is one JSON object may steer the job.

As in the original, the object counts as structured when it has any of ``complete_job``,
``complete_job?``, ``emit_messages``, ``events`` or ``next_state``:

* ``complete_job``: the job completes with this value as its result;
  ``complete_job?: true`` completes it with the executor's default output payload instead;
* ``emit_messages``: ``[{type, body | payload | body_base64, to?}]``: messages sent on
  (``to`` names the receiving node; without it they follow the edges of ``type``);
* ``events``: ``[{type, payload}]`` recorded in the job's event stream;
* ``next_state``: the agent's state for its next message.

Anything else in stdout is ordinary output: it just travels downstream in ``sandbox.stdout``.
Items that do not have the required shape are skipped and listed in ``ignored`` so the
engine can report them rather than drop them silently.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

KEYS = ("emit_messages", "events", "next_state", "complete_job", "complete_job?")
MISSING: Any = object()


@dataclass(frozen=True)
class Emit:
    message_type: str
    body: Any
    to: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    event_type: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Structured:
    complete_job: Any = MISSING
    complete_with_default: bool = False
    emit_messages: tuple[Emit, ...] = ()
    events: tuple[Event, ...] = ()
    next_state: Any = MISSING
    ignored: tuple[str, ...] = ()

    @property
    def completes(self) -> bool:
        return self.complete_job is not MISSING or self.complete_with_default

    @property
    def has_next_state(self) -> bool:
        return self.next_state is not MISSING


def _emit(i: int, item: Any) -> Emit | str:
    if not isinstance(item, dict) or not isinstance(item.get("type"), str) or not item["type"]:
        return f"emit_messages[{i}]: needs a string 'type'"
    to = item.get("to")
    if to is not None and not isinstance(to, str):
        return f"emit_messages[{i}].to: must be a node id string"
    if "body_base64" in item:
        try:
            body: Any = base64.b64decode(str(item["body_base64"]), validate=True)
        except (binascii.Error, ValueError):
            return f"emit_messages[{i}].body_base64: not base64"
    elif "body" in item:
        body = item["body"]
    else:
        body = item.get("payload", {})
    extra = {k: v for k, v in item.items() if k not in ("type", "to", "body", "payload", "body_base64")}
    return Emit(item["type"], body, to, extra)


def _events(raw: Any) -> tuple[list[Event], list[str]]:
    events: list[Event] = []
    ignored: list[str] = []
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        if isinstance(item, dict) and isinstance(item.get("type"), str) and isinstance(item.get("payload"), dict):
            events.append(Event(item["type"], item["payload"]))
        else:
            ignored.append(f"events[{i}]: needs a string 'type' and an object 'payload'")
    if raw is not None and not isinstance(raw, list):
        ignored.append("events: must be a list")
    return events, ignored


def parse(stdout: str) -> Structured | None:
    """The structured directives in ``stdout``, or None when it is not a structured object."""
    text = stdout.strip()
    if not text.startswith("{"):
        return None
    try:
        decoded = json.loads(text)
    except ValueError:
        return None
    if not isinstance(decoded, dict) or not any(k in decoded for k in KEYS):
        return None
    emits: list[Emit] = []
    ignored: list[str] = []
    raw_emits = decoded.get("emit_messages", [])
    if not isinstance(raw_emits, list):
        ignored.append("emit_messages: must be a list")
        raw_emits = []
    for i, item in enumerate(raw_emits):
        got = _emit(i, item)
        if isinstance(got, str):
            ignored.append(got)
        else:
            emits.append(got)
    events, bad_events = _events(decoded.get("events"))
    complete = decoded.get("complete_job", MISSING)
    if complete is None:  # the original treats an explicit null as "not completing"
        complete = MISSING
    return Structured(
        complete_job=complete,
        complete_with_default=complete is MISSING and decoded.get("complete_job?") is True,
        emit_messages=tuple(emits),
        events=tuple(events),
        next_state=decoded.get("next_state", MISSING),
        ignored=tuple(ignored + bad_events),
    )
