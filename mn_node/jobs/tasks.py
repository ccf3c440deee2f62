"""Executor tasks: entry points in the ``mirror_neuron.tasks`` group, run in a process pool.

A task is ``fn(config: dict, inputs: dict[str, Any]) -> JSON-serialisable``. Built in:
``prime_range`` (counts primes in [start, end)). Operators add tasks by installing a package
that declares entry points in the group. A bundle's ``command`` executors do not go through
here: they run in the command runner (:mod:`mn_node.runners.command`).
"""

from __future__ import annotations

import math
from functools import cache
from importlib.metadata import entry_points
from typing import Any

GROUP = "mirror_neuron.tasks"
EDGE_PRIMES = 25


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    if n % 3 == 0:
        return n == 3
    r = math.isqrt(n)
    f = 5
    while f <= r:
        if n % f == 0 or n % (f + 2) == 0:
            return False
        f += 6
    return True


def primes_in(lo: int, hi: int) -> list[int]:
    """Primes in [lo, hi) by a segmented sieve (fast for wide ranges), else trial division."""
    if hi - lo <= 0:
        return []
    lo = max(lo, 0)
    if hi - lo < 64:
        return [n for n in range(lo, hi) if _is_prime(n)]
    root = math.isqrt(hi - 1) + 1
    base = bytearray([1]) * (root + 1)
    base[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(root) + 1):
        if base[i]:
            base[i * i :: i] = bytearray(len(base[i * i :: i]))
    seg = bytearray([1]) * (hi - lo)
    for p in range(2, root + 1):
        if not base[p]:
            continue
        first = max(p * p, (lo + p - 1) // p * p)
        if first >= hi:
            continue
        seg[first - lo :: p] = bytearray(len(seg[first - lo :: p]))
    for n in range(lo, min(hi, 2)):
        seg[n - lo] = 0
    return [lo + i for i, v in enumerate(seg) if v]


def prime_range(config: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    lo, hi = int(config["start"]), int(config["end"])
    found = primes_in(lo, hi)
    return {
        "start": lo,
        "end": hi,
        "checked": hi - lo,
        "count": len(found),
        "first": found[:EDGE_PRIMES],
        "last": found[-EDGE_PRIMES:],
    }


@cache
def available() -> dict[str, str]:
    """Installed task names -> entry point value."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


@cache
def load(name: str) -> Any:
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            return ep.load()
    raise LookupError(f"no executor task {name!r} installed (entry point group {GROUP})")


def run_task(name: str, config: dict[str, Any], inputs: dict[str, Any]) -> Any:
    """Runs inside a pool process."""
    return load(name)(config, inputs)
