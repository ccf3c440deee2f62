"""The example bundles, run end to end through the command runner on this machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mn_node.bundles import pack, validate_bundle
from mn_node.runners.command import CommandRunner
from tests.runners.graph import run_bundle

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "examples" / "prime_sweep" / "generate.py"


def generate(out: Path, workers: int) -> Path:
    subprocess.run([sys.executable, str(GENERATE), "--workers", str(workers), "--start", "1000003",
                    "--out", str(out)], check=True, capture_output=True)
    return out


@pytest.mark.parametrize(("workers", "primes"), [(4, 32), pytest.param(60, 441, marks=pytest.mark.slow)])
async def test_prime_sweep_bundle(tmp_path: Path, workers: int, primes: int) -> None:
    bundle = generate(tmp_path / "bundle", workers)
    v = validate_bundle(bundle)
    assert v.ok and v.warnings == [], v.to_json()
    assert v.manifest is not None and v.manifest["graph_id"] == f"prime_sweep_{workers}_workers"
    out = await run_bundle(bundle, CommandRunner(tmp_path / "scratch"), parallel=4)
    result = out["result"]
    assert result["prime_count"] == primes and result["worker_count"] == workers
    assert result["range_start"] == 1000003 and result["range_end"] == 1000003 + 100 * workers - 1
    assert result["checked_numbers"] == 100 * workers
    assert all(n == 1 for n in out["starts"].values()) and len(out["starts"]) == workers + 1


def test_generator_is_deterministic(tmp_path: Path) -> None:
    a = pack(generate(tmp_path / "a", 4))[1]
    b = pack(generate(tmp_path / "b", 4))[1]
    assert a == b


async def test_wordcount_bundle(tmp_path: Path) -> None:
    bundle = ROOT / "examples" / "wordcount"
    out = await run_bundle(bundle, CommandRunner(tmp_path / "scratch"))
    result = out["result"]
    assert result["mode"] == "wordcount" and len(result["files"]) == 3
    assert result["total_words"] == sum(result["files"].values()) > 100
    assert result["top_10"][0][0] == "the"
