"""Jobs benchmark: prime_sweep_scale vs multiprocessing.Pool, owner-kill recovery, dispatch rate.

    python3 -m bench.jobs [--runs 20] [--quick]

Prints a table and one JSON object (also written to bench/results/jobs.json).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from mn_node.jobs.tasks import prime_range
from tests.support.cluster import Cluster
from tests.support.redis import RedisServer
from tests.support.wait import wait_until


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _job(c: Cluster, idx: int, jid: str) -> dict[str, Any]:
    return c.get(idx, f"/api/v1/jobs/{jid}")  # type: ignore[no-any-return]


def run_job(c: Cluster, params: dict[str, Any], poll: float = 0.05) -> tuple[float, dict[str, Any]]:
    idx = c.live()[0].index
    t0 = time.perf_counter()
    j = c.post(idx, "/api/v1/jobs", {"blueprint": "prime_sweep_scale", "params": params})
    done = wait_until(lambda: (lambda x: x if x["status"] in ("completed", "failed") else None)(
        _job(c, idx, j["job_id"])), 600, "job end", interval=poll)
    return time.perf_counter() - t0, done


def pool_baseline(params: dict[str, Any], procs: int) -> float:
    ranges = [{"start": params["start"] + k * params["chunk_size"],
               "end": params["start"] + (k + 1) * params["chunk_size"]} for k in range(params["workers"])]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:
        pool.apply(os.getpid)  # start the workers before timing, as the nodes' pools are warm too
        t0 = time.perf_counter()
        pool.starmap(prime_range, [(r, {}) for r in ranges])
        return time.perf_counter() - t0


def overhead(redis: RedisServer, params: dict[str, Any], nodes: int, cap: int, reps: int) -> dict[str, Any]:
    c = Cluster(redis_url=redis.url, size=nodes, extra_env={"MIRROR_NEURON_EXECUTOR_CAPACITY": str(cap)})
    try:
        c.start_all()
        c.wait_leader()
        run_job(c, {**params, "workers": 2})  # warm the pools
        cluster_t, pool_t = [], []
        for _ in range(reps):
            pool_t.append(pool_baseline(params, os.cpu_count() or 1))
            t, done = run_job(c, params)
            assert done["status"] == "completed", done
            cluster_t.append(t)
        return {"nodes": nodes, "slots_per_node": cap, "cluster_s": statistics.median(cluster_t),
                "pool_s": statistics.median(pool_t),
                "ratio": statistics.median(cluster_t) / statistics.median(pool_t)}
    finally:
        c.cleanup()


def failover(redis: RedisServer, runs: int) -> dict[str, Any]:
    env = {"MIRROR_NEURON_EXECUTOR_CAPACITY": "1"}
    c = Cluster(redis_url=redis.url, size=3, extra_env=env)
    params = {"workers": 24, "start": 10**12, "chunk_size": 300_000}
    r = redis.client()
    out: list[float] = []
    try:
        c.start_all()
        c.wait_leader()
        for _ in range(runs):
            out.append(_one_owner_kill(c, params, env))
            r.delete(f"{c.namespace}:jobs")  # keep the list short between runs
        return {"runs": runs, "p50_s": pct(out, 0.5), "p99_s": pct(out, 0.99), "max_s": max(out), "samples": out}
    finally:
        c.cleanup()


def _one_owner_kill(c: Cluster, params: dict[str, Any], env: dict[str, str]) -> float:
    """Submit, kill the owner mid-run, return seconds from the kill to the job_recovered event."""
    idx = c.live()[0].index
    jid = c.post(idx, "/api/v1/jobs", {"blueprint": "prime_sweep_scale", "params": params})["job_id"]
    owner = wait_until(lambda: (_job(c, idx, jid).get("lease") or {}).get("node"), 20, "owner")
    wait_until(lambda: _job(c, idx, jid)["progress"]["done"] >= 3, 60, "progress")
    victim = c.node_named(owner)
    c.kill9(victim.index)
    t_kill_ms = time.time() * 1000
    other = c.live()[0].index

    def recovered() -> float | None:
        evs = c.get(other, f"/api/v1/jobs/{jid}/events")["events"]
        hit = [e for e in evs if e["type"] == "job_recovered"]
        return hit[0]["ts_ms"] if hit else None

    ts = wait_until(recovered, 30, "job_recovered")
    wait_until(lambda: _job(c, other, jid)["status"] == "completed", 120, "completion")
    c.start(victim.index, **env)
    c.wait_mesh(nodes=c.nodes)
    return float((ts - t_kill_ms) / 1000)


def dispatch_rate(redis: RedisServer, n: int) -> dict[str, Any]:
    c = Cluster(redis_url=redis.url, size=3, extra_env={"MIRROR_NEURON_EXECUTOR_CAPACITY": "2"})
    try:
        c.start_all()
        c.wait_leader()
        run_job(c, {"workers": 3, "start": 1000, "chunk_size": 1})
        t, done = run_job(c, {"workers": n, "start": 1000, "chunk_size": 1}, poll=0.02)
        assert done["status"] == "completed"
        return {"executors": n, "seconds": t, "executors_per_s": n / t, "per_node": done["nodes"]}
    finally:
        c.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    a = ap.parse_args()
    reps = 1 if a.quick else 3
    params = {"workers": 64, "start": 10**12, "chunk_size": 1_000_000}
    redis = RedisServer().start()
    try:
        res: dict[str, Any] = {"cpu_count": os.cpu_count(), "params": params}
        res["overhead_1node"] = overhead(redis, params, 1, os.cpu_count() or 1, reps)
        res["overhead_3nodes"] = overhead(redis, params, 3, 1, reps)
        res["owner_kill_recovery"] = failover(redis, 3 if a.quick else a.runs)
        res["dispatch"] = dispatch_rate(redis, 300 if a.quick else 2000)
    finally:
        redis.cleanup()
    o1, o3, fo, d = res["overhead_1node"], res["overhead_3nodes"], res["owner_kill_recovery"], res["dispatch"]
    rows = [
        (f"prime_sweep_scale, 1 node x {o1['slots_per_node']} slots vs Pool({os.cpu_count() or 1})",
         f"{o1['cluster_s']:.2f}s vs {o1['pool_s']:.2f}s", f"{o1['ratio']:.3f}x", "<= 1.15x"),
        (f"prime_sweep_scale, 3 nodes x 1 slot vs Pool({os.cpu_count() or 1})",
         f"{o3['cluster_s']:.2f}s vs {o3['pool_s']:.2f}s", f"{o3['ratio']:.3f}x", "<= 1.15x"),
        (f"owner SIGKILL -> job_recovered ({fo['runs']} runs)", f"p50 {fo['p50_s']:.2f}s",
         f"p99 {fo['p99_s']:.2f}s", "<= 3 s p99"),
        (f"tiny-task dispatch, {d['executors']} executors, 3 nodes", f"{d['seconds']:.2f}s",
         f"{d['executors_per_s']:.0f}/s", "-"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':<{w}}  {'value':<22} {'result':<12} goal")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:<22} {r[2]:<12} {r[3]}")
    out = json.dumps(res, indent=2)
    Path(__file__).with_name("results").mkdir(exist_ok=True)
    Path(__file__).with_name("results").joinpath("jobs.json").write_text(out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
