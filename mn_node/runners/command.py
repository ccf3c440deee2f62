"""The command runner: a bundle executor's ``command``, run the way the original's host-local
runner ran it, as a process group this node owns.

Per attempt: a fresh scratch directory (:mod:`mn_node.runners.sandbox`), the uploads copied
from ``payloads/``, ``workdir`` under ``/sandbox/job`` mapped into it, the runtime files
written, the command run (a list without a shell, a string with ``sh -c``) with
``{input_file}`` ``{context_file}`` ``{message_file}`` ``{body_file}`` ``{workdir}``
``{job_id}`` ``{agent_id}`` substituted, stdout/stderr streamed to capped files
(:mod:`mn_node.runners.process`).

Environment: not the daemon's. A command sees ``PATH`` (the daemon's, or a default),
``LANG``/``LC_ALL``/``TZ`` when set, ``HOME`` and ``TMPDIR`` (``<scratch>/tmp``), the
``MIRROR_NEURON_*`` runtime variables, then the config's ``environment`` and the daemon
variables named in ``pass_env``. The cluster's secrets (:data:`SECRET_ENV`) never pass:
a ``pass_env`` naming one fails the run.

Decisions (where the original left room):

* **Retries live here.** ``max_attempts`` (default 1) local tries per request, sleeping
  ``retry_backoff_ms`` (default 500) x 2^(try-1), capped at 60 s, between them. Any failure is
  retried (the original retried only transient sandbox errors; a local command's non-zero exit
  is the failure a user means to retry), except a bad configuration (a path, ``pass_env``, a
  program that cannot be started), which fails at once. The engine sees one result with
  ``sandbox.attempts``; its own replays (node lost) are separate dispatch attempts.
* ``startup_delay_ms`` (launch waves) is slept once, before the first try of the first
  dispatch (``RunRequest.attempt == 1``), as the original slept it before its first run.
* ``timeout_seconds`` (our key; the original had no timeout) per try, else the runner's
  ``default_timeout_s`` (3600 s). A try past it has its group killed and fails.
* ``pool``/``pool_slots`` are the engine's business (placement); this runner ignores them.
* Ownership: with a ``state_dir``, :meth:`CommandRunner.start` kills groups a crashed
  daemon left and starts the reaper watchdog (:mod:`mn_node.runners.reaper`), so even the
  grandchildren of a command die when the daemon is SIGKILLed.
* Scratch directories stay after the run (their stdout/stderr files are the logs);
  :meth:`CommandRunner.remove_job` deletes a job's tree when the engine is done with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from mn_node.runners import sandbox, structured
from mn_node.runners.base import AttemptRecord, RunRequest, RunResult
from mn_node.runners.process import GroupRegistry, OutputCaps, ProcessOutcome, Spawn, reap_recorded, run_owned
from mn_node.runners.reaper import Watchdog
from mn_node.runners.sandbox import SandboxError

log = logging.getLogger("mn_node.runners.command")

DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_BACKOFF_MS = 500
MAX_BACKOFF_S = 60.0
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
SECRET_ENV = frozenset({
    "MIRROR_NEURON_COOKIE", "MIRROR_NEURON_COOKIE_FILE", "MIRROR_NEURON_API_TOKEN",
    "MIRROR_NEURON_REDIS_URL", "REDISCLI_AUTH",
})
PASSED_FROM_DAEMON = ("LANG", "LC_ALL", "TZ")
TAIL_CHARS = 300


class ConfigFailure(Exception):
    """A run that can not succeed by retrying (bad path, refused pass_env, no such program)."""


def stderr_tail(text: str, limit: int = TAIL_CHARS) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    tail = " | ".join(lines[-3:])
    return tail if len(tail) <= limit else "..." + tail[-limit:]


def _int(config: Mapping[str, Any], key: str, default: int, low: int = 0) -> int:
    value = config.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= low else default


def timeout_of(config: Mapping[str, Any], default: float) -> float:
    value = config.get("timeout_seconds")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return default


def substitute(template: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def build_argv(command: Any, values: Mapping[str, str]) -> list[str]:
    """A list runs as is (no shell); a string runs with ``sh -c``."""
    if isinstance(command, str) and command.strip():
        return ["/bin/sh", "-c", substitute(command, values)]
    if isinstance(command, list) and command and all(isinstance(p, (str, int, float)) for p in command):
        return [substitute(str(p), values) for p in command]
    raise ConfigFailure("command: missing or not a list of strings / a string; "
                        "fix: e.g. \"command\": [\"python3\", \"scripts/run.py\"]")


def build_env(config: Mapping[str, Any], daemon_env: Mapping[str, str], runtime: Mapping[str, str],
              home: Path) -> dict[str, str]:
    env = {"PATH": daemon_env.get("PATH") or DEFAULT_PATH, "HOME": str(home), "TMPDIR": str(home)}
    env.update({k: daemon_env[k] for k in PASSED_FROM_DAEMON if k in daemon_env})
    env.update(runtime)
    extra = config.get("environment") or {}
    if not isinstance(extra, dict):
        raise ConfigFailure("environment: must be an object of NAME: value; fix: {\"DEBUG\": \"1\"}")
    env.update({str(k): str(v) for k, v in extra.items()})
    names = config.get("pass_env") or []
    if not isinstance(names, list):
        raise ConfigFailure("pass_env: must be a list of variable names; fix: [\"HTTP_PROXY\"]")
    for name in map(str, names):
        if name in SECRET_ENV:
            raise ConfigFailure(f"pass_env: {name} is a secret of the cluster and never passes to commands; "
                                "fix: remove it from pass_env")
        if name in daemon_env:
            env[name] = daemon_env[name]
    return env


class CommandRunner:
    """Runs command executors; see the module docstring for the contract."""

    name = "command"

    def __init__(self, scratch_root: Path, *, default_timeout_s: float = DEFAULT_TIMEOUT_S,
                 caps: OutputCaps | None = None, kill_grace_s: float = 2.0,
                 state_dir: Path | None = None, daemon_env: Mapping[str, str] | None = None,
                 node_name: str | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.scratch_root = scratch_root
        self.default_timeout_s = default_timeout_s
        self.caps = caps or OutputCaps()
        self.kill_grace_s = kill_grace_s
        self.registry = GroupRegistry(state_dir) if state_dir is not None else None
        self.watchdog = Watchdog(state_dir) if state_dir is not None else None
        self.daemon_env = dict(os.environ if daemon_env is None else daemon_env)
        self.node_name = node_name or socket.gethostname()
        self._sleep = sleep
        self._active: dict[tuple[str, str], set[asyncio.Event]] = {}

    def start(self) -> int:
        """Kill what a previous daemon left (recorded in ``state_dir``) and start the reaper
        watchdog; returns how many leftover groups were killed. Without ``state_dir``, only
        PDEATHSIG ties commands to the daemon (direct children only)."""
        if self.registry is None or self.watchdog is None:
            return 0
        reaped = reap_recorded(self.registry.state_dir)
        self.watchdog.start()
        return reaped

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.close()

    async def cancel(self, job_id: str, agent_id: str | None = None) -> int:
        told = 0
        for (jid, aid), events in self._active.items():
            if jid == job_id and (agent_id is None or aid == agent_id):
                for ev in events:
                    ev.set()
                    told += 1
        return told

    def has_scratch(self, job_id: str) -> bool:
        """Does ``job_id`` have a scratch directory here (a command of it ran on this node)?"""
        return (self.scratch_root / sandbox.safe_name(job_id)).exists()

    def remove_job(self, job_id: str) -> None:
        shutil.rmtree(self.scratch_root / sandbox.safe_name(job_id), ignore_errors=True)

    async def run(self, request: RunRequest) -> RunResult:
        key = (request.job_id, request.agent_id)
        cancel = asyncio.Event()
        self._active.setdefault(key, set()).add(cancel)
        try:
            return await self._run(request, cancel)
        finally:
            events = self._active.get(key)
            if events is not None:
                events.discard(cancel)
                if not events:
                    del self._active[key]

    async def _run(self, request: RunRequest, cancel: asyncio.Event) -> RunResult:
        config = request.config
        max_attempts = _int(config, "max_attempts", 1, low=1)
        backoff_ms = _int(config, "retry_backoff_ms", DEFAULT_BACKOFF_MS)
        delay_ms = _int(config, "startup_delay_ms", 0)
        if request.attempt == 1 and delay_ms > 0 and await self._pause(delay_ms / 1000, cancel):
            return self._cancelled(request, [])
        records: list[AttemptRecord] = []
        result: RunResult | None = None
        for local in range(1, max_attempts + 1):
            result, record, final = await self._attempt(request, local, max_attempts, cancel)
            records.append(record)
            if result.ok or final or cancel.is_set() or local == max_attempts:
                break
            wait_s = min(backoff_ms / 1000 * 2 ** (local - 1), MAX_BACKOFF_S)
            log.info("%s/%s try %d/%d failed (%s); again in %.2fs", request.job_id, request.agent_id,
                     local, max_attempts, record.reason, wait_s)
            if await self._pause(wait_s, cancel):
                break
        assert result is not None
        if cancel.is_set() and not result.ok:
            return self._cancelled(request, records)
        result.attempts = records
        result.sandbox["attempts"] = len(records)
        return result

    async def _pause(self, seconds: float, cancel: asyncio.Event) -> bool:
        """Sleep, or stop early when cancelled: True when cancelled."""
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waiter = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()
        return cancel.is_set()

    def _cancelled(self, request: RunRequest, records: list[AttemptRecord]) -> RunResult:
        reason = f"agent {request.agent_id}: cancelled"
        return RunResult(False, self._sandbox(None, None, "", len(records), 0.0), reason,
                         attempts=records, cancelled=True)

    def _sandbox(self, outcome: ProcessOutcome | None, workdir: Path | None, name: str,
                 attempts: int, duration_s: float) -> dict[str, Any]:
        out = outcome.stdout if outcome else None
        err = outcome.stderr if outcome else None
        return {
            "sandbox_name": name,
            "remote_dir": str(workdir) if workdir else "",
            "exit_code": outcome.exit_code if outcome else None,
            "runner_exit_code": outcome.exit_code if outcome else None,
            "stdout": out.text if out else "",
            "stderr": err.text if err else "",
            "logs": "",
            "runner": "host_local",
            "node_name": self.node_name,
            "attempts": attempts,
            "duration_ms": round(duration_s * 1000, 3),
            "timed_out": bool(outcome and outcome.timed_out),
            "stdout_bytes": out.total_bytes if out else 0,
            "stderr_bytes": err.total_bytes if err else 0,
            "stdout_truncated": bool(out and out.truncated),
            "stderr_truncated": bool(err and err.truncated),
            "stdout_file_truncated": bool(out and out.file_truncated),
            "stderr_file_truncated": bool(err and err.file_truncated),
        }

    async def _attempt(self, request: RunRequest, local: int, of: int,
                       cancel: asyncio.Event) -> tuple[RunResult, AttemptRecord, bool]:
        """One try: (result, record, final) where final means retrying cannot help."""
        base = sandbox.make_attempt_dir(self.scratch_root, request.job_id, request.agent_id, request.attempt, local)
        name = f"host-local-{sandbox.safe_name(request.job_id)}-{sandbox.safe_name(request.agent_id)}".lower()
        where = f"agent {request.agent_id} try {local}/{of}"
        try:
            spec, workdir = self._prepare(request, base)
        except (SandboxError, ConfigFailure, OSError) as e:
            reason = f"{where}: {e}"
            rec = AttemptRecord(local, False, None, 0.0, reason, base)
            return RunResult(False, self._sandbox(None, None, name, local, 0.0), reason), rec, True
        try:
            outcome = await run_owned(spec, cancel, self.registry)
        except OSError as e:
            reason = (f"{where}: cannot start {spec.argv[0]!r}: {e.strerror or e}; "
                      "fix: install it or correct the command")
            rec = AttemptRecord(local, False, None, 0.0, reason, base, spec.stdout_file, spec.stderr_file)
            return RunResult(False, self._sandbox(None, workdir, name, local, 0.0), reason), rec, True
        box = self._sandbox(outcome, workdir, name, local, outcome.duration_s)
        reason = self._reason(where, outcome, spec.timeout_s)
        ok = not reason
        rec = AttemptRecord(local, ok, outcome.exit_code, outcome.duration_s, reason, base,
                            spec.stdout_file, spec.stderr_file)
        parsed = structured.parse(outcome.stdout.text) if ok and not outcome.stdout.truncated else None
        return RunResult(ok, box, reason, structured=parsed, cancelled=outcome.cancelled), rec, False

    @staticmethod
    def _reason(where: str, outcome: ProcessOutcome, timeout_s: float) -> str:
        tail = stderr_tail(outcome.stderr.text)
        tail_part = f"; stderr: {tail}" if tail else ""
        if outcome.cancelled:
            return f"{where}: cancelled"
        if outcome.timed_out:
            return f"{where}: timed out after {timeout_s:g}s (process group killed){tail_part}"
        if outcome.exit_code is not None and outcome.exit_code < 0:
            return f"{where}: killed by signal {-outcome.exit_code}{tail_part}"
        if outcome.exit_code != 0:
            return f"{where}: exit code {outcome.exit_code}{tail_part}"
        return ""

    def _prepare(self, request: RunRequest, base: Path) -> tuple[Spawn, Path]:
        config = request.config
        sandbox.copy_uploads(config, request.bundle_dir, base)
        workdir = sandbox.resolve_workdir(config, base)
        context = {"job_id": request.job_id, "agent_id": request.agent_id, "agent_type": request.agent_type,
                   "template_type": request.template_type, "agent_state": dict(request.agent_state),
                   "attempt": request.attempt}
        files = sandbox.write_runtime_files(base, request.message, context)
        values = {"input_file": str(files.input_file), "context_file": str(files.context_file),
                  "message_file": str(files.message_file), "body_file": str(files.body_file),
                  "workdir": str(workdir), "job_id": request.job_id, "agent_id": request.agent_id}
        argv = build_argv(config.get("command"), values)
        runtime = {
            "MIRROR_NEURON_INPUT_FILE": values["input_file"],
            "MIRROR_NEURON_CONTEXT_FILE": values["context_file"],
            "MIRROR_NEURON_MESSAGE_FILE": values["message_file"],
            "MIRROR_NEURON_BODY_FILE": values["body_file"],
            "MIRROR_NEURON_BODY_CONTENT_TYPE": str(request.message.get("content_type", "application/json")),
            "MIRROR_NEURON_BODY_CONTENT_ENCODING": str(request.message.get("content_encoding", "identity")),
            "MIRROR_NEURON_AGENT_TYPE": request.agent_type,
            "MIRROR_NEURON_AGENT_TEMPLATE": request.template_type,
            "MIRROR_NEURON_JOB_ID": request.job_id,
            "MIRROR_NEURON_AGENT_ID": request.agent_id,
            "MIRROR_NEURON_WORKDIR": values["workdir"],
        }
        env = build_env(config, self.daemon_env, runtime, base / "tmp")
        spec = Spawn(argv, workdir, env, base / sandbox.STDOUT_FILE, base / sandbox.STDERR_FILE,
                     timeout_of(config, self.default_timeout_s), self.caps, self.kill_grace_s,
                     label=f"{request.job_id}/{request.agent_id}")
        return spec, workdir

