"""Drain on a real cluster: jobs handed over without replay, the deadline, restarts, the leader, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from mn_node.config import api_token
from tests.jobs._bundles import fan_out_bundle, submit_bundle
from tests.jobs._jobs import (
    BIG,
    agent_states,
    assert_exact_and_no_rerun,
    events,
    leader_name,
    rclient,
    runs,
    submit,
    submit_with_owner,
    wait_done,
    wait_progress,
)
from tests.support.cluster import Cluster
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

CAP2 = {"MIRROR_NEURON_EXECUTOR_CAPACITY": "2"}


def mn(c: Cluster, index: int, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    node = c.nodes[index - 1]
    return subprocess.run([sys.executable, "-m", "mn_node.cli", "--api", node.api, "--token",
                           api_token(c.cookie.encode()), *argv], capture_output=True, text=True, timeout=timeout)


def drain_state(c: Cluster, name: str, via: int = 1) -> dict[str, Any]:
    return c.get(via, f"/api/v1/nodes/{name}/drain")  # type: ignore[no-any-return]


def wait_drained(c: Cluster, name: str, via: int = 1, timeout: float = 30) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    def drained() -> dict[str, Any] | None:
        seen.append(drain_state(c, name, via))
        return seen[-1] if seen[-1].get("state") == "drained" else None

    try:
        return wait_until(drained, timeout, f"{name} to be drained")
    except AssertionError as e:
        raise AssertionError(f"{e}; last drain state: {seen[-1:]}") from None


def test_drain_of_the_owner_hands_the_job_over_without_replay(make_cluster):
    c = make_cluster(3, extra_env=CAP2)
    lead = leader_name(c)
    job_id, owner = submit_with_owner(c, BIG, lambda o: o != lead)
    wait_progress(c, job_id, 0.15)
    via = next(n.index for n in c.nodes if n.name != owner)
    res = c.post(via, f"/api/v1/nodes/{owner}/drain", {})
    assert res["state"] == "draining", res
    j = wait_done(c, job_id)
    assert_exact_and_no_rerun(c, j, BIG, set())
    assert all(v == 1 for v in runs(c, job_id).values()), runs(c, job_id)  # no agent started twice
    evs = events(c, job_id)
    kinds = [e["type"] for e in evs]
    assert "job_handoff" in kinds, kinds
    rec = next(e for e in evs if e["type"] == "job_recovery_started")
    assert rec["node"] != owner and rec["data"]["previous_owner"] == owner
    handoff = kinds.index("job_handoff")
    late = [e for e in evs[handoff:] if e["type"] == "agent_dispatched" and e["data"]["node"] == owner]
    assert not late, f"executors dispatched to the draining node: {late}"
    wait_drained(c, owner, via)
    reg = rclient(c).hget(f"{c.namespace}:node:{owner}", "drain")
    assert reg == "drained", reg


def test_deadline_stops_executors_and_replays_them_elsewhere(make_cluster, tmp_path):
    c = make_cluster(3, extra_env=CAP2)
    c.wait_leader()
    job_id = submit_bundle(c, fan_out_bundle(tmp_path / "b", 6, [sys.executable, "-c", "import time; time.sleep(12)"]))

    def dispatched() -> dict[str, str] | None:
        st = agent_states(c, job_id)
        on = {a: s["node"] for a, s in st.items() if a.startswith("w") and s["status"] == "dispatched"}
        return on if len(on) == 6 else None

    on = wait_until(dispatched, 30, "all six executors dispatched")
    owner = (c.get(1, f"/api/v1/jobs/{job_id}").get("lease") or {}).get("node")
    victim = next((n for n in sorted(set(on.values())) if n != owner), sorted(set(on.values()))[0])
    stopped = {a for a, n in on.items() if n == victim}
    via = next(n.index for n in c.nodes if n.name != victim)
    # no deadline: the node stays draining, visibly, while its executors run
    assert mn(c, via, "drain", victim).returncode == 0
    seen = wait_until(lambda: (s if (s := drain_state(c, victim, via)).get("running", "0") != "0" else None),
                      10, "the draining node to report its running executors")
    assert seen["state"] == "draining" and not seen["deadline_ms"], seen
    # a deadline given later applies: at it, its executors are stopped and replayed elsewhere
    r = mn(c, via, "drain", victim, "--deadline", "1s", "--wait")
    assert r.returncode == 0, r.stderr
    assert "drained" in r.stdout, r.stdout
    j = wait_done(c, job_id, timeout=60)
    assert j["status"] == "completed", j
    counts = runs(c, job_id)
    # a run that had started there was counted twice (stopped, then replayed); one still queued once
    assert all(counts.get(a) in (1, 2) for a in stopped) and any(counts[a] == 2 for a in stopped), counts
    assert all(counts[a] == 1 for a in on if a not in stopped), counts
    final = agent_states(c, job_id)
    replayed = {a for a in stopped if counts[a] == 2}
    assert all(final[a]["node"] != victim for a in replayed), {a: final[a]["node"] for a in replayed}


def test_drain_survives_a_restart_and_no_executor_lands_there(make_cluster):
    c = make_cluster(3, extra_env=CAP2)
    c.wait_leader()
    victim = c.nodes[2]
    r = mn(c, 1, "drain", victim.name, "--wait")
    assert r.returncode == 0, r.stderr
    c.stop(victim.index)
    c.start(victim.index)
    c.wait_mesh()
    c.wait_started()
    wait_until(lambda: rclient(c).hget(f"{c.namespace}:node:{victim.name}", "drain") == "drained", 15,
               "the restarted node to show drained in its registration")
    j = wait_done(c, submit(c, {"workers": 12, "start": 1000003})["job_id"])
    assert j["status"] == "completed", j
    assert victim.name not in j["nodes"], j["nodes"]
    assert drain_state(c, victim.name)["state"] == "drained"
    r = mn(c, 1, "undrain", victim.name)
    assert r.returncode == 0 and "was drained" in r.stdout, (r.stdout, r.stderr)
    wait_until(lambda: rclient(c).hget(f"{c.namespace}:node:{victim.name}", "drain") == "", 15,
               "the registration to show no drain")


def test_drain_of_the_leader_hands_leadership_over(make_cluster):
    c = make_cluster(3)
    lead = leader_name(c)
    via = next(n.index for n in c.nodes if n.name != lead)
    assert mn(c, via, "drain", lead).returncode == 0
    new = c.wait_leader(exclude=lead)
    assert new["node"] != lead
    wait_drained(c, lead, via)
    assert c.leader(via)["node"] != lead  # it does not campaign back while draining


def test_bad_input_unknown_node_and_the_only_node(make_cluster):
    c = make_cluster(1)
    c.wait_leader()
    name = c.nodes[0].name
    r = mn(c, 1, "drain", "nosuchnode@127.0.0.1")
    assert r.returncode == 69 and "no node named" in r.stderr, (r.returncode, r.stderr)
    r = mn(c, 1, "drain", name, "--deadline", "soon")
    assert r.returncode == 64, (r.returncode, r.stderr)
    r = mn(c, 1, "drain", name)
    assert r.returncode == 69 and "refused" in r.stderr and "--force" in r.stderr, (r.returncode, r.stderr)
    assert drain_state(c, name)["state"] == ""
    r = mn(c, 1, "drain", name, "--force", "--wait")
    assert r.returncode == 0, r.stderr
    assert drain_state(c, name)["state"] == "drained"
    doc = subprocess.run([sys.executable, "-m", "mn_node.cli", "doctor", "--check", "drain", "--json"],
                         env=c.nodes[0].env, capture_output=True, text=True, timeout=60)
    found = json.loads(doc.stdout)
    assert f"node {name} is drained since" in doc.stdout and f"mn undrain {name}" in doc.stdout, found
    assert mn(c, 1, "undrain", name).returncode == 0
    assert drain_state(c, name)["state"] == ""
