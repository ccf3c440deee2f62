"""bench/commands.py (``python3 -m bench.commands``): its xargs half, its arguments, and a small
run of both halves against real nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.commands import json_objects, overheads

ROOT = Path(__file__).resolve().parents[1]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.commands", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_xargs_half_runs_the_bundles_commands(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    p = bench("--executors", "12", "--nodes", "2", "--slots", "2", "--xargs-only", "--json-out", str(out))
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res == json.loads(out.read_text())
    assert res["xargs"]["commands"] == 12 and res["xargs"]["slots"] == 4
    expected = sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(1_000_003, 1_001_203))
    assert res["xargs"]["prime_count"] == expected  # 12 chunks of 100 from 1000003
    assert res["xargs"]["command_alone_ms"]["n"] == 12
    assert "xargs -P 4 (12 commands)" in p.stderr


@pytest.mark.slow
def test_small_run_of_both_halves_counts_the_same_primes() -> None:
    p = bench("--executors", "6", "--nodes", "2", "--slots", "1")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    expected = sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(1_000_003, 1_000_603))
    cl = res["cluster"]
    assert cl["ok"] and cl["status"] == "completed" and cl["prime_count"] == expected, cl
    assert res["exact"] is True and res["xargs"]["prime_count"] == expected
    assert sum(cl["per_node"].values()) == 7 and len(cl["per_node"]) <= 2, cl  # 6 workers + the aggregator
    assert res["attempt_records"] == 7 and res["start_overhead_ms"]["n"] == 6, res
    assert "prime_count cluster vs xargs" in p.stderr and "equal" in p.stderr


def test_arguments_are_checked() -> None:
    p = bench("--executors", "0")
    assert p.returncode == 2 and "--executors 1-10000" in p.stderr
    p = bench("--nodes", "x")
    assert p.returncode == 2


def test_overheads_from_attempt_records() -> None:
    recs = [{"agent": f"prime_worker_{i:04d}", "started_ms": 1000, "finished_ms": 1000 + 60 + i, "duration_ms": 50}
            for i in range(10)]
    recs.append({"agent": "summarizer", "started_ms": 0, "finished_ms": 10_000})  # not a worker: left out
    recs.append({"agent": "prime_worker_0099"})  # a sparse record: no figures from it
    ov = overheads(recs, 55.0)
    assert ov["start_overhead_ms"]["n"] == 10 and ov["start_overhead_ms"]["min"] == 5.0
    assert ov["runner_share_ms"]["p50"] == 14.0


def test_concatenated_outputs_are_split() -> None:
    assert json_objects('{"a": 1}{"b": 2}\n\n{"c": 3}\n') == [{"a": 1}, {"b": 2}, {"c": 3}]
