"""Scale benchmark: the job engine from 1k to 100k tiny agents, and many small jobs.

    python3 -m bench.scale [--sizes 1000,10000,100000] [--small-jobs 1000] [--nodes 3]
                           [--capacity N] [--kill-size N] [--timeout S] [--quick] [--json PATH]

One run on one machine, a real redis-server and real node processes, side by side with
``multiprocessing.Pool(<total executor slots>)`` over the same tiny tasks (``prime_range`` over
10 numbers: the ``prime_sweep_scale`` blueprint with ``chunk_size`` 10, submitted through the API;
a job of N workers has N + 3 agents: dispatcher, collector, summarizer). Measured:

* one job per size: agents/s from the submit to the terminal status, and the time per agent at
  the largest size against the smallest (flat: <= 1.3x);
* ``--small-jobs`` jobs of 20 agents submitted concurrently through the API (16 threads, each
  keeping one HTTP/1.1 connection per node, as a bulk client would): jobs/s
  from the first submit to the last terminal status (goal >= 200);
* for the largest job: Redis bytes per agent (``used_memory`` delta and ``MEMORY USAGE`` of the
  job's keys) and the owner node's peak RSS (``VmHWM``);
* the owner SIGKILLed at 50 % of a ``--kill-size`` job: the time until the job progresses again
  (``agents_done`` grows after another node took the lease) and whether the count is exact.

Progress is read from Redis directly (``HMGET`` of the job hash), so watching costs the cluster
nothing. A job that does not finish within ``--timeout`` is reported with the rate it reached
and cancelled (the code before the scale work is quadratic in the size of a job). Every count
is checked against an independent sieve. Table to stderr, one JSON object to stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import redis

from bench._common import emit, machine, table
from mn_node.config import api_token
from mn_node.jobs.tasks import prime_range
from tests.support.cluster import Cluster
from tests.support.primes import sweep_count
from tests.support.redis import RedisServer

CHUNK = 10
SMALL_WORKERS = 17  # + dispatcher, collector, summarizer = 20 agents
TERMINAL = ("completed", "failed", "cancelled")
JOB_KEYS = ("", ":agents", ":events", ":runs", ":attempts")


def agents_of(workers: int) -> int:
    return workers + 3


def pool_seconds(workers: int, start: int, procs: int) -> float:
    """The same tiny tasks on ``multiprocessing.Pool(procs)`` (warm, chunksize 1)."""
    ranges = [({"start": start + k * CHUNK, "end": start + (k + 1) * CHUNK}, {}) for k in range(workers)]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        pool.map(abs, range(procs))  # start the workers before timing: the nodes are warm too
        t0 = time.perf_counter()
        pool.starmap(prime_range, ranges, chunksize=1)
        return time.perf_counter() - t0


class Watch:
    """Reads a cluster's jobs straight from Redis."""

    def __init__(self, r: redis.Redis, ns: str) -> None:
        self.r = r
        self.ns = ns

    def job(self, jid: str) -> dict[str, Any]:
        status, done, total = self.r.hmget(f"{self.ns}:job:{jid}", ["status", "agents_done", "agents_total"])
        return {"status": status, "done": int(done or 0), "total": int(total or 0)}

    def result(self, jid: str) -> Any:
        import json

        raw = self.r.hget(f"{self.ns}:job:{jid}", "result")
        return json.loads(raw) if raw else None

    def owner(self, jid: str) -> str | None:
        token = self.r.get(f"{self.ns}:lease:job:{jid}")
        return str(token).split("|", 1)[0] if token else None

    def used_memory(self) -> int:
        return int(self.r.info("memory")["used_memory"])

    def key_bytes(self, jid: str) -> dict[str, int]:
        out = {}
        for suffix in JOB_KEYS:
            n = self.r.memory_usage(f"{self.ns}:job:{jid}{suffix}", samples=0)
            out[suffix.lstrip(":") or "job"] = int(n or 0)
        return out

    def until(self, jid: str, cond: Callable[[dict[str, Any]], bool], timeout: float,
              poll: float = 0.05) -> dict[str, Any]:
        """Poll until ``cond(job)`` or ``timeout``; the last job seen, with ``t`` (perf_counter)."""
        deadline = time.perf_counter() + timeout
        while True:
            j = self.job(jid)
            j["t"] = time.perf_counter()
            if cond(j) or j["t"] > deadline:
                return j
            time.sleep(poll)


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set (``VmHWM``) of a process, MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def note(what: str, data: dict[str, Any]) -> None:
    """One progress line on stderr as each part ends (a long run shows what it has so far)."""
    brief = {k: round(v, 3) if isinstance(v, float) else v for k, v in data.items() if not isinstance(v, dict)}
    print(f"[scale] {what}: {brief}", file=sys.stderr, flush=True)


def cancel(c: Cluster, jid: str) -> None:
    """Cancel a job cut at the timeout; a node too busy to answer is reported, not fatal."""
    try:
        c.post(c.live()[0].index, f"/api/v1/jobs/{jid}/cancel", {}, timeout=60)
    except OSError as e:
        print(f"[scale] cancelling {jid} failed: {e}", file=sys.stderr, flush=True)


def submit(c: Cluster, idx: int, workers: int, start: int) -> str:
    body = {"blueprint": "prime_sweep_scale", "params": {"workers": workers, "start": start, "chunk_size": CHUNK}}
    return str(c.post(idx, "/api/v1/jobs", body, timeout=300)["job_id"])


class KeepAlive:
    """Submits over one HTTP/1.1 connection per thread and node, as a client submitting in bulk
    would (``urllib`` opens a connection per request: its setup would be measured, not the job)."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.auth = f"Bearer {api_token(c.cookie.encode())}"
        self.local = threading.local()

    def _conn(self, idx: int) -> http.client.HTTPConnection:
        conns: dict[int, http.client.HTTPConnection] = self.local.__dict__.setdefault("conns", {})
        if idx not in conns:
            url = urllib.parse.urlsplit(self.c.nodes[idx - 1].api)
            conns[idx] = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=300)
        return conns[idx]

    def submit(self, idx: int, workers: int, start: int) -> str:
        body = json.dumps({"blueprint": "prime_sweep_scale",
                           "params": {"workers": workers, "start": start, "chunk_size": CHUNK}})
        headers = {"Content-Type": "application/json", "Authorization": self.auth}
        for tries in (1, 2):  # a connection the node closed while idle is opened again once
            conn = self._conn(idx)
            try:
                conn.request("POST", "/api/v1/jobs", body, headers)
                r = conn.getresponse()
                data = r.read()
            except (http.client.HTTPException, ConnectionError) as e:
                conn.close()
                self.local.conns.pop(idx, None)
                if tries == 2:
                    raise OSError(f"submit to node {idx} failed: {e}") from None
                continue
            if r.status != 201:
                raise OSError(f"submit to node {idx}: HTTP {r.status}: {data[:200]!r}")
            return str(json.loads(data)["job_id"])
        raise AssertionError("unreachable")


def exact(w: Watch, jid: str, workers: int, start: int) -> dict[str, Any]:
    res = w.result(jid) or {}
    got = res.get("prime_count") if isinstance(res, dict) else None
    want = sweep_count(start, workers, CHUNK)
    return {"prime_count": got, "expected": want, "exact": got == want}


def one_job(c: Cluster, w: Watch, workers: int, start: int, timeout: float, procs: int) -> dict[str, Any]:
    idx = c.live()[0].index
    mem0 = w.used_memory()
    cpu_before = cpu_seconds(c, w)
    t0 = time.perf_counter()
    jid = submit(c, idx, workers, start)
    t_ack = time.perf_counter()
    owner = None
    while owner is None and time.perf_counter() - t0 < 60:
        owner = w.owner(jid) or (None if w.job(jid)["status"] not in TERMINAL else "-")
        time.sleep(0.01)
    end = w.until(jid, lambda j: j["status"] in TERMINAL, timeout)
    wall = end["t"] - t0
    n = agents_of(workers)
    cpu = cpu_ms_per(cpu_before, cpu_seconds(c, w), n)
    out: dict[str, Any] = {"workers": workers, "agents": n, "job_id": jid, "status": end["status"],
                           "submit_s": t_ack - t0, "wall_s": wall, "agents_done": end["done"],
                           "agents_per_s": end["done"] / wall, "owner": owner, "cpu_ms_per_agent": cpu}
    if end["status"] not in TERMINAL:
        out["timed_out"] = True
        cancel(c, jid)
        note(f"job of {n} agents", out)
        return out
    out.update(exact(w, jid, workers, start))
    out["s_per_agent"] = wall / n
    keys = w.key_bytes(jid)
    out["redis"] = {"used_memory_delta": w.used_memory() - mem0, "key_bytes": keys,
                    "bytes_per_agent": (w.used_memory() - mem0) / n, "key_bytes_per_agent": sum(keys.values()) / n}
    node = next((p for p in c.nodes if p.name == owner), None)
    out["owner_vm_hwm_mb"] = vm_hwm_mb(node.pid) if node is not None and node.alive() else None
    pool_s = pool_seconds(workers, start, procs)
    out["pool"] = {"procs": procs, "seconds": pool_s, "tasks_per_s": workers / pool_s}
    note(f"job of {n} agents", out)
    return out


def cpu_seconds(c: Cluster, w: Watch) -> dict[str, float]:
    """CPU seconds so far of each node's main process, of its executor pool, of Redis and of this
    bench (which submits and watches from the same cores)."""
    out: dict[str, float] = {}
    for n in c.live():
        try:
            p = psutil.Process(n.pid)
            t = p.cpu_times()
            out["nodes"] = out.get("nodes", 0.0) + t.user + t.system
            out["pools"] = out.get("pools", 0.0) + sum(sum(ch.cpu_times()[:2]) for ch in p.children(recursive=True))
        except psutil.Error:
            pass
    t = psutil.Process(int(w.r.info("server")["process_id"])).cpu_times()
    out["redis"] = t.user + t.system
    t = psutil.Process().cpu_times()
    out["bench"] = t.user + t.system
    return out


def cpu_ms_per(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """CPU milliseconds per unit (job or agent) between two :func:`cpu_seconds`, and their total."""
    out = {k: round((after.get(k, 0.0) - before.get(k, 0.0)) * 1000 / max(1, n), 3) for k in after}
    out["total"] = round(sum(out.values()), 3)
    return out


def small_jobs(c: Cluster, w: Watch, count: int, start: int, timeout: float, procs: int) -> dict[str, Any]:
    nodes = [n.index for n in c.live()]
    lat: list[float] = []
    client = KeepAlive(c)

    def one(i: int) -> str | None:
        t = time.perf_counter()
        try:
            jid = client.submit(nodes[i % len(nodes)], SMALL_WORKERS, start)
        except OSError as e:  # refused or timed out: counted, the rest go on
            print(f"[scale] submit failed: {e}", file=sys.stderr, flush=True)
            return None
        lat.append(time.perf_counter() - t)
        return jid

    cpu_before = cpu_seconds(c, w)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as ex:
        submitted = list(ex.map(one, range(count)))
    ids = [j for j in submitted if j is not None]
    t_submitted = time.perf_counter()
    deadline = t0 + timeout
    # a job leaves the active set in the write that makes it terminal: one SCARD per look
    # instead of every job's status (the observer runs on the same cores as the cluster)
    while w.r.scard(f"{w.ns}:jobs:active") and time.perf_counter() < deadline:
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    cpu_after = cpu_seconds(c, w)
    pipe = w.r.pipeline(transaction=False)
    for jid in ids:
        pipe.hget(f"{w.ns}:job:{jid}", "status")
    left = {jid for jid, st in zip(ids, pipe.execute(), strict=True) if st not in TERMINAL}
    with ThreadPoolExecutor(16) as ex:  # cut at the timeout: not left running under the next part
        list(ex.map(lambda jid: cancel(c, jid), sorted(left)))
    want = sweep_count(start, SMALL_WORKERS, CHUNK)
    wrong = [j for j in ids if j not in left and (w.result(j) or {}).get("prime_count") != want]
    lat.sort()
    lat = lat or [float("nan")]
    pool_s = pool_seconds(count * SMALL_WORKERS, start, procs)
    out = {"jobs": count, "agents_per_job": agents_of(SMALL_WORKERS), "wall_s": wall, "submit_errors": count - len(ids),
            "submit_s": t_submitted - t0, "submit_p50_s": lat[len(lat) // 2], "submit_max_s": lat[-1],
            "finished": len(ids) - len(left), "jobs_per_s": (len(ids) - len(left)) / wall, "wrong_counts": len(wrong),
            "exact": not wrong and not left and len(ids) == count,
            "cpu_ms_per_job": cpu_ms_per(cpu_before, cpu_after, len(ids)),
            "pool": {"procs": procs, "tasks": count * SMALL_WORKERS, "seconds": pool_s,
                     "tasks_per_s": count * SMALL_WORKERS / pool_s}}
    note("small jobs", out)
    return out


def owner_kill(c: Cluster, w: Watch, workers: int, start: int, timeout: float) -> dict[str, Any]:
    """SIGKILL the owner at 50 %: seconds until agents_done grows under another node's lease."""
    idx = c.live()[0].index
    jid = submit(c, idx, workers, start)
    n = agents_of(workers)
    half = w.until(jid, lambda j: j["done"] >= n // 2 or j["status"] in TERMINAL, timeout, poll=0.005)
    victim = w.owner(jid)
    out: dict[str, Any] = {"workers": workers, "agents": n, "job_id": jid, "victim": victim}
    if half["done"] < n // 2 or half["status"] in TERMINAL or victim is None:
        out.update(reached_half=False, status=half["status"], agents_done=half["done"])
        if half["status"] not in TERMINAL:
            cancel(c, jid)
        note("owner kill", out)
        return out
    node = c.node_named(victim)
    c.kill9(node.index)
    t_kill = time.perf_counter()
    done_at_kill = w.job(jid)["done"]
    deadline = t_kill + timeout
    new_owner = None
    while time.perf_counter() < deadline and (new_owner is None or new_owner == victim):
        new_owner = w.owner(jid)
        time.sleep(0.01)
    t_lease = time.perf_counter()
    base = w.job(jid)["done"]
    moved = w.until(jid, lambda j: j["done"] > base or j["status"] in TERMINAL, timeout, poll=0.01)
    end = w.until(jid, lambda j: j["status"] in TERMINAL, timeout)
    out.update(reached_half=True, done_at_kill=done_at_kill, new_owner=new_owner,
               lease_taken_s=t_lease - t_kill, recovery_s=moved["t"] - t_kill, status=end["status"],
               after_kill_wall_s=end["t"] - t_kill)
    if end["status"] in TERMINAL:
        out.update(exact(w, jid, workers, start))
    else:
        cancel(c, jid)
    c.start(node.index)
    note("owner kill", out)
    return out


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="workers per job, comma-separated")
    ap.add_argument("--small-jobs", type=int, default=1000, help="how many 20-agent jobs")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--capacity", type=int, default=os.cpu_count() or 1, help="executor slots per node")
    ap.add_argument("--kill-size", type=int, default=None, help="workers of the owner-kill job (default: largest)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds one job may take before it is cut")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes (CI): 200,1000 workers, 30 small jobs, owner kill at 2000 workers")
    ap.add_argument("--json", default=None, help="also write the JSON to this file")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.small_jobs = "200,1000", 30
        a.kill_size = a.kill_size or 2000
    a.sizes = sorted(int(s) for s in str(a.sizes).split(",") if s.strip())
    a.kill_size = a.kill_size or a.sizes[-1]
    return a


def run(a: argparse.Namespace) -> dict[str, Any]:
    procs = a.nodes * a.capacity
    start = 1_000_003
    res: dict[str, Any] = {"machine": machine(), "nodes": a.nodes, "slots_per_node": a.capacity,
                           "pool_procs": procs, "chunk_size": CHUNK}
    server = RedisServer(appendonly=False).start()
    c = Cluster(redis_url=server.url, size=a.nodes,
                extra_env={"MIRROR_NEURON_EXECUTOR_CAPACITY": str(a.capacity)})
    try:
        c.start_all()
        c.wait_leader()
        w = Watch(server.client(), c.namespace)
        w.until(submit(c, 1, 4, start), lambda j: j["status"] in TERMINAL, 60)  # warm the pools
        res["jobs"] = [one_job(c, w, n, start, a.timeout, procs) for n in a.sizes]
        res["small_jobs"] = small_jobs(c, w, a.small_jobs, start, a.timeout, procs)
        res["owner_kill"] = owner_kill(c, w, a.kill_size, start, a.timeout)
    finally:
        c.cleanup()
        server.cleanup()
    done = [j for j in res["jobs"] if "s_per_agent" in j]
    if len(done) >= 2 and done[0]["agents"] != done[-1]["agents"]:
        res["flatness"] = {"from": done[0]["agents"], "to": done[-1]["agents"],
                           "s_per_agent_ratio": done[-1]["s_per_agent"] / done[0]["s_per_agent"], "goal": 1.3}
    return res


def _cpu(ms: dict[str, float]) -> str:
    return f"{ms['total']:.3f} = " + " + ".join(f"{ms.get(k, 0):.3f}" for k in ("nodes", "pools", "redis", "bench"))


def rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    out = []
    for j in res["jobs"]:
        pool = j.get("pool", {}).get("tasks_per_s")
        what = (f"{j['status']}, exact" if j.get("exact") else f"{j['status']}, NOT exact") if "exact" in j else \
            f"cut at {j['wall_s']:.0f}s, {j['agents_done']} done"
        out.append((f"one job of {j['agents']} agents", f"{j['agents_per_s']:.0f} agents/s",
                    f"Pool({res['pool_procs']}) {pool:.0f}/s" if pool else "-", what))
    for j in res["jobs"]:
        out.append((f"CPU per agent, {j['agents']} agents", _cpu(j["cpu_ms_per_agent"]), "-",
                    "nodes / pools / redis / bench, ms"))
    if "flatness" in res:
        f = res["flatness"]
        out.append((f"time per agent at {f['to']} vs {f['from']}", f"{f['s_per_agent_ratio']:.2f}x", "-",
                    "goal <= 1.3x"))
    big = next((j for j in reversed(res["jobs"]) if "redis" in j), None)
    if big:
        out.append((f"Redis bytes per agent ({big['agents']} agents)", f"{big['redis']['bytes_per_agent']:.0f}",
                    f"keys {big['redis']['key_bytes_per_agent']:.0f}", "used_memory delta / MEMORY USAGE"))
        out.append((f"owner peak RSS ({big['agents']} agents)", f"{big['owner_vm_hwm_mb'] or 0:.0f} MiB", "-",
                    "VmHWM of the owner node"))
    s = res["small_jobs"]
    out.append((f"{s['jobs']} jobs of {s['agents_per_job']} agents", f"{s['jobs_per_s']:.1f} jobs/s",
                f"Pool {s['pool']['tasks_per_s'] / SMALL_WORKERS:.0f} jobs/s",
                f"{s['finished']} finished{f', {r} refused' if (r := s['submit_errors']) else ''}, "
                f"{'exact' if s['wrong_counts'] == 0 else 'NOT exact'}; goal >= 200"))
    out.append(("CPU per small job", _cpu(s["cpu_ms_per_job"]), "-", "nodes / pools / redis / bench, ms"))
    k = res["owner_kill"]
    if k.get("reached_half"):
        out.append((f"owner SIGKILL at 50 % of {k['agents']} agents", f"{k['recovery_s']:.2f}s to progress",
                    f"lease {k['lease_taken_s']:.2f}s", f"{k['status']}, {'exact' if k.get('exact') else 'NOT exact'}"))
    else:
        out.append((f"owner SIGKILL at 50 % of {k['agents']} agents", "50 % not reached", "-",
                    f"{k['agents_done']} done"))
    return out


def main() -> int:
    a = _args()
    res = run(a)
    emit(res, table(rows(res), ("measure", "value", "baseline", "note")), a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
