"""Placement: which node coordinates which job (docs/architecture.md, "Jobs").

On every membership change, every "kick" and every tick, each node looks at active jobs whose
lease is free. The live node ranked first by rendezvous hash of the job id acquires the lease
and starts the coordinator. A live lease is never stolen: a takeover waits for expiry, and the
first-ranked node schedules its attempt for the moment the old lease expires. The leader also
sweeps continuously: an active job whose lease stays free past a grace period (its first-ranked
node cannot act, e.g. it lost Redis) is taken by the leader, recorded as ``orphan_swept``.
Draining nodes (:mod:`mn_node.drain`) are left out of the ranking: they take no job, and the jobs
they hand over go to their next-ranked node.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

from mn_node.aio import wait_event
from mn_node.drain import DrainControl
from mn_node.errors import RedisUnavailable
from mn_node.jobs.runtime import JobRuntime
from mn_node.leader import LeaderElection
from mn_node.leases import Holder, Lease, LeaseManager
from mn_node.link.manager import LinkManager
from mn_node.membership import Member, Membership
from mn_node.store import Store

INDEX_TRIM_EVERY_S = 5.0
# a storm of kicks (hundreds of submits a second) re-reads every active job's lease no more often
# than a quiet node does (every renew interval); a pass in between reads only the jobs not seen
# leased by a live node (the new ones), so a kick costs O(new jobs), not O(active jobs). A
# membership change forces a full pass.
INDEX_TRIM_BATCH = 1000

log = logging.getLogger("mn_node.placement")

KICK = "placement.kick"


def rendezvous(job_id: str, nodes: list[str]) -> list[str]:
    """Nodes ordered by highest-random-weight for this job id."""
    def score(n: str) -> int:
        return int.from_bytes(hashlib.blake2b(f"{job_id}|{n}".encode(), digest_size=8).digest(), "big")

    return sorted(nodes, key=score, reverse=True)


class Placement:
    def __init__(self, node: str, store: Store, leases: LeaseManager, links: LinkManager,
                 members: Membership, election: LeaderElection, runtime: JobRuntime) -> None:
        self.node = node
        self.store = store
        self.leases = leases
        self.links = links
        self.members = members
        self.election = election
        self.rt = runtime
        self.tick = leases.renew_ms / 1000
        self.grace = leases.ttl_ms / 1000
        self._free_since: dict[str, float] = {}
        self._held: set[str] = set()  # jobs whose lease a live node held at this node's last look
        self._last_full = -self.tick
        self._wake = asyncio.Event()
        self.sweeps = 0
        self.index_trimmed = 0  # expired job ids the leader dropped from the job indexes
        self._next_trim = 0.0
        links.register(KICK, lambda frm, msg: self._wake.set())
        members.up.connect(self._on_change)
        members.down.connect(self._on_change)
        runtime.coordinator_exited.connect(lambda job_id: self._wake.set())
        self.drain = DrainControl(node, store, runtime, members, election, self.kick_all)

    def _on_change(self, m: Member) -> None:
        self._last_full = -self.tick  # a holder may be gone: look at every job again
        self._wake.set()

    def kick_all(self) -> None:
        """After a submit: every node reconciles now instead of at its next tick."""
        self._wake.set()
        self.links.broadcast(KICK, {})

    async def run(self) -> None:
        while True:
            self._wake.clear()  # before the work: a kick during it must not be lost
            delay = self.tick
            try:
                delay = await self.reconcile()
            except RedisUnavailable:
                self._free_since.clear()
            except Exception:
                log.exception("placement reconcile failed")
            await wait_event(self._wake, delay)

    async def reconcile(self) -> float:
        """One pass. Returns how long to wait before the next (shorter when a lease is about to expire)."""
        if not self.store.available:
            return self.tick
        draining = await self.drain.poll()
        await self._trim_index()
        active: set[str] = await self.store.guard(self.store.r.smembers(self.store.key("jobs", "active")))
        now = time.monotonic()
        full = now - self._last_full >= self.tick
        if full:
            self._last_full = now
        self._held &= active
        candidates = sorted(j for j in active if j not in self.rt.coordinators and (full or j not in self._held))
        for j in list(self._free_since):
            if j not in active:
                del self._free_since[j]
        # jobs skipped by a partial pass are looked at again by the full pass that follows soon
        delay = self.tick if full or not self._held else min(self.tick, self._last_full + self.tick - now)
        if not candidates:
            return delay
        pipe = self.store.r.pipeline(transaction=False)
        for j in candidates:
            key = self.leases.lease_key(f"job:{j}")
            pipe.get(key)
            pipe.pttl(key)
        res = await self.store.guard(pipe.execute())
        up = self.members.up_names()
        ranked = [n for n in up if n not in draining]  # a draining node takes no job
        for i, job_id in enumerate(candidates):
            token, pttl = res[2 * i], res[2 * i + 1]
            self._held.discard(job_id)
            if token:
                self._free_since.pop(job_id, None)
                if Holder(str(token), 0).node in up:
                    self._held.add(job_id)
                if rendezvous(job_id, ranked)[:1] == [self.node] and Holder(str(token), 0).node not in up \
                        and int(pttl) >= 0:
                    delay = min(delay, int(pttl) / 1000 + 0.002)  # be there the moment it expires
                continue
            since = self._free_since.setdefault(job_id, now)
            first = rendezvous(job_id, ranked)[:1] == [self.node]
            sweep = not first and self.election.is_leader and not self.drain.active and now - since >= self.grace
            if first or sweep:
                await self._take(job_id, sweep, now - since)
        return delay

    async def _trim_index(self) -> None:
        """Leader only, every INDEX_TRIM_EVERY_S: drop the ids of expired jobs from ``{ns}:jobs``
        and ``{ns}:jobs:expiry`` (a terminal write trims only when another job ends, so after the
        last job the ids of those that expired would otherwise stay for good)."""
        now = time.monotonic()
        if not self.election.is_leader or now < self._next_trim:
            return
        self._next_trim = now + INDEX_TRIM_EVERY_S
        keys = [self.store.key("jobs"), self.store.key("jobs", "expiry")]
        while (n := int(await self.store.scripts.trim_job_index(keys, [INDEX_TRIM_BATCH]))) > 0:
            self.index_trimmed += n
            if n < INDEX_TRIM_BATCH:
                break

    async def _take(self, job_id: str, sweep: bool, free_for: float) -> None:
        got = await self.leases.acquire(f"job:{job_id}")
        if not isinstance(got, Lease):
            return
        self._free_since.pop(job_id, None)
        if sweep:
            self.sweeps += 1
            log.info("orphan sweep: taking job %s (lease free %.1fs)", job_id, free_for)
            lease = self.election.lease
            await self.store.event("orphan_swept", self.node, lease.epoch if lease else "",
                                   job_id=job_id, free_for_s=round(free_for, 3), job_epoch=got.epoch)
        self.rt.start_coordinator(job_id, got)

    def status(self) -> dict[str, Any]:
        return {"coordinating": sorted(self.rt.coordinators), "sweeps": self.sweeps, "drain": self.drain.state}
