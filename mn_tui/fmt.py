"""Short human formats: ages, durations, clock times, progress bars."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text

TimeFn = Callable[[float], time.struct_time]


def dur(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    if s < 172800:
        return f"{s / 3600:.0f}h"
    return f"{s / 86400:.0f}d"


def ago(then: float | None, now: float) -> str:
    if not then:
        return "—"
    return dur(now - then) + " ago"


def clock(ts: float, tfn: TimeFn = time.localtime) -> str:
    return time.strftime("%H:%M:%S", tfn(ts))


def ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.2f} ms" if v < 10 else f"{v:.0f} ms"


def bar(done: int, total: int, width: int = 12) -> str:
    if total <= 0:
        return "·" * width + " —"
    frac = min(1.0, max(0.0, done / total))
    full = int(frac * width)
    return "█" * full + "░" * (width - full) + f" {done}/{total}"


STATUS_STYLE = {
    "up": "bold green", "down": "bold red", "gone": "dim red",
    "ok": "green", "warn": "yellow", "fail": "bold red",
    "running": "bold cyan", "pending": "yellow", "paused": "bold yellow", "completed": "green", "failed": "bold red",
    "cancelled": "dim", "conflict": "bold red", "stale": "bold yellow", "unknown": "yellow",
    "free": "dim",
}


def status(s: str, label: str | None = None) -> Text:
    return Text(label or s.upper() if s in ("down", "gone", "fail", "conflict") else label or s,
                style=STATUS_STYLE.get(s, ""))
