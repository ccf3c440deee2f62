"""How many replicas a replicated write waits for (``WAIT n``).

By default with a Sentinel URL (``MIRROR_NEURON_REDIS_MIN_ACKS`` unset or ``all``): *every
replica the Sentinels know of*, up or down. Why not fewer: Sentinel promotes a replica by the
replication offsets it last read, compared as plain numbers even across replication histories,
and it will promote a replica that has not finished resyncing. The fault runner caught it
promoting the replica that lacked a write the other had acknowledged, and a returning old
primary whose offset counted writes from before its demotion (docs/faults.md, "Sentinel: why
every replica acknowledges"). Only a write that every replica has is on whichever one wins.

The price: while a replica is down, writes are refused (the cluster stops acting and says why)
until it returns, or until an operator tells the Sentinels to forget a host that is gone for good
(``SENTINEL RESET <master>`` on each Sentinel; docs/deploy.md). A number in
``MIRROR_NEURON_REDIS_MIN_ACKS`` waits for exactly that many instead: available while enough
replicas are up, at the risk above.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

# How long a count of the replicas read from the Sentinels is used before it is read again
REFRESH_S = 1.0


class AckTarget:
    """The number of acknowledgements a write needs now: ``floor`` when fixed, else the number
    of replicas the Sentinels know of (at least ``floor``), re-read at most every
    :data:`REFRESH_S` (one read at a time, however many writes wait). When no Sentinel answers
    the last count is kept: an outage never lowers what a write must reach."""

    def __init__(self, floor: int, count_replicas: Callable[[], Awaitable[int | None]] | None = None) -> None:
        self.floor = floor
        self.known: int | None = None  # replicas the Sentinels know of, None until read
        self._count = count_replicas
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def every_replica(self) -> bool:
        return self._count is not None

    async def needed(self) -> int:
        if self._count is not None and time.monotonic() - self._at >= REFRESH_S:
            async with self._lock:
                if time.monotonic() - self._at >= REFRESH_S:  # not read by the writer we waited for
                    n = await self._count()
                    if n is not None:
                        self.known = n
                    self._at = time.monotonic()
        return self.current

    @property
    def current(self) -> int:
        """The count as last read (what the next write waits for unless it is read again)."""
        return max(self.floor, self.known or 0)

    def invalidate(self) -> None:
        """Count again before the next write (the primary changed, a write fell short)."""
        self._at = float("-inf")
