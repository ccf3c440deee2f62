"""One fault-injection run: build the namespaces, start Redis and the nodes, run workload +
observers + nemesis for the given minutes, heal, drain, dump, check, clean up.

Everything created is removed in ``finally`` (processes by PID, then the namespaces); the
run directory keeps the history and the node logs (removed on success unless ``keep``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from mn_node.config import api_token
from tests.faults import checker
from tests.faults.history import History, read
from tests.faults.nemesis import ALL_FAULTS, FAULTS, Nemesis, schedule
from tests.faults.netns import Net
from tests.faults.observe import MetricsSampler, RedisSampler, Workload, http_get
from tests.faults.system import NodeSet, RedisProc, SentinelRedis

TTL_S = 2.5  # the daemon's default lease TTL; the nodes run with defaults


@dataclass
class Options:
    seed: int
    minutes: float
    nodes: int = 3
    workdir: Path | None = None
    keep: bool = False
    appendfsync: str = "always"
    max_open_jobs: int = 4
    capacity: int = 1
    drain_timeout: float = 240.0
    quiet: bool = False
    faults: tuple[str, ...] = FAULTS  # the nemesis' fault kinds; () = no nemesis (workload only)
    node_module: str = "mn_node.daemon"  # tests only: e.g. tests.faults.broken_node
    node_env: dict[str, str] | None = None  # extra environment for every node
    redis: str = "single"  # or "sentinel": a primary, two replicas, three Sentinels (nemesis.SENTINEL_RUN_FAULTS)
    submit_interval: float = 1.5  # seconds between the workload's submissions (while under max_open_jobs)


@dataclass
class Result:
    report: checker.Report
    history: Path
    workdir: Path
    summary: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.report.ok


def _log(opts: Options, msg: str) -> None:
    if not opts.quiet:
        print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Abort(RuntimeError):
    """Raised by a wait condition that can never become true (e.g. a daemon exited)."""


def _wait(what: str, fn: Any, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = fn()
        except Abort:
            raise
        except Exception:
            v = None
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _terminate_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(opts: Options) -> Result:
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix=f"mn-faults-{opts.seed}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    hist_path = workdir / "history.jsonl"
    hist = History(hist_path)
    salt = random.Random()  # namespace names/subnet must not collide with a concurrent run
    prefix = f"mnf{salt.randrange(16**4):04x}"
    sentinel = opts.redis == "sentinel"
    net = Net(prefix, f"10.88.{salt.randint(1, 254)}", opts.nodes, redis_hosts=3 if sentinel else 1)
    acks = int((opts.node_env or {}).get("MIRROR_NEURON_REDIS_MIN_ACKS", "1"))
    rds: RedisProc | SentinelRedis = (SentinelRedis(net, workdir / "redis", opts.appendfsync, acks) if sentinel
                                      else RedisProc(net, workdir / "redis", appendfsync=opts.appendfsync))
    ns = f"mnf{opts.seed}x{salt.randrange(10**6)}"
    nodes = NodeSet(net, rds.url, workdir, ns, capacity=opts.capacity, node_module=opts.node_module,
                    extra_env=dict(opts.node_env or {}))
    samplers: list[Any] = []
    old_term = signal.signal(signal.SIGTERM, _terminate_on_signal)
    leftovers: list[str] = []
    t_begin = time.monotonic()
    try:
        hist.add("run", seed=opts.seed, minutes=opts.minutes, nodes=opts.nodes, namespace=ns, prefix=prefix,
                 subnet=net.subnet, appendfsync=opts.appendfsync, wall=time.time(), faults=list(opts.faults),
                 node_module=opts.node_module, node_env=opts.node_env or {}, redis=opts.redis)
        net.create()
        net.enter_ctl()
        rds.start()
        _wait("redis", rds.pingable, 20)
        if isinstance(rds, SentinelRedis):
            _wait("the Sentinels to see the replicas and each other", rds.ready, 60, 0.2)
        for n in nodes.nodes:
            nodes.start(n)
        def apis_up() -> bool:
            for n, rc in nodes.unexpected_exits():
                raise Abort(f"{n.name} exited with {rc} at start: {nodes.log_tail(n, 1500)}")
            return all(http_get(n.api + "/api/v1/health")[0] in (200, 503) for n in nodes.nodes)

        _wait("every node's API", apis_up, 60)
        _wait("a leader", lambda: rds.client().get(f"{ns}:lease:cluster:leader"), 30)
        _log(opts, f"cluster up: {opts.nodes} nodes in namespaces {prefix}-*, redis {rds.url}, history {hist_path}")

        rs = RedisSampler(hist, rds, ns)
        samplers = [*(MetricsSampler(hist, n) for n in nodes.nodes), rs]
        wl = Workload(hist, nodes, rs, api_token(nodes.cookie.encode()), opts.seed, opts.max_open_jobs,
                      opts.submit_interval)
        samplers.append(wl)
        for s in samplers:
            s.start()

        nem = Nemesis(hist, net, rds, nodes, TTL_S)
        next_fault = schedule(opts.seed, opts.nodes, TTL_S, opts.faults) if opts.faults else None
        stop_at = time.monotonic() + opts.minutes * 60
        time.sleep(min(3.0, opts.minutes * 6))  # a calm start: the workload gets going first
        while next_fault is None and time.monotonic() < stop_at:
            time.sleep(min(1.0, max(0.0, stop_at - time.monotonic())))  # no nemesis: the run's duration
            nem.restart_crashed()
        while next_fault is not None and time.monotonic() < stop_at:
            f = next_fault()
            nem.run_one(f, stop_at)
            _log(opts, f"fault #{f.n} {f.type} target={f.target or 'redis'} hold={f.hold}s "
                       f"(jobs acked {len(wl.acked)}, open {rs.open_jobs()})")
            if time.monotonic() + f.gap < stop_at:
                time.sleep(f.gap)  # the gap between faults is part of the schedule
        wl.stop()
        _log(opts, f"nemesis done ({sum(nem.counts.values())} faults); draining {rs.open_jobs()} open jobs")
        nem.settle("final heal")
        try:  # the checker judges every job in Redis, so wait for those whose submit was not answered too
            _wait("every job to end", lambda: rs.open_jobs() == 0 and not unfinished(rds.client(), ns),
                  opts.drain_timeout, 0.5)
        except TimeoutError as e:
            hist.add("note", what=str(e), open=sorted(rs.tracked))
        nem.restart_crashed()
        time.sleep(1.0)  # let the samplers take one more look at the settled system
        for s in samplers:
            s.stop()
        samplers = []
        hist.add("final", **final_dump(rds.client(timeout=5.0), ns))
        for n in nodes.nodes:
            rc = nodes.terminate(n)
            hist.add("note", what="stopped", node=n.name, rc=rc)
        fault_counts = dict(nem.counts)
        nem.note_primary("final heal")
        extra = {"failovers": dict(nem.failovers), "failovers_total": sum(nem.failovers.values()),
                 "sentinel_switches_logged": rds.switches_logged() if isinstance(rds, SentinelRedis) else 0,
                 "submits": {"attempted": wl.submits, "acknowledged": len(wl.acked),
                             "unacknowledged": wl.failed_submits}}
    finally:
        for s in samplers:
            s.stop()
        try:
            net.leave()
        finally:
            nodes.cleanup()
            rds.stop()
            leftovers = net.destroy()
            _keep_redis_logs(rds.dir, workdir)
            shutil.rmtree(rds.dir, ignore_errors=True)
            signal.signal(signal.SIGTERM, old_term)
            if leftovers:
                hist.add("note", what="processes left in namespaces were killed", pids=leftovers)
            hist.close()
    report = checker.check(read(hist_path))
    summary = {**make_summary(opts, report, fault_counts, hist_path, time.monotonic() - t_begin), **extra}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    if report.ok and not opts.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return Result(report, hist_path, workdir, summary)


def _keep_redis_logs(redis_dir: Path, workdir: Path) -> None:
    """The Redis servers' and Sentinels' logs (``+switch-master``, ``+promoted-slave``, syncs)
    go to ``workdir/redis-logs`` next to the history, so a kept run can be followed server by
    server; the data files go."""
    for log in redis_dir.rglob("*.log"):
        dest = workdir / "redis-logs" / f"{log.parent.name}-{log.name}"
        dest.parent.mkdir(exist_ok=True)
        shutil.copyfile(log, dest)


def unfinished(c: redis.Redis, ns: str) -> list[str]:
    """Jobs in Redis (the primary) not yet completed, failed or cancelled."""
    ids = c.zrange(f"{ns}:jobs", 0, -1)
    pipe = c.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(f"{ns}:job:{job_id}", "status")
    return [j for j, st in zip(ids, pipe.execute(), strict=True) if st not in checker.TERMINAL]


def final_dump(c: redis.Redis, ns: str) -> dict[str, Any]:
    """Everything the checker needs from Redis at the end, read after the system settled."""
    hist = []
    for eid, f in c.xrange(f"{ns}:leader:history", "-", "+"):
        hist.append({"id": eid, "epoch": int(f.get("epoch", 0)), "node": f.get("node"), "seq": int(f.get("seq", 0))})
    leader_events = [{"id": eid, "type": f.get("type"), "node": f.get("node"), "epoch": f.get("epoch")}
                     for eid, f in c.xrange(f"{ns}:events", "-", "+") if f.get("lease") == "cluster:leader"]
    jobs: dict[str, Any] = {}
    for job_id in c.zrange(f"{ns}:jobs", 0, -1):
        base = f"{ns}:job:{job_id}"
        pipe = c.pipeline(transaction=True)
        pipe.hgetall(base)
        pipe.hgetall(base + ":agents")
        pipe.hgetall(base + ":runs")
        pipe.get(f"{ns}:lease:job:{job_id}")
        h, agents, runs, lease = pipe.execute()
        states = {a: json.loads(v) for a, v in agents.items()}
        jobs[job_id] = {
            "status": h.get("status"), "error": h.get("error"), "owner": h.get("owner"),
            "epoch": int(h.get("epoch", 0) or 0), "fence": int(h.get("_fence", 0) or 0),
            "agents_done": int(h.get("agents_done", 0) or 0), "lease": lease,
            "request": json.loads(h.get("request") or "{}"),
            "result": json.loads(h["result"]) if h.get("result") else None,
            "completed": sorted(a for a, s in states.items() if s.get("status") == "completed"),
            "executors": sorted(a for a in states if a.startswith("prime_")),
            "runs": {a: int(v) for a, v in runs.items()},
        }
    return {"leader_history": hist, "leader_events": leader_events, "jobs": jobs}


def make_summary(opts: Options, rep: checker.Report, faults: dict[str, int], hist_path: Path,
                 took: float) -> dict[str, Any]:
    return {
        "seed": opts.seed, "minutes": opts.minutes, "nodes": opts.nodes, "took_s": round(took, 1),
        "redis": opts.redis, "node_env": opts.node_env or {},
        "faults": {k: faults.get(k, 0) for k in ALL_FAULTS if k in opts.faults or faults.get(k)},
        "faults_total": sum(faults.values()),
        "jobs": dict(rep.jobs), "failed_jobs": rep.failed_jobs[:20],
        "violations": [v.to_dict() for v in rep.violations], "violations_by_check": dict(rep.by_check()),
        "liveness_notes": rep.liveness[:20], "stats": rep.stats,
        "history": str(hist_path), "ok": rep.ok,
    }


def render(summary: dict[str, Any]) -> str:
    lines = [f"fault run: seed {summary['seed']}, {summary['minutes']} min, {summary['nodes']} nodes, "
             f"redis {summary.get('redis', 'single')}, took {summary['took_s']} s", "", f"{'fault':<16}{'injected':>9}"]
    for k, v in summary["faults"].items():
        lines.append(f"{k:<16}{v:>9}")
    lines.append(f"{'total':<16}{summary['faults_total']:>9}")
    lines += ["", f"{'jobs':<16}{'count':>9}"]
    for k, v in sorted(summary["jobs"].items()):
        lines.append(f"{k:<16}{v:>9}")
    for fj in summary["failed_jobs"]:
        lines.append(f"  failed {fj['job']}: {fj['error']}")
    checks = ("leader_per_epoch", "stale_leader", "fenced_monotonic", "job_outcome", "rerun",
              "two_coordinators", "lost_job", "lost_ack", "daemon_exit", "final_dump")
    if summary.get("redis") == "sentinel":
        fo = summary.get("failovers", {})
        lines += ["", f"{'failovers':<16}{summary.get('failovers_total', 0):>9}  (primary changes seen; by fault: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(fo.items())) + ")",
                  f"{'+switch-master':<16}{summary.get('sentinel_switches_logged', 0):>9}  (most any Sentinel logged)"]
        if summary.get("node_env"):
            lines.append(f"node environment: {summary['node_env']}")
    if "submits" in summary:
        sb = summary["submits"]
        lines.append(f"submits: {sb['attempted']} attempted, {sb['acknowledged']} acknowledged (201), "
                     f"{sb['unacknowledged']} without an answer or refused")
    lines += ["", f"{'check':<20}{'violations':>11}"]
    for c in checks:
        lines.append(f"{c:<20}{summary['violations_by_check'].get(c, 0):>11}")
    if summary["liveness_notes"]:
        lines.append(f"(heal checks that did not settle for liveness reasons: {len(summary['liveness_notes'])})")
    st = summary["stats"]
    lines.append(f"observations: {st.get('metrics_samples', 0)} metrics, {st.get('beat_samples', 0)} beats, "
                 f"{st.get('job_observations', 0)} job states, {st.get('register_entries', 0)} register entries, "
                 f"{st.get('leader_epochs', 0)} leader epochs")
    if summary["ok"]:
        lines.append("RESULT: 0 violations")
    else:
        lines.append(f"RESULT: {len(summary['violations'])} violation(s); history: {summary['history']}")
        for v in summary["violations"][:20]:
            lines.append(f"  [{v['check']}] {v['msg']}")
    return "\n".join(lines)


def main_run(opts: Options) -> int:
    if os.geteuid() != 0:
        print("the fault runner needs root (network namespaces, nft)", file=sys.stderr)
        return 77
    res = run(opts)
    print(render(res.summary))
    return 0 if res.ok else 1
