"""The fault-injection suite in CI: a short nemesis run, the fuzzers, and the checker's
self-test against a deliberately broken daemon (see docs/faults.md).

The namespace runs need root (network namespaces, nft); the fuzzers run anywhere.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from mn_node.errors import DataError
from tests.support.tools import redis_server_missing, requires_tool

pytestmark = pytest.mark.slow

TOOLS = ("ip", "nft", "nsenter")
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t) is None for t in TOOLS),
    reason="fault runs need root and ip/nft/nsenter (network namespaces)",
)

CI_SEED = 20260601
BROKEN_ENV = {"MN_FAULTS_STALL_AT_BEAT": "6", "MN_FAULTS_STALL_S": "4.5"}  # 4.5 s > TTL 2.5 s


def _run(tmp_path: Path, **kw: object):  # type: ignore[no-untyped-def]
    from tests.faults.runner import Options, render, run

    opts = Options(workdir=tmp_path / "run", keep=True, **kw)  # type: ignore[arg-type]
    t0 = time.monotonic()
    res = run(opts)
    print(render(res.summary))
    print(f"(run took {time.monotonic() - t0:.1f} s; history {res.history})")
    return res


@needs_root
@pytest.mark.timeout(420)
def test_ci_fault_run(tmp_path: Path) -> None:
    """Three minutes of the full nemesis over 3 nodes: no violation, several fault types."""
    res = _run(tmp_path, seed=CI_SEED, minutes=3.0, drain_timeout=120.0)
    s = res.summary
    assert res.report.ok, f"violations: {s['violations_by_check']}; history kept at {res.history}"
    kinds = {k for k, v in s["faults"].items() if v > 0}
    assert len(kinds) >= 6, f"only {sorted(kinds)} injected: {s['faults']}"
    assert s["faults_total"] >= 15, s["faults"]
    assert s["jobs"].get("completed", 0) >= 10, s["jobs"]
    assert s["stats"].get("register_entries", 0) > 0 and s["stats"].get("leader_epochs", 0) >= 2, s["stats"]


@pytest.mark.timeout(600)
def test_link_fuzz() -> None:
    """30k inputs over the frame decoder, both handshake sides and secretstream: 6k hypothesis
    examples, each also fed in 4 random mutations."""
    from tests.faults.fuzz import fuzz_link

    out = fuzz_link(30_000, seed_value=CI_SEED, mutations=4)
    print({k: v for k, v in out.items() if k != "crashes"})
    assert out["inputs"] == 30_000 and out["examples"] >= 6_000
    assert not out["crashes"], "\n\n".join(out["crashes"][:3])
    assert all(t["inputs"] > 0 and t["refused"] > 0 for t in out["targets"].values()), out["targets"]


@pytest.mark.timeout(240)
def test_fuzz_http() -> None:
    """Malformed requests on every API route of a live node: 4xx with a reason, never 5xx."""
    from tests.faults.fuzz_http import fuzz_http_standalone

    out = fuzz_http_standalone(seed=CI_SEED, per_route=40)
    for route, st in out["per_route"].items():
        print(f"{route:<40} {st['requests']:>4} {st['status']}")
    assert not out["bad"], "\n".join(out["bad"][:30])
    assert out["routes"] >= 12 and out["node_alive"]
    assert all(st["requests"] >= 60 for st in out["per_route"].values())


@needs_root
@pytest.mark.timeout(150)
def test_broken_fencing_is_caught(tmp_path: Path) -> None:
    """Nodes run through tests/faults/broken_node.py with the fenced-write Lua patched out and
    one stall of the leader between its local check and its write: the stale write lands and
    the checker must name it (fenced_monotonic)."""
    res = _run(tmp_path, seed=CI_SEED, minutes=0.5, faults=(), node_module="tests.faults.broken_node",
               node_env={**BROKEN_ENV, "MN_FAULTS_BREAK_FENCING": "1"}, drain_timeout=60.0)
    by_check = res.summary["violations_by_check"]
    assert by_check.get("fenced_monotonic", 0) >= 1, f"the checker missed the broken fence: {by_check}"
    stale = [v for v in res.report.violations if v.check == "fenced_monotonic"
             and "a stale fenced write was accepted" in v.msg]
    assert stale, [v.msg for v in res.report.violations]
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "run").glob("mn*.log"))
    assert "was ACCEPTED by Redis" in logs


@needs_root
@pytest.mark.timeout(150)
def test_same_stall_with_intact_fencing_is_refused(tmp_path: Path) -> None:
    """The control for the test above: the same stale write with the shipped Lua is refused by
    Redis and the checker finds nothing."""
    res = _run(tmp_path, seed=CI_SEED, minutes=0.5, faults=(), node_module="tests.faults.broken_node",
               node_env=BROKEN_ENV, drain_timeout=60.0)
    assert res.report.ok, res.summary["violations_by_check"]
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "run").glob("mn*.log"))
    assert "refused: FENCED token not current" in logs
    assert "was ACCEPTED by Redis" not in logs


# the acknowledgement self-test: primary_cut only (one node stays with the cut-off primary), a
# submission every 0.5 s so some land on that node while the primary still answers it
BROKEN_ACK_RUN = {"seed": CI_SEED, "minutes": 1.0, "redis": "sentinel", "faults": ("primary_cut",),
                  "max_open_jobs": 10, "submit_interval": 0.5, "drain_timeout": 30.0,
                  "node_env": {"MIRROR_NEURON_REDIS_MIN_ACKS": "2"}}


@requires_tool("ip", "nft", "nsenter", root=True)
@pytest.mark.timeout(300)
def test_broken_acknowledgement_is_caught(tmp_path: Path) -> None:
    """Nodes run through tests/faults/broken_ack.py (no WAIT: the primary's answer is taken as
    done) under Sentinel, and the nemesis cuts the primary off with one node: that node acts
    on writes no replica has, Sentinel promotes a replica, and the checker must name what was
    lost. The intact counterpart (same seed and schedule, shipped daemon) ends with 0
    violations: docs/faults.md gives the command and its output."""
    if why := redis_server_missing():
        pytest.skip(why)
    res = _run(tmp_path, node_module="tests.faults.broken_ack", **BROKEN_ACK_RUN)
    by_check = res.summary["violations_by_check"]
    assert res.summary["failovers_total"] >= 1, res.summary["faults"]
    caught = {c for c in ("lost_job", "lost_ack", "rerun", "leader_per_epoch", "stale_leader", "fenced_monotonic")
              if by_check.get(c, 0)}
    assert caught, f"the checker missed the unacknowledged writes: {by_check}"


# ---- regressions found by fuzz-http (pure, no processes) ---------------------------------------
def test_manifest_ids_of_other_types_are_data_errors() -> None:
    from mn_node.jobs.blueprints import generate
    from mn_node.jobs.manifest import validate

    good = generate("prime_sweep_scale", {"workers": 2, "chunk_size": 50})
    for mutate in (lambda m: m["edges"][0].__setitem__("to_node", {"a": 1}),
                   lambda m: m["edges"][0].__setitem__("from_node", [1]),
                   lambda m: m.__setitem__("entrypoints", [{"x": None}])):
        bad = generate("prime_sweep_scale", {"workers": 2, "chunk_size": 50})
        mutate(bad)
        with pytest.raises(DataError):
            validate(bad)
    assert validate(good).graph_id == "prime_sweep_scale"


def test_blueprint_null_params_take_defaults() -> None:
    from mn_node.jobs.blueprints import generate

    m = generate("prime_sweep_scale", {"start": None, "chunk_size": None, "workers": 2})
    assert m["initial_inputs"]["dispatcher"] == {"start": 1_000_003, "chunk_size": 100, "workers": 2}
