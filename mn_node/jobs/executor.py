"""The executor side: runs tasks of any coordinator in this node's process pool.

Tasks run in a ``ProcessPoolExecutor`` (spawn, workers die with the daemon) of MIRROR_NEURON_EXECUTOR_CAPACITY slots,
so CPU work never blocks the event loop. Each run is counted in ``{ns}:job:<id>:runs`` before
it starts; its output is stored by ``store_result`` (conditioned on the attempt still being
current and the job still running) before the coordinator is told.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from mn_node.aio import Backoff, Signal
from mn_node.errors import EX_UNAVAILABLE, LinkError, RedisUnavailable
from mn_node.jobs import tasks
from mn_node.jobs.state import JobKeys
from mn_node.leases import Holder
from mn_node.link.manager import LinkManager
from mn_node.store import Store

log = logging.getLogger("mn_node.executor")

STORE_RETRY_S = 30.0


def _warm() -> int:
    return 0


def _die_with_parent(parent: int) -> None:
    """Pool-worker initializer: the kernel SIGKILLs this worker when the daemon dies, even by
    SIGKILL (PR_SET_PDEATHSIG), so a crashed node never leaves its pool behind."""
    import ctypes
    import signal as _signal

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(_signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the daemon died before prctl took effect
        os._exit(EX_UNAVAILABLE)


@dataclass
class Run:
    job_id: str
    agent: str
    attempt: int
    owner: str
    task: asyncio.Task[None] | None = None
    started: bool = False


class ExecutorService:
    def __init__(self, node: str, store: Store, links: LinkManager, capacity: int) -> None:
        self.node = node
        self.store = store
        self.links = links
        self.capacity = capacity
        self._sem = asyncio.Semaphore(capacity)
        self._pool: ProcessPoolExecutor | None = None
        self._ready = asyncio.Event()  # set once the pool exists: links deliver exec.run earlier
        self._stopping = False
        self.runs: dict[tuple[str, str], Run] = {}
        self.cancelled: set[str] = set()
        self.completed = 0
        self.refused = 0
        self.skipped = 0
        # a result was stored for a coordinator on this node ({job, agent, attempt})
        self.local_done: Signal[[dict[str, Any]]] = Signal("executor result stored locally")
        links.register("exec.run", self.on_run)
        links.register("exec.status", self.on_status)
        links.register("exec.cancel", self.on_cancel)

    @property
    def busy(self) -> int:
        return sum(1 for r in self.runs.values() if r.started)

    def start(self) -> None:
        # spawn (not fork: the daemon has threads; not forkserver: a forkserver outlives a
        # SIGKILLed daemon and keeps its workers alive), workers tied to our life by PDEATHSIG
        ctx = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=self.capacity, mp_context=ctx,
                                         initializer=_die_with_parent, initargs=(os.getpid(),))
        for _ in range(self.capacity):
            self._pool.submit(_warm)
        self._ready.set()

    async def stop(self) -> None:
        self._stopping = True  # refuse new runs: the coordinator puts them back to pending
        for run in list(self.runs.values()):
            if run.task is not None:
                run.task.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- mailboxes ------------------------------------------------------------------------------
    def on_run(self, frm: str, msg: Any) -> dict[str, Any]:
        """``{job, epoch, owner, runs: [{agent, attempt, task, config, inputs, timeout}]}``"""
        job_id = str(msg["job"])
        if self._stopping:
            raise RuntimeError(f"{self.node} is shutting down")
        accepted = []
        for req in msg["runs"]:
            if req["task"] not in tasks.available():
                raise LookupError(f"task {req['task']!r} is not installed on {self.node}")
            key = (job_id, str(req["agent"]))
            old = self.runs.get(key)
            if old is not None and old.attempt >= int(req["attempt"]):
                accepted.append(req["agent"])
                continue
            if old is not None and old.task is not None:
                old.task.cancel()
            run = Run(job_id, str(req["agent"]), int(req["attempt"]), str(msg.get("owner") or frm))
            self.runs[key] = run
            run.task = asyncio.get_running_loop().create_task(self._execute(run, req), name=f"exec {key}")
            accepted.append(req["agent"])
        self.cancelled.discard(job_id)
        return {"accepted": accepted}

    def on_status(self, frm: str, msg: Any) -> list[bool]:
        job_id = str(msg["job"])
        out = []
        for aid, attempt in msg["agents"]:
            run = self.runs.get((job_id, str(aid)))
            out.append(run is not None and run.attempt == int(attempt))
        return out

    def on_cancel(self, frm: str, msg: Any) -> int:
        job_id = str(msg["job"])
        self.cancelled.add(job_id)
        n = 0
        for (jid, _), run in list(self.runs.items()):
            if jid == job_id and run.task is not None and not run.started:
                run.task.cancel()
                n += 1
        return n

    # ---- execution --------------------------------------------------------------------------------
    async def _execute(self, run: Run, req: dict[str, Any]) -> None:
        key = (run.job_id, run.agent)
        k = JobKeys(self.store, run.job_id)
        try:
            await self._ready.wait()
            async with self._sem:
                if run.job_id in self.cancelled:
                    return
                run.started = True
                if not await self._claim_start(run, k):
                    self.skipped += 1
                    log.info("not starting %s/%s attempt %d: no longer the current attempt of a running job",
                             run.job_id, run.agent, run.attempt)
                    return
                loop = asyncio.get_running_loop()
                assert self._pool is not None
                t0 = time.monotonic()
                try:
                    fut = loop.run_in_executor(self._pool, tasks.run_task, req["task"], req["config"], req["inputs"])
                    output = await asyncio.wait_for(fut, float(req.get("timeout", 3600)))
                    outcome, err = "completed", ""
                except TimeoutError:
                    output, outcome, err = None, "failed", f"task timed out after {req.get('timeout')}s"
                except Exception as e:
                    output, outcome, err = None, "failed", f"{type(e).__name__}: {e}"[:500]
                log.debug("ran %s/%s attempt %d in %.3fs: %s", run.job_id, run.agent, run.attempt,
                          time.monotonic() - t0, outcome)
            await self._store(run, k, output, outcome, err)
        except asyncio.CancelledError:
            pass
        except RedisUnavailable as e:
            log.warning("result of %s/%s attempt %d not stored: %s (the coordinator will replay it)",
                        run.job_id, run.agent, run.attempt, e)
        finally:
            if self.runs.get(key) is run:
                del self.runs[key]

    async def _claim_start(self, run: Run, k: JobKeys) -> bool:
        """Count this start (``claim_start`` script) only if the attempt is still the dispatched
        one of a running job; a late request is dropped instead of re-running a completed
        executor (its result would be refused by ``store_result`` anyway)."""
        res = await self.store.scripts.claim_start([k.job, k.agents, k.runs], [run.agent, run.attempt])
        if int(res[0]) != 1:
            log.debug("claim of %s/%s attempt %d refused: %s", run.job_id, run.agent, run.attempt, res[1])
        return int(res[0]) == 1

    async def _store(self, run: Run, k: JobKeys, output: Any, outcome: str, err: str) -> None:
        deadline = time.monotonic() + STORE_RETRY_S
        payload = json.dumps(output, separators=(",", ":"))
        backoff = Backoff(0.1, 1.0)
        while True:
            try:
                res = await self.store.scripts.store_result(
                    [k.job, k.agents, k.runs],
                    [run.agent, run.attempt, self.node, payload, outcome, err],
                )
                break
            except RedisUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(backoff.next_delay())
        if int(res[0]) != 1:
            self.refused += 1
            log.info("result of %s/%s attempt %d refused: %s", run.job_id, run.agent, run.attempt, res[1])
            return
        self.completed += 1
        await self._tell_owner(run)

    async def _tell_owner(self, run: Run) -> None:
        """Tell the coordinator; if ownership moved, tell the current lease holder too."""
        targets = {run.owner}
        try:
            token = await self.store.guard(self.store.r.get(self.store.key("lease", f"job:{run.job_id}")))
            if token:
                targets.add(Holder(str(token), 0).node)
        except RedisUnavailable:
            pass
        msg = {"job": run.job_id, "agent": run.agent, "attempt": run.attempt}
        for node in targets:
            if node == self.node:
                self.local_done.emit(msg)
                continue
            try:
                self.links.send(node, "job.agent_done", msg)
            except LinkError:
                pass  # the coordinator's periodic refresh picks the result up from Redis
