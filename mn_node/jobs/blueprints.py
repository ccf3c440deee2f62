"""Blueprints generate manifests. Built in: ``prime_sweep_scale``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mn_node.bundles.manifest import MAX_AGENTS
from mn_node.errors import DataError

DEFAULT_START = 1_000_003
FIXED_AGENTS = 3  # dispatcher, collector, summarizer
MAX_WORKERS = MAX_AGENTS - FIXED_AGENTS  # the whole job stays within the per-job agent limit


def _int_param(params: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    v = params.get(name)
    if v is None:  # absent or null: the default
        v = default
    if v is None:
        return None
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise DataError(f"params.{name}: {v!r} is not an integer {lo}-{hi}; fix: pass --{name.replace('_', '-')} N")
    return v


def prime_sweep_scale(params: dict[str, Any]) -> dict[str, Any]:
    """dispatcher -> N prime workers -> collector -> summarizer.

    Worker k checks [start + k*chunk, start + (k+1)*chunk), clipped at ``end`` (inclusive)
    when given. With ``end`` and no ``workers``, the worker count covers the range.
    """
    unknown = set(params) - {"workers", "start", "chunk_size", "end"}
    if unknown:
        raise DataError(f"params.{sorted(unknown)[0]}: unknown parameter; fix: use workers, start, chunk_size, end")
    start = _int_param(params, "start", DEFAULT_START, 0, 10**15)
    chunk = _int_param(params, "chunk_size", 100, 1, 10**9)
    end = _int_param(params, "end", None, 0, 10**15)
    assert start is not None and chunk is not None
    workers = _int_param(params, "workers", None, 1, MAX_WORKERS)
    if end is not None and end < start:
        raise DataError(f"params.end: {end} is below start {start}; fix: pass --end >= --start")
    if workers is None:
        workers = 4 if end is None else max(1, -(-(end - start + 1) // chunk))
        if workers > MAX_WORKERS:
            raise DataError(f"params.end: the range needs {workers} workers of {chunk} numbers, over the limit of "
                            f"{MAX_WORKERS}; fix: raise --chunk-size or lower --end")
    nodes: list[dict[str, Any]] = [{"node_id": "dispatcher", "agent_type": "router", "config": {}}]
    edges: list[dict[str, Any]] = []
    for k in range(workers):
        lo = start + k * chunk
        hi = lo + chunk  # exclusive
        if end is not None:
            hi = min(hi, end + 1)
        if hi <= lo:
            raise DataError(
                f"params.workers: {workers} workers of {chunk} numbers overrun end {end}; fix: lower --workers"
            )
        wid = f"prime_worker_{k + 1:04d}"
        nodes.append({"node_id": wid, "agent_type": "executor",
                      "config": {"task": "prime_range", "start": lo, "end": hi}})
        edges.append({"from_node": "dispatcher", "to_node": wid, "message_type": "range", "routing_mode": "broadcast"})
        edges.append({"from_node": wid, "to_node": "collector", "message_type": "primes", "routing_mode": "direct"})
    nodes.append({"node_id": "collector", "agent_type": "aggregator", "config": {"reduce": "prime_collect"}})
    nodes.append({"node_id": "summarizer", "agent_type": "aggregator", "config": {"reduce": "prime_summary"}})
    edges.append({"from_node": "collector", "to_node": "summarizer", "message_type": "collected",
                  "routing_mode": "direct"})
    return {
        "manifest_version": "1.0",
        "graph_id": "prime_sweep_scale",
        "job_name": f"prime_sweep_scale x{workers}",
        "nodes": nodes,
        "edges": edges,
        "entrypoints": ["dispatcher"],
        "initial_inputs": {"dispatcher": {"start": start, "chunk_size": chunk, "workers": workers}},
        "policies": {"recovery_mode": "cluster_recover", "max_agent_restart_attempts": 3},
    }


BLUEPRINTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "prime_sweep_scale": prime_sweep_scale,
}


def generate(name: str, params: dict[str, Any]) -> dict[str, Any]:
    fn = BLUEPRINTS.get(name)
    if fn is None:
        raise DataError(f"blueprint: unknown blueprint {name!r}; fix: use one of {', '.join(sorted(BLUEPRINTS))}")
    if not isinstance(params, dict):
        raise DataError("params: is not an object; fix: send params as a JSON object")
    return fn(params)
