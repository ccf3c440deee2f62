"""The checker's ``lost_ack`` invariant on hand-made histories (pure: no processes)."""

from __future__ import annotations

from typing import Any

from tests.faults import checker


def _obs(t: float, status: str, completed: list[str]) -> dict[str, Any]:
    return {"k": "jobobs", "t": t, "job": "j1", "t0": t, "t1": t + 0.001, "status": status, "epoch": 1,
            "fence": 1, "owner": "n1", "done": len(completed), "completed": completed,
            "runs": {a: 1 for a in completed}, "lease": None}


def _final(status: str, completed: list[str]) -> dict[str, Any]:
    job = {"status": status, "error": None, "owner": "n1", "epoch": 1, "fence": 1, "agents_done": len(completed),
           "lease": None, "request": {"params": {"start": 1000, "workers": 2, "chunk_size": 1}},
           "result": None, "completed": completed, "executors": ["prime_1", "prime_2"],
           "runs": {a: 1 for a in completed}}
    return {"k": "final", "t": 99.0, "leader_history": [], "leader_events": [], "jobs": {"j1": job}}


def test_a_stored_result_missing_at_the_end_is_lost_ack() -> None:
    rep = checker.check([_obs(1.0, "running", ["prime_1"]), _final("running", [])])
    assert [v.check for v in rep.violations if v.check == "lost_ack"] == ["lost_ack"]
    assert "prime_1" in next(v.msg for v in rep.violations if v.check == "lost_ack")


def test_a_completed_job_that_ends_otherwise_is_lost_ack() -> None:
    rep = checker.check([_obs(1.0, "completed", ["prime_1", "prime_2"]), _final("running", ["prime_1", "prime_2"])])
    assert "lost_ack" in rep.by_check()


def test_kept_results_are_no_violation() -> None:
    rep = checker.check([_obs(1.0, "running", ["prime_1"]), _final("running", ["prime_1", "prime_2"])])
    assert "lost_ack" not in rep.by_check()
