"""Helpers for mn-tui pilot tests: wait for what the screen shows, with a deadline."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from textual.pilot import Pilot

from mn_tui.panes._base import Table

T = TypeVar("T")


async def wait_screen(pilot: Pilot[Any], cond: Callable[[], T], timeout: float, what: str,
                      interval: float = 0.02) -> T:
    """Let the app run (pilot.pause) until ``cond()`` is truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    err: BaseException | None = None
    while True:
        try:
            last = cond()
            err = None
            if last:
                return last
        except Exception as e:  # a row may not exist yet
            err = e
        if time.monotonic() >= deadline:
            seen = f"last error {err!r}" if err else f"last value {last!r}"
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; {seen}")
        await pilot.pause(interval)


def cell(pilot: Pilot[Any], table_id: str, row_key: str, column: int) -> str:
    return pilot.app.screen.query_one(f"#{table_id}", Table).cell_text(row_key, column)


def column(pilot: Pilot[Any], table_id: str, col: int) -> list[str]:
    t = pilot.app.screen.query_one(f"#{table_id}", Table)
    return [t.cell_text(str(rk.value), col) for rk in t.rows]


def rows(pilot: Pilot[Any], table_id: str) -> list[list[str]]:
    t = pilot.app.screen.query_one(f"#{table_id}", Table)
    return [[t.cell_text(str(rk.value), c) for c in range(len(t.columns))] for rk in t.rows]


class Blackhole:
    """A listening TCP socket that accepts connections and never answers a byte."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)  # never read, never write

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        for c in self.held:
            c.close()
        self.sock.close()
