"""Coalescing of the executing node's per-run Redis writes: many runs, one script call.

A :class:`Batcher` collects items and hands them to its flush function together: as soon as a
pass of the event loop adds no more items (the loop has no more ready work feeding it), or
after ``max_wait_s``, or at ``max_items``, whichever comes first; so a lone item waits one loop
pass, and items that arrive while a flush is out are taken by the next one. Flushes run one
after another, in the order items came.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("mn_node.executor")

T = TypeVar("T")

MAX_ITEMS = 256
MAX_WAIT_S = 0.002


class Batcher(Generic[T]):
    def __init__(self, name: str, flush: Callable[[list[T]], Awaitable[None]], *, max_items: int = MAX_ITEMS,
                 max_wait_s: float = MAX_WAIT_S) -> None:
        self.name = name
        self._flush = flush
        self.max_items = max_items
        self.max_wait_s = max_wait_s
        self._items: list[T] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, item: T) -> None:
        self._items.append(item)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batch {self.name}")

    async def _run(self) -> None:
        try:
            while self._items:
                await self._gather()
                batch, self._items = self._items[:self.max_items], self._items[self.max_items:]
                try:
                    await self._flush(batch)
                except Exception:
                    log.exception("%s: a flush of %d item(s) failed", self.name, len(batch))
        finally:
            self._task = None

    async def _gather(self) -> None:
        deadline = time.monotonic() + self.max_wait_s
        seen = -1
        while seen != len(self._items) and len(self._items) < self.max_items and time.monotonic() < deadline:
            seen = len(self._items)
            await asyncio.sleep(0)

    async def close(self) -> None:
        """Stop: the items not flushed yet are dropped."""
        task, self._task = self._task, None
        self._items = []
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
