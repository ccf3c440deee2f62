"""Helpers for bundle jobs against a real cluster: write a bundle, pack and store it, submit it
through ``submit_job`` (the write path the API and ``mn run`` use), look at its processes."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from mn_node.bundles.archive import pack
from mn_node.bundles.store import put_bundle
from mn_node.jobs.submit import submit_job
from mn_node.store import Store
from tests.support.cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "examples" / "prime_sweep" / "generate.py"

# sleeps argv[1] seconds, then runs the rest of argv in its place
SLOW = "import os, sys, time\ntime.sleep(float(sys.argv[1]))\nos.execvp(sys.argv[2], sys.argv[2:])\n"


def prime_bundle(out: Path, workers: int, *, slow_s: float = 0.0, extra: list[str] | None = None) -> Path:
    """The example prime sweep bundle; with ``slow_s`` each worker sleeps that long first."""
    subprocess.run([sys.executable, str(GENERATE), "--workers", str(workers), "--start", "1000003",
                    "--out", str(out), *(extra or [])], check=True, capture_output=True)
    if slow_s:
        (out / "payloads" / "prime_worker" / "scripts" / "slow.py").write_text(SLOW)
        m = json.loads((out / "manifest.json").read_text())
        for node in m["nodes"]:
            if node["node_id"].startswith("prime_worker_"):
                node["config"]["command"] = ["python3", "scripts/slow.py", str(slow_s), *node["config"]["command"]]
        (out / "manifest.json").write_text(json.dumps(m, indent=2))
    return out


def one_command_bundle(out: Path, command: Any, **config: Any) -> Path:
    """dispatcher (router) -> work (executor running ``command``); the job's result is work's output."""
    if out.exists():
        shutil.rmtree(out)
    (out / "payloads").mkdir(parents=True)
    manifest = {
        "manifest_version": "1.0", "graph_id": "one_command", "entrypoints": ["dispatcher"],
        "initial_inputs": {"dispatcher": [{"hello": "world"}]},
        "nodes": [
            {"node_id": "dispatcher", "agent_type": "router", "config": {"emit_type": "go"}},
            {"node_id": "work", "agent_type": "executor", "config": {"command": command, **config}},
        ],
        "edges": [{"edge_id": "e1", "from_node": "dispatcher", "to_node": "work", "message_type": "go"}],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def fan_out_bundle(out: Path, n: int, command: Any, **config: Any) -> Path:
    """dispatcher -> n executors ``w1..wn`` running ``command`` -> collector (completes the job)."""
    if out.exists():
        shutil.rmtree(out)
    (out / "payloads").mkdir(parents=True)
    nodes: list[dict[str, Any]] = [{"node_id": "dispatcher", "agent_type": "router", "config": {"emit_type": "go"}},
                                   {"node_id": "collector", "agent_type": "aggregator",
                                    "config": {"complete_after": n}}]
    edges = []
    for i in range(1, n + 1):
        nodes.append({"node_id": f"w{i}", "agent_type": "executor",
                      "config": {"command": command, "output_message_type": "done", **config}})
        edges += [{"edge_id": f"d{i}", "from_node": "dispatcher", "to_node": f"w{i}", "message_type": "go"},
                  {"edge_id": f"c{i}", "from_node": f"w{i}", "to_node": "collector", "message_type": "done"}]
    manifest = {"manifest_version": "1.0", "graph_id": f"fan_out_{n}", "entrypoints": ["dispatcher"],
                "initial_inputs": {"dispatcher": [{}]}, "nodes": nodes, "edges": edges}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


async def _submit(c: Cluster, folder: Path) -> str:
    data, sha = pack(folder)
    store = Store(c.redis_url, c.namespace)
    try:
        await put_bundle(store, data, sha)
        raw = json.loads((folder / "manifest.json").read_text())
        return (await submit_job(store, raw, bundle_sha=sha, node="tests"))["job_id"]
    finally:
        await store.close()


def submit_bundle(c: Cluster, folder: Path) -> str:
    return asyncio.run(_submit(c, folder))


def attempts(c: Cluster, job_id: str) -> dict[str, dict[str, Any]]:
    from tests.jobs._jobs import rclient

    return {k: json.loads(v) for k, v in rclient(c).hgetall(f"{c.namespace}:job:{job_id}:attempts").items()}


def procs_with(marker: str) -> list[psutil.Process]:
    """Live processes whose command line contains ``marker``."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or []):
                out.append(p)
        except psutil.Error:
            continue
    return out


def procs_under(folder: Path) -> list[psutil.Process]:
    """Live processes whose working directory is inside ``folder``."""
    out = []
    prefix = str(folder.resolve())
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and p.cwd().startswith(prefix):
                out.append(p)
        except psutil.Error:
            continue
    return out
