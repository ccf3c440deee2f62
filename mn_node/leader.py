"""Leader election on ``{ns}:lease:cluster:leader`` (docs/architecture.md, "Leases and fencing").

Every node that is not leader tries to acquire each renew interval, and schedules one extra
attempt for the moment the current lease expires (from its PTTL), so a crashed leader is
replaced within TTL + a few ms. On graceful stop the leader releases and tells its peers over
the links; they try at once, so handover takes one round trip instead of a TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from mn_node.aio import Signal, wait_event
from mn_node.errors import FencedWriteRefused, LeaseLost, RedisUnavailable
from mn_node.leases import Holder, Lease, LeaseManager
from mn_node.link.manager import LinkManager
from mn_node.store import Store

log = logging.getLogger("mn_node.leader")

LEASE = "cluster:leader"
MAILBOX = "leader"
HISTORY_MAXLEN = 20_000


class LeaderElection:
    def __init__(self, store: Store, leases: LeaseManager, links: LinkManager, node: str) -> None:
        self.store = store
        self.leases = leases
        self.links = links
        self.node = node
        self.lease: Lease | None = None
        self.known: Holder | None = None
        self.changes = 0
        self._wake = asyncio.Event()
        self.elected: Signal[[Lease]] = Signal("leader elected")  # this node became leader
        self.deposed: Signal[[Lease]] = Signal("leader deposed")  # this node's leadership was lost
        self._beat_seq = 0
        self.stopped = False
        self._contending = asyncio.Lock()
        links.register(MAILBOX, self._on_message)
        leases.lost.connect(self._on_lease_lost)

    @property
    def is_leader(self) -> bool:
        return self.lease is not None and self.lease.valid()

    def wake(self) -> None:
        self._wake.set()

    def _on_message(self, frm: str, msg: Any) -> None:
        if isinstance(msg, dict) and msg.get("type") == "released":
            log.info("%s released leadership; contending now", frm)
            self.known = None
            self._wake.set()

    def _on_lease_lost(self, lease: Lease) -> None:
        if lease is self.lease:
            self.lease = None
            log.warning("stepped down as leader (epoch %d): %s", lease.epoch, lease.lost_reason)
            self.deposed.emit(lease)
            self._wake.set()

    async def run(self) -> None:
        interval = self.leases.renew_ms / 1000
        while True:
            self._wake.clear()  # before the work: a wake-up during it must not be lost
            delay = interval
            if self.lease is None:
                delay = await self._contend(interval)
            else:
                await self._beat()
            await wait_event(self._wake, delay)

    async def _contend(self, interval: float) -> float:
        async with self._contending:  # step_down waits for an attempt in flight
            if self.stopped:
                return interval
            return await self._contend_once(interval)

    async def _contend_once(self, interval: float) -> float:
        try:
            res = await self.leases.acquire(LEASE, event="leader_elected")
        except RedisUnavailable:
            self.known = None
            return interval
        if isinstance(res, Lease):
            self.lease = res
            self.known = None
            self.changes += 1
            log.info("elected leader, epoch %d", res.epoch)
            self.links.broadcast(MAILBOX, {"type": "elected", "epoch": res.epoch})
            self.elected.emit(res)
            await self._beat()
            return interval
        self.known = res
        # try again the moment the holder's lease would expire (a crash), or at the next tick
        if res.pttl_ms >= 0:
            return min(interval, res.pttl_ms / 1000 + 0.002)
        return interval

    async def _beat(self) -> None:
        """The leader's fenced heartbeat: proof that only the current epoch writes."""
        lease = self.lease
        if lease is None or not lease.valid():
            return
        self._beat_seq += 1
        beat = {"node": self.node, "epoch": lease.epoch, "seq": self._beat_seq, "at_ms": int(time.time() * 1000)}
        try:
            await self.leases.fenced_hset(lease, self.store.key("leader", "beat"), beat)
            # the fenced register: an append-only history the fault checker reads back
            del beat["epoch"]  # fenced_xadd records the writer's epoch itself
            await self.leases.fenced_xadd(lease, self.store.key("leader", "history"), beat, maxlen=HISTORY_MAXLEN)
        except (FencedWriteRefused, LeaseLost, RedisUnavailable) as e:
            log.info("leader heartbeat not written: %s", e)

    async def step_down(self) -> None:
        """Graceful: release the lease and tell peers so one of them takes over at once.

        Also stops contending for good: the node is stopping, and re-acquiring between the
        release and the end of the election loop would make the successor wait a whole TTL."""
        self.stopped = True
        self._wake.set()
        async with self._contending:
            lease = self.lease
            self.lease = None
        if lease is None:
            return
        released = await self.leases.release(lease, event="leader_released", data='{"reason":"shutdown"}')
        if released:
            self.links.broadcast(MAILBOX, {"type": "released", "epoch": lease.epoch})
            for conn in list(self.links.links.values()):
                conn.flush()
        log.info("released leadership (epoch %d)%s", lease.epoch, "" if released else " (unconfirmed)")

    async def current(self) -> dict[str, Any] | None:
        """The leader as Redis has it now: node, epoch, ttl_ms, token."""
        key = self.leases.lease_key(LEASE)
        pipe = self.store.r.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        token, pttl = await self.store.guard(pipe.execute())
        if not token:
            return None
        h = Holder(str(token), int(pttl))
        return {"node": h.node, "epoch": h.epoch, "ttl_ms": h.pttl_ms,
                "incarnation": str(token).split("|")[1] if str(token).count("|") == 2 else ""}
