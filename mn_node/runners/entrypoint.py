"""The entry-point runner: a Python task (``mirror_neuron.tasks`` entry point, ``config.task``)
run in a process pool, behind the same :class:`~mn_node.runners.base.Runner` interface as the
command runner.

It wraps any ``concurrent.futures.Executor`` (the node's spawn-context pool whose workers die
with the daemon) and a ``run_task(name, config, inputs)`` function that runs inside the pool.
Its result has the same ``sandbox`` shape as a command's (``exit_code`` 0/1, ``stdout`` = the
task's return value as JSON, ``stderr`` = the error), and ``output`` = the return value itself.

:meth:`EntryPointRunner.run_many` sends several requests as ONE pool submission (a *chunk*,
like ``multiprocessing.Pool``'s chunksize): the worker runs them one after the other and
returns every result at once, so tiny tasks pay the inter-process cost once per chunk. Each
task's result, error and duration are its own; one task failing does not fail the others.

Timeouts: a request's ``timeout_seconds`` counts from the submission of its chunk (a single
request is a chunk of one), so in a chunk the tasks before it count against it: a request
whose timeout passes before its chunk is back is reported failed (timed out), whichever task
of the chunk is slow; a task that came back but ran longer than its own timeout is reported
failed too. The engine chunks only tasks that recently ran in a few milliseconds. A
pool worker cannot be interrupted, so the engine must not count on its slot coming back
before the task returns. :meth:`EntryPointRunner.cancel` drops the chunks of a job the pool
has not started (their requests report ``cancelled``); cancelling the awaiting task drops its
chunk likewise if not started, and one already running finishes in its worker, unread.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from mn_node.runners.base import AttemptRecord, RunRequest, RunResult

TaskFn = Callable[[str, dict[str, Any], dict[str, Any]], Any]
Job = tuple[str, dict[str, Any], dict[str, Any]]  # task name, config, inputs


def run_chunk(run_task: TaskFn, jobs: list[Job]) -> list[tuple[bool, Any, float]]:
    """Runs inside a pool worker: every job of the chunk in turn, each as ``(ok, output or
    error line, seconds)``."""
    out: list[tuple[bool, Any, float]] = []
    for name, config, inputs in jobs:
        t0 = time.monotonic()
        try:
            out.append((True, run_task(name, config, inputs), time.monotonic() - t0))
        except Exception as e:
            out.append((False, f"{type(e).__name__}: {e}", time.monotonic() - t0))
    return out


class EntryPointRunner:
    name = "entrypoint"

    def __init__(self, pool: Executor, run_task: TaskFn, *, default_timeout_s: float = 3600.0) -> None:
        self.pool = pool
        self.run_task = run_task
        self.default_timeout_s = default_timeout_s
        self._active: dict[tuple[str, str], set[asyncio.Future[Any]]] = {}

    async def cancel(self, job_id: str, agent_id: str | None = None) -> int:
        """Cancel the chunks holding runs of the job (or agent) that the pool has not started."""
        told = 0
        for (jid, aid), futs in self._active.items():
            if jid == job_id and (agent_id is None or aid == agent_id):
                for fut in futs:
                    fut.cancel()
                    told += 1
        return told

    async def run(self, request: RunRequest) -> RunResult:
        return (await self.run_many([request]))[0]

    def _timeout(self, request: RunRequest) -> float:
        return float(request.config.get("timeout_seconds", self.default_timeout_s))

    async def run_many(self, requests: Sequence[RunRequest]) -> list[RunResult]:
        """Run ``requests`` as one chunk in one pool worker; one result per request, in order."""
        jobs: list[Job] = []
        for r in requests:
            inputs = r.body if isinstance(r.body, dict) else {"input": r.body}
            jobs.append((str(r.config.get("task", "")), dict(r.config), inputs))
        loop = asyncio.get_running_loop()
        keys = [(r.job_id, r.agent_id) for r in requests]
        t0 = time.monotonic()
        fut = loop.run_in_executor(self.pool, run_chunk, self.run_task, jobs)
        for key in keys:
            self._active.setdefault(key, set()).add(fut)
        late: set[int] = set()  # requests whose timeout passed before the chunk came back
        done: list[tuple[bool, Any, float]] | None = None
        failure = ""
        cancelled = False
        try:
            for limit in sorted({self._timeout(r) for r in requests}):
                try:
                    done = await asyncio.wait_for(asyncio.shield(fut), max(0.0, t0 + limit - time.monotonic()))
                    break
                except TimeoutError:
                    late |= {i for i, r in enumerate(requests) if self._timeout(r) <= limit}
        except asyncio.CancelledError:
            if not fut.cancelled():
                fut.cancel()  # the awaiting task was cancelled: a chunk the pool has not started is dropped
                raise
            failure, cancelled = "cancelled", True
        except Exception as e:  # the pool itself failed (a worker died): every request of the chunk
            failure = f"failed: {type(e).__name__}: {e}"
        finally:
            for key in keys:
                futs = self._active.get(key, set())
                futs.discard(fut)
                if not futs:
                    self._active.pop(key, None)
        elapsed = time.monotonic() - t0
        out = []
        for i, (r, job) in enumerate(zip(requests, jobs, strict=True)):
            if i in late:
                out.append(_result(r, job[0], False, None, elapsed, f"timed out after {self._timeout(r):g}s"))
                continue
            if done is None:
                out.append(_result(r, job[0], False, None, elapsed, failure, cancelled))
                continue
            ok, value, seconds = done[i]
            if ok and seconds > self._timeout(r):
                out.append(_result(r, job[0], False, None, seconds, f"timed out after {self._timeout(r):g}s"))
            else:
                out.append(_result(r, job[0], ok, value if ok else None, seconds, "" if ok else f"failed: {value}"))
        return out


def _result(request: RunRequest, task: str, ok: bool, output: Any, duration: float, why: str,
            cancelled: bool = False) -> RunResult:
    reason = ""
    if not ok:
        reason = (f"agent {request.agent_id}: cancelled" if cancelled
                  else f"agent {request.agent_id}: task {task!r} {why}"[:500])
    box = {"exit_code": 0 if ok else 1, "stdout": json.dumps(output) if ok else "",
           "stderr": "" if ok else reason, "runner": "entrypoint", "task": task, "attempts": 1,
           "duration_ms": round(duration * 1000, 3)}
    rec = AttemptRecord(1, ok, 0 if ok else 1, duration, reason)
    return RunResult(ok, box, reason, output=output, attempts=[rec], cancelled=cancelled)
