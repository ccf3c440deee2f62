"""Aggregator reducers: pure functions of upstream outputs keyed by agent id.

Keying by agent id is what makes replays harmless: a re-run executor overwrites its own
entry, it never adds a second one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mn_node.jobs.tasks import EDGE_PRIMES

Reducer = Callable[[dict[str, Any], dict[str, str]], Any]


def collect(inputs: dict[str, Any], nodes: dict[str, str]) -> Any:
    return dict(sorted(inputs.items()))


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def prime_collect(inputs: dict[str, Any], nodes: dict[str, str]) -> Any:
    parts = sorted((v for v in inputs.values() if isinstance(v, dict)), key=lambda o: int(o.get("start", 0)))
    first: list[int] = []
    for p in parts:
        if len(first) >= EDGE_PRIMES:
            break
        first += _as_list(p.get("first"))
    last: list[int] = []
    for p in reversed(parts):
        if len(last) >= EDGE_PRIMES:
            break
        last = _as_list(p.get("last")) + last
    per_node: dict[str, int] = {}
    for aid in inputs:
        node = nodes.get(aid, "")
        per_node[node] = per_node.get(node, 0) + 1
    return {
        "prime_count": sum(int(p.get("count", 0)) for p in parts),
        "checked_numbers": sum(int(p.get("checked", 0)) for p in parts),
        "chunks": len(parts),
        "first_primes": first[:EDGE_PRIMES],
        "last_primes": last[-EDGE_PRIMES:],
        "range": [parts[0]["start"], parts[-1]["end"]] if parts else None,
        "per_node_chunks": dict(sorted(per_node.items())),
    }


def prime_summary(inputs: dict[str, Any], nodes: dict[str, str]) -> Any:
    merged: dict[str, Any] = {}
    for v in inputs.values():
        if isinstance(v, dict):
            merged.update(v)
    return merged


REDUCERS: dict[str, Reducer] = {
    "collect": collect,
    "prime_collect": prime_collect,
    "prime_summary": prime_summary,
}
