"""Polling with a deadline: the only way tests wait for a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(fn: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``fn`` until it returns something truthy; on timeout fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    err: BaseException | None = None
    while True:
        try:
            last = fn()
            err = None
            if last:
                return last
        except Exception as e:  # the condition may raise while the system settles
            err = e
        if time.monotonic() >= deadline:
            seen = f"last error {err!r}" if err else f"last value {last!r}"
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; {seen}")
        time.sleep(interval)


async def async_wait_until(
    fn: Callable[[], Awaitable[T]], timeout: float, what: str, interval: float = 0.05
) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    err: BaseException | None = None
    while True:
        try:
            last = await fn()
            err = None
            if last:
                return last
        except Exception as e:
            err = e
        if time.monotonic() >= deadline:
            seen = f"last error {err!r}" if err else f"last value {last!r}"
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; {seen}")
        await asyncio.sleep(interval)
