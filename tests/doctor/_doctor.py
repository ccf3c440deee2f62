"""Run `mn doctor` as an operator would: a separate process, config from an env file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.cluster import Cluster, NodeProc


@dataclass
class DoctorRun:
    code: int
    out: str
    err: str
    seconds: float
    doc: dict[str, Any] | None = None

    def check(self, name: str) -> dict[str, Any]:
        assert self.doc is not None, "run with json=True"
        for c in self.doc["checks"]:
            if c["name"] == name:
                return dict(c)
        raise AssertionError(f"no check {name!r} in {[c['name'] for c in self.doc['checks']]}")

    def statuses(self) -> dict[str, str]:
        assert self.doc is not None
        return {c["name"]: c["status"] for c in self.doc["checks"]}


def write_env_file(path: Path, env: dict[str, str]) -> Path:
    lines = [f"{k}={v}" for k, v in sorted(env.items()) if k.startswith("MIRROR_NEURON_")]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def env_file_for(c: Cluster, node: NodeProc, **overrides: str) -> Path:
    env = node.env or c.env_for(node)
    env = {**env, **overrides}
    return write_env_file(c.workdir / f"{node.name.split('@')[0]}-doctor.env", env)


def run_doctor(env_file: Path | None, *args: str, json_out: bool = True, timeout: float = 30.0,
               extra_env: dict[str, str] | None = None) -> DoctorRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")}
    env.update(extra_env or {})
    argv = [sys.executable, "-m", "mn_node.cli", "doctor"]
    if env_file is not None:
        argv += ["--env-file", str(env_file)]
    argv += list(args)
    if json_out:
        argv.append("--json")
    t0 = time.monotonic()
    p = subprocess.run(argv, env=env, capture_output=True, timeout=timeout)
    dt = time.monotonic() - t0
    out, err = p.stdout.decode(), p.stderr.decode()
    doc = json.loads(out) if json_out and out.strip().startswith("{") else None
    return DoctorRun(p.returncode, out, err, dt, doc)
