"""bench/scale.py (``python3 -m bench.scale``) in small (--quick): jobs of 203 and 1,003 tiny
agents, 30 jobs of 20 agents and an owner SIGKILL at 50 % of 2,003 agents, on 3 real nodes and a real
redis-server. Checked: the JSON's shape and that every count is exact, never the timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scale() -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    p = subprocess.run([sys.executable, "-m", "bench.scale", "--quick", "--capacity", "1", "--timeout", "240"],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert p.returncode == 0 and p.stdout, p.stderr[-3000:]
    return p, json.loads(p.stdout)


def test_every_job_size_is_reported_and_exact(scale: tuple[subprocess.CompletedProcess[str], Any]) -> None:
    p, res = scale
    assert [j["agents"] for j in res["jobs"]] == [203, 1003]
    for j in res["jobs"]:
        assert j["status"] == "completed" and j["exact"] and j["prime_count"] == j["expected"] > 0, j
        assert j["agents_done"] == j["agents"] and j["agents_per_s"] > 0 and j["pool"]["tasks_per_s"] > 0
        assert j["cpu_ms_per_agent"]["nodes"] > 0 and j["cpu_ms_per_agent"]["total"] > 0, j
    big = res["jobs"][-1]
    assert big["redis"]["used_memory_delta"] > 0 and big["redis"]["key_bytes"]["agents"] > 0
    assert big["owner_vm_hwm_mb"] > 0
    assert res["flatness"]["from"] == 203 and res["flatness"]["to"] == 1003 and res["flatness"]["s_per_agent_ratio"] > 0
    assert res["pool_procs"] == 3 and "agents/s" in p.stderr and "time per agent" in p.stderr


def test_small_jobs_all_finish_exact(scale: tuple[subprocess.CompletedProcess[str], Any]) -> None:
    s = scale[1]["small_jobs"]
    assert s["jobs"] == 30 and s["agents_per_job"] == 20 and s["finished"] == 30 and s["exact"], s
    assert s["jobs_per_s"] > 0
    cpu = s["cpu_ms_per_job"]
    assert cpu["nodes"] > 0 and cpu["redis"] > 0 and cpu["bench"] > 0, cpu
    assert abs(cpu["total"] - sum(cpu[k] for k in ("nodes", "pools", "redis", "bench"))) < 0.01, cpu
    assert "CPU per small job" in scale[0].stderr


def test_owner_kill_recovers_with_the_exact_count(scale: tuple[subprocess.CompletedProcess[str], Any]) -> None:
    k = scale[1]["owner_kill"]
    assert k["reached_half"] and k["new_owner"] != k["victim"], k
    assert k["status"] == "completed" and k["exact"] and k["recovery_s"] >= k["lease_taken_s"] > 0, k
