"""The checker: judges a history file. Pure: no processes, no Redis; rerunnable offline with
``python -m tests.faults check HISTORY.jsonl``.

Invariants (the issue's list) and the evidence each one uses:

* ``leader_per_epoch``: at most one node ever acts as leader with a given epoch (node /metrics
  samples), writes the fenced register with it (``{ns}:leader:history``), or was elected with it
  (``leader_elected`` events: an epoch granted twice means the counter went back).
* ``stale_leader``: no node acts as leader with epoch e after a higher epoch was already seen
  granted (real-time order of observation windows: its local deadline must have passed).
* ``fenced_monotonic``: fenced writes are never accepted with an epoch below one already
  accepted: the register stream's epochs never decrease; the beat hash and every job's
  ``epoch``/``_fence`` never go back between successive observations.
* ``job_outcome``: every job ends ``completed`` with the exact prime count of its range
  (independent sieve), or ``failed`` with a reason (counted and shown, not a violation).
* ``rerun``: an executor observed ``completed`` with ``runs = r`` never shows ``runs > r`` later.
* ``two_coordinators``: after every heal, no job is claimed by two live coordinators (within the
  settle deadline).
* ``lost_job``: every acknowledged job id is still in Redis at the end.
* ``daemon_exit``: no daemon exits without being killed by the nemesis.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from tests.support.primes import sweep_count

TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Violation:
    check: str
    msg: str
    t: float | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "msg": self.msg, "t": self.t, "evidence": self.evidence[:6]}


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    jobs: Counter[str] = field(default_factory=Counter)
    failed_jobs: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    liveness: list[dict[str, Any]] = field(default_factory=list)

    def add(self, check: str, msg: str, t: float | None = None, *evidence: dict[str, Any]) -> None:
        self.violations.append(Violation(check, msg, t, list(evidence)))

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_check(self) -> Counter[str]:
        return Counter(v.check for v in self.violations)


@cache
def expected_primes(start: int, workers: int, chunk: int) -> int:
    return sweep_count(start, workers, chunk)


def check(records: Iterable[dict[str, Any]]) -> Report:
    rep = Report()
    metrics: list[dict[str, Any]] = []
    beats: list[dict[str, Any]] = []
    jobobs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    acked: dict[str, dict[str, Any]] = {}
    final: dict[str, Any] | None = None
    for r in records:
        k = r["k"]
        if k == "metrics":
            metrics.append(r)
        elif k == "beat":
            beats.append(r)
        elif k == "jobobs":
            jobobs[r["job"]].append(r)
        elif k == "op" and r.get("op") == "submit" and r.get("phase") == "ok":
            acked[r["job"]] = r
        elif k == "fault" and r.get("phase") == "start":
            rep.faults[r["type"]] += 1
        elif k == "heal_check" and not r.get("settled"):
            if r.get("reason") == "two_coordinators":
                rep.add("two_coordinators", f"{r['why']}: jobs still claimed by two coordinators after "
                        f"{r['took']}s: {r.get('claims')}", r["t"], r)
            else:
                rep.liveness.append(r)
        elif k == "node_exit":
            rep.add("daemon_exit", f"{r['node']} exited on its own with status {r['rc']}", r["t"], r)
        elif k == "final":
            final = r
    _check_leaders(rep, metrics, beats, final)
    _check_jobs(rep, jobobs, acked, final)
    _check_acked_kept(rep, jobobs, final)
    rep.stats.update(metrics_samples=len(metrics), beat_samples=len(beats),
                     job_observations=sum(len(v) for v in jobobs.values()), acked_jobs=len(acked))
    return rep


# ---- leadership and the fenced register ------------------------------------------------------
def _check_leaders(rep: Report, metrics: list[dict[str, Any]], beats: list[dict[str, Any]],
                   final: dict[str, Any] | None) -> None:
    acting = [m for m in metrics if m["leader"] and m["epoch"] > 0]
    by_epoch: dict[int, set[str]] = defaultdict(set)
    first: dict[int, dict[str, Any]] = {}
    for m in acting:
        by_epoch[m["epoch"]].add(m["node"])
        first.setdefault(m["epoch"], m)
    for e, nodes in sorted(by_epoch.items()):
        if len(nodes) > 1:
            ev = [m for m in acting if m["epoch"] == e][:4]
            rep.add("leader_per_epoch", f"epoch {e} acted on by {sorted(nodes)} (/metrics)", ev[0]["t"], *ev)

    # when each epoch was known to exist at the latest: end of the first window that showed it
    known_by: dict[int, tuple[float, dict[str, Any]]] = {}
    for rec in [*acting, *beats]:
        e, t1 = rec["epoch"], rec["t1"]
        if e > 0 and (e not in known_by or t1 < known_by[e][0]):
            known_by[e] = (t1, rec)
    # a leader sample with epoch e that *began* after a higher epoch was already granted
    epochs = sorted(known_by)
    for m in acting:
        later = [h for h in epochs if h > m["epoch"] and known_by[h][0] < m["t0"]]
        if later:
            h = later[0]
            rep.add("stale_leader", f"{m['node']} acted as leader with epoch {m['epoch']} at t={m['t0']:.3f}, "
                    f"after epoch {h} was granted (seen by t={known_by[h][0]:.3f})", m["t0"], m, known_by[h][1])

    # beat hash: successive observations (one sequential sampler) never see epoch/_fence go back
    prev: dict[str, Any] | None = None
    for b in beats:
        if prev is not None and (b["epoch"] < prev["epoch"] or b["fence"] < prev["fence"]):
            rep.add("fenced_monotonic", f"leader beat went from epoch {prev['epoch']} (fence {prev['fence']}) "
                    f"to epoch {b['epoch']} (fence {b['fence']})", b["t0"], prev, b)
        prev = b

    if final is None:
        rep.add("final_dump", "no final dump in the history (the run did not end normally)")
        return
    hist = final.get("leader_history", [])
    rep.stats["register_entries"] = len(hist)
    writers: dict[int, set[str]] = defaultdict(set)
    last: dict[str, Any] | None = None
    seqs: dict[tuple[int, str], int] = {}
    for h in hist:
        writers[h["epoch"]].add(h["node"])
        if last is not None and h["epoch"] < last["epoch"]:
            rep.add("fenced_monotonic", f"register entry {h['id']} has epoch {h['epoch']} after entry "
                    f"{last['id']} with epoch {last['epoch']} (a stale fenced write was accepted)", None, last, h)
        key = (h["epoch"], h["node"])
        if key in seqs and h["seq"] <= seqs[key]:
            rep.add("fenced_monotonic", f"register: {h['node']} epoch {h['epoch']} seq {h['seq']} "
                    f"after seq {seqs[key]}", None, h)
        seqs[key] = h["seq"]
        last = h
    for e, nodes in sorted(writers.items()):
        if len(nodes) > 1:
            rep.add("leader_per_epoch", f"register written with epoch {e} by {sorted(nodes)}", None,
                    *[h for h in hist if h["epoch"] == e][:4])
    elected: dict[int, list[str]] = defaultdict(list)
    for ev in final.get("leader_events", []):
        if ev.get("type") == "leader_elected" and ev.get("epoch"):
            elected[int(ev["epoch"])].append(ev["node"])
    for e, names in sorted(elected.items()):
        if len(names) > 1:
            rep.add("leader_per_epoch", f"epoch {e} granted {len(names)} times ({names}): the epoch "
                    "counter went back", None)
        if e in writers and writers[e] - {names[0]}:
            rep.add("leader_per_epoch", f"epoch {e} was granted to {names[0]} but the register was "
                    f"written with it by {sorted(writers[e])}", None)
        if e in by_epoch and by_epoch[e] - {names[0]}:
            rep.add("leader_per_epoch", f"epoch {e} was granted to {names[0]} but "
                    f"{sorted(by_epoch[e])} acted with it", None)
    rep.stats["leader_epochs"] = len(elected)


# ---- jobs ------------------------------------------------------------------------------------
def _check_jobs(rep: Report, jobobs: dict[str, list[dict[str, Any]]], acked: dict[str, dict[str, Any]],
                final: dict[str, Any] | None) -> None:
    for job_id, obs in jobobs.items():
        prev: dict[str, Any] | None = None
        done_runs: dict[str, tuple[int, dict[str, Any]]] = {}
        for o in obs:
            if prev is not None and (o["epoch"] < prev["epoch"] or o["fence"] < prev["fence"]):
                rep.add("fenced_monotonic", f"job {job_id}: epoch/_fence went from {prev['epoch']}/"
                        f"{prev['fence']} to {o['epoch']}/{o['fence']}", o["t0"], prev, o)
            _rerun_step(rep, job_id, done_runs, o)
            prev = o
        if final is not None and job_id in final.get("jobs", {}):
            f = final["jobs"][job_id]
            _rerun_step(rep, job_id, done_runs, {"t0": final["t"], "completed": f["completed"], "runs": f["runs"]})
    if final is None:
        return
    jobs: dict[str, dict[str, Any]] = final.get("jobs", {})
    for job_id, op in acked.items():
        if job_id not in jobs:
            rep.add("lost_job", f"job {job_id} was acknowledged (t={op['t']:.3f}) but is gone from Redis",
                    op["t"], op)
    for job_id, j in sorted(jobs.items()):
        status = j.get("status")
        rep.jobs[str(status)] += 1
        rep.jobs["acked" if job_id in acked else "unacked"] += 1
        params = (j.get("request") or {}).get("params") or {}
        if status == "completed":
            try:
                want = expected_primes(int(params["start"]), int(params["workers"]), int(params["chunk_size"]))
            except (KeyError, TypeError, ValueError):
                rep.add("job_outcome", f"job {job_id}: completed but its parameters are unreadable: {params}")
                continue
            res = j.get("result") or {}
            if res.get("prime_count") != want or res.get("chunks") != params["workers"]:
                rep.add("job_outcome", f"job {job_id}: completed with prime_count={res.get('prime_count')} "
                        f"chunks={res.get('chunks')}, expected {want} over {params['workers']} chunks", None,
                        {"job": job_id, "params": params, "result": res})
            missing = [a for a in j["executors"] if j["runs"].get(a, 0) < 1]
            if missing:
                rep.add("job_outcome", f"job {job_id}: completed but executors never ran: {missing[:5]}")
        elif status == "failed":
            rep.failed_jobs.append({"job": job_id, "error": j.get("error")})
            if not j.get("error"):
                rep.add("job_outcome", f"job {job_id}: failed without a reason")
        else:
            rep.add("job_outcome", f"job {job_id}: ended the run {status!r} (never finished)", None,
                    {"job": job_id, "status": status, "owner": j.get("owner"), "lease": j.get("lease"),
                     "done": j.get("agents_done")})


def _check_acked_kept(rep: Report, jobobs: dict[str, list[dict[str, Any]]], final: dict[str, Any] | None) -> None:
    """``lost_ack``: a completion observed in Redis (a job ``completed``, an executor's result
    stored) is still there at the end. In Sentinel mode the observer reads a replica, so what it
    saw had been replicated; losing it in a failover is exactly what must not happen."""
    if final is None:
        return
    jobs: dict[str, dict[str, Any]] = final.get("jobs", {})
    for job_id, obs in jobobs.items():
        end = jobs.get(job_id)
        if end is None:
            continue  # lost_job reports a vanished job
        seen_done = next((o for o in obs if o.get("status") == "completed"), None)
        if seen_done is not None and end.get("status") != "completed":
            rep.add("lost_ack", f"job {job_id} was seen completed (t={seen_done['t0']:.3f}) but ended "
                    f"{end.get('status')!r}", seen_done["t0"], seen_done)
        kept = set(end.get("completed", []))
        for o in obs:
            gone = [a for a in o.get("completed", []) if a not in kept]
            if gone:
                rep.add("lost_ack", f"job {job_id}: results of {gone[:5]} were seen stored (t={o['t0']:.3f}) but "
                        "are missing at the end", o["t0"], o)
                break


def _rerun_step(rep: Report, job_id: str, done_runs: dict[str, tuple[int, dict[str, Any]]],
                o: dict[str, Any]) -> None:
    runs = o["runs"]
    for a, (r, seen) in list(done_runs.items()):
        if runs.get(a, 0) > r:
            rep.add("rerun", f"job {job_id}: executor {a} was completed with runs={r} (t={seen['t0']:.3f}) "
                    f"and later had runs={runs.get(a)} (t={o['t0']:.3f})", o["t0"], seen, o)
            done_runs[a] = (runs.get(a, 0), o)
    for a in o["completed"]:
        if a.startswith("prime_") and a not in done_runs:
            done_runs[a] = (runs.get(a, 0), o)
