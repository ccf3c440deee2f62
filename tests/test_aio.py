"""The shared asyncio idioms: Signal isolation, wait_event, Backoff bounds."""

from __future__ import annotations

import asyncio
import gc
import logging
import random

import pytest

from mn_node.aio import GC_YOUNG, Backoff, Signal, run, tune_gc, wait_event


def test_signal_calls_all_subscribers_in_order() -> None:
    seen: list[tuple[str, int]] = []
    sig: Signal[[int]] = Signal("numbers")
    sig.connect(lambda n: seen.append(("a", n)))
    sig.connect(lambda n: seen.append(("b", n)))
    sig.emit(7)
    assert seen == [("a", 7), ("b", 7)]


def test_failing_subscriber_does_not_break_publisher_or_others(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []
    sig: Signal[[int]] = Signal("lease lost")

    def bad(n: int) -> None:
        raise RuntimeError("boom")

    sig.connect(bad)
    sig.connect(seen.append)
    with caplog.at_level(logging.ERROR, logger="mn_node.aio"):
        sig.emit(3)
    assert seen == [3]
    assert "lease lost" in caplog.text and "boom" in caplog.text


def test_disconnect_and_unknown_disconnect() -> None:
    seen: list[int] = []
    sig: Signal[[int]] = Signal("x")
    sig.connect(seen.append)
    sig.disconnect(seen.append)
    sig.disconnect(print)  # not subscribed: ignored
    sig.emit(1)
    assert seen == [] and len(sig) == 0


def test_subscriber_may_disconnect_itself_during_emit() -> None:
    seen: list[int] = []
    sig: Signal[[int]] = Signal("x")

    def once(n: int) -> None:
        seen.append(n)
        sig.disconnect(once)

    sig.connect(once)
    sig.connect(seen.append)
    sig.emit(1)
    sig.emit(2)
    assert seen == [1, 1, 2]


async def test_wait_event_set_and_timeout() -> None:
    ev = asyncio.Event()
    assert await wait_event(ev, 0.01) is False
    asyncio.get_running_loop().call_soon(ev.set)
    assert await wait_event(ev, 5.0) is True
    assert await wait_event(ev, 0) is True  # already set wins over a zero timeout


def test_backoff_grows_to_cap_with_jitter_and_resets() -> None:
    b = Backoff(0.05, 2.0, random.Random(1))
    delays = [b.next_delay() for _ in range(12)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(d <= 2.0 for d in delays)
    assert delays[-1] >= 1.0
    b.reset()
    assert b.next_delay() <= 0.1


def test_backoff_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(0, 1)


def test_tune_gc_freezes_what_exists_and_collects_young_objects_less_often() -> None:
    old = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold()[0] == GC_YOUNG and gc.get_freeze_count() > 0
        cycle: list[object] = []
        cycle.append(cycle)  # a cycle made now is still collected
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*old)


def test_run_uses_uvloop_when_installed() -> None:
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(loop_module()).startswith("uvloop")
