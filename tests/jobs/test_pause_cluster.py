"""Pause and resume on a real 3-node cluster: nothing is dispatched while a job is paused, the
runs already going finish and count, the pause survives its owner's SIGKILL, cancel still works."""

from __future__ import annotations

from typing import Any

import pytest

from tests.jobs._jobs import (
    BIG,
    agent_states,
    assert_exact_and_no_rerun,
    completed_agents,
    events,
    job,
    leader_name,
    runs,
    submit_with_owner,
    wait_done,
    wait_progress,
)
from tests.support.cluster import Cluster
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

CAP2 = {"MIRROR_NEURON_EXECUTOR_CAPACITY": "2"}
DISPATCHES = ("agent_dispatched", "agent_recovery_started")


def _pause(c: Cluster, job_id: str) -> None:
    res = c.post(c.live()[0].index, f"/api/v1/jobs/{job_id}/pause")
    assert res == {"job_id": job_id, "status": "paused", "previous": "running"}, res


def _settled_while_paused(c: Cluster, job_id: str) -> dict[str, dict[str, Any]]:
    """Wait until the runs that had started at the pause have finished: no agent is dispatched
    with its attempt started (a prefetched run that had not started is refused by claim_start
    and stays dispatched until the resume replays it). Runs on a killed node never finish: they
    are replayed after the resume."""
    live = {n.name for n in c.live()}

    def settled() -> dict[str, dict[str, Any]] | None:
        states, started = agent_states(c, job_id), runs(c, job_id)
        going = [a for a, s in states.items() if s["status"] == "dispatched" and s["node"] in live
                 and started.get(a, 0) >= s["attempt"]]
        return None if going else states

    return wait_until(settled, 30, f"the started runs of paused {job_id} to finish")


def _dispatches_after_pause(c: Cluster, job_id: str) -> list[dict[str, Any]]:
    evs = events(c, job_id)
    paused_at = max(i for i, e in enumerate(evs) if e["type"] == "job_paused")
    resumed = [i for i, e in enumerate(evs) if e["type"] == "job_resumed" and i > paused_at]
    end = resumed[0] if resumed else len(evs)
    return [e for e in evs[paused_at:end] if e["type"] in DISPATCHES]


def test_pause_dispatches_nothing_new_and_resume_completes_exact(make_cluster: Any) -> None:
    c = make_cluster(3, extra_env=CAP2)
    lead = leader_name(c)
    job_id, _ = submit_with_owner(c, BIG, lambda o: o != lead)
    wait_progress(c, job_id, 0.15)
    _pause(c, job_id)
    states = _settled_while_paused(c, job_id)
    pending = [a for a, s in states.items() if s["status"] == "pending" and a.startswith("prime_")]
    assert pending, "the job finished before the pause took hold; make BIG bigger"
    starts = runs(c, job_id)
    assert job(c, job_id)["status"] == "paused"
    assert _dispatches_after_pause(c, job_id) == []
    assert runs(c, job_id) == starts  # still nothing new started
    code, body = c.post_status(c.live()[0].index, f"/api/v1/jobs/{job_id}/pause")
    assert code == 409 and "paused" in body["error"], body
    done_before = completed_agents(c, job_id)
    assert c.post(c.live()[0].index, f"/api/v1/jobs/{job_id}/resume")["status"] == "running"
    j = wait_done(c, job_id)
    assert_exact_and_no_rerun(c, j, BIG, done_before)
    kinds = [e["type"] for e in events(c, job_id)]
    assert kinds.index("job_paused") < kinds.index("job_resumed") < kinds.index("job_completed")


def test_owner_sigkill_while_paused_keeps_it_paused(make_cluster: Any) -> None:
    c = make_cluster(3, extra_env=CAP2)
    lead = leader_name(c)
    job_id, owner = submit_with_owner(c, BIG, lambda o: o != lead)
    wait_progress(c, job_id, 0.15)
    _pause(c, job_id)
    c.kill9(c.node_named(owner).index)

    def recovered() -> dict[str, Any] | None:
        return next((e for e in events(c, job_id) if e["type"] == "job_recovery_started"), None)

    rec = wait_until(recovered, 30, f"a new owner to recover paused {job_id}")
    assert rec["node"] != owner and rec["data"]["paused"] is True, rec
    _settled_while_paused(c, job_id)
    assert job(c, job_id)["status"] == "paused"
    assert _dispatches_after_pause(c, job_id) == []
    done_before = completed_agents(c, job_id)
    assert c.post(c.live()[0].index, f"/api/v1/jobs/{job_id}/resume")["previous"] == "paused"
    j = wait_done(c, job_id)
    assert_exact_and_no_rerun(c, j, BIG, done_before)


def test_cancel_while_paused(make_cluster: Any) -> None:
    c = make_cluster(3, extra_env=CAP2)
    lead = leader_name(c)
    job_id, _ = submit_with_owner(c, BIG, lambda o: o != lead)
    wait_progress(c, job_id, 0.1)
    _pause(c, job_id)
    res = c.post(c.live()[0].index, f"/api/v1/jobs/{job_id}/cancel")
    assert res["previous"] == "paused", res
    assert wait_done(c, job_id)["status"] == "cancelled"
    code, body = c.post_status(c.live()[0].index, f"/api/v1/jobs/{job_id}/resume")
    assert code == 409 and "cancelled" in body["error"], body
