#!/usr/bin/env python3
"""Write a prime sweep job bundle in MirrorNeuron's manifest format.

    python3 examples/prime_sweep/generate.py --workers 4 --start 1000003 --out /tmp/ps4
    mn validate /tmp/ps4 && mn run /tmp/ps4 --wait

Graph: ``dispatcher`` (router) -> ``prime_worker_NNNN`` (executors, one inclusive range of
``--chunk-size`` numbers each) -> ``collector`` (aggregator, completes after all workers) ->
``summarizer`` (executor printing ``{"complete_job": {... "prime_count" ...}}``).
4 workers from 1000003 find 32 primes; 60 workers find 441.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def chunks(start: int, workers: int, size: int) -> list[tuple[int, int]]:
    return [(start + i * size, start + (i + 1) * size - 1) for i in range(workers)]


def worker(index: int, lo: int, hi: int, args: argparse.Namespace) -> dict[str, Any]:
    node_id = f"prime_worker_{index:04d}"
    return {
        "node_id": node_id,
        "agent_type": "executor",
        "type": "map",
        "config": {
            "upload_path": "prime_worker",
            "upload_as": "prime_worker",
            "workdir": "/sandbox/job/prime_worker",
            "command": ["python3", "scripts/check_prime_range.py", node_id, str(lo), str(hi)],
            "pool": "default",
            "pool_slots": 1,
            "output_message_type": "prime_chunk_result",
            "startup_delay_ms": ((index - 1) // args.wave_size) * args.wave_delay_ms,
            "max_attempts": args.max_attempts,
            "retry_backoff_ms": args.retry_backoff_ms,
            "timeout_seconds": args.timeout_seconds,
        },
    }


def manifest(args: argparse.Namespace) -> dict[str, Any]:
    ranges = chunks(args.start, args.workers, args.chunk_size)
    n = len(ranges)
    nodes: list[dict[str, Any]] = [
        {"node_id": "dispatcher", "agent_type": "router", "type": "map", "role": "root_coordinator",
         "config": {"emit_type": "prime_chunk_request"}},
        {"node_id": "collector", "agent_type": "aggregator", "type": "reduce",
         "config": {"complete_after": n, "output_message_type": "prime_chunk_collection"}},
        {"node_id": "summarizer", "agent_type": "executor", "type": "reduce",
         "config": {"upload_path": "summary_worker", "upload_as": "summary_worker",
                    "workdir": "/sandbox/job/summary_worker",
                    "command": ["python3", "scripts/summarize_prime_sweep.py"],
                    "output_message_type": None, "timeout_seconds": args.timeout_seconds}},
    ]
    edges: list[dict[str, Any]] = []
    for i, (lo, hi) in enumerate(ranges, start=1):
        node = worker(i, lo, hi, args)
        nodes.append(node)
        wid = node["node_id"]
        edges.append({"edge_id": f"dispatch_{wid}", "from_node": "dispatcher", "to_node": wid,
                      "message_type": "prime_chunk_request"})
        edges.append({"edge_id": f"{wid}_to_collector", "from_node": wid, "to_node": "collector",
                      "message_type": "prime_chunk_result"})
    edges.append({"edge_id": "collector_to_summarizer", "from_node": "collector", "to_node": "summarizer",
                  "message_type": "prime_chunk_collection"})
    return {
        "manifest_version": "1.0",
        "graph_id": f"prime_sweep_{n}_workers",
        "job_name": f"prime-sweep-{n}-workers",
        "entrypoints": ["dispatcher"],
        "initial_inputs": {"dispatcher": [{
            "benchmark": "prime_sweep", "worker_count": n, "requested_workers": args.workers,
            "chunk_size": args.chunk_size, "range_start": ranges[0][0], "range_end": ranges[-1][1],
        }]},
        "nodes": nodes,
        "edges": edges,
        "policies": {"recovery_mode": "cluster_recover"},
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=4, help="executor agents (default 4)")
    p.add_argument("--start", type=int, default=1_000_003, help="first number (default 1000003)")
    p.add_argument("--chunk-size", type=int, default=100, help="numbers per worker (default 100)")
    p.add_argument("--wave-size", type=int, default=25, help="workers per launch wave (default 25)")
    p.add_argument("--wave-delay-ms", type=int, default=0, help="delay between launch waves (default 0)")
    p.add_argument("--max-attempts", type=int, default=2, help="tries per worker (default 2)")
    p.add_argument("--retry-backoff-ms", type=int, default=500, help="first retry backoff (default 500)")
    p.add_argument("--timeout-seconds", type=float, default=300, help="per try (default 300)")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write (replaced if it exists)")
    args = p.parse_args(argv)
    if args.workers < 1 or args.chunk_size < 1 or args.wave_size < 1 or args.max_attempts < 1:
        p.error("--workers, --chunk-size, --wave-size and --max-attempts must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out: Path = args.out
    if out.exists():
        if not (out / "manifest.json").is_file():
            print(f"{out} exists and is not a bundle; fix: choose another --out", file=sys.stderr)
            return 64
        shutil.rmtree(out)
    shutil.copytree(HERE / "payloads", out / "payloads",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (out / "manifest.json").write_text(json.dumps(manifest(args), indent=2) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
