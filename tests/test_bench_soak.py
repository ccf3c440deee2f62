"""bench/soak.py (``python3 -m bench.soak``) in small: 30 jobs with a 2 s retention on 3 real nodes
and a real redis-server; its JSON, its table, and what it asserts."""

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
def soak() -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    p = subprocess.run([sys.executable, "-m", "bench.soak", "--jobs", "30", "--retention", "2s", "--nodes", "3",
                        "--window", "15", "--deadline", "20", "--client-idle", "3"],
                       capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert p.stdout, p.stderr
    return p, json.loads(p.stdout)


def test_every_job_ends_and_the_numbers_are_reported(soak: tuple[subprocess.CompletedProcess[str], Any]) -> None:
    p, res = soak
    assert "error" not in res, res.get("error")
    assert res["run"]["status_counts"] == {"completed": 30}, res["run"]
    assert res["before"]["memory"]["used_memory"] > 0
    assert res["run"]["peak"]["used_memory"] > res["before"]["memory"]["used_memory"]
    assert res["at_end"]["job_keys"]["jobs_sampled"] > 0 and res["at_end"]["job_keys"]["total"] > 0
    assert "bytes per live terminal job" in p.stderr and "keys after retention, before any SCAN" in p.stderr
    # both readings settled: Redis closed the connections idle past --client-idle, the slow log was emptied
    for reading in (res["before"], res["after"]):
        assert "unsettled" not in reading["settle"], reading["settle"]
        assert reading["memory"]["slowlog"]["entries"] >= 0 and "commands_run" in reading["memory"]
    assert set(res["verdict"]["delta_in"]) == {"cluster_keys", "clients", "rest"}, res["verdict"]


def test_no_key_of_an_expired_job_is_left(soak: tuple[subprocess.CompletedProcess[str], Any]) -> None:
    left = soak[1]["after"]["leftovers"]
    assert left["keys"] == 0 and left["bundle_keys"] == 0, left
    assert left["index"]["jobs:active"] == 0, left


def test_the_job_indexes_keep_no_expired_id(soak: tuple[subprocess.CompletedProcess[str], Any]) -> None:
    """The leader trims ``{ns}:jobs`` and ``{ns}:jobs:expiry`` (placement's index sweep), so the ids
    of jobs whose keys expired after the last job do not stay behind. Memory against the
    pre-soak level is the bench's verdict (``python3 -m bench.soak``), not asserted here."""
    res = soak[1]
    left = res["after"]["leftovers"]
    assert left["index"]["jobs"] == 0 and left["index"]["jobs:expiry"] == 0, left
    assert res["verdict"]["no_expired_job_left"], left
