"""What a finished run leaves behind (pure): the fields ``store_result`` writes into the agent
state, the job events its structured stdout asked for, and the attempt record kept for
``mn logs`` in ``{ns}:job:<id>:attempts``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mn_node.runners.base import RunResult, output_payload
from mn_node.runners.structured import MISSING

LOG_TAIL_CHARS = 64 * 1024  # per stream, in the attempt record


@dataclass
class Outcome:
    output: Any
    status: str  # completed | failed
    error: str
    extra: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def tail(text: str, limit: int = LOG_TAIL_CHARS) -> str:
    return text if len(text) <= limit else text[-limit:]


def outcome_of(agent_id: str, req: dict[str, Any], result: RunResult, started_ms: int) -> Outcome:
    """The agent state fields and events of a finished (not cancelled) run."""
    box = result.sandbox
    extra: dict[str, Any] = {"started_ms": started_ms, "exit_code": result.exit_code,
                             "duration_ms": box.get("duration_ms"), "tries": box.get("attempts", 1),
                             "runner": req.get("runner", "entrypoint")}
    if not result.ok:
        return Outcome(None, "failed", result.reason, extra)
    if req.get("runner") != "command":
        return Outcome(result.output, "completed", "", extra)
    output = output_payload(agent_id, result, req.get("body"))
    events: list[tuple[str, dict[str, Any]]] = []
    s = result.structured
    if s is not None:
        downstream = set(req.get("downstream") or [])
        emits = []
        for e in s.emit_messages:
            if e.to is not None and e.to not in downstream:
                events.append(("message_dropped", {"agent": agent_id, "to": e.to, "type": e.message_type,
                                                   "reason": f"{e.to!r} is not downstream of {agent_id!r}"}))
                continue
            emits.append({"type": e.message_type, "body": e.body, "to": e.to})
        if s.emit_messages:
            extra["emits"] = _dumps(emits)
        events += [("agent_event", {"agent": agent_id, "event_type": ev.event_type, "payload": ev.payload})
                   for ev in s.events]
        if s.ignored:
            events.append(("structured_output_ignored", {"agent": agent_id, "items": list(s.ignored)}))
        if s.has_next_state:
            extra["next_state"] = _dumps(s.next_state)
        if s.completes:
            extra["complete_job"] = _dumps(output if s.complete_job is MISSING else s.complete_job)
    return Outcome(output, "completed", "", extra, events)


def attempt_record(node: str, agent_id: str, attempt: int, req: dict[str, Any], result: RunResult,
                   started_ms: int, finished_ms: int) -> dict[str, Any]:
    """One dispatched attempt as ``mn logs`` / ``mn agents`` read it (stdout/stderr tails capped)."""
    box = result.sandbox
    return {
        "agent": agent_id, "attempt": attempt, "node": node, "runner": req.get("runner", "entrypoint"),
        "ok": result.ok, "cancelled": result.cancelled, "exit_code": result.exit_code,
        "tries": box.get("attempts", 1), "timed_out": bool(box.get("timed_out")),
        "duration_ms": box.get("duration_ms"), "started_ms": started_ms, "finished_ms": finished_ms,
        "reason": result.reason, "stdout": tail(str(box.get("stdout") or "")),
        "stderr": tail(str(box.get("stderr") or "")), "stdout_bytes": box.get("stdout_bytes"),
        "stderr_bytes": box.get("stderr_bytes"),
        "stdout_file_truncated": bool(box.get("stdout_file_truncated")),
        "stderr_file_truncated": bool(box.get("stderr_file_truncated")),
        # where the last try's files are on that node (until the job ends)
        "scratch_dir": str(result.attempts[-1].scratch_dir or "") if result.attempts else "",
    }
