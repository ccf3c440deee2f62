"""Jobs across a real 3-node cluster: exact answers, failover that resumes, cancel."""

from __future__ import annotations

import signal

import pytest

from tests.jobs._jobs import (
    BIG,
    assert_exact_and_no_rerun,
    completed_agents,
    events,
    job,
    leader_name,
    rclient,
    runs,
    submit,
    submit_with_owner,
    wait_done,
    wait_progress,
)
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

CAP2 = {"MIRROR_NEURON_EXECUTOR_CAPACITY": "2"}


def types(evs):
    return [e["type"] for e in evs]


@pytest.mark.parametrize(("workers", "expected"), [(4, 32), (60, 441)])
def test_known_answers_spread_over_all_nodes(make_cluster, workers, expected):
    c = make_cluster(3, extra_env=CAP2)
    c.wait_leader()
    j = submit(c, {"workers": workers, "start": 1000003})
    done = wait_done(c, j["job_id"])
    assert done["status"] == "completed", done
    assert done["result"]["prime_count"] == expected
    assert done["result"]["chunks"] == workers
    if workers == 60:
        assert set(done["nodes"]) == {n.name for n in c.nodes}, done["nodes"]
        assert sum(done["nodes"].values()) == 60
    assert all(v == 1 for v in runs(c, j["job_id"]).values())
    evs = types(events(c, j["job_id"]))
    assert evs[:4] == ["job_pending", "job_validated", "job_scheduled", "job_running"]
    assert evs[-1] == "job_completed"


def _kill_mid_run(c, job_id, victim_index, sig=signal.SIGKILL):
    wait_progress(c, job_id, 0.15)
    done_before = completed_agents(c, job_id)
    if sig == signal.SIGKILL:
        c.kill9(victim_index)
    else:
        c.signal(victim_index, sig)
    return done_before


def _recovered(c, job_id, old_owner, same_name_may_return=False):
    evs = events(c, job_id)
    kinds = types(evs)
    assert "job_recovery_started" in kinds and "job_recovered" in kinds, kinds
    rec = next(e for e in evs if e["type"] == "job_recovery_started")
    assert rec["data"]["previous_owner"] == old_owner
    if not same_name_may_return:
        assert rec["node"] != old_owner
    assert rec["epoch"] > rec["data"]["previous_epoch"]
    return evs


def test_sigkill_of_owner_that_is_not_leader(make_cluster):
    c = make_cluster(3, extra_env=CAP2)
    lead = leader_name(c)
    job_id, owner = submit_with_owner(c, BIG, lambda o: o != lead)
    done_before = _kill_mid_run(c, job_id, c.node_named(owner).index)
    j = wait_done(c, job_id)
    assert_exact_and_no_rerun(c, j, BIG, done_before)
    _recovered(c, job_id, owner)


def test_sigkill_of_node_that_is_leader_and_owner(make_cluster):
    c = make_cluster(3, extra_env=CAP2)
    lead = leader_name(c)
    job_id, owner = submit_with_owner(c, BIG, lambda o: o == lead)
    done_before = _kill_mid_run(c, job_id, c.node_named(owner).index)
    j = wait_done(c, job_id)
    assert_exact_and_no_rerun(c, j, BIG, done_before)
    _recovered(c, job_id, owner)
    assert c.wait_leader(exclude=lead)["node"] != lead


def test_sigkill_of_a_node_only_running_executors(make_cluster):
    c = make_cluster(3, extra_env=CAP2)
    lead = leader_name(c)
    job_id, owner = submit_with_owner(c, BIG, lambda o: o != lead)
    worker = next(n for n in c.nodes if n.name not in (owner, lead))
    done_before = _kill_mid_run(c, job_id, worker.index)
    j = wait_done(c, job_id)
    assert_exact_and_no_rerun(c, j, BIG, done_before)
    kinds = types(events(c, job_id))
    assert "job_recovery_started" not in kinds  # the coordinator never moved
    replays = [e for e in events(c, job_id) if e["type"] == "agent_recovery_started"]
    assert replays and all(e["data"]["previous_node"] == worker.name for e in replays), replays


def test_sigstop_of_owner_past_ttl_then_sigcont(make_cluster):
    c = make_cluster(3, extra_env=CAP2)
    lead = leader_name(c)
    job_id, owner = submit_with_owner(c, BIG, lambda o: o != lead)
    victim = c.node_named(owner)
    done_before = _kill_mid_run(c, job_id, victim.index, signal.SIGSTOP)
    try:
        # read Redis, not the API: the first live node may be the stopped one, and the job may
        # already be completed (lease released) by its new owner when we look
        r = rclient(c)
        wait_until(lambda: int(r.hget(f"{c.namespace}:job:{job_id}", "epoch") or 0) > 1, 30,
                   "another node to take the job over (job epoch > 1)")
    finally:
        c.signal(victim.index, signal.SIGCONT)
    j = wait_done(c, job_id)
    assert_exact_and_no_rerun(c, j, BIG, done_before)
    _recovered(c, job_id, owner)
    # the resumed node stops coordinating by itself and none of its late writes landed
    wait_until(lambda: "mn_jobs_coordinating 0" in _metrics(c, victim.index), 15, "old owner to stop coordinating")
    assert "stopped coordinating" in victim.log_text() or "lease job:" in victim.log_text()
    r = rclient(c)
    assert int(r.hget(f"{c.namespace}:job:{job_id}", "epoch")) > 1


def _metrics(c, index):
    import urllib.request

    with urllib.request.urlopen(c.nodes[index - 1].api + "/metrics", timeout=2) as resp:
        return resp.read().decode()


def test_same_name_restart_of_owner_within_ttl(make_cluster):
    c = make_cluster(3, extra_env=CAP2)
    lead = leader_name(c)
    job_id, owner = submit_with_owner(c, BIG, lambda o: o != lead)
    victim = c.node_named(owner)
    done_before = _kill_mid_run(c, job_id, victim.index)
    c.start(victim.index, **CAP2)  # at once: its old lease is still live in Redis
    j = wait_done(c, job_id)
    assert_exact_and_no_rerun(c, j, BIG, done_before)
    _recovered(c, job_id, owner, same_name_may_return=True)
    c.wait_mesh()


def test_quick_graceful_restart_of_an_executor_node(make_cluster):
    """A rolling restart: SIGTERM a node running executors and start it again at once, faster
    than it is seen down. Its runs are gone with it; the coordinator finds them unknown to the
    node and replays them (found by the deploy test: the job stalled)."""
    c = make_cluster(3, extra_env=CAP2)
    lead = leader_name(c)
    job_id, owner = submit_with_owner(c, BIG, lambda o: o != lead)
    worker = next(n for n in c.nodes if n.name not in (owner, lead))
    wait_progress(c, job_id, 0.15)
    done_before = completed_agents(c, job_id)
    assert c.stop(worker.index) == 0
    c.start(worker.index, **CAP2)
    j = wait_done(c, job_id)
    assert_exact_and_no_rerun(c, j, BIG, done_before)
    assert "job_recovery_started" not in types(events(c, job_id))  # the owner never moved


def test_cancel_mid_run_refuses_later_results(make_cluster):
    c = make_cluster(3, extra_env=CAP2)
    c.wait_leader()
    j = submit(c, BIG)
    wait_progress(c, j["job_id"], 0.1)
    status, res = c.post_status(1, f"/api/v1/jobs/{j['job_id']}/cancel")
    assert status == 200 and res["status"] == "cancelled", res
    done_at_cancel = job(c, j["job_id"])["progress"]["done"]
    end = wait_done(c, j["job_id"])
    assert end["status"] == "cancelled"
    # executors that were running finish; their results are refused, not counted
    def idle() -> bool:
        rows = c.get(1, "/api/v1/nodes")["nodes"]
        return all((r.get("load") or {}).get("executors_busy", 1) == 0 for r in rows if r["status"] == "up")

    wait_until(idle, 30, "every executor to go idle after the cancel")
    r = rclient(c)
    ns = c.namespace
    later = job(c, j["job_id"])["progress"]["done"]
    assert later == done_at_cancel, (done_at_cancel, later)
    assert r.sismember(f"{ns}:jobs:active", j["job_id"]) == 0
    status, res = c.post_status(1, f"/api/v1/jobs/{j['job_id']}/cancel")
    assert status == 409 and "already cancelled" in res["error"]

