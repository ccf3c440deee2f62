"""Shared helpers for the benchmarks: percentiles, a plain table, JSON output, process hygiene."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": min(values) if values else math.nan,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


def table(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def emit(result: dict[str, Any], table_text: str, json_path: str | None) -> None:
    """Table to stderr (for people), JSON to stdout (for machines) and optionally a file."""
    print(table_text, file=sys.stderr)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if json_path:
        with open(json_path, "w") as f:
            f.write(text + "\n")


def loopback_prefix() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"


def end(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """End a process this benchmark started (by its pid), politely then firmly."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
