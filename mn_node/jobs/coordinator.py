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
import time
from typing import TYPE_CHECKING, Any

from mn_node.aio import wait_event
from mn_node.errors import (
    FencedWriteRefused,
    LeaseLost,
    LinkError,
    MirrorNeuronError,
    RedisUnavailable,
)
from mn_node.jobs.manifest import Manifest, validate
from mn_node.jobs.reducers import REDUCERS
from mn_node.jobs.state import TERMINAL, AgentState, JobKeys, agent_states, get_job
from mn_node.leases import Lease
from mn_node.store import EVENTS_MAXLEN

if TYPE_CHECKING:
    from mn_node.jobs.runtime import JobRuntime

log = logging.getLogger("mn_node.jobs")

FULL_REFRESH_S = 2.0
PREFETCH = 2
AUDIT_AFTER_MS = 2000  # a dispatch this old must be known to its node, or it is replayed


class Coordinator:
    def __init__(self, rt: JobRuntime, job_id: str, lease: Lease) -> None:
        self.rt = rt
        self.job_id = job_id
        self.lease = lease
        self.keys = JobKeys(rt.store, job_id)
        self.states: dict[str, AgentState] = {}
        self.manifest: Manifest | None = None
        self.order: list[str] = []
        self._rank: dict[str, int] = {}
        self._open: set[str] = set()
        self._wake = asyncio.Event()
        self._notified: set[str] = set()
        self._inflight: dict[str, int] = {}  # node -> executors we dispatched there, not yet done
        self._rr = 0
        self.finished = False
        self.cancel_requested = False

    # ---- signals from the runtime ---------------------------------------------------------
    def notify_done(self, agent_id: str) -> None:
        self._notified.add(agent_id)
        self._wake.set()

    def request_cancel(self) -> None:
        self.cancel_requested = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    # ---- fenced writes --------------------------------------------------------------------
    async def write(self, job: dict[str, Any] | None = None, agents: dict[str, AgentState] | None = None,
                    events: list[tuple[str, dict[str, Any]]] | None = None, terminal: bool = False) -> None:
        """One all-or-nothing fenced ``job_write``: job fields, agent states, events, and
        (``terminal``) leaving the active set. Raises LeaseLost / FencedWriteRefused."""
        args = [
            self.lease.token, self.lease.epoch,
            json.dumps({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in (job or {}).items()}),
            json.dumps({aid: st.encode() for aid, st in (agents or {}).items()}) if agents else "{}",
            json.dumps([[t, json.dumps(d, separators=(",", ":"))] for t, d in (events or [])]) if events else "[]",
            self.rt.node, "1" if terminal else "0", EVENTS_MAXLEN,
        ]
        keys = [self.lease.key, self.keys.job, self.keys.agents, self.keys.events, self.rt.store.key("jobs", "active")]
        await self.rt.leases.fenced(self.lease, self.rt.store.scripts.job_write, keys, args)
        for aid, st in (agents or {}).items():
            self.states[aid] = st

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
        h = await get_job(self.rt.store, self.job_id)
        if not h or h.get("status") in TERMINAL:
            await self.rt.store.guard(self.rt.store.r.srem(self.rt.store.key("jobs", "active"), self.job_id))
            return
        try:
            self.manifest = validate(json.loads(h["spec"]))
        except (MirrorNeuronError, ValueError, KeyError) as e:
            await self.write(job={"status": "failed", "error": f"stored manifest invalid: {e}"},
                             events=[("job_failed", {"reason": str(e)})], terminal=True)
            return
        self.order = _topo(self.manifest)
        self._rank = {aid: i for i, aid in enumerate(self.order)}
        self.states = await agent_states(self.rt.store, self.job_id)
        recovering = h.get("status") == "running"
        fresh = {aid: AgentState() for aid in self.manifest.agents if aid not in self.states}
        self._open = {aid for aid in self.manifest.agents if self.states.get(aid, AgentState()).status != "completed"}
        if recovering:
            done = sum(st.status == "completed" for st in self.states.values())
            inflight = [aid for aid, st in self.states.items() if st.status == "dispatched"]
            await self.write(job={"status": "running"}, agents=fresh, events=[("job_recovery_started", {
                "previous_owner": h.get("owner"), "previous_epoch": int(h.get("epoch", "0") or 0),
                "completed_agents": done, "inflight_agents": len(inflight)})])
            log.info("recovering job %s at epoch %d: %d agents completed, %d in flight",
                     self.job_id, self.lease.epoch, done, len(inflight))
            replayed = await self._recover_inflight(inflight)
            await self.write(events=[("job_recovered", {
                "completed_agents_kept": done, "replayed": sorted(replayed),
                "adopted": sorted(set(inflight) - replayed)})])
        else:
            await self.write(job={"status": "running", "started_ms": int(time.time() * 1000)}, agents=fresh,
                             events=[("job_scheduled", {"owner": self.rt.node}), ("job_running", {})])
            log.info("coordinating job %s (epoch %d, %d agents)", self.job_id, self.lease.epoch,
                     len(self.manifest.agents))
        last_full = time.monotonic()
        while True:
            self._wake.clear()  # before the work: a notification during it must not be lost
            await self._refresh_notified()
            if self.cancel_requested:
                await self._stop_cancelled()
                return
            if await self._step():
                return
            if not self._notified:
                await wait_event(self._wake, self.rt.tick)
            if time.monotonic() - last_full >= FULL_REFRESH_S:
                last_full = time.monotonic()
                if await self._refresh_full():
                    return

    # ---- recovery -------------------------------------------------------------------------
    async def _recover_inflight(self, inflight: list[str]) -> set[str]:
        """Adopt executions still running on live nodes; replay the rest with attempt + 1."""
        replay: set[str] = set()
        by_node: dict[str, list[str]] = {}
        for aid in inflight:
            by_node.setdefault(self.states[aid].node, []).append(aid)
        for node, aids in by_node.items():
            running: set[str] = set()
            await self.rt.capacities()
            if self.rt.healthy(node):
                query = [[aid, self.states[aid].attempt] for aid in aids]
                try:
                    res = await self.rt.exec_status(node, self.job_id, query)
                    running = {aid for aid, ok in zip(aids, res, strict=False) if ok}
                except (LinkError, RedisUnavailable):
                    running = set()
            for aid in aids:
                if aid in running:
                    self._inflight[node] = self._inflight.get(node, 0) + 1
                else:
                    replay.add(aid)
        if replay:
            await self._dispatch(sorted(replay), recovery=True)
        return replay

    # ---- progress ---------------------------------------------------------------------------
    async def _step(self) -> bool:
        """Advance the graph as far as possible. Returns True when the job reached a terminal state."""
        m = self.manifest
        assert m is not None
        while True:
            done_now: dict[str, AgentState] = {}
            events: list[tuple[str, dict[str, Any]]] = []
            to_dispatch: list[str] = []
            nodes_of = {aid: st.node for aid, st in self.states.items()}
            for aid in sorted(self._ready(), key=self._rank.__getitem__):
                st = self.states[aid]
                agent = m.agents[aid]
                if st.status == "failed":
                    if st.attempt >= m.max_attempts:
                        why = f"agent {aid} failed {st.attempt} times: {st.error}"
                        await self.write(job={"status": "failed", "error": why},
                                         events=[("job_failed", {"agent": aid, "error": st.error})], terminal=True)
                        log.warning("job %s failed: %s", self.job_id, why)
                        return True
                    to_dispatch.append(aid)
                    continue
                if agent.type == "executor":
                    to_dispatch.append(aid)
                    continue
                ups = m.upstream(aid)
                if aid in m.entrypoints:
                    inputs: dict[str, Any] = {"initial": m.initial_inputs.get(aid)}
                else:
                    inputs = {u: self.states[u].output for u in ups}
                if agent.type == "router":
                    out: Any = inputs.get("initial") if aid in m.entrypoints else inputs
                else:
                    out = REDUCERS[str(agent.config.get("reduce", "collect"))](inputs, nodes_of)
                done_now[aid] = AgentState("completed", 1, self.rt.node, out)
                events.append(("agent_completed", {"agent": aid, "type": agent.type}))
            if done_now:
                await self.write(agents=done_now, events=events)
            if to_dispatch:
                await self._dispatch(to_dispatch)
            if all(self.states[t].status == "completed" for t in m.terminals):
                outs = {t: self.states[t].output for t in m.terminals}
                result = next(iter(outs.values())) if len(outs) == 1 else outs
                await self.write(job={"status": "completed", "result": result,
                                      "finished_ms": int(time.time() * 1000)},
                                 events=[("job_completed", {"summary": _brief(result)})], terminal=True)
                log.info("job %s completed", self.job_id)
                return True
            if not done_now:
                return False

    def _ready(self) -> list[str]:
        """Agents not yet dispatched or completed whose upstream agents have all completed."""
        m = self.manifest
        assert m is not None
        out = []
        for aid in list(self._open):
            st = self.states[aid]
            if st.status in ("completed", "dispatched"):
                if st.status == "completed":
                    self._open.discard(aid)
                continue
            if all(self.states[u].status == "completed" for u in m.upstream(aid)):
                out.append(aid)
        return out

    async def _dispatch(self, aids: list[str], recovery: bool = False) -> None:
        m = self.manifest
        assert m is not None
        plan: dict[str, AgentState] = {}
        events: list[tuple[str, dict[str, Any]]] = []
        caps = await self.rt.capacities()
        for aid in aids:
            node = self._pick_node(caps)
            if node is None:
                break  # everyone is busy; the rest waits for a completion
            old = self.states[aid]
            st = AgentState("dispatched", old.attempt + 1, node, None, "",
                            {"dispatched_ms": int(time.time() * 1000)})
            plan[aid] = st
            self._inflight[node] = self._inflight.get(node, 0) + 1
            kind = "agent_recovery_started" if (recovery or old.attempt > 0) else "agent_dispatched"
            events.append((kind, {"agent": aid, "attempt": st.attempt, "node": node,
                                  **({"previous_node": old.node} if old.node else {})}))
        if not plan:
            return
        await self.write(agents=plan, events=events)
        by_node: dict[str, list[dict[str, Any]]] = {}
        for aid, st in plan.items():
            agent = m.agents[aid]
            inputs = {u: self.states[u].output for u in m.upstream(aid)}
            by_node.setdefault(st.node, []).append({
                "agent": aid, "attempt": st.attempt, "task": agent.task, "config": agent.config,
                "inputs": inputs, "timeout": m.policies["task_timeout_s"],
            })
        results = await asyncio.gather(
            *(self.rt.exec_run(node, self.job_id, self.lease.epoch, reqs) for node, reqs in by_node.items()),
            return_exceptions=True,
        )
        for (node, reqs), res in zip(by_node.items(), results, strict=True):
            if isinstance(res, BaseException):
                log.warning("dispatch of %d executors of %s to %s failed: %s", len(reqs), self.job_id, node, res)
                back = {r["agent"]: AgentState("pending", r["attempt"], node) for r in reqs}
                self._inflight[node] = max(0, self._inflight.get(node, 0) - len(reqs))
                await self.write(agents=back, events=[("agent_dispatch_failed", {"node": node, "agents": len(reqs),
                                                                                 "reason": str(res)[:200]})])

    def _pick_node(self, caps: dict[str, int]) -> str | None:
        """The node with the most free slots (round robin among equals). Each node gets up to
        PREFETCH x its capacity, so its pool never idles while a completion travels back to us."""
        best: list[str] = []
        best_free = 0
        for node, cap in sorted(caps.items()):
            free = cap * PREFETCH - self._inflight.get(node, 0)
            if free > best_free:
                best, best_free = [node], free
            elif free == best_free and free > 0:
                best.append(node)
        if not best:
            return None
        self._rr += 1
        return best[self._rr % len(best)]

    # ---- refresh from Redis ---------------------------------------------------------------------
    def _absorb(self, aid: str, st: AgentState) -> None:
        old = self.states.get(aid)
        if old is not None and old.status == "dispatched" and st.status != "dispatched":
            self._inflight[old.node] = max(0, self._inflight.get(old.node, 0) - 1)
        self.states[aid] = st

    async def _refresh_notified(self) -> None:
        if not self._notified:
            return
        ids = sorted(self._notified)
        self._notified.clear()
        raw = await self.rt.store.guard(self.rt.store.r.hmget(self.keys.agents, ids))
        for aid, r in zip(ids, raw, strict=True):
            if r:
                self._absorb(aid, AgentState.decode(r))

    async def _refresh_full(self) -> bool:
        """Re-read everything (catches lost notifications, cancellation, dead executors)."""
        status = await self.rt.store.guard(self.rt.store.r.hget(self.keys.job, "status"))
        if status == "cancelled":
            await self._stop_cancelled()
            return True
        fresh = await agent_states(self.rt.store, self.job_id)
        for aid, st in fresh.items():
            self._absorb(aid, st)
        await self.rt.capacities()
        lost = [aid for aid, st in self.states.items()
                if st.status == "dispatched" and not self.rt.healthy(st.node)]
        if lost:
            log.info("job %s: %d executors were on nodes now down or cut off from Redis; replaying them",
                     self.job_id, len(lost))
            for aid in lost:
                node = self.states[aid].node
                self._inflight[node] = max(0, self._inflight.get(node, 0) - 1)
            await self._dispatch(lost, recovery=True)
        await self._audit_inflight()
        return False

    async def _audit_inflight(self) -> None:
        """Replay executions that their node, though up, no longer knows: it was restarted
        faster than it could be seen down (a rolling restart), or the request was lost. A node
        forgets a run only after storing its result, so the state is re-read before replaying."""
        now = int(time.time() * 1000)
        by_node: dict[str, list[str]] = {}
        for aid, st in self.states.items():
            if st.status == "dispatched" and self.rt.healthy(st.node) \
                    and now - int(st.extra.get("dispatched_ms", 0) or 0) >= AUDIT_AFTER_MS:
                by_node.setdefault(st.node, []).append(aid)
        forgotten: list[str] = []
        for node, aids in by_node.items():
            try:
                known = await self.rt.exec_status(node, self.job_id, [[a, self.states[a].attempt] for a in aids])
            except (LinkError, RedisUnavailable):
                continue  # not answering now: if it stays away, the health check replays its work
            forgotten += [a for a, ok in zip(aids, known, strict=False) if not ok]
        if not forgotten:
            return
        raw = await self.rt.store.guard(self.rt.store.r.hmget(self.keys.agents, forgotten))
        replay: list[str] = []
        for aid, r in zip(forgotten, raw, strict=True):
            if not r:
                continue
            st = AgentState.decode(r)
            if st.status == "dispatched" and st.attempt == self.states[aid].attempt:
                replay.append(aid)
                self._inflight[st.node] = max(0, self._inflight.get(st.node, 0) - 1)
            else:
                self._absorb(aid, st)
        if replay:
            log.info("job %s: %d executors unknown to their (restarted?) nodes; replaying them",
                     self.job_id, len(replay))
            await self._dispatch(replay, recovery=True)

    async def _stop_cancelled(self) -> None:
        nodes = {st.node for st in self.states.values() if st.status == "dispatched" and st.node}
        for node in nodes:
            self.rt.exec_cancel(node, self.job_id)
        log.info("job %s cancelled; told %d executor nodes to stop", self.job_id, len(nodes))


def _topo(m: Manifest) -> list[str]:
    indeg = {a: 0 for a in m.agents}
    for _, b in m.edges:
        indeg[b] += 1
    order: list[str] = []
    ready = [a for a in m.agents if indeg[a] == 0]
    while ready:
        a = ready.pop(0)
        order.append(a)
        for b in m.downstream(a):
            indeg[b] -= 1
            if indeg[b] == 0:
                ready.append(b)
    return order


def _brief(result: Any) -> Any:
    if isinstance(result, dict):
        return {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
    return None
