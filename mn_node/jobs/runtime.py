"""The jobs layer of one node: its coordinators, its executor service, and their mailboxes."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from mn_node.aio import Signal
from mn_node.config import DEFAULT_JOB_RETENTION_MS
from mn_node.errors import MirrorNeuronError, NotConnected
from mn_node.jobs.coordinator import Coordinator
from mn_node.jobs.executor import ExecutorService, told_state
from mn_node.leases import Lease, LeaseManager
from mn_node.link.manager import LinkManager
from mn_node.membership import Membership
from mn_node.registration import read_all
from mn_node.store import Store

log = logging.getLogger("mn_node.jobs")

CALL_TIMEOUT = 3.0
RUN_S_GRAPHS = 1000  # graphs whose run time is remembered


class JobRuntime:
    def __init__(self, node: str, store: Store, leases: LeaseManager, links: LinkManager,
                 members: Membership, capacity: int, tick: float, *, state_dir: Path,
                 commands: bool = True, command_timeout_s: float = 3600.0,
                 retention_ms: int = DEFAULT_JOB_RETENTION_MS) -> None:
        self.node = node
        self.store = store
        self.leases = leases
        self.links = links
        self.members = members
        self.tick = tick
        self.capacity = capacity
        self.stale_after_ms = int(3 * tick * 1000 + 1000)
        self.executor = ExecutorService(node, store, links, capacity, state_dir=state_dir, commands=commands,
                                        command_timeout_s=command_timeout_s)
        self.executor.local_done.connect(lambda msg: self._on_agents_done(node, msg))
        self.coordinators: dict[str, Coordinator] = {}
        self.retention_ms = retention_ms  # MIRROR_NEURON_JOB_RETENTION: terminal jobs' keys expire after it
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._caps: dict[str, int] = {}
        self._commands: set[str] = set()  # nodes whose registration says commands=on
        self._caps_at = 0.0
        self._caps_lock = asyncio.Lock()
        # graph id -> moving average of its executor runs' duration, so a new job of a graph this
        # node coordinated before sends as far ahead as its runs allow from its first dispatch
        self.run_s: dict[str, float] = {}
        self.draining: set[str] = set()  # nodes being drained (set by the drain control each pass)
        # a coordinator of this node stopped (its job id): placement looks again at once
        self.coordinator_exited: Signal[[str]] = Signal("coordinator exited")
        links.register("job.agents_done", self._on_agents_done)
        links.register("job.agent_done", self._on_agent_done)  # from nodes of an older version
        links.register("job.cancel", self._on_cancel)
        leases.lost.connect(self._on_lease_lost)

    def start(self) -> None:
        self.executor.start()

    async def stop(self) -> None:
        for t in list(self._tasks.values()):
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self.executor.stop()

    # ---- coordinators ---------------------------------------------------------------------------
    def start_coordinator(self, job_id: str, lease: Lease) -> None:
        if job_id in self.coordinators:
            return
        c = Coordinator(self, job_id, lease)
        self.coordinators[job_id] = c
        self._tasks[job_id] = asyncio.get_running_loop().create_task(c.run(), name=f"coordinator {job_id}")

    def remember_run_s(self, graph_id: str, seconds: float) -> None:
        self.run_s.pop(graph_id, None)  # most recent last: the oldest graph goes first
        self.run_s[graph_id] = seconds
        if len(self.run_s) > RUN_S_GRAPHS:
            del self.run_s[next(iter(self.run_s))]

    def coordinator_done(self, c: Coordinator) -> None:
        if self.coordinators.get(c.job_id) is c:
            del self.coordinators[c.job_id]
            self._tasks.pop(c.job_id, None)
        if c.lease.valid():
            asyncio.get_running_loop().create_task(self.leases.release(c.lease))
        self.coordinator_exited.emit(c.job_id)

    def _on_lease_lost(self, lease: Lease) -> None:
        if lease.name.startswith("job:"):
            c = self.coordinators.get(lease.name[4:])
            if c is not None and c.lease is lease:
                c.wake()  # its next write raises LeaseLost and it stops

    def _on_agent_done(self, frm: str, msg: Any) -> None:
        c = self.coordinators.get(str(msg.get("job")))
        if c is not None:
            c.notify_done(str(msg.get("agent")))

    def _on_agents_done(self, frm: str, msg: Any) -> None:
        """``{job, agents: [id, ...], attempts: [n, ...], states: [told state or None, ...]}``:
        results stored by the executing node ``frm`` (``states``, from nodes of this version:
        what was stored, so the coordinator need not read it back)."""
        c = self.coordinators.get(str(msg.get("job")))
        if c is None:
            return
        agents, attempts = msg.get("agents") or [], msg.get("attempts") or []
        states = msg.get("states") or [None] * len(agents)
        for aid, attempt, told in zip(agents, attempts, states, strict=False):
            c.notify_done(str(aid), told_state(frm, attempt, told))

    def _on_cancel(self, frm: str, msg: Any) -> None:
        c = self.coordinators.get(str(msg.get("job")))
        if c is not None:
            c.request_cancel()

    # ---- executors, local or remote ------------------------------------------------------------------
    async def capacities(self) -> dict[str, int]:
        """Executor slots of every node that can take work: linked to us *and* refreshing its
        registration in Redis (a node cut off from Redis could run work but never store it).
        Registrations are re-read at most once a second."""
        if time.monotonic() - self._caps_at > 1.0:
            async with self._caps_lock:  # one read for every coordinator that asks meanwhile
                now = time.monotonic()
                if now - self._caps_at > 1.0:
                    try:
                        redis_ms = await self.store.server_time_ms()
                        regs = await read_all(self.store)
                        self._caps = {name: int(r.get("capacity", "1") or 1) for name, r in regs.items()
                                      if redis_ms - int(r.get("refreshed_ms", "0") or 0) < self.stale_after_ms}
                        self._commands = {name for name, r in regs.items() if r.get("commands") == "on"}
                        self._caps_at = now
                    except MirrorNeuronError:
                        pass
        caps = {n: self._caps[n] for n in self.members.up_names() if n in self._caps}
        caps[self.node] = self.capacity
        return caps

    def allows_commands(self, node: str) -> bool:
        """May ``node`` run command agents (MIRROR_NEURON_COMMANDS, from its registration)?"""
        if node == self.node:
            return self.executor.commands_allowed
        return node in self._commands

    def healthy(self, node: str) -> bool:
        """Up on the links and, at the last look, refreshing its registration in Redis."""
        return node == self.node or (self.members.is_up(node) and node in self._caps)

    async def exec_run(self, node: str, job_id: str, epoch: int, reqs: list[dict[str, Any]]) -> Any:
        msg = {"job": job_id, "epoch": epoch, "owner": self.node, "runs": reqs}
        if node == self.node:
            return self.executor.on_run(self.node, msg)
        return await self.links.call(node, "exec.run", msg, CALL_TIMEOUT)

    async def exec_status(self, node: str, job_id: str, agents: list[list[Any]]) -> list[bool]:
        msg = {"job": job_id, "agents": agents}
        if node == self.node:
            return self.executor.on_status(self.node, msg)
        res = await self.links.call(node, "exec.status", msg, CALL_TIMEOUT)
        return [bool(x) for x in res]

    async def exec_logs(self, node: str, job_id: str, agent_id: str, attempt: int,
                        offsets: dict[str, int]) -> dict[str, Any]:
        """The output of a command attempt on ``node`` from ``offsets`` (``{stdout, stderr}``
        byte offsets): ``{node, running, try, stdout, stderr, offsets}``; pass the returned
        offsets back to follow it. Raises ``LinkError`` when the node does not answer."""
        msg = {"job": job_id, "agent": agent_id, "attempt": attempt, "offsets": dict(offsets)}
        if node == self.node:
            return self.executor.on_logs(self.node, msg)
        res: dict[str, Any] = await self.links.call(node, "exec.logs", msg, CALL_TIMEOUT)
        return res

    def exec_cancel(self, node: str, job_id: str) -> None:
        msg = {"job": job_id}
        if node == self.node:
            self.executor.on_cancel(self.node, msg)
            return
        try:
            self.links.send(node, "exec.cancel", msg)
        except NotConnected:
            pass

    def tell_owner_cancel(self, owner: str, job_id: str) -> None:
        if owner == self.node:
            self._on_cancel(self.node, {"job": job_id})
            return
        try:
            self.links.send(owner, "job.cancel", {"job": job_id})
        except NotConnected:
            pass
