"""Retention soak: many small jobs on a real cluster, then Redis must shrink back once they expire.

    python3 -m bench.soak [--jobs 5000] [--retention 60s] [--nodes 3] [--window 60] [--client-idle 10]
                          [--json out.json]

Steps: start redis-server (``timeout`` = ``--client-idle``) and N nodes with
``MIRROR_NEURON_JOB_RETENTION=<retention>``; run and prune a few warm-up jobs (scripts loaded,
pools warm); run every reading command once (Redis 7 allocates a ~24 KB latency histogram per
command name the first time it runs); wait until Redis has closed the connections idle longer
than ``--client-idle`` and shrunk idle client buffers, empty the slow log and record ``INFO
memory`` (raw, then after ``MEMORY PURGE``, which returns jemalloc's dirty pages: RSS moves,
``used_memory`` barely does); submit the jobs through the API (``prime_sweep_scale``, 2 workers,
chunk_size 10), at most ``--window`` unfinished at a time, and wait until all are terminal;
record the peak and the bytes per live terminal job; wait until the retention of the last job
has passed and record ``DBSIZE`` / ``INFO keyspace`` before any SCAN touches a key; then SCAN
until no key names a soak job and the indexes ``{ns}:jobs``, ``{ns}:jobs:expiry``,
``{ns}:jobs:active`` hold none of their ids (with a deadline); settle and read as before.

Why the two readings settle first: each node's Redis connection pool keeps every connection a
burst opened (about 2 KB each in Redis: 12 connections before, 104 after, in one run), and the
slow log keeps its last 128 entries (up to 80 KB on a loaded machine). Neither depends on the
retention; both readings treat them alike, and the table shows what the slow log held.

Passes (exit 0) only if no key or index entry of an expired job is left and ``used_memory`` is
within ``--tolerance`` (10 %) of its pre-soak value. The numbers are printed whatever happens:
a table on stderr (with where the difference is: the cluster's own keys, clients, the rest, and
the commands first run after the baseline), one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit, machine, table
from mn_node.config import parse_duration
from tests.support.cluster import Cluster
from tests.support.redis import RedisServer

TERMINAL = {"completed", "failed", "cancelled"}
PARAMS = {"workers": 2, "start": 1000, "chunk_size": 10}
MEM_FIELDS = ("used_memory", "used_memory_dataset", "used_memory_rss", "used_memory_scripts",
              "mem_fragmentation_ratio", "allocator_allocated", "mem_allocator")


def memory(r: Any, purge: bool = False) -> dict[str, Any]:
    """INFO memory's main fields; with ``purge`` a second reading after MEMORY PURGE."""
    info = r.info("memory")
    out: dict[str, Any] = {k: info.get(k) for k in MEM_FIELDS}
    stats = r.memory_stats()  # where used_memory goes beyond the keys: dict tables, AOF and client buffers
    out["stats"] = {k: v for k, v in stats.items() if k.startswith(("overhead", "aof", "clients", "replication",
                                                                      "keys.", "dataset.bytes", "db."))}
    out["clients"] = {"connected": r.info("clients")["connected_clients"], "bytes": info.get("mem_clients_normal")}
    # Redis 7 gives each command name a latency histogram (about 24 KB) the first time it runs
    out["commands_run"] = sorted(k.removeprefix("cmdstat_") for k in r.info("commandstats"))
    if purge:
        try:
            r.execute_command("MEMORY", "PURGE")
            after = r.info("memory")
            out["after_purge"] = {k: after.get(k) for k in MEM_FIELDS}
        except Exception as e:  # not jemalloc: nothing to purge
            out["after_purge"] = {"error": str(e)}
    return out


def settled(r: Any) -> dict[str, Any]:
    """The reading the verdict compares: ``memory`` after SLOWLOG RESET. Redis' slow log keeps the
    last 128 commands slower than 10 ms with up to 32 arguments of 128 bytes each (tens of KB on
    a loaded machine, whatever the retention); it is emptied before both readings and what that
    freed is kept next to them."""
    raw = r.info("memory")["used_memory"]
    entries = int(r.execute_command("SLOWLOG", "LEN"))
    r.execute_command("SLOWLOG", "RESET")
    out = memory(r, purge=True)
    out["slowlog"] = {"entries": entries, "used_memory_with_them": raw, "freed": raw - out["used_memory"]}
    return out


def keyspace(r: Any) -> dict[str, Any]:
    """DBSIZE and INFO keyspace: read before any SCAN, so no lookup has expired a key yet."""
    db = r.info("keyspace").get("db0", {})
    return {"dbsize": r.dbsize(), "keys": db.get("keys", 0), "expires": db.get("expires", 0)}


def small_keys(r: Any, ns: str, most: int = 200) -> dict[str, int]:
    """MEMORY USAGE of every key when there are few (the cluster's own keys when no job is kept)."""
    if r.dbsize() > most:
        return {}
    return {k.removeprefix(ns + ":"): int(r.memory_usage(k, samples=0) or 0) for k in sorted(r.scan_iter(count=1000))}


def submit(c: Cluster, n: int) -> str:
    idx = 1 + n % len(c.nodes)
    body = {"blueprint": "prime_sweep_scale", "params": PARAMS}
    for attempt in range(5):
        try:
            return str(c.post(idx, "/api/v1/jobs", body, timeout=30)["job_id"])
        except Exception:
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
            idx = 1 + idx % len(c.nodes)
    raise AssertionError("unreachable")


def statuses(r: Any, ns: str, ids: Iterable[str]) -> dict[str, str | None]:
    ids = list(ids)
    pipe = r.pipeline(transaction=False)
    for jid in ids:
        pipe.hget(f"{ns}:job:{jid}", "status")
    return dict(zip(ids, pipe.execute(), strict=True))


def run_jobs(c: Cluster, r: Any, n: int, window: int, timeout: float) -> dict[str, Any]:
    """Submit n jobs, at most ``window`` unfinished at once; poll their status in Redis."""
    ns = c.namespace
    done: dict[str, str] = {}
    open_: set[str] = set()
    peak: dict[str, Any] = {"used_memory": 0}
    submitted = 0
    t0 = time.monotonic()
    last_end_ms = 0
    with ThreadPoolExecutor(8) as pool:
        while len(done) < n:
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"soak: {len(done)}/{n} jobs terminal after {timeout:g}s, {len(open_)} open")
            room = min(window - len(open_), n - submitted)
            if room > 0:
                open_.update(pool.map(lambda k: submit(c, k), range(submitted, submitted + room)))
                submitted += room
            for jid, st in statuses(r, ns, open_).items():
                if st in TERMINAL or st is None:  # None: expired before we looked (counted as terminal)
                    done[jid] = st or "expired"
                    open_.discard(jid)
                    last_end_ms = int(time.time() * 1000)
            mem = r.info("memory")["used_memory"]
            if mem > peak["used_memory"]:
                peak = {"used_memory": mem, "at_s": time.monotonic() - t0, "terminal": len(done)}
            time.sleep(0.2)
    counts: dict[str, int] = {}
    for st in done.values():
        counts[st] = counts.get(st, 0) + 1
    return {"ids": list(done), "seconds": time.monotonic() - t0, "status_counts": counts, "peak": peak,
            "last_end_ms": last_end_ms}


def live_terminal(r: Any, ns: str, ids: list[str]) -> int:
    pipe = r.pipeline(transaction=False)
    for jid in ids:
        pipe.exists(f"{ns}:job:{jid}")
    return sum(int(x) for x in pipe.execute())


def job_key_bytes(r: Any, ns: str, ids: list[str], sample: int = 20) -> dict[str, Any]:
    """MEMORY USAGE of each key of ``sample`` live jobs (their mean per key kind)."""
    kinds = {"hash": "{ns}:job:{id}", "agents": "{ns}:job:{id}:agents", "events": "{ns}:job:{id}:events",
             "runs": "{ns}:job:{id}:runs", "attempts": "{ns}:job:{id}:attempts", "epoch": "{ns}:epoch:job:{id}"}
    sums = dict.fromkeys(kinds, 0)
    seen = 0
    for jid in ids[-sample * 3:]:
        if seen >= sample or not r.exists(f"{ns}:job:{jid}"):
            continue
        seen += 1
        for kind, pat in kinds.items():
            sums[kind] += int(r.memory_usage(pat.format(ns=ns, id=jid), samples=0) or 0)
    per = {k: round(v / seen) for k, v in sums.items()} if seen else {}
    return {"jobs_sampled": seen, "bytes": per, "total": sum(per.values())}


def leftovers(r: Any, ns: str, ids: list[str]) -> dict[str, Any]:
    """Every key that names a soak job, and the soak ids still in the job indexes."""
    wanted = set(ids)
    keys: list[str] = []
    bundles: list[str] = []
    for pat in (f"{ns}:job:*", f"{ns}:epoch:job:*", f"{ns}:lease:job:*"):
        for k in r.scan_iter(match=pat, count=1000):
            if any(part in wanted for part in k.split(":")):
                keys.append(k)
    for k in r.scan_iter(match=f"{ns}:bundle:*", count=1000):
        bundles.append(k)
    index: dict[str, int] = {}
    for name in ("jobs", "jobs:expiry"):
        members = {m for m, _ in r.zscan_iter(f"{ns}:{name}", count=1000)}
        index[name] = len(members & wanted)
    index["jobs:active"] = len(set(r.smembers(f"{ns}:jobs:active")) & wanted)
    return {"keys": len(keys), "key_sample": keys[:10], "bundle_keys": len(bundles), "index": index,
            "index_bytes": {n: int(r.memory_usage(f"{ns}:{n}", samples=0) or 0) for n in ("jobs", "jobs:expiry")}}


def clean(left: dict[str, Any]) -> bool:
    return left["keys"] == 0 and left["bundle_keys"] == 0 and not any(left["index"].values())


def wait_expired(r: Any, ns: str, ids: list[str], deadline_s: float) -> tuple[dict[str, Any], float]:
    """SCAN until nothing of the soak jobs is left, or the deadline; returns the last scan."""
    t0 = time.monotonic()
    while True:
        left = leftovers(r, ns, ids)
        if clean(left) or time.monotonic() - t0 > deadline_s:
            return left, time.monotonic() - t0
        time.sleep(2)


def warm_up(c: Cluster, r: Any) -> None:
    """A few jobs end to end (scripts loaded, pools warm), then pruned so the baseline has none."""
    ids = [submit(c, k) for k in range(3)]
    deadline = time.monotonic() + 120
    while not all(s in TERMINAL for s in statuses(r, c.namespace, ids).values()):
        if time.monotonic() > deadline:
            raise AssertionError(f"warm-up jobs did not end: {statuses(r, c.namespace, ids)}")
        time.sleep(0.1)
    # a job reads terminal just before its coordinator releases the job lease (a second write), so
    # a lease key may outlive the prune by a moment: poll until nothing of the jobs is left
    c.post(1, "/api/v1/jobs/prune", {})
    left, waited = wait_expired(r, c.namespace, ids, 30)
    if not clean(left):
        raise AssertionError(f"warm-up jobs still in Redis {waited:.0f} s after prune: {left}")


def settle(r: Any, idle_s: int, deadline_s: float = 120) -> dict[str, Any]:
    """Wait until Redis has closed the connections idle longer than ``idle_s`` (its ``timeout``)
    and shrunk the idle clients' buffers (clientsCron: query buffers after 2 s idle, reply
    buffers every 5 s): at least ``idle_s`` + 6 s, then until the client count holds for 5 s."""
    t0 = time.monotonic()
    counts: list[int] = []
    while True:
        counts.append(int(r.info("clients")["connected_clients"]))
        waited = time.monotonic() - t0
        if waited >= idle_s + 6 and len(counts) >= 5 and len(set(counts[-5:])) == 1:
            return {"waited_s": round(waited, 1), "clients": counts[-1]}
        if waited > deadline_s:
            return {"waited_s": round(waited, 1), "clients": counts[-1], "unsettled": counts[-10:]}
        time.sleep(1)


def soak(args: argparse.Namespace, retention_s: float) -> dict[str, Any]:
    srv = RedisServer().start()
    env = {"MIRROR_NEURON_JOB_RETENTION": args.retention}
    c = Cluster(redis_url=srv.url, size=args.nodes, extra_env=env)
    res: dict[str, Any] = {"benchmark": "soak", "jobs": args.jobs, "nodes": args.nodes, "retention": args.retention,
                           "params": PARAMS, "window": args.window}
    try:
        _soak_steps(args, retention_s, srv, c, res)
    except Exception as e:  # the numbers gathered so far are printed all the same
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        c.cleanup()
        srv.cleanup()
    return res


def _soak_steps(args: argparse.Namespace, retention_s: float, srv: RedisServer, c: Cluster,
                res: dict[str, Any]) -> None:
    r = srv.client()
    r.config_set("lazyfree-lazy-expire", "no")
    # Redis closes connections idle this long: a node's connection pool keeps every connection a
    # burst opened (about 2 KB each in Redis); both readings then count the connections in use
    r.config_set("timeout", str(args.client_idle))
    c.start_all()
    c.wait_leader()
    c.wait_started()
    warm_up(c, r)
    # Redis 7 allocates a latency histogram (about 24 KB, `latency-tracking`) for each command name
    # the first time it runs: every command the readings use runs once before the baseline
    settled(r), keyspace(r), small_keys(r, c.namespace), r.exists(c.namespace + ":job:none")
    res["before"] = {"settle": settle(r, args.client_idle), "memory": settled(r), "keyspace": keyspace(r),
                     "key_bytes": small_keys(r, c.namespace)}
    run = run_jobs(c, r, args.jobs, args.window, args.timeout)
    ids = run.pop("ids")
    res["run"] = {k: v for k, v in run.items() if k != "last_end_ms"}
    res["run"]["jobs_per_s"] = args.jobs / run["seconds"]
    live = live_terminal(r, c.namespace, ids)
    end_mem = r.info("memory")["used_memory"]
    res["at_end"] = {"used_memory": end_mem, "live_terminal_jobs": live, "keyspace": keyspace(r),
                     "bytes_per_live_job": (end_mem - res["before"]["memory"]["used_memory"]) / max(1, live),
                     "job_keys": job_key_bytes(r, c.namespace, ids),
                     "index_bytes": {n: int(r.memory_usage(f"{c.namespace}:{n}", samples=0) or 0)
                                     for n in ("jobs", "jobs:expiry")}}
    wait_s = max(0.0, run["last_end_ms"] / 1000 + retention_s + 2 - time.time())
    time.sleep(wait_s)  # the retention itself: nothing to poll until it has passed
    res["after_retention"] = {"waited_s": wait_s, "keyspace_before_scan": keyspace(r),
                              "memory_before_scan": memory(r)}
    left, scan_s = wait_expired(r, c.namespace, ids, args.deadline)
    res["after"] = {"scan_s": scan_s, "leftovers": left, "keyspace": keyspace(r), "settle": settle(r, args.client_idle),
                    "memory": settled(r), "key_bytes": small_keys(r, c.namespace)}


def verdict(res: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """used_memory after vs before, and where the difference is: the cluster's own keys (its
    capped streams fill up with time), client connections, and the rest (no key: the slow log's
    last entries, allocator rounding)."""
    if "after" not in res:
        return {"memory_within_tolerance": False, "no_expired_job_left": False, "error": res.get("error")}
    b, a = res["before"], res["after"]
    before, after = b["memory"]["used_memory"], a["memory"]["used_memory"]
    ratio = (after - before) / before
    keys = sum(a["key_bytes"].values()) - sum(b["key_bytes"].values())
    clients = (a["memory"]["clients"]["bytes"] or 0) - (b["memory"]["clients"]["bytes"] or 0)
    raw_b, raw_a = b["memory"]["slowlog"]["used_memory_with_them"], a["memory"]["slowlog"]["used_memory_with_them"]
    return {"used_memory_delta": after - before, "used_memory_ratio": ratio,
            "delta_in": {"cluster_keys": keys, "clients": clients, "rest": after - before - keys - clients},
            "ratio_with_slowlog": (raw_a - raw_b) / raw_b,
            "commands_first_run_after_baseline": sorted(set(a["memory"]["commands_run"])
                                                        - set(b["memory"]["commands_run"])),
            "memory_within_tolerance": abs(ratio) <= tolerance, "no_expired_job_left": clean(a["leftovers"])}


def purged(mem: dict[str, Any]) -> str:
    used = mem.get("after_purge", {}).get("used_memory")
    return f"{used:,}" if isinstance(used, int) else "-"


def rows(res: dict[str, Any]) -> list[list[Any]]:
    b, a, e, ok = res["before"]["memory"], res["after"]["memory"], res["at_end"], res["verdict"]
    left = res["after"]["leftovers"]
    pk = res["run"]["peak"]
    kb = res["after_retention"]["keyspace_before_scan"]
    d = ok["delta_in"]
    return [
        ["jobs", f"{res['jobs']:,} on {res['nodes']} nodes", f"{res['run']['seconds']:.0f} s",
         f"{res['run']['jobs_per_s']:.1f} jobs/s"],
        ["statuses", res["run"]["status_counts"], "", ""],
        ["used_memory before (raw / after purge)", f"{b['used_memory']:,}", purged(b),
         f"dataset {b['used_memory_dataset']:,}, {b['clients']['connected']} clients"],
        ["used_memory peak", f"{pk['used_memory']:,}", f"at {pk.get('at_s', 0):.0f} s",
         f"{pk.get('terminal', 0)} ended"],
        ["bytes per live terminal job", f"{e['bytes_per_live_job']:,.0f}", f"{e['live_terminal_jobs']} live",
         f"keys of one job {e['job_keys']['total']:,} B"],
        ["keys after retention, before any SCAN", f"dbsize {kb['dbsize']}", f"expires {kb['expires']}", ""],
        ["used_memory after (raw / after purge)", f"{a['used_memory']:,}", purged(a),
         f"{ok['used_memory_ratio']:+.1%} ({'ok' if ok['memory_within_tolerance'] else 'FAIL'}), "
         f"{a['clients']['connected']} clients"],
        ["  difference in: cluster keys / clients / rest", f"{d['cluster_keys']:+,}", f"{d['clients']:+,}",
         f"{d['rest']:+,}"],
        ["slow log emptied before each reading", f"{b['slowlog']['entries']} / {a['slowlog']['entries']} entries",
         f"{b['slowlog']['freed']:,} / {a['slowlog']['freed']:,} B",
         f"with them {ok['ratio_with_slowlog']:+.1%}"],
        ["commands first run after the baseline", ", ".join(ok["commands_first_run_after_baseline"]) or "none",
         "", ""],
        ["expired-job keys / index ids left", left["keys"], left["index"],
         "ok" if ok["no_expired_job_left"] else "FAIL"],
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--retention", default="60s", help="MIRROR_NEURON_JOB_RETENTION for the nodes")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--window", type=int, default=60, help="most jobs unfinished at once")
    p.add_argument("--tolerance", type=float, default=0.10, help="used_memory after vs before (fraction)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds for all jobs to end")
    p.add_argument("--deadline", type=float, default=120, help="seconds of scanning after the retention")
    p.add_argument("--client-idle", type=int, default=10,
                   help="Redis timeout (s): idle connections closed before each reading")
    p.add_argument("--json", dest="json_path")
    args = p.parse_args()
    retention_s = parse_duration(args.retention, "--retention")
    res = soak(args, retention_s)
    res["verdict"] = verdict(res, args.tolerance)
    res["machine"] = machine()
    text = table(rows(res), ["what", "value", "", ""]) if "after" in res else f"soak stopped: {res.get('error')}"
    emit(res, text, args.json_path)
    ok = res["verdict"]
    return 0 if ok["memory_within_tolerance"] and ok["no_expired_job_left"] else 1


if __name__ == "__main__":
    sys.exit(main())
