"""The entry-point runner: a Python task (``mirror_neuron.tasks`` entry point, ``config.task``)
run in a process pool, behind the same :class:`~mn_node.runners.base.Runner` interface as the
command runner.

It wraps any ``concurrent.futures.Executor`` (the node's spawn-context pool whose workers die
with the daemon) and a ``run_task(name, config, inputs)`` function that runs inside the pool.
Its result has the same ``sandbox`` shape as a command's (``exit_code`` 0/1, ``stdout`` = the
task's return value as JSON, ``stderr`` = the error), and ``output`` = the return value itself.
A task that overruns its timeout is reported failed; a pool worker cannot be interrupted, so
the engine must not count on its slot coming back before the task returns.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from mn_node.runners.base import AttemptRecord, RunRequest, RunResult

TaskFn = Callable[[str, dict[str, Any], dict[str, Any]], Any]


class EntryPointRunner:
    name = "entrypoint"

    def __init__(self, pool: Executor, run_task: TaskFn, *, default_timeout_s: float = 3600.0) -> None:
        self.pool = pool
        self.run_task = run_task
        self.default_timeout_s = default_timeout_s
        self._active: dict[tuple[str, str], set[asyncio.Future[Any]]] = {}

    async def cancel(self, job_id: str, agent_id: str | None = None) -> int:
        told = 0
        for (jid, aid), futs in self._active.items():
            if jid == job_id and (agent_id is None or aid == agent_id):
                for fut in futs:
                    fut.cancel()
                    told += 1
        return told

    async def run(self, request: RunRequest) -> RunResult:
        task = str(request.config.get("task", ""))
        timeout = request.config.get("timeout_seconds", self.default_timeout_s)
        inputs = request.body if isinstance(request.body, dict) else {"input": request.body}
        loop = asyncio.get_running_loop()
        key = (request.job_id, request.agent_id)
        t0 = time.monotonic()
        fut = loop.run_in_executor(self.pool, self.run_task, task, dict(request.config), inputs)
        self._active.setdefault(key, set()).add(fut)
        output: Any = None
        reason = ""
        cancelled = False
        try:
            output = await asyncio.wait_for(asyncio.shield(fut), float(timeout))
        except TimeoutError:
            reason = f"agent {request.agent_id}: task {task!r} timed out after {float(timeout):g}s"
        except asyncio.CancelledError:
            if not fut.cancelled():
                raise
            reason, cancelled = f"agent {request.agent_id}: cancelled", True
        except Exception as e:
            reason = f"agent {request.agent_id}: task {task!r} failed: {type(e).__name__}: {e}"[:500]
        finally:
            futs = self._active.get(key, set())
            futs.discard(fut)
            if not futs:
                self._active.pop(key, None)
        duration = time.monotonic() - t0
        ok = not reason
        box = {"exit_code": 0 if ok else 1, "stdout": json.dumps(output) if ok else "",
               "stderr": "" if ok else reason, "runner": "entrypoint", "task": task, "attempts": 1,
               "duration_ms": round(duration * 1000, 3)}
        rec = AttemptRecord(1, ok, 0 if ok else 1, duration, reason)
        return RunResult(ok, box, reason, output=output, attempts=[rec], cancelled=cancelled)
