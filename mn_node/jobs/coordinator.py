"""The coordinator of one job, run by the holder of ``{ns}:lease:job:<id>``.

Every transition is one fenced ``job_write`` (refused once our token is not current), so a
deposed or paused coordinator can never overwrite its successor. Executors are dispatched
only after their attempt is recorded; the executing node stores the output conditioned on
that attempt, so a completed executor is never run again and only in-flight ones are replayed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import ChainMap
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mn_node.aio import wait_event
from mn_node.errors import (
    FencedWriteRefused,
    LeaseLost,
    LinkError,
    RedisUnavailable,
)
from mn_node.jobs.graph import body_of, inbox, json_field, legacy_inputs
from mn_node.jobs.inline import MISSING, run_inline, skipped
from mn_node.jobs.manifest import Agent, Manifest, from_normalized
from mn_node.jobs.progress import Progress
from mn_node.jobs.state import TERMINAL, AgentState, JobKeys, agent_states, read_start
from mn_node.leases import Lease
from mn_node.store import EVENTS_MAXLEN

if TYPE_CHECKING:
    from mn_node.jobs.runtime import JobRuntime

log = logging.getLogger("mn_node.jobs")

FULL_REFRESH_S = 2.0  # re-read the dispatched agents' states (lost notifications, dead nodes)
PREFETCH = 2  # runs per executor slot sent ahead at least (more for short runs: see _window)
MAX_WINDOW = 256  # runs per slot sent ahead at most
WINDOW_TARGET_S = 0.1  # send ahead what a slot runs in about this long, so it never idles
FRESH_CHUNK = 10_000  # pending agent states written per fenced write when a job starts
READ_CHUNK = 5_000  # agent states read per HMGET
BIG_JOB_AGENTS = 2_000  # a manifest this big is rebuilt off the event loop (leases renew meanwhile)
AUDIT_AFTER_MS = 2000  # a dispatch this old must be known to its node, or it is replayed
NO_COMMAND_NODE_GRACE_S = 5.0  # registrations are read before "no node allows commands" fails a job
NO_COMMAND_NODE = ("no node allows commands (MIRROR_NEURON_COMMANDS=off on every node); fix: set "
                   "MIRROR_NEURON_COMMANDS=on on at least one node and restart it, then submit the job again")


class Coordinator:
    def __init__(self, rt: JobRuntime, job_id: str, lease: Lease) -> None:
        self.rt = rt
        self.job_id = job_id
        self.lease = lease
        self.keys = JobKeys(rt.store, job_id)
        self.manifest: Manifest | None = None
        self.progress: Progress | None = None
        self._wake = asyncio.Event()
        # agents whose run ended since the last look: the state their node says it stored, or
        # None (read it from Redis)
        self._notified: dict[str, AgentState | None] = {}
        self._changed: set[str] = set()  # agents whose state changed since the last step looked
        self._run_s: float | None = None  # moving average of an executor run's duration
        self._started = time.monotonic()
        self._rr = 0
        self.finished = False
        self.cancel_requested = False
        self.paused = False  # status 'paused' in Redis: nothing new is dispatched until resumed
        self.bundle: str | None = None
        self.handoff_requested = False
        # a fresh job's first write (status running, pending states, events), sent with the
        # first dispatch instead of on its own: one fenced call fewer per job
        self._carry: tuple[dict[str, Any], dict[str, AgentState], list[tuple[str, dict[str, Any]]]] | None = None

    # ---- signals from the runtime ---------------------------------------------------------
    def notify_done(self, agent_id: str, told: AgentState | None = None) -> None:
        if told is None or self._notified.get(agent_id, told) is not None:
            self._notified[agent_id] = told  # a read from Redis, once asked for, is kept
        self._wake.set()

    def request_cancel(self) -> None:
        self.cancel_requested = True
        self._wake.set()

    def request_handoff(self) -> None:
        """This node is draining: stop coordinating (runs left alone) and release the lease, so
        the next-ranked node takes the job over and adopts the executors still running."""
        self.handoff_requested = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    @property
    def states(self) -> dict[str, AgentState]:
        assert self.progress is not None
        return self.progress.states

    @property
    def _p(self) -> Progress:
        assert self.progress is not None
        return self.progress

    # ---- fenced writes --------------------------------------------------------------------
    async def write(self, job: dict[str, Any] | None = None, agents: dict[str, AgentState] | None = None,
                    events: list[tuple[str, dict[str, Any]]] | None = None, terminal: bool = False) -> bool:
        """One all-or-nothing fenced ``job_write``: job fields, agent states, events, and
        (``terminal``) leaving the active set, every key of the job expiring after the retention.
        False (nothing written, :attr:`paused` set) when the job is paused and the write would
        dispatch an agent. A carried first write goes first in the same call. Raises LeaseLost /
        FencedWriteRefused."""
        carry = self._carry
        if carry is not None:
            job, agents = {**carry[0], **(job or {})}, {**carry[1], **(agents or {})}
            events = [*carry[2], *(events or [])]
        args = [
            self.lease.token, self.lease.epoch,
            json.dumps({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in (job or {}).items()}),
            json.dumps({aid: st.encode() for aid, st in (agents or {}).items()}) if agents else "{}",
            json.dumps([[t, json.dumps(d, separators=(",", ":"))] for t, d in (events or [])]) if events else "[]",
            self.rt.node, "1" if terminal else "0", EVENTS_MAXLEN, self.rt.retention_ms,
        ]
        k = self.keys
        keys = [self.lease.key, k.job, k.agents, k.events, k.active, k.runs, k.attempts, k.epoch, k.history,
                k.expiry, *k.bundle(self.bundle)]
        if not await self.rt.leases.fenced(self.lease, self.rt.store.scripts.job_write, keys, args):
            self.paused = True
            return False
        self._carry = None
        for aid, st in (agents or {}).items():
            self._p.set(aid, st)
        return True

    # ---- main -----------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._run()
        except (LeaseLost, FencedWriteRefused) as e:
            log.warning("stopped coordinating %s (epoch %d): %s", self.job_id, self.lease.epoch, e)
        except RedisUnavailable as e:
            log.warning("coordinator of %s paused: %s; handing the job back", self.job_id, e)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("coordinator of %s crashed", self.job_id)
        finally:
            self.finished = True
            self.rt.coordinator_done(self)

    async def _run(self) -> None:
        # Redis unavailable: handed back, not failed
        h, spec, n_states = await read_start(self.rt.store, self.job_id)
        if not h or h.get("status") in TERMINAL:
            await self.rt.store.guard(self.rt.store.r.srem(self.rt.store.key("jobs", "active"), self.job_id))
            return
        self.bundle = h.get("bundle") or None
        self.paused = h.get("status") == "paused"
        try:  # validated at submit: only rebuilt here (a 100k-agent manifest validates in seconds)
            if spec is None:
                raise ValueError("no readable spec")
            big = len(spec.get("nodes") or ()) > BIG_JOB_AGENTS
            self.manifest, self.progress = await asyncio.to_thread(_build, spec) if big else _build(spec)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            await self.write(job={"status": "failed", "error": f"stored manifest invalid: {e!r}"},
                             events=[("job_failed", {"reason": f"stored manifest invalid: {e!r}"})], terminal=True)
            return
        assert self.manifest is not None
        self._run_s = self.rt.run_s.get(self.manifest.graph_id)
        known = await agent_states(self.rt.store, self.job_id) if n_states else {}
        self._p.load(known)
        self._changed = set(known)
        if h.get("status") in ("running", "paused"):
            await self._recover(h, known)
        else:
            await self._write_fresh(known, job={"status": "running", "started_ms": int(time.time() * 1000)},
                                    events=[("job_scheduled", {"owner": self.rt.node}), ("job_running", {})],
                                    carry=True)
            log.info("coordinating job %s (epoch %d, %d agents)", self.job_id, self.lease.epoch,
                     len(self.states))
        await self._loop()

    async def _write_fresh(self, known: dict[str, AgentState], job: dict[str, Any],
                           events: list[tuple[str, dict[str, Any]]], carry: bool = False) -> None:
        """Record the agents without a state as pending (in chunks: one script call never holds
        Redis for long), the last chunk together with the job's fields and events; with
        ``carry``, that last write goes with the next one (the first dispatch)."""
        m = self.manifest
        assert m is not None
        fresh = [aid for aid in m.agents if aid not in known]
        chunks = [fresh[i:i + FRESH_CHUNK] for i in range(0, len(fresh), FRESH_CHUNK)] or [[]]
        for chunk in chunks[:-1]:
            await self.write(agents={aid: AgentState() for aid in chunk})
        last = {aid: AgentState() for aid in chunks[-1]}
        if carry:  # Progress already holds them as pending (Progress.load)
            self._carry = (job, last, events)
            return
        await self.write(job=job, agents=last, events=events)

    async def _recover(self, h: dict[str, str], known: dict[str, AgentState]) -> None:
        done = self._p.completed
        inflight = sorted(self._p.dispatched, key=self._p.rank.__getitem__)
        await self._write_fresh(known, job={"status": "running"}, events=[("job_recovery_started", {
            "previous_owner": h.get("owner"), "previous_epoch": int(h.get("epoch", "0") or 0),
            "completed_agents": done, "inflight_agents": len(inflight), "paused": self.paused})])
        log.info("recovering job %s at epoch %d: %d agents completed, %d in flight",
                 self.job_id, self.lease.epoch, done, len(inflight))
        replayed = await self._recover_inflight(inflight)
        await self.write(events=[("job_recovered", {
            "completed_agents_kept": done, "replayed": sorted(replayed),
            "adopted": sorted(set(inflight) - replayed)})])

    async def _loop(self) -> None:
        last_full = time.monotonic()
        while True:
            self._wake.clear()  # before the work: a notification during it must not be lost
            await self._refresh_notified()
            if self.cancel_requested:
                await self._stop_cancelled()
                return
            if self.handoff_requested:
                await self.write(events=[("job_handoff", {"from": self.rt.node, "reason": "drain"})])
                log.info("handing job %s over (this node is draining)", self.job_id)
                return  # run() -> coordinator_done releases the lease (fenced)
            if not self.paused and await self._step():
                return
            if self._carry is not None:  # the first step dispatched nothing: the first write alone
                await self.write()
            if not self._notified:
                await wait_event(self._wake, self.rt.tick)
            if self.paused and await self._check_paused():
                return
            if time.monotonic() - last_full >= FULL_REFRESH_S:
                last_full = time.monotonic()
                if await self._refresh_full():
                    return

    async def _check_paused(self) -> bool:
        """While paused, look at the status every tick: resumed -> dispatch again; cancelled ->
        stop (True). Runs already going finish meanwhile; their results are stored and absorbed."""
        status = await self.rt.store.guard(self.rt.store.r.hget(self.keys.job, "status"))
        if status == "cancelled":
            await self._stop_cancelled()
            return True
        if status != "paused":
            self.paused = False
            log.info("job %s resumed (status %s)", self.job_id, status)
        return False

    # ---- recovery -------------------------------------------------------------------------
    async def _recover_inflight(self, inflight: list[str]) -> set[str]:
        """Adopt executions still running on live nodes; replay the rest with attempt + 1."""
        replay: set[str] = set()
        by_node: dict[str, list[str]] = {}
        for aid in inflight:
            by_node.setdefault(self.states[aid].node, []).append(aid)
        await self.rt.capacities()
        for node, aids in by_node.items():
            running: set[str] = set()
            if self.rt.healthy(node):
                query = [[aid, self.states[aid].attempt] for aid in aids]
                try:
                    res = await self.rt.exec_status(node, self.job_id, query)
                    running = {aid for aid, ok in zip(aids, res, strict=False) if ok}
                except (LinkError, RedisUnavailable):
                    running = set()
            replay.update(aid for aid in aids if aid not in running)
        replay = await self._still_dispatched(replay)
        if replay:
            self._replay(replay)
        return replay

    async def _read_states(self, aids: list[str]) -> list[AgentState | None]:
        """The states of ``aids`` in Redis (HMGET in chunks), None where there is none."""
        out: list[AgentState | None] = []
        for i in range(0, len(aids), READ_CHUNK):
            raw = await self.rt.store.guard(self.rt.store.r.hmget(self.keys.agents, aids[i:i + READ_CHUNK]))
            out += [AgentState.decode(r) if r else None for r in raw]
        return out

    async def _still_dispatched(self, aids: set[str]) -> set[str]:
        """Of ``aids`` (unknown to their node), those still dispatched at the same attempt in
        Redis: a run that ended between our read of the states and the node's answer stored its
        result first (a handover during a drain), so it is absorbed, not replayed."""
        ids = sorted(aids)
        out: set[str] = set()
        for aid, st in zip(ids, await self._read_states(ids), strict=True):
            if st is not None and not (st.status == "dispatched" and st.attempt == self.states[aid].attempt):
                self._absorb(aid, st)
            else:
                out.add(aid)
        return out

    # ---- progress ---------------------------------------------------------------------------
    async def _step(self) -> bool:
        """Advance the graph as far as possible. Returns True when the job reached a terminal state."""
        m = self.manifest
        assert m is not None
        while True:
            if await self._settle_changed():
                return True
            # routers and aggregators run at once, and what they make ready runs in this same
            # step: their states are written with the dispatches they enable (or the terminal
            # write), in one call. Progress holds them before that write; a refused write stops
            # the coordinator (or, paused, writes them alone: see _record_and_send).
            done_now: dict[str, AgentState] = {}
            events: list[tuple[str, dict[str, Any]]] = []
            while inline := self._p.pop_inline():
                for aid in inline:
                    agent = m.agents[aid]
                    out = run_inline(m, aid, self.states, self.rt.node)
                    done_now[aid] = out.state
                    self._p.set(aid, out.state)
                    if out.fail:
                        await self._finish("failed", agents=done_now, error=out.fail, agent=aid)
                        return True
                    events.append(("agent_completed", {"agent": aid, "type": agent.type, **(
                        {"skipped": True} if out.state.extra.get("skipped") else {})}))
                    if out.complete is not MISSING:
                        await self._finish("completed", agents=done_now, result=out.complete, events=events,
                                           agent=aid)
                        return True
            if self._p.done:
                await self._finish("completed", agents=done_now, events=events, result=self._result())
                return True
            if await self._dispatch_ready(done_now, events):
                return True
            if self._p.done:
                await self._finish("completed", result=self._result())
                return True
            if not done_now:
                return False

    def _result(self) -> Any:
        """The job's result once every terminal agent completed: the output of the one terminal
        agent, or ``{agent: output}`` for several."""
        m = self.manifest
        assert m is not None
        outs = {t: self.states[t].output for t in m.terminals}
        return next(iter(outs.values())) if len(outs) == 1 else outs

    async def _settle_changed(self) -> bool:
        """Act on executors that finished since the last look: a ``complete_job`` completes
        the job with that value; a failed command fails it (its runner already retried it per
        ``max_attempts``); a failed task is retried up to the policy's restarts. True: job ended."""
        m = self.manifest
        assert m is not None
        changed, self._changed = self._changed, set()
        for aid in sorted((a for a in changed if a in m.agents), key=self._p.rank.__getitem__):
            st, agent = self.states[aid], m.agents[aid]
            if agent.type != "executor":
                continue
            if st.status == "completed" and "complete_job" in st.extra:
                await self._finish("completed", result=json_field(st, "complete_job"), agent=aid)
                return True
            if st.status == "failed" and (agent.is_command or st.attempt >= m.max_attempts):
                why = st.error if agent.is_command else f"agent {aid} failed {st.attempt} times: {st.error}"
                await self._finish("failed", error=why, agent=aid)
                return True
        return False

    async def _finish(self, status: str, *, agents: dict[str, AgentState] | None = None, result: Any = None,
                      error: str = "", events: list[tuple[str, dict[str, Any]]] | None = None,
                      agent: str | None = None) -> None:
        """The one terminal write (fenced): status, result or error; then every node stops the job's runs."""
        job: dict[str, Any] = {"status": status, "finished_ms": int(time.time() * 1000)}
        if status == "completed":
            job["result"] = result
            ev = ("job_completed", {"summary": _brief(result), **({"by": agent} if agent else {})})
        else:
            job["error"] = error
            ev = ("job_failed", {"agent": agent, "error": error, "reason": error})
        await self.write(job=job, agents=agents, events=[*(events or []), ev], terminal=True)
        if status == "completed":
            log.info("job %s completed", self.job_id)
        else:
            log.warning("job %s failed: %s", self.job_id, error)
        self._end_runs()

    def _request(self, aid: str, st: AgentState) -> dict[str, Any]:
        """What the executing node is sent for one run of ``aid``."""
        m = self.manifest
        assert m is not None
        agent = m.agents[aid]
        req: dict[str, Any] = {"agent": aid, "attempt": st.attempt, "runner": agent.runner or "entrypoint",
                               "task": agent.task, "config": agent.config, "slots": agent.slots}
        if agent.is_command:
            msgs = inbox(m, aid, self.states)
            req.update(body=body_of(msgs), message_type=msgs[0].type if len(msgs) == 1 else "messages",
                       sender=msgs[0].sender if len(msgs) == 1 else "runtime", bundle=m.bundle,
                       template=agent.template, downstream=m.downstream(aid))
        else:
            req.update(inputs=legacy_inputs(m, aid, self.states), timeout=m.policies["task_timeout_s"])
        return req

    # ---- dispatch ---------------------------------------------------------------------------
    async def _dispatch_ready(self, done_now: dict[str, AgentState],
                              events: list[tuple[str, dict[str, Any]]]) -> bool:
        """Write ``done_now`` and dispatch ready executors, lowest rank first, while a node has
        room. A command agent whose inbox is empty is skipped instead. True: the job failed (no
        node may run its commands)."""
        m = self.manifest
        assert m is not None
        caps = await self.rt.capacities()
        window = self._window()
        # the nodes that may take new executors, in a stable order (draining ones never)
        open_nodes = [(n, cap * window) for n, cap in sorted(caps.items()) if n not in self.rt.draining]
        # runs known to be short stay on this node while it has room: no link message, and one
        # claim and one store per batch here (a small job often runs here whole)
        local = self.rt.node if window > PREFETCH else None
        plan: dict[str, AgentState] = {}
        planned: dict[str, int] = {}  # node -> slots of the runs planned there
        plan_events: list[tuple[str, dict[str, Any]]] = []
        deferred: list[str] = []  # command agents no live node may run now
        while (aid := self._p.next_executor()) is not None:
            agent = m.agents[aid]
            if agent.is_command and self.states[aid].status == "pending" \
                    and not inbox(m, aid, ChainMap(done_now, self.states)):
                self._p.take()
                done_now[aid] = skipped(self.rt.node)
                self._p.set(aid, done_now[aid])
                events.append(("agent_skipped", {"agent": aid, "reason": "received no message"}))
                continue
            node = self._pick_node(open_nodes, agent, planned, local)
            if node is None:
                if agent.is_command and not any(self.rt.allows_commands(n) for n in caps):
                    self._p.take()
                    deferred.append(aid)
                    continue
                break  # everyone is busy; the rest waits for a completion
            self._p.take()
            self._plan(aid, node, plan, planned, plan_events)
        self._p.requeue(deferred)
        if deferred and not plan and time.monotonic() - self._started >= NO_COMMAND_NODE_GRACE_S:
            await self._finish("failed", agents=done_now, events=events, error=NO_COMMAND_NODE)
            return True
        await self._record_and_send(plan, plan_events, done_now, events)
        return False

    def _replay(self, aids: Iterable[str]) -> None:
        """Runs that were lost (their node is down, or it no longer knows them) go back to the
        ready queue, so the next step dispatches them again (attempt + 1) as nodes have room; they
        stop holding slots on their old node meanwhile (else a node whose runs were lost would
        look full with the very runs to replay). Redis keeps them dispatched until then: a late
        result of the lost attempt is still accepted, and then the new attempt's write is refused
        (``FENCED agent ... already completed``), which hands the job over to be recovered."""
        for aid in aids:
            old = self.states[aid]
            self._p.set(aid, AgentState("pending", old.attempt, old.node))

    def _plan(self, aid: str, node: str, plan: dict[str, AgentState], planned: dict[str, int],
              events: list[tuple[str, dict[str, Any]]]) -> None:
        old = self.states[aid]
        planned[node] = planned.get(node, 0) + self._slots(aid)
        st = AgentState("dispatched", old.attempt + 1, node, None, "", {"dispatched_ms": int(time.time() * 1000)})
        plan[aid] = st
        kind = "agent_recovery_started" if old.attempt > 0 else "agent_dispatched"
        events.append((kind, {"agent": aid, "attempt": st.attempt, "node": node,
                              **({"previous_node": old.node} if old.node else {})}))

    async def _record_and_send(self, plan: dict[str, AgentState], events: list[tuple[str, dict[str, Any]]],
                               done: dict[str, AgentState], done_events: list[tuple[str, dict[str, Any]]]) -> None:
        """One fenced write of the agents that completed in this step (``done``) and the
        dispatches of ``plan``, then the runs are sent. Paused meanwhile: the dispatches are
        refused, so ``done`` is written alone and the plan goes back to the queue."""
        if plan and await self.write(agents={**done, **plan}, events=[*done_events, *events]):
            await self._send(plan)
            return
        self._p.requeue(plan)
        if done or self._carry is not None:
            await self.write(agents=done, events=done_events)

    async def _send(self, plan: dict[str, AgentState]) -> None:
        by_node: dict[str, list[dict[str, Any]]] = {}
        for aid, st in plan.items():
            by_node.setdefault(st.node, []).append(self._request(aid, st))
        results = await asyncio.gather(
            *(self.rt.exec_run(node, self.job_id, self.lease.epoch, reqs) for node, reqs in by_node.items()),
            return_exceptions=True,
        )
        for (node, reqs), res in zip(by_node.items(), results, strict=True):
            if isinstance(res, BaseException):
                log.warning("dispatch of %d executors of %s to %s failed: %s", len(reqs), self.job_id, node, res)
                back = {r["agent"]: AgentState("pending", r["attempt"], node) for r in reqs}
                await self.write(agents=back, events=[("agent_dispatch_failed", {"node": node, "agents": len(reqs),
                                                                                 "reason": str(res)[:200]})])

    def _window(self) -> int:
        """Runs sent ahead per executor slot: PREFETCH for long runs, up to MAX_WINDOW for runs
        so short that a completion's trip back to us would otherwise leave the slot idle."""
        if self._run_s is None:
            return PREFETCH
        return max(PREFETCH, min(MAX_WINDOW, math.ceil(WINDOW_TARGET_S / max(self._run_s, 1e-4))))

    def _pick_node(self, open_nodes: list[tuple[str, int]], agent: Agent, planned: dict[str, int],
                   local: str | None = None) -> str | None:
        """The node with the most free slots (round robin among equals) among ``open_nodes``
        (not draining; each with :meth:`_window` x its capacity) that may run the agent
        (command agents: only nodes with MIRROR_NEURON_COMMANDS on); ``local`` first while it
        has a free slot. Each node gets up to that many runs (``planned`` ones included), so its
        pool never idles while a completion travels back to us."""
        best: list[str] = []
        best_free = 0
        inflight = self._p.inflight
        for node, most in open_nodes:
            if agent.is_command and not self.rt.allows_commands(node):
                continue
            free = most - inflight.get(node, 0) - planned.get(node, 0)
            if node == local and free > 0:
                return node
            if free > best_free:
                best, best_free = [node], free
            elif free == best_free and free > 0:
                best.append(node)
        if not best:
            return None
        self._rr += 1
        return best[self._rr % len(best)]

    def _slots(self, aid: str) -> int:
        m = self.manifest
        return m.agents[aid].slots if m is not None and aid in m.agents else 1

    # ---- refresh from Redis ---------------------------------------------------------------------
    def _absorb(self, aid: str, st: AgentState) -> None:
        """A state read from Redis (an executor's result, or a replay's outcome)."""
        if st.status == "completed" and st.attempt and not st.extra.get("skipped"):
            d = st.extra.get("duration_ms")
            if isinstance(d, (int, float)) and not isinstance(d, bool) and d >= 0:
                s = float(d) / 1000
                self._run_s = s if self._run_s is None else 0.8 * self._run_s + 0.2 * s
                if self.manifest is not None:
                    self.rt.remember_run_s(self.manifest.graph_id, self._run_s)
        self._p.set(aid, st)
        self._changed.add(aid)

    async def _refresh_notified(self) -> None:
        """Absorb the runs that ended: a told state when it is the result of the attempt we
        wait for (an older one's is ignored: Redis holds the newer), else what Redis holds."""
        if not self._notified:
            return
        notified, self._notified = self._notified, {}
        unread: list[str] = []
        for aid, told in notified.items():
            cur = self.states.get(aid)
            if cur is None:
                continue
            if told is None:
                unread.append(aid)
            elif told.attempt == cur.attempt and cur.status != "completed":
                self._absorb(aid, told)
        unread.sort()
        for aid, st in zip(unread, await self._read_states(unread), strict=True):
            if st is not None:
                self._absorb(aid, st)

    async def _refresh_full(self) -> bool:
        """Re-read the job's status and the dispatched agents' states (catches lost notifications,
        cancellation, dead executors). Only dispatched agents can change behind our back (their
        node stores the result), so the cost is bounded by what is in flight, not the job's size."""
        status = await self.rt.store.guard(self.rt.store.r.hget(self.keys.job, "status"))
        if status == "cancelled":
            await self._stop_cancelled()
            return True
        self.paused = status == "paused"
        ids = sorted(self._p.dispatched)
        for aid, st in zip(ids, await self._read_states(ids), strict=True):
            old = self.states[aid]
            if st is not None and (st.status, st.attempt) != (old.status, old.attempt):
                self._absorb(aid, st)
        if self.paused:
            return False  # lost runs are replayed after the resume
        await self.rt.capacities()
        lost = sorted((aid for aid in self._p.dispatched if not self.rt.healthy(self.states[aid].node)),
                      key=self._p.rank.__getitem__)
        if lost:
            log.info("job %s: %d executors were on nodes now down or cut off from Redis; replaying them",
                     self.job_id, len(lost))
            self._replay(lost)
        return await self._audit_inflight()

    async def _audit_inflight(self) -> bool:
        """Replay executions that their node, though up, no longer knows: it was restarted
        faster than it could be seen down (a rolling restart), or the request was lost. A node
        forgets a run only after storing its result, so the state is re-read before replaying."""
        now = int(time.time() * 1000)
        by_node: dict[str, list[str]] = {}
        for aid in self._p.dispatched:
            st = self.states[aid]
            if self.rt.healthy(st.node) and now - int(st.extra.get("dispatched_ms", 0) or 0) >= AUDIT_AFTER_MS:
                by_node.setdefault(st.node, []).append(aid)
        forgotten: list[str] = []
        for node, aids in by_node.items():
            try:
                known = await self.rt.exec_status(node, self.job_id, [[a, self.states[a].attempt] for a in aids])
            except (LinkError, RedisUnavailable):
                continue  # not answering now: if it stays away, the health check replays its work
            forgotten += [a for a, ok in zip(aids, known, strict=False) if not ok]
        if not forgotten:
            return False
        replay: list[str] = []
        for aid, now_st in zip(forgotten, await self._read_states(forgotten), strict=True):
            if now_st is None:
                continue
            if now_st.status == "dispatched" and now_st.attempt == self.states[aid].attempt:
                replay.append(aid)
            else:
                self._absorb(aid, now_st)
        if replay:
            log.info("job %s: %d executors unknown to their (restarted?) nodes; replaying them",
                     self.job_id, len(replay))
            self._replay(replay)
        return False

    async def _stop_cancelled(self) -> None:
        nodes = self._end_runs()
        log.info("job %s cancelled; told %d executor nodes to stop", self.job_id, len(nodes))

    def _end_runs(self) -> set[str]:
        """The job ended: every node that has or had an executor of it stops what still runs
        (killing command groups) and drops the job's scratch directories."""
        nodes = set(self._p.nodes_used) if self.progress is not None else set()
        nodes.add(self.rt.node)
        for node in nodes:
            self.rt.exec_cancel(node, self.job_id)
        return nodes


def _build(spec: dict[str, Any]) -> tuple[Manifest, Progress]:
    """The manifest and its graph bookkeeping from a stored (already validated) spec."""
    m = from_normalized(spec)
    return m, Progress(m)


def _brief(result: Any) -> Any:
    if isinstance(result, dict):
        return {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
    return None
