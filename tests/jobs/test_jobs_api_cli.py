"""Job surfaces: API status codes and the mn CLI's exit codes, against a real cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mn_node.placement import rendezvous
from tests.jobs._jobs import events, submit, wait_done
from tests.support.redis import free_port

pytestmark = pytest.mark.slow


def mn(c, *args, node=1, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")}
    env["MIRROR_NEURON_COOKIE"] = c.cookie
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "mn_node.cli", "--api", c.nodes[node - 1].api, *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_submit_wait_json_and_listing(make_cluster, tmp_path):
    c = make_cluster(3)
    c.wait_leader()
    r = mn(c, "submit", "prime_sweep_scale", "--workers", "4", "--start", "1000003", "--wait", "--json")
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["status"] == "completed" and job["result"]["prime_count"] == 32
    r = mn(c, "jobs", "--json", node=2)
    assert r.returncode == 0 and job["job_id"] in {j["job_id"] for j in json.loads(r.stdout)}
    r = mn(c, "job", job["job_id"], "--no-follow", node=3)
    assert r.returncode == 0 and "completed" in r.stdout and "prime_count" in r.stdout
    r = mn(c, "events", job["job_id"], "--follow")  # ends by itself: the job is over
    assert r.returncode == 0 and "job_completed" in r.stdout
    # a successful entry-point run leaves no attempt record: its log comes from the agent state
    r = mn(c, "logs", job["job_id"], "prime_worker_0001", "--json", node=2)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout.splitlines()[0])
    assert rec["ok"] and rec["runner"] == "entrypoint" and rec["from_agent_state"], rec
    assert json.loads(rec["stdout"])["start"] == 1000003, rec
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "graph_id: tiny\nnodes:\n"
        "  - {node_id: start, agent_type: router}\n"
        "  - {node_id: w, agent_type: executor, config: {task: prime_range, start: 0, end: 100}}\n"
        "  - {node_id: sum, agent_type: aggregator, config: {reduce: prime_collect}}\n"
        "edges:\n  - {from_node: start, to_node: w}\n  - {from_node: w, to_node: sum}\n"
        "entrypoints: [start]\n"
    )
    r = mn(c, "submit", "-f", str(manifest), "--wait", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"]["prime_count"] == 25


def test_bad_input_gets_clear_errors_and_exit_codes(make_cluster, tmp_path):
    c = make_cluster(2)
    c.wait_leader()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"graph_id": "g", "nodes": [{"node_id": "a", "agent_type": "sensor"}],
                               "entrypoints": ["a"]}))
    r = mn(c, "submit", "-f", str(bad))
    assert r.returncode == 65, (r.returncode, r.stderr)
    assert "nodes[0].agent_type" in r.stderr and "unknown agent type" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = mn(c, "job", "nope-123", "--no-follow")
    assert r.returncode == 69 and "no job 'nope-123'" in r.stderr
    r = mn(c, "submit", "prime_sweep_scale", "--workers", "0")
    assert r.returncode == 65 and "params.workers" in r.stderr
    # no token: 401
    status, body = c.post_status(1, "/api/v1/jobs", {"blueprint": "prime_sweep_scale"}, token="wrong")
    assert status == 401 and "bearer token" in body["error"]
    # malformed bodies: 400 with a reason, never 500
    import urllib.request

    from mn_node.config import api_token

    for raw in (b"{not json", b"[]", b'{"blueprint": 5}', b'{"manifest": "x"}', b"{}"):
        req = urllib.request.Request(c.nodes[0].api + "/api/v1/jobs", data=raw, method="POST")
        req.add_header("Authorization", f"Bearer {api_token(c.cookie.encode())}")
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError(f"{raw!r} accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 400, (raw, e.code)
            assert json.loads(e.read())["error"]
    st, body = c.get_status(1, "/api/v1/jobs/../../etc")
    assert st == 404


def test_submit_refused_on_a_node_that_cannot_reach_redis(make_cluster):
    c = make_cluster(3, start=False)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    c.start(1)
    c.start(2)
    c.start(3, MIRROR_NEURON_REDIS_URL=dead)
    c.wait_mesh(nodes=c.nodes)
    st, body = c.get_status(3, "/api/v1/health")
    assert st == 503 and any("redis unreachable" in r for r in body["reasons"])
    st, body = c.post_status(3, "/api/v1/jobs", {"blueprint": "prime_sweep_scale", "params": {"workers": 2}})
    assert st == 503 and "cannot reach Redis" in body["error"], body
    r = mn(c, "submit", "prime_sweep_scale", "--workers", "2", node=3)
    assert r.returncode == 69 and "Redis" in r.stderr


def test_leader_sweeps_jobs_whose_first_ranked_node_cannot_act(make_cluster):
    """Node 3 is up on the links but cannot reach Redis: jobs it ranks first for would stay
    orphaned; the leader takes them after a grace period and records orphan_swept."""
    c = make_cluster(3, start=False)
    c.start(1)
    c.start(2)
    c.start(3, MIRROR_NEURON_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    c.wait_mesh(nodes=c.nodes)
    c.wait_leader()
    names = [n.name for n in c.nodes]
    for _ in range(30):
        j = submit(c, {"workers": 3, "start": 1000003})
        if rendezvous(j["job_id"], names)[0] == c.nodes[2].name:
            break
    else:
        raise AssertionError("no job ranked node 3 first in 30 submissions")
    done = wait_done(c, j["job_id"], timeout=60)
    assert done["status"] == "completed" and done["result"]["prime_count"] == 24
    cluster_events = c.get(1, "/api/v1/events?count=200")["events"]
    swept = [e for e in cluster_events if e["type"] == "orphan_swept" and e["data"]["job_id"] == j["job_id"]]
    assert swept, [e["type"] for e in cluster_events]
    assert swept[0]["node"] == c.wait_leader()["node"]
    kinds = [e["type"] for e in events(c, j["job_id"])]
    assert "job_running" in kinds and kinds[-1] == "job_completed"
