"""Helpers for the runner tests: requests, the process table, a small bundle on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import psutil

from mn_node.runners.base import RunRequest, envelope


def request(config: dict[str, Any], *, bundle: Path | None = None, body: Any = None, job: str = "job1",
            agent: str = "agent1", attempt: int = 1) -> RunRequest:
    return RunRequest(job, agent, config, envelope(job, agent, "test_input", body if body is not None else {"n": 1}),
                      bundle_dir=bundle, attempt=attempt)


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    out = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def describe(procs: list[psutil.Process]) -> str:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid}:{' '.join(p.cmdline())}")
        except psutil.Error:
            out.append(f"{p.pid}:?")
    return ", ".join(out) or "none"


def files_outside(root: Path, inside: Path) -> set[str]:
    """Every path under ``root`` that is not under ``inside``."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p != inside and inside not in p.parents:
                found.add(str(p.relative_to(root)))
    return found


def make_bundle(root: Path, files: dict[str, str], manifest: dict[str, Any] | None = None) -> Path:
    """A bundle folder with ``files`` under ``payloads/`` (mode 755 for *.sh/*.py)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        path = root / "payloads" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if rel.endswith((".sh", ".py")):
            path.chmod(0o755)
    (root / "manifest.json").write_text(json.dumps(manifest or {
        "manifest_version": "1.0", "graph_id": "g", "entrypoints": ["a"],
        "nodes": [{"node_id": "a", "agent_type": "executor", "config": {"command": ["true"]}}]}))
    return root
