"""The executor side: runs the executor agents of any coordinator on this node.

One dispatch path, two runners behind :class:`~mn_node.runners.base.Runner`: ``config.task``
runs in the entry-point runner (a ``ProcessPoolExecutor``, spawn, workers die with the daemon),
``config.command`` in the command runner (an owned process group per try, scratch directories
under ``<state dir>/scratch``, group records under ``<state dir>/groups``). A run takes
``pool_slots`` (default 1) of the node's MIRROR_NEURON_EXECUTOR_CAPACITY slots.

Every per-run cost that crosses a process is batched. Entry-point runs wait in one queue; when
a slot frees, the runs queued behind it of a task that recently ran under ``CHUNK_UNDER_S``
are taken together as one *chunk* (at most ``CHUNK_MAX`` runs or ``CHUNK_WORK_S`` of work, and
about the queue over the capacity, so long tasks still spread over every worker) that holds one
slot and is ONE pool submission.
Each run is counted in ``{ns}:job:<id>:runs`` before it starts (``claim_starts``, per run:
refused unless the attempt is still the dispatched one of a running job); its output is
stored by ``store_results`` (per run, conditioned on the same) before the coordinator is
told. Both scripts take every run of a job that is ready in one pass of the loop (see
:class:`~mn_node.jobs.batch.Batcher`); after a store, one ``job.agents_done`` message per job
and coordinator names every stored agent. A command's runner-internal retries
(``max_attempts``) all happen inside that one counted start. The attempt record (exit code,
duration, node, stdout/stderr tails; ``{ns}:job:<id>:attempts``, for ``mn logs``) goes in the
same ``store_results`` call for every command run and every failed or cancelled run; a
successful entry-point run has none: its agent state holds all a record would (output,
exit code, start, duration, node).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mn_node.aio import Backoff, Signal
from mn_node.bundles.cache import BundleCache
from mn_node.errors import EX_UNAVAILABLE, ConfigError, LinkError, MirrorNeuronError, RedisUnavailable
from mn_node.jobs import tasks
from mn_node.jobs.batch import Batcher
from mn_node.jobs.outcome import Outcome, attempt_record, outcome_of
from mn_node.jobs.progress import KEPT_EXTRA
from mn_node.jobs.state import AgentState, JobKeys
from mn_node.link.manager import LinkManager
from mn_node.runners.base import RunRequest, RunResult, envelope
from mn_node.runners.command import CommandRunner
from mn_node.runners.entrypoint import EntryPointRunner
from mn_node.runners.sandbox import STDERR_FILE, STDOUT_FILE, safe_name
from mn_node.scripts import STORE_ITEM
from mn_node.store import EVENTS_MAXLEN, Store

log = logging.getLogger("mn_node.executor")

STORE_RETRY_S = 30.0
STORE_CALL_BYTES = 1 << 20  # a store_results call carries about this much at most
CHUNK_MAX = 64  # entry-point runs in one pool submission
CHUNK_WORK_S = 0.05  # ... and about this much work at most (the task's recent run time), so results come back soon
CHUNK_UNDER_S = 0.01  # only tasks whose recent runs took less than this are chunked
LOG_CHUNK = 64 * 1024  # most bytes per stream one exec.logs answer carries
TOLD_OUTPUT_MAX = 16 * 1024  # a bigger output is not sent along with the result: it is read from Redis
TOLD_EXTRA = KEPT_EXTRA | {"duration_ms"}  # the extra fields a coordinator keeps (and its run-time estimate)
CANCELLED_KEEP = 4096  # ended jobs remembered, so a command run still waiting for a slot never starts


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
    req: dict[str, Any]
    slots: int = 1
    task: asyncio.Task[None] | None = None  # a command run's own task
    chunk: Chunk | None = None  # the pool chunk an entry-point run went into
    started: bool = False  # its start is counted (claim_starts)
    dropped: bool = False  # stopped or replaced: nothing of it is stored
    storing: bool = False  # its result waits in (or went through) the store batch


@dataclass
class Chunk:
    runs: list[Run]
    task: asyncio.Task[None] | None = None

    def drop(self, run: Run) -> None:
        """Drop one run; the chunk itself is cancelled once none of its runs is wanted."""
        run.dropped = True
        if self.task is not None and all(r.dropped for r in self.runs):
            self.task.cancel()


@dataclass
class Stored:
    """One run's entry in a ``store_results`` call: its outcome (None: the record alone)."""

    run: Run
    outcome: Outcome | None
    record: dict[str, Any] | None


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
        self._job_runs: dict[str, set[str]] = {}  # job -> its agents in self.runs (a job's end is O(its runs))
        # jobs recently ended or cancelled here, oldest first (bounded: a node sees millions of jobs)
        self.cancelled: dict[str, None] = {}
        self.completed = 0
        self.refused = 0
        self.skipped = 0
        self._queue: deque[Run] = deque()  # entry-point runs waiting for a slot, in order
        self._queued = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._chunks: set[asyncio.Task[None]] = set()
        self._task_s: dict[str, float] = {}  # entry-point task -> recent run time (moving average)
        self._claims: Batcher[tuple[list[Run], asyncio.Future[list[bool | None]]]] = Batcher(
            "claim_starts", self._flush_claims)
        self._stores: Batcher[Stored] = Batcher("store_results", self._flush_stores)
        # results were stored for a coordinator on this node ({job, agents, attempts})
        self.local_done: Signal[[dict[str, Any]]] = Signal("executor results stored locally")
        links.register("exec.run", self.on_run)
        links.register("exec.status", self.on_status)
        links.register("exec.cancel", self.on_cancel)
        links.register("exec.logs", self.on_logs)

    @property
    def busy(self) -> int:
        """Runs started here (counted) and not finished yet."""
        return sum(1 for r in self.runs.values() if r.started and not r.storing and not r.dropped)

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
        for run in self.runs.values():
            run.dropped = True
        self._queue.clear()
        tasks_ = [run.task for run in self.runs.values() if run.task is not None] + list(self._chunks)
        if self._pump is not None:
            tasks_.append(self._pump)
        for t in tasks_:
            t.cancel()  # a command run ends its process group before the cancellation returns
        await asyncio.gather(*tasks_, return_exceptions=True)
        await self._claims.close()
        await self._stores.close()
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
            if old is not None:
                self._drop(old)
            run = Run(job_id, str(req["agent"]), int(req["attempt"]), str(msg.get("owner") or frm), req,
                      max(1, min(int(req.get("slots", 1) or 1), self.capacity)))
            self.runs[key] = run
            self._job_runs.setdefault(job_id, set()).add(run.agent)
            if req.get("runner") == "command":
                run.task = asyncio.get_running_loop().create_task(self._execute_command(run), name=f"exec {key}")
            else:
                self._enqueue(run)
            accepted.append(req["agent"])
        self.cancelled.pop(job_id, None)
        return {"accepted": accepted}

    def _drop(self, run: Run) -> bool:
        """Stop a run that is not finished: a queued one is skipped, a chunk's result dropped
        (the chunk is cancelled once none of its runs is wanted), a command's task cancelled
        (its group is killed before the task ends). False when it was finished already."""
        if run.dropped or run.storing:
            return False
        if run.task is not None:
            if run.task.done():
                return False
            run.task.cancel()
        if run.chunk is not None:
            run.chunk.drop(run)
        run.dropped = True
        self._forget(run)
        return True

    def _forget(self, run: Run) -> None:
        key = (run.job_id, run.agent)
        if self.runs.get(key) is run:
            del self.runs[key]
            agents = self._job_runs.get(run.job_id)
            if agents is not None:
                agents.discard(run.agent)
                if not agents:
                    del self._job_runs[run.job_id]

    def stop_runs(self, why: str) -> int:
        """Drain deadline: stop every run here (a command's group is killed before its task
        ends; a pool task's result is dropped; a result already handed to the store batch is
        still stored). The coordinators find the others unknown here and replay them on
        another node. Returns how many were stopped."""
        n = 0
        for run in list(self.runs.values()):
            if self._drop(run):
                log.info("stopping %s/%s attempt %d: %s", run.job_id, run.agent, run.attempt, why)
                n += 1
        return n

    def _check_runnable(self, req: dict[str, Any]) -> None:
        if req.get("runner") == "command":
            if not self.commands_allowed:
                raise LookupError(f"commands are off on {self.node} (MIRROR_NEURON_COMMANDS=off)")
        elif req["task"] not in tasks.available():
            raise LookupError(f"task {req['task']!r} is not installed on {self.node}")

    def on_status(self, frm: str, msg: Any) -> list[bool]:
        """``{job, agents: [[id, attempt], ...]}`` -> is each still running here at that attempt?
        The asker coordinates the job now (a successor adopting runs): their results are told to it."""
        job_id = str(msg["job"])
        out = []
        for aid, attempt in msg["agents"]:
            run = self.runs.get((job_id, str(aid)))
            if run is not None and run.attempt == int(attempt):
                run.owner = frm
                out.append(True)
            else:
                out.append(False)
        return out

    def on_cancel(self, frm: str, msg: Any) -> int:
        """The job ended or was cancelled: drop queued runs, kill running command groups, and
        remove the job's scratch directories once they are gone (its logs stay in Redis)."""
        job_id = str(msg["job"])
        self.cancelled[job_id] = None
        if len(self.cancelled) > CANCELLED_KEEP:
            del self.cancelled[next(iter(self.cancelled))]
        n = 0
        running: list[asyncio.Task[None]] = []
        for agent in list(self._job_runs.get(job_id, ())):
            run = self.runs[(job_id, agent)]
            if not run.started:
                n += self._drop(run)
            elif run.task is not None:
                running.append(run.task)
        if running or self.commands.has_scratch(job_id):  # entry-point runs leave nothing behind
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

    # ---- entry-point runs: one queue, chunks -------------------------------------------------------
    def _enqueue(self, run: Run) -> None:
        self._queue.append(run)
        self._queued.set()
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._pump_queue(), name="executor queue")

    def _head(self) -> Run | None:
        while self._queue and self._queue[0].dropped:
            self._queue.popleft()
        return self._queue[0] if self._queue else None

    async def _pump_queue(self) -> None:
        """Hand queued entry-point runs to the pool as slots free: a chunk per slot."""
        await self._ready.wait()
        while True:
            head = self._head()
            if head is None:
                self._queued.clear()
                await self._queued.wait()
                continue
            need = head.slots
            await self._slots.acquire(need)
            head = self._head()
            if head is None or head.slots != need:  # the queue changed while we waited
                self._slots.release(need)
                continue
            chunk = Chunk(self._take_chunk())
            for run in chunk.runs:
                run.chunk = chunk
            chunk.task = asyncio.get_running_loop().create_task(self._run_chunk(chunk, need), name="exec chunk")
            self._chunks.add(chunk.task)
            chunk.task.add_done_callback(self._chunks.discard)

    def _chunkable(self, run: Run) -> bool:
        recent = self._task_s.get(str(run.req.get("task")))
        return run.slots == 1 and recent is not None and recent < CHUNK_UNDER_S

    def _take_chunk(self) -> list[Run]:
        """The queue's head, with the runs right behind it when they are all short 1-slot tasks
        of the same timeout: up to min(CHUNK_MAX, CHUNK_WORK_S of work, queued / capacity)."""
        first = self._queue.popleft()
        runs = [first]
        if not self._chunkable(first):
            return runs
        recent = self._task_s.get(str(first.req.get("task"))) or CHUNK_UNDER_S
        size = min(CHUNK_MAX, max(1, int(CHUNK_WORK_S / max(recent, 1e-6))),
                   -(-(len(self._queue) + 1) // max(1, self.capacity)))
        timeout = first.req.get("timeout")
        while len(runs) < size and self._queue:
            run = self._queue[0]
            if not run.dropped:
                if not self._chunkable(run) or run.req.get("timeout") != timeout:
                    break
                runs.append(run)
            self._queue.popleft()
        return runs

    def _request(self, run: Run) -> RunRequest:
        config = dict(run.req["config"])
        config.setdefault("timeout_seconds", float(run.req.get("timeout", 3600)))
        return RunRequest(run.job_id, run.agent, config, {"body": run.req.get("inputs") or {}}, attempt=run.attempt)

    async def _run_chunk(self, chunk: Chunk, slots: int) -> None:
        """Claim the chunk's runs (one batched claim_starts), run the claimed ones as one pool
        submission, hand their results to the store batch. A cancelled chunk stores nothing."""
        assert self._entry is not None
        live: list[Run] = []
        try:
            try:
                for run, ok in zip(chunk.runs, await self._claim(chunk.runs), strict=True):
                    if ok and not run.dropped:
                        live.append(run)
                    elif not run.dropped:
                        self._forget(run)
                started_ms = int(time.time() * 1000)
                results = await self._entry.run_many([self._request(r) for r in live]) if live else []
            finally:
                self._slots.release(slots)
        except asyncio.CancelledError:
            for run in chunk.runs:
                run.dropped = True
                self._forget(run)
            return
        for run, result in zip(live, results, strict=True):
            task = str(run.req.get("task"))
            seconds = float(result.sandbox.get("duration_ms") or 0) / 1000
            old = self._task_s.get(task)
            self._task_s[task] = seconds if old is None else 0.8 * old + 0.2 * seconds
            self._finish(run, result, started_ms)

    # ---- command runs: a task each ---------------------------------------------------------------
    async def _execute_command(self, run: Run) -> None:
        try:
            await self._ready.wait()
            await self._slots.acquire(run.slots)
            try:
                if run.job_id in self.cancelled or not (await self._claim([run]))[0]:
                    return
                started_ms = int(time.time() * 1000)
                result = await self._run(run)
            finally:
                self._slots.release(run.slots)
            self._finish(run, result, started_ms)
        except asyncio.CancelledError:
            pass
        except RedisUnavailable as e:
            log.warning("result of %s/%s attempt %d not stored: %s (the coordinator will replay it)",
                        run.job_id, run.agent, run.attempt, e)
        finally:
            if not run.storing:
                self._forget(run)

    async def _run(self, run: Run) -> RunResult:
        """One dispatched command attempt (its runner-internal retries included)."""
        t0 = time.monotonic()
        result = await self._run_command(run, run.req)
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

    # ---- batched claims and stores --------------------------------------------------------------
    async def _claim(self, runs: list[Run]) -> list[bool]:
        """Count the starts of ``runs`` (one ``claim_starts`` per job with every claim of the
        loop pass): True for each run whose attempt is still the dispatched one of a running job.
        A late request is dropped instead of re-running a completed executor; a run whose claim
        did not reach Redis does not start either (its coordinator replays it)."""
        fut: asyncio.Future[list[bool | None]] = asyncio.get_running_loop().create_future()
        self._claims.add((runs, fut))
        answers = await fut
        out = []
        for run, ok in zip(runs, answers, strict=True):
            if ok:
                run.started = True
            elif ok is not None:
                self.skipped += 1
                log.info("not starting %s/%s attempt %d: no longer the current attempt of a running job",
                         run.job_id, run.agent, run.attempt)
            out.append(bool(ok))
        return out

    async def _flush_claims(self, batch: list[tuple[list[Run], asyncio.Future[list[bool | None]]]]) -> None:
        by_job: dict[str, list[Run]] = {}
        for runs, _ in batch:
            for run in runs:
                by_job.setdefault(run.job_id, []).append(run)
        answer: dict[int, bool | None] = {}

        async def claim(job_id: str, runs: list[Run]) -> None:
            k = JobKeys(self.store, job_id)
            try:
                res = await self.store.scripts.claim_starts(
                    [k.job, k.agents, k.runs], [x for r in runs for x in (r.agent, r.attempt)])
            except RedisUnavailable as e:
                log.warning("%d start(s) of %s not counted: %s (the coordinator will replay them)",
                            len(runs), job_id, e)
                res = [None] * len(runs)
            for run, r in zip(runs, res, strict=True):
                answer[id(run)] = None if r is None else isinstance(r, int)
                if isinstance(r, str):
                    log.debug("claim of %s/%s attempt %d refused: %s", job_id, run.agent, run.attempt, r)

        await _each(claim, by_job)
        for runs, fut in batch:
            if not fut.done():
                fut.set_result([answer.get(id(r)) for r in runs])

    def _finish(self, run: Run, result: RunResult, started_ms: int) -> None:
        """Hand a finished run to the store batch (with its attempt record where it has one)."""
        if run.dropped:
            self._forget(run)
            return
        record = None
        if run.req.get("runner") == "command" or not result.ok:
            record = attempt_record(self.node, run.agent, run.attempt, run.req, result, started_ms,
                                    int(time.time() * 1000))
        outcome = None if result.cancelled else outcome_of(run.agent, run.req, result, started_ms)
        run.storing = True
        self._stores.add(Stored(run, outcome, record))

    async def _flush_stores(self, batch: list[Stored]) -> None:
        by_job: dict[str, list[Stored]] = {}
        for item in batch:
            by_job.setdefault(item.run.job_id, []).append(item)
        await _each(self._store_job, by_job)

    async def _store_job(self, job_id: str, items: list[Stored]) -> None:
        """Store the results of one job's runs, tell its coordinator, then forget the runs."""
        k = JobKeys(self.store, job_id)
        res: list[Any] = []
        args = [_store_args(self.node, it) for it in items]
        try:
            for part in _parts(args):
                res += await self._store_call(k, [a for item_args in part for a in item_args])
        except RedisUnavailable as e:
            log.warning("results of %d run(s) of %s not stored: %s (the coordinator will replay them)",
                        len(items) - len(res), job_id, e)
        stored: list[tuple[Run, list[Any] | None]] = []
        for item, item_args, r in zip(items, args, res, strict=False):
            if r == 1:
                self.completed += 1
                stored.append((item.run, _told_state(item, item_args)))
            elif isinstance(r, str):
                self.refused += 1
                log.info("result of %s/%s attempt %d refused: %s", job_id, item.run.agent, item.run.attempt, r)
        if stored:
            await self._tell_owners(job_id, stored)
        for item in items:
            self._forget(item.run)

    async def _store_call(self, k: JobKeys, items: list[Any]) -> list[Any]:
        """One ``store_results`` call, retried with backoff for up to STORE_RETRY_S."""
        deadline = time.monotonic() + STORE_RETRY_S
        backoff = Backoff(0.1, 1.0)
        while True:
            try:
                res: list[Any] = await self.store.scripts.store_results(
                    [k.job, k.agents, k.runs, k.events, k.attempts], [self.node, EVENTS_MAXLEN, *items])
                return res
            except RedisUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(backoff.next_delay())

    async def _tell_owners(self, job_id: str, stored: list[tuple[Run, list[Any] | None]]) -> None:
        """One ``job.agents_done`` per coordinator of the runs: the one that dispatched each, or
        the successor that adopted it (:meth:`on_status`). ``states`` carries what was stored
        (:func:`_told_state`), so the coordinator need not read it back. A coordinator that is
        not told (it took the job over after the result was stored) finds it in Redis: it
        re-reads the state of every run it did not adopt, and every in-flight state every few
        seconds."""
        runs = [run for run, _ in stored]
        targets = {run.owner for run in runs}
        msg = {"job": job_id, "agents": [r.agent for r in runs], "attempts": [r.attempt for r in runs],
               "states": [st for _, st in stored]}
        for node in targets:
            if node == self.node:
                self.local_done.emit(msg)
                continue
            try:
                self.links.send(node, "job.agents_done", msg)
            except LinkError:
                pass  # the coordinator's periodic refresh picks the results up from Redis


async def _each(fn: Callable[[str, Any], Awaitable[None]], by_job: dict[str, Any]) -> None:
    """``fn(job, items)`` for every job, concurrently; one job (the usual batch) without a task."""
    if len(by_job) == 1:
        await fn(*next(iter(by_job.items())))
    else:
        await asyncio.gather(*(fn(job_id, items) for job_id, items in by_job.items()))


def _told_state(item: Stored, args: list[Any]) -> list[Any] | None:
    """What the coordinator is told of a stored run, as ``store_results`` wrote it:
    ``[status, output JSON or None, error, extra it keeps]``; None for an output too big
    to send (the coordinator reads that one from Redis)."""
    out = item.outcome
    if out is None or len(args[3]) > TOLD_OUTPUT_MAX:
        return None
    extra = {k: v for k, v in out.extra.items() if k in TOLD_EXTRA}
    return [out.status, args[3] if out.status == "completed" else None, out.error, extra]


def told_state(node: str, attempt: Any, told: Any) -> AgentState | None:
    """The agent state a :func:`_told_state` entry from ``node`` stands for; None when there is
    none or it cannot be read (then the coordinator reads the state from Redis)."""
    try:
        status, output, error, extra = told
        return AgentState(str(status), int(attempt), node, json.loads(output) if output else None,
                          str(error or ""), dict(extra))
    except (TypeError, ValueError):
        return None


def _store_args(node: str, item: Stored) -> list[Any]:
    """The STORE_ITEM arguments of one run in ``store_results``."""
    out, rec = item.outcome, item.record
    record = json.dumps(rec, separators=(",", ":")) if rec is not None else ""
    if out is None:
        args: list[Any] = [item.run.agent, item.run.attempt, "none", "", "", "{}", "[]", record]
    else:
        events = [[t, json.dumps(d, separators=(",", ":"))] for t, d in out.events]
        args = [item.run.agent, item.run.attempt, out.status, json.dumps(out.output, separators=(",", ":")),
                out.error, json.dumps(out.extra, separators=(",", ":")), json.dumps(events), record]
    assert len(args) == STORE_ITEM
    return args


def _parts(items: list[list[Any]]) -> list[list[list[Any]]]:
    """Items in runs of about STORE_CALL_BYTES (a big command output goes alone)."""
    parts: list[list[list[Any]]] = [[]]
    size = 0
    for args in items:
        n = sum(len(a) if isinstance(a, str) else 8 for a in args)
        if parts[-1] and size + n > STORE_CALL_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(args)
        size += n
    return parts
