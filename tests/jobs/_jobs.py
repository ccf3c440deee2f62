"""Helpers for job tests against a real cluster."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from mn_node.store import decode_event
from tests.support.cluster import Cluster
from tests.support.primes import sweep_count
from tests.support.wait import wait_until

# A job long enough to hit mid-run: 48 executors of ~0.2-0.4 s each on 3 nodes x 2 slots.
BIG = {"workers": 48, "start": 10**13, "chunk_size": 120_000}


def submit(c: Cluster, params: dict[str, Any], via: int | None = None) -> dict[str, Any]:
    idx = via or c.live()[0].index
    job: dict[str, Any] = c.post(idx, "/api/v1/jobs", {"blueprint": "prime_sweep_scale", "params": params})
    return job


def job(c: Cluster, job_id: str, via: int | None = None, **q: str) -> dict[str, Any]:
    idx = via or c.live()[0].index
    query = "&".join(f"{k}={v}" for k, v in q.items())
    return c.get(idx, f"/api/v1/jobs/{job_id}" + (f"?{query}" if query else ""))  # type: ignore[no-any-return]


def wait_owner(c: Cluster, job_id: str, timeout: float = 15) -> str:
    return wait_until(lambda: (job(c, job_id).get("lease") or {}).get("node"), timeout, f"an owner for {job_id}")


def wait_progress(c: Cluster, job_id: str, lo: float, timeout: float = 60) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        j = job(c, job_id)
        p = j["progress"]
        return j if p["total"] and p["done"] / p["total"] >= lo else None

    return wait_until(reached, timeout, f"{job_id} to pass {lo:.0%}")


def wait_done(c: Cluster, job_id: str, timeout: float = 90) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        j = job(c, job_id)
        return j if j["status"] in ("completed", "failed", "cancelled") else None

    try:
        return wait_until(ended, timeout, f"{job_id} to end")
    except AssertionError as e:  # say where the job stands: its agents by state and node, its last events
        raise AssertionError(f"{e}; {stuck_summary(c, job_id)}") from None


def stuck_summary(c: Cluster, job_id: str) -> str:
    r = rclient(c)
    h = r.hmget(f"{c.namespace}:job:{job_id}", ["status", "owner", "epoch", "agents_done", "agents_total"])
    lease = r.get(f"{c.namespace}:lease:job:{job_id}")
    by: dict[str, int] = {}
    for st in agent_states(c, job_id).values():
        k = f"{st.get('status')}@{st.get('node') or '-'}#{st.get('attempt')}"
        by[k] = by.get(k, 0) + 1
    tail = [(e.get("type"), e.get("node"), e.get("epoch")) for e in
            (decode_event(i, f) for i, f in r.xrange(f"{c.namespace}:job:{job_id}:events"))][-12:]
    return f"job {h} lease {lease!r}; agents {dict(sorted(by.items()))}; last events {tail}"


def rclient(c: Cluster) -> redis.Redis:
    return redis.Redis.from_url(c.redis_url, decode_responses=True)


def agent_states(c: Cluster, job_id: str) -> dict[str, dict[str, Any]]:
    raw = rclient(c).hgetall(f"{c.namespace}:job:{job_id}:agents")
    return {k: json.loads(v) for k, v in raw.items() if not k.startswith("_")}


def completed_agents(c: Cluster, job_id: str) -> set[str]:
    return {a for a, st in agent_states(c, job_id).items() if st["status"] == "completed" and a.startswith("prime_")}


def runs(c: Cluster, job_id: str) -> dict[str, int]:
    return {k: int(v) for k, v in rclient(c).hgetall(f"{c.namespace}:job:{job_id}:runs").items()}


def events(c: Cluster, job_id: str, via: int | None = None) -> list[dict[str, Any]]:
    idx = via or c.live()[0].index
    return c.get(idx, f"/api/v1/jobs/{job_id}/events")["events"]  # type: ignore[no-any-return]


def assert_exact_and_no_rerun(c: Cluster, j: dict[str, Any], params: dict[str, Any], done_before: set[str]) -> None:
    assert j["status"] == "completed", j
    expected = sweep_count(params["start"], params["workers"], params["chunk_size"])
    assert j["result"]["prime_count"] == expected
    assert j["result"]["chunks"] == params["workers"]
    assert j["result"]["checked_numbers"] == params["workers"] * params["chunk_size"]
    r = runs(c, j["job_id"])
    rerun = {a: r.get(a) for a in done_before if r.get(a) != 1}
    assert not rerun, f"completed executors ran again: {rerun}"
    assert set(r) == {f"prime_worker_{k + 1:04d}" for k in range(params["workers"])}


def leader_name(c: Cluster) -> str:
    return str(c.wait_leader()["node"])


def submit_with_owner(c: Cluster, params: dict[str, Any], want: Any, tries: int = 12) -> tuple[str, str]:
    """Submit until ``want(owner)`` holds (placement is by rendezvous hash of the job id);
    cancel the jobs that did not fit."""
    for _ in range(tries):
        j = submit(c, params)
        owner = wait_owner(c, j["job_id"])
        if want(owner):
            return j["job_id"], owner
        c.post(c.live()[0].index, f"/api/v1/jobs/{j['job_id']}/cancel")
    raise AssertionError(f"no owner satisfying the condition in {tries} submissions")


def since(t0: float) -> float:
    return time.monotonic() - t0
