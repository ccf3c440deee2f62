"""Small asyncio idioms used across the layers, written once.

- :class:`Signal`: a list of subscribers. A publisher calls :meth:`Signal.emit`; a subscriber
  that raises is logged (with the signal's name) and never breaks the publisher or the
  subscribers after it. Every ``on_*`` hook of the node is one of these.
- :func:`wait_event`: wait for an :class:`asyncio.Event` or a timeout, whichever comes first,
  and say which (the "sleep, but wake early when kicked" loop of every background task).
- :class:`Backoff`: exponential backoff with full jitter, a small base and a cap (the retry
  rhythm of dials and reconnects), kept apart from what is retried.
- :func:`run`: run the daemon's main coroutine on uvloop (libuv: socket I/O, timers and
  callbacks in C, about half the loop's CPU per message) when it is installed, which the
  package's dependencies make the normal case; asyncio's own loop otherwise.
- :func:`tune_gc`: fewer, cheaper cyclic garbage collections for a long-running daemon.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any, Generic, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("mn_node.aio")

_RNG = random.Random()


class Signal(Generic[P]):
    """Subscribers called in order of subscription, each isolated from the others' failures."""

    __slots__ = ("_subs", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._subs: list[Callable[P, object]] = []

    def connect(self, fn: Callable[P, object]) -> Callable[P, object]:
        """Subscribe ``fn``; returns it, so this works as a decorator too."""
        self._subs.append(fn)
        return fn

    def disconnect(self, fn: Callable[P, object]) -> None:
        """Unsubscribe ``fn``; unknown subscribers are ignored."""
        try:
            self._subs.remove(fn)
        except ValueError:
            pass

    def emit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Call every subscriber; one that raises is logged and skipped."""
        for fn in list(self._subs):
            try:
                fn(*args, **kwargs)
            except Exception:
                log.exception("subscriber %r of %s failed", fn, self.name)

    def __len__(self) -> int:
        return len(self._subs)


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True if the event was set."""
    if event.is_set():
        return True
    if timeout is not None and timeout <= 0:
        return False
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


class Backoff:
    """Exponential backoff with full jitter: attempt *n* waits uniform(cap_n / 2, cap_n),
    ``cap_n = min(cap, base * 2**n)``. :meth:`reset` after a success."""

    __slots__ = ("_rng", "attempt", "base", "cap")

    def __init__(self, base: float = 0.05, cap: float = 2.0, rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base} cap={cap}")
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or _RNG  # a Random of its own reads os.urandom: not on every store call

    def next_delay(self) -> float:
        """The delay before the next try; counts the attempt."""
        self.attempt += 1
        top = min(self.cap, self.base * 2 ** min(self.attempt, 30))
        return self._rng.uniform(top / 2, top)

    def reset(self) -> None:
        self.attempt = 0


GC_YOUNG = 50_000  # allocations between young collections (Python's default: 700)


def tune_gc() -> None:
    """Every link message, Redis reply and agent state allocates a few objects that die young,
    and with Python's default thresholds a young collection runs every 700 allocations and an
    older one every 10 of those: a fifth of a busy node's CPU went to the collector (measured
    with ``bench.scale``). Objects made before the loop starts (modules, classes, config) are
    frozen, so no collection scans them again; young collections run every ``GC_YOUNG``
    allocations. Cycles are still collected, only later."""
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, max(g1, 20), max(g2, 20))


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
