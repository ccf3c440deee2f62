"""One interface for every way an executor agent runs: the ``Runner`` protocol.

Two runners sit behind it: the command runner (:mod:`mn_node.runners.command`, a bundle's
``command`` run as an owned process group) and the entry-point runner
(:mod:`mn_node.runners.entrypoint`, a Python ``mirror_neuron.tasks`` entry point run in the
node's process pool). The engine builds a :class:`RunRequest`, awaits ``runner.run(request)``
and acts on the :class:`RunResult`; ``runner.cancel(job_id)`` ends what is running for a job.

A ``RunResult`` always carries ``sandbox``: the result map of the original's executors
(``exit_code``, ``stdout``, ``stderr``, ``attempts``, ...) that goes downstream as
``{agent_id, sandbox, input}`` (see :func:`output_payload`), and, when it failed, ``reason``:
one line naming the agent, the attempt, the exit code and the tail of stderr.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mn_node.runners.structured import Structured


@dataclass(frozen=True)
class RunRequest:
    """What one executor agent is asked to do for one incoming message.

    ``message`` is the envelope (``{id, job_id, from, to, type, body, ...}``, see
    :func:`envelope`); ``attempt`` is the engine's dispatch attempt (1 on the first dispatch,
    higher when the engine replays the agent elsewhere). ``bundle_dir`` is the unpacked,
    verified bundle (it holds ``payloads/``); None for a job without a bundle.
    """

    job_id: str
    agent_id: str
    config: Mapping[str, Any]
    message: Mapping[str, Any]
    bundle_dir: Path | None = None
    agent_type: str = "executor"
    template_type: str = "generic"
    attempt: int = 1
    agent_state: Mapping[str, Any] = field(default_factory=dict)

    @property
    def body(self) -> Any:
        return self.message.get("body")


@dataclass(frozen=True)
class AttemptRecord:
    """One local try of a request (the runner may retry: see ``max_attempts``)."""

    attempt: int
    ok: bool
    exit_code: int | None
    duration_s: float
    reason: str = ""
    scratch_dir: Path | None = None
    stdout_file: Path | None = None
    stderr_file: Path | None = None


@dataclass
class RunResult:
    """The outcome of a request: ``ok`` and ``sandbox`` always; ``reason`` when not ok."""

    ok: bool
    sandbox: dict[str, Any]
    reason: str = ""
    output: Any = None
    structured: Structured | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    cancelled: bool = False

    @property
    def exit_code(self) -> int | None:
        code = self.sandbox.get("exit_code")
        return code if isinstance(code, int) else None


@runtime_checkable
class Runner(Protocol):
    """What the engine needs of a runner."""

    name: str

    async def run(self, request: RunRequest) -> RunResult:
        """Run the request to its end (retries included); never raises for the command's own
        failure: that is ``RunResult(ok=False, reason=...)``. Cancelling the awaiting task
        ends every process of the run before the cancellation propagates."""
        ...

    async def cancel(self, job_id: str, agent_id: str | None = None) -> int:
        """End the runs of a job (or of one agent of it); their ``run`` returns
        ``cancelled=True``. Returns how many runs were told."""
        ...


def envelope(job_id: str, to: str, message_type: str, body: Any, *, sender: str = "runtime",
             headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A message envelope in the original's shape (``mirror_neuron_message.json``)."""
    return {
        "id": uuid.uuid4().hex,
        "job_id": job_id,
        "from": sender,
        "to": to,
        "type": message_type,
        "class": "event",
        "content_type": "application/json",
        "content_encoding": "identity",
        "headers": dict(headers or {}),
        "timestamp": time.time(),
        "body": body,
    }


def output_payload(agent_id: str, result: RunResult, incoming_body: Any) -> dict[str, Any]:
    """The body an executor sends downstream, as in the original: ``{agent_id, sandbox, input}``."""
    return {"agent_id": agent_id, "sandbox": result.sandbox, "input": incoming_body}
