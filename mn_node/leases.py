"""Fenced leases on Redis.

A holder acts only while ``Lease.valid()``: its local monotonic deadline (send time of the
last successful renewal + TTL - margin) has not passed and Redis has not refused it. Every
write a holder makes goes through :meth:`LeaseManager.fenced` (``fenced_hset`` /
``fenced_xadd`` / the jobs' ``job_write``), which Redis refuses unless the holder's token is
still the current one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mn_node.aio import Signal
from mn_node.errors import FencedWriteRefused, LeaseLost, RedisUnavailable
from mn_node.scripts import LEASE_REFUSALS
from mn_node.store import EVENTS_MAXLEN, Script, Store

log = logging.getLogger("mn_node.leases")


@dataclass
class Lease:
    name: str
    key: str
    token: str
    epoch: int
    deadline: float
    lost_reason: str = ""
    _lost: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def valid(self) -> bool:
        return not self._lost.is_set() and time.monotonic() < self.deadline

    def remaining(self) -> float:
        """Seconds until the local deadline (0 once lost)."""
        return max(0.0, self.deadline - time.monotonic()) if not self._lost.is_set() else 0.0

    @property
    def is_lost(self) -> bool:
        return self._lost.is_set()


@dataclass
class Holder:
    """Who holds a lease we failed to get."""

    token: str
    pttl_ms: int

    @property
    def node(self) -> str:
        return self.token.split("|", 1)[0]

    @property
    def epoch(self) -> int:
        try:
            return int(self.token.rsplit("|", 1)[1])
        except (IndexError, ValueError):
            return 0


class LeaseManager:
    def __init__(self, store: Store, node: str, incarnation: str, ttl_ms: int, renew_ms: int) -> None:
        self.store = store
        self.node = node
        self.owner = f"{node}|{incarnation}"
        self.ttl_ms = ttl_ms
        self.renew_ms = renew_ms
        self.margin = max(0.05, ttl_ms / 1000 * 0.1)
        self.held: dict[str, Lease] = {}
        # a held lease was lost (not released): deadline passed, refused, redis restarted
        self.lost: Signal[[Lease]] = Signal("lease lost")
        # each batched renewal's round trip, in seconds (metrics observe it as a histogram)
        self.renewed: Signal[[float]] = Signal("lease renewed")
        self.fenced_ok = 0
        self.fenced_refused = 0
        self.renewals = 0
        store.restarted.connect(lambda new, old: self.lose_all("redis restarted"))

    def lease_key(self, name: str) -> str:
        return self.store.key("lease", name)

    # ---- grant / release ----------------------------------------------------------------
    async def acquire(self, name: str, event: str = "") -> Lease | Holder:
        """One attempt. Returns the new Lease, or the current Holder."""
        t0 = time.monotonic()
        res = await self.store.scripts.acquire(
            [self.lease_key(name), self.store.key("epoch", name), self.store.key("events")],
            [self.owner, self.ttl_ms, event, EVENTS_MAXLEN, name],
        )
        if int(res[0]) == 1:
            lease = Lease(name, self.lease_key(name), str(res[1]), int(res[2]),
                          t0 + self.ttl_ms / 1000 - self.margin)
            old = self.held.get(name)
            if old is not None:
                self._mark_lost(old, "superseded")
            self.held[name] = lease
            return lease
        return Holder(str(res[1]), int(res[2]))

    async def release(self, lease: Lease, event: str = "", data: str = "{}") -> bool:
        was_valid = lease.valid()
        self._mark_lost(lease, "released", notify=False)
        if not was_valid:
            return False
        try:
            res = await self.store.scripts.release(
                [lease.key, self.store.key("events")],
                [lease.token, event, EVENTS_MAXLEN, lease.name, data],
            )
        except RedisUnavailable as e:
            log.info("release of %s not confirmed: %s (it expires by its TTL)", lease.name, e)
            return False
        return bool(res)

    async def release_all(self) -> None:
        for lease in list(self.held.values()):
            await self.release(lease)

    # ---- renewal ----------------------------------------------------------------------
    async def renew_all(self) -> None:
        """Renew every held lease in one round trip."""
        leases = [lease for lease in self.held.values() if not lease.is_lost]
        now = time.monotonic()
        for lease in leases:
            if now >= lease.deadline:
                self._mark_lost(lease, "local deadline passed without a renewal")
        leases = [lease for lease in leases if not lease.is_lost]
        if not leases:
            return
        t0 = time.monotonic()
        try:
            res = await self.store.scripts.renew_all(
                [lease.key for lease in leases], [self.ttl_ms, *(lease.token for lease in leases)]
            )
        except RedisUnavailable:
            return  # deadlines keep running down; the next tick marks them lost
        t1 = time.monotonic()
        self.renewals += 1
        self.renewed.emit(t1 - t0)
        deadline = t0 + self.ttl_ms / 1000 - self.margin
        for lease, ok in zip(leases, res, strict=True):
            if int(ok) == 1:
                if not lease.is_lost:
                    lease.deadline = deadline
            else:
                self._mark_lost(lease, "redis no longer holds our token")

    async def run(self) -> None:
        """Renew loop; also enforces local deadlines between renewals."""
        interval = self.renew_ms / 1000
        while True:
            started = time.monotonic()
            await self.renew_all()
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, interval - elapsed))

    def lose_all(self, reason: str) -> None:
        for lease in list(self.held.values()):
            self._mark_lost(lease, reason)

    def _mark_lost(self, lease: Lease, reason: str, notify: bool = True) -> None:
        if lease.is_lost:
            return
        lease.lost_reason = reason
        lease._lost.set()
        if self.held.get(lease.name) is lease:
            del self.held[lease.name]
        if notify:
            log.warning("lease %s (epoch %d) lost: %s", lease.name, lease.epoch, reason)
            self.lost.emit(lease)

    # ---- fenced writes ------------------------------------------------------------------
    async def fenced(self, lease: Lease, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a fenced write ``script`` for the holder of ``lease``: refused here
        (:class:`LeaseLost`) once the lease is no longer valid locally, and by Redis
        (:class:`FencedWriteRefused`) unless its token is current. A refusal for the token or
        epoch marks the lease lost; one for the object's state (``FENCED job is already …``)
        refuses the write but leaves the lease to its holder."""
        if not lease.valid():
            raise LeaseLost(f"lease {lease.name} (epoch {lease.epoch}) is no longer ours: "
                            f"{lease.lost_reason or 'local deadline passed'}")
        try:
            res = await script(keys, args)
        except FencedWriteRefused as e:
            self.fenced_refused += 1
            if str(e).startswith(LEASE_REFUSALS):
                self._mark_lost(lease, "a fenced write was refused")
            raise
        self.fenced_ok += 1
        return res

    async def fenced_hset(self, lease: Lease, key: str, mapping: dict[str, Any]) -> None:
        """HSET through the fence: refused unless ``lease`` is still current."""
        args: list[Any] = [lease.token, lease.epoch]
        for k, v in mapping.items():
            args += [k, v]
        await self.fenced(lease, self.store.scripts.fenced_hset, [lease.key, key], args)

    async def fenced_xadd(self, lease: Lease, key: str, fields: dict[str, Any], maxlen: int = EVENTS_MAXLEN) -> str:
        """XADD through the fence; the entry records the writer's epoch, lower epochs are refused."""
        args: list[Any] = [lease.token, lease.epoch, maxlen]
        for k, v in fields.items():
            args += [k, v]
        return str(await self.fenced(lease, self.store.scripts.fenced_xadd, [lease.key, key], args))
