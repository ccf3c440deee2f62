"""Leader failover on a real 3-node cluster + real Redis, and the cost of batched lease renewal.

    python bench/failover.py [--kills 20] [--stops 20] [--leases 10000] [--json out.json]
    python bench/failover.py --redis sentinel [--min-acks all|1|2] [--primary-kills 20] [--job-reps 11]

* crash: SIGKILL the leader; time until a new leader *acts*, i.e. its first fenced write (the
  leader heartbeat ``{ns}:leader:beat``) lands in Redis with the new epoch.
* graceful: SIGTERM the leader (what ``systemctl stop`` sends); same end point.
* renew: one ``renew_all`` round trip for N leases held by one node.
Goals (docs/architecture.md, "Numbers"): crash p99 <= 3 s, graceful p99 <= 200 ms, 10,000 renewals in one round trip.

``--redis sentinel`` (1 primary, 2 replicas, 3 Sentinels on loopback, 3 nodes):

* primary: SIGKILL the Redis primary; time until the first leader lease granted by the new
  primary, until the leader acts again (its fenced, replica-acknowledged heartbeat lands
  with a greater epoch on the new primary), and for a long job of 3,000 one-number agents kept
  running across the kills: until its ``agents_done`` on the new primary passes the value
  read just before the kill (an executor that was running stored its result there; needs no
  lease), and until the job progresses under a coordinator re-granted there (its ``epoch`` went
  up, then ``agents_done`` passed its value at that moment). The killed server comes back as a
  replica.
* cost: the same small jobs (coordination-heavy: 100 one-number agents) on a single-Redis
  cluster and on the Sentinel cluster, both up in the same run and taking turns job by job;
  goal: <= 1.3x the single-Redis time (p50).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit, machine, summary, table
from mn_node.leases import Lease, LeaseManager
from mn_node.store import Store
from tests.support.cluster import Cluster
from tests.support.redis import RedisServer, SentinelCluster
from tests.support.wait import wait_until


def holder(c: Cluster, r: Any) -> tuple[str | None, int]:
    tok = r.get(f"{c.namespace}:lease:cluster:leader")
    if not tok:
        return None, 0
    node, _inc, epoch = tok.split("|")
    return node, int(epoch)


def wait_acting(c: Cluster, r: Any, old_epoch: int, t0: float, timeout: float = 30.0) -> float:
    """Seconds from t0 until the leader heartbeat carries an epoch above old_epoch."""
    beat = f"{c.namespace}:leader:beat"
    while True:
        ep = r.hget(beat, "epoch")
        now = time.perf_counter()
        if ep is not None and int(ep) > old_epoch:
            return now - t0
        if now - t0 > timeout:
            raise RuntimeError(f"no new leader acted within {timeout}s")
        time.sleep(0.002)


def stable(c: Cluster, r: Any) -> tuple[str, int]:
    c.wait_mesh(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        node, ep = holder(c, r)
        beat = r.hget(f"{c.namespace}:leader:beat", "epoch")
        if node and beat is not None and int(beat) == ep:
            return node, ep
        time.sleep(0.02)
    raise RuntimeError("no stable leader")


def failovers(c: Cluster, r: Any, n: int, sig: int) -> list[float]:
    out: list[float] = []
    for _ in range(n):
        node, ep = stable(c, r)
        idx = c.node_named(node).index
        t0 = time.perf_counter()
        if sig == signal.SIGKILL:
            c.signal(idx, signal.SIGKILL)
        else:
            c.signal(idx, signal.SIGTERM)
        out.append(wait_acting(c, r, ep, t0))
        proc = c.nodes[idx - 1].proc
        assert proc is not None
        proc.wait(15)
        c.start(idx)
    return out


async def renew_bench(url: str, n: int, rounds: int) -> dict[str, Any]:
    store = Store(url, f"bench{time.monotonic_ns()}")
    m = LeaseManager(store, "bench@h", "inc", 60_000, 10_000)
    pipe = store.r.pipeline(transaction=False)
    acquire = store.scripts.acquire.redis_script  # the plain redis-py script, queued on the pipeline
    for k in range(n):
        name = f"job:{k}"
        await acquire(keys=[m.lease_key(name), store.key("epoch", name), store.key("events")],
                      args=[m.owner, m.ttl_ms, "", 100, name], client=pipe)
    res = await pipe.execute()
    for k, row in enumerate(res):
        name = f"job:{k}"
        m.held[name] = Lease(name, m.lease_key(name), str(row[1]), int(row[2]), time.monotonic() + 50)
    await store.scripts.renew_all([], [1])  # load the script once
    times = []
    for _ in range(rounds):
        before = m.renewals
        t0 = time.perf_counter()
        await m.renew_all()
        times.append(time.perf_counter() - t0)
        assert m.renewals == before + 1 and len(m.held) == n and all(x.valid() for x in m.held.values())
    await store.r.flushdb()
    await store.close()
    return {"leases": n, "round_trips_per_renewal": 1, "seconds": summary(times)}


def _primary_client(sc: SentinelCluster) -> Any:
    return sc.primary().client()


BIG_JOB = {"workers": 3000, "start": 1000, "chunk_size": 1}  # ~3,000 one-number agents: runs through many kills


class Progress:
    """A long job kept running across the primary kills, to time "jobs progressing again"."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.job: str | None = None

    def key(self) -> str:
        return f"{self.c.namespace}:job:{self.job}"

    def ready(self, r: Any) -> int:
        """agents_done of a running job with at least 300 agents still to go (a new one if
        needed), read just before the kill; waits until it is seen progressing."""
        h = r.hmget(self.key(), ["status", "agents_done"]) if self.job else [None, None]
        if h[0] != "running" or int(h[1] or 0) > BIG_JOB["workers"] - 300:
            idx = self.c.live()[0].index
            self.job = str(self.c.post(idx, "/api/v1/jobs", {"blueprint": "prime_sweep_scale", "params": BIG_JOB},
                                       timeout=30)["job_id"])
            wait_until(lambda: int(r.hget(self.key(), "agents_done") or 0) >= 5, 60, "the big job to progress")
        before = int(r.hget(self.key(), "agents_done") or 0)
        wait_until(lambda: int(r.hget(self.key(), "agents_done") or 0) > before, 30, "the big job to progress",
                   interval=0.005)
        return int(r.hget(self.key(), "agents_done") or 0)


MARKS = ("granted", "acting", "stored", "progressing")


def primary_failovers(c: Cluster, sc: SentinelCluster, n: int, rejoin_at_once: bool) -> dict[str, list[float]]:
    """SIGKILL the primary n times: seconds to the first grant on the new primary, until the
    leader acts there, until a result is stored there (an executor that was running), and until
    the job progresses under a coordinator re-granted there."""
    out: dict[str, list[float]] = {k: [] for k in MARKS}
    progress = Progress(c)
    for _ in range(n):
        for k, v in zip(MARKS, primary_failover(c, sc, progress, rejoin_at_once), strict=True):
            out[k].append(v)
    return out


def primary_failover(c: Cluster, sc: SentinelCluster, progress: Progress, rejoin_at_once: bool) -> tuple[float, ...]:
    """``rejoin_at_once``: start the killed server again as soon as Sentinel has promoted a
    replica (with MIN_ACKS 2 nothing is acknowledged until it is back: two replicas needed)."""
    lease, beat = f"{c.namespace}:lease:cluster:leader", f"{c.namespace}:leader:beat"
    _node, ep = stable(c, _primary_client(sc))
    done = progress.ready(_primary_client(sc))
    job_epoch = int(_primary_client(sc).hget(progress.key(), "epoch") or 0)
    old = sc.primary()
    t0 = time.perf_counter()
    old.kill9()
    new = wait_until(lambda: (p := sc.primary()) is not old and p, 60, "Sentinel to promote a replica",
                     interval=0.005)
    if rejoin_at_once:
        _rejoin(old, new)
    r = new.client()
    marks: dict[str, float] = {}
    recovered_at: list[int] = []  # agents_done when the job was first seen re-granted (its epoch up)

    def watch() -> bool:  # one poll loop for every end point, each timed when first seen
        now = time.perf_counter() - t0
        if "granted" not in marks and int((r.get(lease) or "x|x|0").split("|")[2]) > ep:
            marks["granted"] = now
        if "acting" not in marks and int(r.hget(beat, "epoch") or 0) > ep:
            marks["acting"] = now
        job_ep, job_done = (int(v or 0) for v in r.hmget(progress.key(), ["epoch", "agents_done"]))
        if "stored" not in marks and job_done > done:
            marks["stored"] = now
        if not recovered_at and job_ep > job_epoch:
            recovered_at.append(job_done)
        if "progressing" not in marks and recovered_at and job_done > recovered_at[0]:
            marks["progressing"] = now
        return len(marks) == len(MARKS)

    wait_until(watch, 60, "a grant, the leader acting and the job progressing on the new primary", interval=0.002)
    if not rejoin_at_once:
        _rejoin(old, new)
    wait_until(lambda: sc.replicas_online(sc.primary()), 120,
               "the old primary to rejoin as a replica (two online replicas of the current primary)")
    return tuple(marks[k] for k in MARKS)


def _rejoin(old: RedisServer, new: RedisServer) -> None:
    args, skip = [], 0
    for a in old.extra:
        if skip:
            skip -= 1
            continue
        if a == "--replicaof":
            skip = 2
            continue
        args.append(a)
    old.extra = [*args, "--replicaof", new.host, str(new.port)]
    old.start()


def job_costs(single_url: str, ha_url: str, ha_env: dict[str, str], reps: int) -> tuple[list[float], list[float]]:
    """The same coordination-heavy job on a single-Redis cluster and on the Sentinel cluster,
    both up at once and taking turns, so a change of background load hits both sides alike."""
    from bench.jobs import run_job

    single, ha = Cluster(redis_url=single_url, size=3), Cluster(redis_url=ha_url, size=3, extra_env=ha_env)
    params = {"workers": 100, "start": 1000, "chunk_size": 1}
    out: tuple[list[float], list[float]] = ([], [])
    try:
        for c in (single, ha):
            c.start_all()
            c.wait_leader()
            run_job(c, {**params, "workers": 3})  # warm up
        for _ in range(reps):
            for c, times in ((single, out[0]), (ha, out[1])):
                times.append(run_job(c, params, poll=0.02)[0])
        return out
    finally:
        single.cleanup()
        ha.cleanup()


def main_sentinel(args: argparse.Namespace) -> None:
    single = RedisServer().start()
    sc = SentinelCluster().start()
    try:
        ha_env = {"MIRROR_NEURON_REDIS_SENTINEL_PASSWORD": sc.sentinel_password,
                  "MIRROR_NEURON_REDIS_MIN_ACKS": str(args.min_acks)}
        single_times, ha_times = job_costs(single.url, sc.url, ha_env, args.job_reps)
        c = Cluster(redis_url=sc.url, size=3, extra_env=ha_env)
        try:
            c.start_all()
            kills = primary_failovers(c, sc, args.primary_kills, rejoin_at_once=args.min_acks != "1")
            cfg = c.get(1, "/api/v1/system/summary")
        finally:
            c.cleanup()
    finally:
        sc.cleanup()
        single.cleanup()
    gs, as_ = summary(kills["granted"]), summary(kills["acting"])
    sts, ps = summary(kills["stored"]), summary(kills["progressing"])
    ss, hs = summary(single_times), summary(ha_times)
    ratio = hs["p50"] / ss["p50"]
    result = {
        "benchmark": "failover-sentinel", "nodes": 3, "redis": "1 primary + 2 replicas + 3 Sentinels",
        "sentinel_down_after_ms": 1000, "min_acks": args.min_acks,
        "primary_kill_to_first_grant_s": gs, "primary_kill_to_leader_acting_s": as_,
        "primary_kill_to_result_stored_s": sts, "primary_kill_to_job_progressing_s": ps,
        "job_s_single_redis": ss, "job_s_sentinel": hs, "job_cost_ratio_p50": round(ratio, 3),
        "goals": {"job_cost_ratio": 1.3}, "goals_met": {"job_cost_ratio": ratio <= 1.3},
        "node": {"version": cfg.get("version")}, "machine": machine(),
    }
    rows = [
        ["primary SIGKILL -> first grant on new primary", gs["n"], f"{gs['p50'] * 1000:.0f} ms",
         f"{gs['p99'] * 1000:.0f} ms", "-"],
        ["primary SIGKILL -> leader acts again", as_["n"], f"{as_['p50'] * 1000:.0f} ms",
         f"{as_['p99'] * 1000:.0f} ms", "-"],
        ["primary SIGKILL -> a running executor's result stored", sts["n"], f"{sts['p50'] * 1000:.0f} ms",
         f"{sts['p99'] * 1000:.0f} ms", "-"],
        ["primary SIGKILL -> job re-granted and progressing", ps["n"], f"{ps['p50'] * 1000:.0f} ms",
         f"{ps['p99'] * 1000:.0f} ms", "-"],
        ["job (100 agents), single Redis", ss["n"], f"{ss['p50'] * 1000:.0f} ms", f"{ss['p99'] * 1000:.0f} ms", ""],
        [f"job (100 agents), Sentinel + WAIT {args.min_acks}", hs["n"], f"{hs['p50'] * 1000:.0f} ms",
         f"{hs['p99'] * 1000:.0f} ms",
         f"ratio {ratio:.2f} (<= 1.3)"],
    ]
    emit(result, table(rows, ["what", "n", "p50", "p99", "goal"]), args.json_path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--stops", type=int, default=20)
    p.add_argument("--leases", type=int, default=10_000)
    p.add_argument("--renew-rounds", type=int, default=20)
    p.add_argument("--json", dest="json_path")
    p.add_argument("--redis", choices=["single", "sentinel"], default="single")
    p.add_argument("--primary-kills", type=int, default=20)
    p.add_argument("--job-reps", type=int, default=11)
    p.add_argument("--min-acks", default="all", choices=("all", "1", "2"),
                   help="--redis sentinel: MIRROR_NEURON_REDIS_MIN_ACKS of the nodes (replicas per write)")
    args = p.parse_args()
    if args.redis == "sentinel":
        main_sentinel(args)
        return
    srv = RedisServer().start()
    c = Cluster(redis_url=srv.url, size=3)
    try:
        r = srv.client()
        c.start_all()
        crash = failovers(c, r, args.kills, signal.SIGKILL)
        graceful = failovers(c, r, args.stops, signal.SIGTERM)
        renew = asyncio.run(renew_bench(srv.url, args.leases, args.renew_rounds))
        cfg = c.get(1, "/api/v1/system/summary")
    finally:
        c.cleanup()
        srv.cleanup()
    cs, gs, rs = summary(crash), summary(graceful), renew["seconds"]
    result = {
        "benchmark": "failover",
        "nodes": 3,
        "crash_takeover_s": cs,
        "graceful_handover_s": gs,
        "renew": renew,
        "goals": {"crash_p99_s": 3.0, "graceful_p99_s": 0.2, "renew_leases_one_round_trip": 10_000},
        "goals_met": {"crash": cs["p99"] <= 3.0, "graceful": gs["p99"] <= 0.2,
                      "renew": renew["leases"] >= 10_000},
        "node": {"version": cfg.get("version")},
        "machine": machine(),
    }
    rows = [
        ["crash (SIGKILL) -> new leader acts", cs["n"], f"{cs['p50'] * 1000:.0f} ms", f"{cs['p99'] * 1000:.0f} ms",
         "<= 3000 ms p99"],
        ["graceful (SIGTERM) -> successor acts", gs["n"], f"{gs['p50'] * 1000:.0f} ms",
         f"{gs['p99'] * 1000:.0f} ms", "<= 200 ms p99"],
        [f"renew {renew['leases']:,} leases (1 round trip)", rs["n"], f"{rs['p50'] * 1000:.1f} ms",
         f"{rs['p99'] * 1000:.1f} ms", "1 round trip"],
    ]
    emit(result, table(rows, ["what", "n", "p50", "p99", "goal"]), args.json_path)


if __name__ == "__main__":
    main()
