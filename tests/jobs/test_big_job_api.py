"""A 100k-agent job through the API of a real node: a body over the cap is one clear 413, the job
view of a big job walks none of its agents (its progress says enough; ``?counts=1`` counts),
and its agents come in pages."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from mn_node.api import MAX_BODY
from mn_node.config import api_token
from mn_node.jobs import blueprints
from mn_node.jobs.api import COUNT_LIMIT
from tests.jobs._jobs import rclient

pytestmark = pytest.mark.slow

N = 100_000


def test_a_body_over_the_cap_is_one_413_naming_it(make_cluster: Any) -> None:
    c = make_cluster(1)
    body = b'{"manifest": {"nodes": [' + b" " * MAX_BODY + b"]}}"
    req = urllib.request.Request(c.nodes[0].api + "/api/v1/jobs", data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {api_token(c.cookie.encode())}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    assert e.value.code == 413
    answer = json.loads(e.value.read())
    assert answer["error"] == f"body over the cap of {MAX_BODY >> 20} MiB" and "blueprint" in answer["fix"], answer


def _big_running_job(c: Any) -> str:
    """A job of N agents as a coordinator leaves it mid-run: written straight to Redis, not in
    the active set (no node takes it)."""
    r = rclient(c)
    jid = "big-1"
    spec = blueprints.generate("prime_sweep_scale", {"workers": 3})
    r.hset(f"{c.namespace}:job:{jid}", mapping={
        "job_id": jid, "graph_id": "g", "job_name": "big", "status": "running", "spec": json.dumps(spec),
        "agents_total": N, "agents_done": N // 2, "submitted_ms": 1, "updated_ms": 2, "node:mn1@x": N // 2})
    r.zadd(f"{c.namespace}:jobs", {jid: 1})
    pipe = r.pipeline(transaction=False)
    for i in range(0, N, 5000):
        pipe.hset(f"{c.namespace}:job:{jid}:agents", mapping={
            f"w{k:06d}": json.dumps({"status": "completed" if k % 2 else "dispatched", "attempt": 1})
            for k in range(i, i + 5000)})
    pipe.execute()
    return jid


def test_views_of_a_big_job_walk_none_of_its_agents(make_cluster: Any) -> None:
    c = make_cluster(1)
    assert N > COUNT_LIMIT
    jid = _big_running_job(c)
    view = c.get(1, f"/api/v1/jobs/{jid}")
    assert view["agents"] is None and view["progress"] == {"done": N // 2, "total": N}, view
    assert view["nodes"] == {"mn1@x": N // 2} and "manifest" not in view
    counted = c.get(1, f"/api/v1/jobs/{jid}?counts=1", timeout=30)["agents"]
    assert counted == {"completed": N // 2, "dispatched": N // 2}
    assert c.get(1, f"/api/v1/jobs/{jid}?manifest=1")["manifest"]["graph_id"] == "prime_sweep_scale"
    listed = c.get(1, "/api/v1/jobs")["jobs"]
    assert [j["job_id"] for j in listed] == [jid] and listed[0]["progress"]["total"] == N
    page = c.get(1, f"/api/v1/jobs/{jid}/agents?limit=100")
    assert page["total"] == N and page["cursor"] != "0" and 0 < len(page["agents"]) <= 200, len(page["agents"])
    rclient(c).hset(f"{c.namespace}:job:{jid}", "status", "completed")  # ended: the same
    assert c.get(1, f"/api/v1/jobs/{jid}")["agents"] is None
