"""The executor side: runs the executor agents of any coordinator on this node.

One dispatch path, two runners behind :class:`~mn_node.runners.base.Runner`: ``config.task``
runs in the entry-point runner (a ``ProcessPoolExecutor``, spawn, workers die with the daemon),
``config.command`` in the command runner (an owned process group per try, scratch directories
under ``<state dir>/scratch``, group records under ``<state dir>/groups``). A run takes
``pool_slots`` (default 1) of the node's MIRROR_NEURON_EXECUTOR_CAPACITY slots. Each run is
counted in ``{ns}:job:<id>:runs`` before it starts (``claim_start``, refused unless the attempt
is still the dispatched one of a running job); its output is stored by ``store_result``
(conditioned on the same) before the coordinator is told. A command's runner-internal retries
(``max_attempts``) all happen inside that one counted start. Every finished attempt's record
(exit code, duration, node, stdout/stderr tails) goes to ``{ns}:job:<id>:attempts``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mn_node.aio import Backoff, Signal
from mn_node.bundles.cache import BundleCache
from mn_node.errors import EX_UNAVAILABLE, ConfigError, LinkError, MirrorNeuronError, RedisUnavailable
from mn_node.jobs import tasks
from mn_node.jobs.outcome import Outcome, attempt_record, outcome_of
from mn_node.jobs.state import JobKeys
from mn_node.leases import Holder
from mn_node.link.manager import LinkManager
from mn_node.runners.base import RunRequest, RunResult, envelope
from mn_node.runners.command import CommandRunner
from mn_node.runners.entrypoint import EntryPointRunner
from mn_node.runners.sandbox import STDERR_FILE, STDOUT_FILE, safe_name
from mn_node.store import EVENTS_MAXLEN, Store

log = logging.getLogger("mn_node.executor")

STORE_RETRY_S = 30.0
LOG_CHUNK = 64 * 1024  # most bytes per stream one exec.logs answer carries


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


class Slots:
    """A counting semaphore whose holders take several units (``pool_slots``), first come first served."""

    def __init__(self, total: int) -> None:
        self.free = total
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, n: int) -> None:
        if not self._waiters and self.free >= n:
            self.free -= n
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted just as we were cancelled
            elif entry in self._waiters:
                self._waiters.remove(entry)
            raise

    def release(self, n: int) -> None:
        self.free += n
        self._wake()

    def resize(self, delta: int) -> None:
        """Add (or, negative, remove) units; held units stay held, so ``free`` may go below 0
        until enough are released."""
        self.free += delta
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.free >= self._waiters[0][0]:
            k, fut = self._waiters.popleft()
            if fut.done():
                continue
            self.free -= k
            fut.set_result(None)


@dataclass
class Run:
    job_id: str
    agent: str
    attempt: int
    owner: str
    task: asyncio.Task[None] | None = None
    started: bool = False


class ExecutorService:
    def __init__(self, node: str, store: Store, links: LinkManager, capacity: int, *,
                 state_dir: Path, commands: bool = True, command_timeout_s: float = 3600.0) -> None:
        self.node = node
        self.store = store
        self.links = links
        self.capacity = capacity
        self.commands_allowed = commands
        self._slots = Slots(capacity)
        self._pool: ProcessPoolExecutor | None = None
        self._pool_size = 0
        self._entry: EntryPointRunner | None = None
        self.commands = CommandRunner(state_dir / "scratch", default_timeout_s=command_timeout_s,
                                      state_dir=state_dir / "groups", node_name=node)
        self.bundles = BundleCache(store, state_dir / "bundles")
        self._ready = asyncio.Event()  # set once the runners exist: links deliver exec.run earlier
        self._stopping = False
        self.draining = False  # set by the drain control: new runs are refused, known ones go on
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
        links.register("exec.logs", self.on_logs)

    @property
    def busy(self) -> int:
        return sum(1 for r in self.runs.values() if r.started)

    @property
    def slots_used(self) -> int:
        """Slots held by runs (above ``capacity`` for a while after a reload lowered it)."""
        return self.capacity - self._slots.free

    def set_capacity(self, n: int) -> None:
        """Change the number of slots while running (reload of MIRROR_NEURON_EXECUTOR_CAPACITY).
        Runs already holding slots go on; a bigger pool replaces the old one, whose running
        tasks finish in it."""
        n = max(1, int(n))
        self._slots.resize(n - self.capacity)
        self.capacity = n
        if self._pool is not None and self._entry is not None and n > self._pool_size:
            old, self._pool = self._pool, self._new_pool(n)
            self._entry.pool = self._pool
            old.shutdown(wait=False)

    def _new_pool(self, n: int) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_die_with_parent,
                                   initargs=(os.getpid(),))
        for _ in range(n):
            pool.submit(_warm)
        self._pool_size = n
        return pool

    def start(self) -> None:
        # spawn (not fork: the daemon has threads; not forkserver: a forkserver outlives a
        # SIGKILLed daemon and keeps its workers alive), workers tied to our life by PDEATHSIG
        self._pool = self._new_pool(self.capacity)
        self._entry = EntryPointRunner(self._pool, tasks.run_task)
        for folder in (self.commands.scratch_root, self.bundles.root):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"MIRROR_NEURON_STATE_DIR: {folder} cannot be created ({e.strerror}); fix: make "
                                  "the state directory writable by the daemon's user or point the variable "
                                  "elsewhere") from None
        # even with commands off: kill what a previous incarnation left; then start the reaper
        reaped = self.commands.start()
        if reaped:
            log.warning("killed %d command process group(s) left by a previous run of this node", reaped)
        self._ready.set()

    async def stop(self) -> None:
        self._stopping = True  # refuse new runs: the coordinator puts them back to pending
        tasks_ = [run.task for run in self.runs.values() if run.task is not None]
        for t in tasks_:
            t.cancel()  # a command run ends its process group before the cancellation returns
        await asyncio.gather(*tasks_, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.commands.close)

    # ---- mailboxes ------------------------------------------------------------------------------
    def on_run(self, frm: str, msg: Any) -> dict[str, Any]:
        """``{job, epoch, owner, runs: [{agent, attempt, runner, task, config, slots, ...}]}``"""
        job_id = str(msg["job"])
        if self._stopping:
            raise RuntimeError(f"{self.node} is shutting down")
        accepted = []
        for req in msg["runs"]:
            self._check_runnable(req)
            key = (job_id, str(req["agent"]))
            old = self.runs.get(key)
            if old is not None and old.attempt >= int(req["attempt"]):
                accepted.append(req["agent"])
                continue
            if self.draining:
                raise RuntimeError(f"{self.node} is draining: it takes no new executors")
            if old is not None and old.task is not None:
                old.task.cancel()
            run = Run(job_id, str(req["agent"]), int(req["attempt"]), str(msg.get("owner") or frm))
            self.runs[key] = run
            run.task = asyncio.get_running_loop().create_task(self._execute(run, req), name=f"exec {key}")
            accepted.append(req["agent"])
        self.cancelled.discard(job_id)
        return {"accepted": accepted}

    def stop_runs(self, why: str) -> int:
        """Drain deadline: stop every run here (a command's group is killed before its task
        ends; a pool task's result is dropped). Nothing is stored, so the coordinators find the
        runs unknown here and replay them on another node. Returns how many were stopped."""
        n = 0
        for run in list(self.runs.values()):
            if run.task is not None and not run.task.done():
                log.info("stopping %s/%s attempt %d: %s", run.job_id, run.agent, run.attempt, why)
                run.task.cancel()
                n += 1
        return n

    def _check_runnable(self, req: dict[str, Any]) -> None:
        if req.get("runner") == "command":
            if not self.commands_allowed:
                raise LookupError(f"commands are off on {self.node} (MIRROR_NEURON_COMMANDS=off)")
        elif req["task"] not in tasks.available():
            raise LookupError(f"task {req['task']!r} is not installed on {self.node}")

    def on_status(self, frm: str, msg: Any) -> list[bool]:
        job_id = str(msg["job"])
        out = []
        for aid, attempt in msg["agents"]:
            run = self.runs.get((job_id, str(aid)))
            out.append(run is not None and run.attempt == int(attempt))
        return out

    def on_cancel(self, frm: str, msg: Any) -> int:
        """The job ended or was cancelled: drop queued runs, kill running command groups, and
        remove the job's scratch directories once they are gone (its logs stay in Redis)."""
        job_id = str(msg["job"])
        self.cancelled.add(job_id)
        n = 0
        running: list[asyncio.Task[None]] = []
        for (jid, _), run in list(self.runs.items()):
            if jid == job_id and run.task is not None:
                if not run.started:
                    run.task.cancel()
                    n += 1
                else:
                    running.append(run.task)
        asyncio.get_running_loop().create_task(self._end_job(job_id, running), name=f"end {job_id}")
        return n

    async def _end_job(self, job_id: str, running: list[asyncio.Task[None]]) -> None:
        await self.commands.cancel(job_id)
        if running:
            await asyncio.wait(running, timeout=30)
        await asyncio.to_thread(self.commands.remove_job, job_id)

    def on_logs(self, frm: str, msg: Any) -> dict[str, Any]:
        """``{job, agent, attempt, offsets: {stdout, stderr}}`` -> the output of that attempt's
        latest try on this node from those byte offsets (at most LOG_CHUNK per stream)."""
        job_id, agent, attempt = str(msg["job"]), str(msg["agent"]), int(msg["attempt"])
        offsets = msg.get("offsets") or {}
        run = self.runs.get((job_id, agent))
        out: dict[str, Any] = {"node": self.node, "running": run is not None and run.attempt == attempt,
                               "try": None, "stdout": "", "stderr": "", "offsets": {}}
        folder = self.commands.scratch_root / safe_name(job_id) / safe_name(agent)
        tries = sorted(folder.glob(f"a{attempt}.*-*"), key=lambda p: int(p.name.split(".")[1].split("-")[0]))
        if not tries:
            return out
        out["try"] = int(tries[-1].name.split(".")[1].split("-")[0])
        for stream, name in (("stdout", STDOUT_FILE), ("stderr", STDERR_FILE)):
            start = int(offsets.get(stream, 0) or 0)
            try:
                with open(tries[-1] / name, "rb") as f:
                    f.seek(start)
                    data = f.read(LOG_CHUNK)
            except OSError:
                data = b""
            out[stream] = data.decode(errors="replace")
            out["offsets"][stream] = start + len(data)
        return out

    # ---- execution --------------------------------------------------------------------------------
    async def _execute(self, run: Run, req: dict[str, Any]) -> None:
        key = (run.job_id, run.agent)
        k = JobKeys(self.store, run.job_id)
        slots = max(1, min(int(req.get("slots", 1) or 1), self.capacity))
        try:
            await self._ready.wait()
            await self._slots.acquire(slots)
            try:
                if run.job_id in self.cancelled:
                    return
                run.started = True
                if not await self._claim_start(run, k):
                    self.skipped += 1
                    log.info("not starting %s/%s attempt %d: no longer the current attempt of a running job",
                             run.job_id, run.agent, run.attempt)
                    return
                started_ms = int(time.time() * 1000)
                result = await self._run(run, req)
            finally:
                self._slots.release(slots)
            await self._save_attempt(run, k, req, result, started_ms)
            if result.cancelled:
                return
            await self._store(run, k, outcome_of(run.agent, req, result, started_ms))
        except asyncio.CancelledError:
            pass
        except RedisUnavailable as e:
            log.warning("result of %s/%s attempt %d not stored: %s (the coordinator will replay it)",
                        run.job_id, run.agent, run.attempt, e)
        finally:
            if self.runs.get(key) is run:
                del self.runs[key]

    async def _run(self, run: Run, req: dict[str, Any]) -> RunResult:
        """One dispatched attempt through its runner (retries of a command included)."""
        t0 = time.monotonic()
        if req.get("runner") == "command":
            result = await self._run_command(run, req)
        else:
            assert self._entry is not None
            config = dict(req["config"])
            config.setdefault("timeout_seconds", float(req.get("timeout", 3600)))
            message = {"body": req.get("inputs") or {}}
            result = await self._entry.run(RunRequest(run.job_id, run.agent, config, message, attempt=run.attempt))
        log.debug("ran %s/%s attempt %d in %.3fs: %s", run.job_id, run.agent, run.attempt,
                  time.monotonic() - t0, "ok" if result.ok else result.reason)
        return result

    async def _run_command(self, run: Run, req: dict[str, Any]) -> RunResult:
        sha = req.get("bundle")
        bundle_dir = None
        if sha:
            try:
                bundle_dir = await self.bundles.get(str(sha))
            except RedisUnavailable:
                raise  # not the bundle's fault: no result is stored and the coordinator replays the run
            except (MirrorNeuronError, OSError) as e:
                why = f"agent {run.agent}: bundle {str(sha)[:12]} unavailable on {self.node}: {e}"
                return RunResult(False, {"exit_code": None, "stdout": "", "stderr": "", "attempts": 0,
                                         "runner": "host_local", "node_name": self.node}, why)
        message = envelope(run.job_id, run.agent, str(req.get("message_type") or "message"), req.get("body"),
                           sender=str(req.get("sender") or "runtime"))
        return await self.commands.run(RunRequest(
            run.job_id, run.agent, req["config"], message, bundle_dir=bundle_dir,
            template_type=str(req.get("template") or "generic"), attempt=run.attempt))

    async def _save_attempt(self, run: Run, k: JobKeys, req: dict[str, Any], result: RunResult,
                            started_ms: int) -> None:
        """Best effort: the attempt's record for ``mn logs`` (a lost record loses no result)."""
        rec = attempt_record(self.node, run.agent, run.attempt, req, result, started_ms, int(time.time() * 1000))
        try:
            await self.store.scripts.record_attempt([k.job, k.attempts], [f"{run.agent}:{run.attempt}",
                                                                         json.dumps(rec, separators=(",", ":"))])
        except RedisUnavailable as e:
            log.info("attempt record of %s/%s not saved: %s", run.job_id, run.agent, e)

    async def _claim_start(self, run: Run, k: JobKeys) -> bool:
        """Count this start (``claim_start`` script) only if the attempt is still the dispatched
        one of a running job; a late request is dropped instead of re-running a completed
        executor (its result would be refused by ``store_result`` anyway)."""
        res = await self.store.scripts.claim_start([k.job, k.agents, k.runs], [run.agent, run.attempt])
        if int(res[0]) != 1:
            log.debug("claim of %s/%s attempt %d refused: %s", run.job_id, run.agent, run.attempt, res[1])
        return int(res[0]) == 1

    async def _store(self, run: Run, k: JobKeys, out: Outcome) -> None:
        deadline = time.monotonic() + STORE_RETRY_S
        payload = json.dumps(out.output, separators=(",", ":"))
        events = [[t, json.dumps(d, separators=(",", ":"))] for t, d in out.events]
        backoff = Backoff(0.1, 1.0)
        while True:
            try:
                res = await self.store.scripts.store_result(
                    [k.job, k.agents, k.runs, k.events],
                    [run.agent, run.attempt, self.node, payload, out.status, out.error,
                     json.dumps(out.extra, separators=(",", ":")), json.dumps(events), EVENTS_MAXLEN],
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
