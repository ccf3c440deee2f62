"""What the HTTP API sees of a node: JSON views (health, summary, node table, leader, events),
the metrics text, and the two commands the job routes need. :class:`NodeView` is the one
implementation of :class:`mn_node.api.NodeAPI`."""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import psutil

from mn_node import __version__
from mn_node.config import api_token
from mn_node.errors import MirrorNeuronError
from mn_node.jobs.runtime import JobRuntime
from mn_node.metrics import NodeMetrics
from mn_node.node import NodeParts, NodeStatus
from mn_node.registration import read_all
from mn_node.store import Store, decode_event


def node_load(jobs: JobRuntime) -> dict[str, Any]:
    """This box's facts and load as written into the registration (on each refresh): CPU count,
    load averages, memory total/available (bytes), executor slots total/used/free, busy runs,
    coordinated jobs, commands on/off."""
    try:
        la = os.getloadavg()
    except OSError:
        la = (0.0, 0.0, 0.0)
    try:
        vm = psutil.virtual_memory()
        mem: dict[str, Any] = {"mem_total": int(vm.total), "mem_available": int(vm.available)}
    except OSError:
        mem = {"mem_total": None, "mem_available": None}
    ex = jobs.executor
    used = ex.slots_used
    return {"loadavg1": round(la[0], 2), "loadavg5": round(la[1], 2), "loadavg15": round(la[2], 2),
            "cpus": os.cpu_count() or 0, **mem,
            "slots_total": ex.capacity, "slots_used": used, "slots_free": max(0, ex.capacity - used),
            "executors_busy": ex.busy, "coordinating": len(jobs.coordinators),
            "commands": "on" if ex.commands_allowed else "off"}


def _merge_registration(row: dict[str, Any], reg: dict[str, str]) -> None:
    row["registered"] = True
    row["version"] = reg.get("version")
    row["capacity"] = int(reg.get("capacity", "0") or 0)
    row["load"] = json.loads(reg.get("load", "{}") or "{}")
    row["pid"] = int(reg.get("pid", "0") or 0)
    row["started_ms"] = int(reg.get("started_ms", "0") or 0)
    row["config_fingerprint"] = reg.get("config_fingerprint")
    row["commands"] = reg.get("commands") or None
    row["drain"] = reg.get("drain", "")  # "" | "draining" | "drained" (drain state, written by mn drain)


def _unlinked_row(name: str, reg: dict[str, str]) -> dict[str, Any]:
    """A registered node this one has no link to."""
    return {"name": name, "address": reg.get("host", ""), "status": "down", "incarnation": reg.get("incarnation", ""),
            "since": 0.0, "last_seen": 0.0, "rtt_ms": None, "reason": "no link", "is_self": False}


class NodeView:
    """Read-only views over a node's parts and status, plus ``kick_placement`` and
    ``tell_owner_cancel`` for the job routes."""

    def __init__(self, parts: NodeParts, status: NodeStatus, metrics: NodeMetrics) -> None:
        self._parts = parts
        self._status = status
        self._metrics = metrics
        self.name = parts.cfg.name
        self.incarnation = parts.incarnation
        self.store: Store = parts.store
        self.api_token = api_token(parts.cfg.cookie)

    # ---- health -----------------------------------------------------------------------------
    def health_reasons(self) -> list[str]:
        """Why this node is not healthy; empty when it is ('starting' until start-up has ended)."""
        reasons = []
        if not self._status.up:
            reasons.append("starting")
        if not self.store.available:
            reasons.append(f"redis unreachable: {self.store.last_error}")
        elif self.store.write_refused:
            reasons.append(f"redis writes not replicated: {self.store.write_refused}")
        elif not self._status.registered:
            reasons.append("not registered in redis yet")
        if self._status.stopping:
            reasons.append("stopping")
        return reasons

    def health(self) -> dict[str, Any]:
        reasons = self.health_reasons()
        return {
            "status": "ok" if not reasons else "unhealthy",
            "node": self.name,
            "incarnation": self.incarnation,
            "version": __version__,
            "redis": "ok" if self.store.available else "unreachable",
            "leader": self._parts.election.is_leader,
            "members_up": len(self._parts.members.up_names()),
            "reasons": reasons,
        }

    # ---- cluster views ----------------------------------------------------------------------
    async def summary(self) -> dict[str, Any]:
        p = self._parts
        members = p.members.members()
        leader = None
        if self.store.available:
            with contextlib.suppress(MirrorNeuronError):
                leader = await p.election.current()
        return {
            "node": self.name,
            "incarnation": self.incarnation,
            "version": __version__,
            "uptime_s": round(time.time() - p.started, 3),
            "members": {"up": sum(m.status == "up" for m in members),
                        "down": sum(m.status == "down" for m in members)},
            "leader": leader,
            "is_leader": p.election.is_leader,
            "redis": {"available": self.store.available, "url": self.store.display_url,
                      "error": self.store.last_error or None, "topology": await self.store.topology()},
            "config_fingerprint": p.registration.cfg.fingerprint(),  # reloads update the registration's
            "executor_capacity": p.jobs.executor.capacity,
            "executors_busy": p.jobs.executor.busy,
            "coordinating": sorted(p.jobs.coordinators),
        }

    async def node_table(self) -> list[dict[str, Any]]:
        """Members as this node sees them, merged with every registration in Redis, by name."""
        rows = {m.name: m.to_dict() for m in self._parts.members.members()}
        regs: dict[str, dict[str, str]] = {}
        if self.store.available:
            with contextlib.suppress(MirrorNeuronError, Exception):
                regs = await read_all(self.store)
        for name, reg in regs.items():
            _merge_registration(rows.setdefault(name, _unlinked_row(name, reg)), reg)
        for row in rows.values():
            row.setdefault("registered", False)
        if self.name in rows:  # the Redis topology as the answering node sees it
            rows[self.name]["redis_topology"] = await self.store.topology()
        return sorted(rows.values(), key=lambda r: str(r["name"]))

    async def leader(self) -> dict[str, Any] | None:
        """The leader as Redis has it now (``self``: is it this node), None when there is none."""
        cur = await self._parts.election.current()
        if cur is not None:
            cur["self"] = cur["node"] == self.name
        return cur

    async def cluster_events(self, count: int) -> list[dict[str, Any]]:
        """The last ``count`` cluster events, oldest first."""
        raw = await self.store.guard(self.store.r.xrevrange(self.store.key("events"), count=count))
        return [decode_event(eid, fields) for eid, fields in reversed(raw)]

    def metrics(self) -> bytes:
        return self._metrics.render()

    # ---- commands for the job routes --------------------------------------------------------
    def kick_placement(self) -> None:
        """Every node looks at the active jobs now (after a submit)."""
        self._parts.placement.kick_all()

    def tell_owner_cancel(self, owner: str, job_id: str) -> None:
        self._parts.jobs.tell_owner_cancel(owner, job_id)

    def job_retention_ms(self) -> int:
        """MIRROR_NEURON_JOB_RETENTION as the jobs layer applies it now (a reload may change it)."""
        return self._parts.jobs.retention_ms

    async def exec_logs(self, node: str, job_id: str, agent_id: str, attempt: int,
                        offsets: dict[str, int]) -> dict[str, Any] | None:
        """The live output of a running command attempt (the runtime asks ``node``); None when
        the node does not answer."""
        try:
            res = await self._parts.jobs.exec_logs(node, job_id, agent_id, attempt, offsets)
        except MirrorNeuronError:
            return None
        return res if isinstance(res, dict) else None
