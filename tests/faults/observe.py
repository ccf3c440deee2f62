"""Observers and the workload: threads that sample nodes and Redis and submit jobs.

All of them only *record*; judging is the checker's job, over the history file.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import redis

from tests.faults.history import History
from tests.faults.system import NodeProc, NodeSet, RedisProc, SentinelRedis

HTTP_TIMEOUT = 1.0


def http_get(url: str, timeout: float = HTTP_TIMEOUT) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def http_post(url: str, body: Any, token: str, timeout: float = 3.0) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"{}")
        except ValueError:
            return e.code, {"raw": raw.decode(errors="replace")[:300]}


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


class Sampler:
    """Base: a daemon thread calling ``step`` every ``interval`` until stopped."""

    interval = 0.2

    def __init__(self, hist: History, name: str) -> None:
        self.hist = hist
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.errors = 0

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.step()
            except Exception as e:  # an observer must never die: record and go on
                self.errors += 1
                self.hist.add("observer_error", who=self.thread.name, error=repr(e)[:300])
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def step(self) -> None:
        raise NotImplementedError


class MetricsSampler(Sampler):
    """Every node's /metrics: is it acting as leader, with which epoch (its own view)."""

    interval = 0.2

    def __init__(self, hist: History, node: NodeProc) -> None:
        super().__init__(hist, f"metrics-{node.index}")
        self.node = node
        self.last: dict[str, float] = {}

    def step(self) -> None:
        if not self.node.alive():
            return
        t0 = time.monotonic()
        try:
            status, text = http_get(self.node.api + "/metrics")
        except (OSError, urllib.error.URLError):
            return  # paused, restarting or dead: nothing observed
        t1 = time.monotonic()
        if status != 200:
            return
        m = parse_metrics(text)
        self.last = m
        self.hist.add(
            "metrics", node=self.node.name, t0=round(t0, 6), t1=round(t1, 6),
            leader=int(m.get("mn_is_leader", 0)), epoch=int(m.get("mn_leader_epoch", 0)),
            fenced_ok=int(m.get('mn_fenced_writes_total{result="ok"}', 0)),
            fenced_refused=int(m.get('mn_fenced_writes_total{result="refused"}', 0)),
            coordinating=int(m.get("mn_jobs_coordinating", 0)),
            redis_up=int(m.get("mn_redis_up", 0)),
        )


class RedisSampler(Sampler):
    """The fenced leader heartbeat and the live state of every tracked job, from Redis."""

    interval = 0.25

    def __init__(self, hist: History, rds: RedisProc | SentinelRedis, ns: str) -> None:
        super().__init__(hist, "redis-sampler")
        self.rds = rds
        self.ns = ns
        self.client: redis.Redis | None = None
        self._lock = threading.Lock()
        self.tracked: set[str] = set()
        self.terminal: dict[str, str] = {}
        self._last_beat: tuple[Any, ...] | None = None
        self._last_job: dict[str, tuple[Any, ...]] = {}

    def track(self, job_id: str) -> None:
        with self._lock:
            self.tracked.add(job_id)

    def open_jobs(self) -> int:
        with self._lock:
            return len(self.tracked)

    def step(self) -> None:
        observer = getattr(self.rds, "observer_client", None)
        if observer is not None:  # Sentinel mode: a replica of the current primary, looked up every step
            self.client = observer()
            if self.client is None:
                return  # too few replicas linked: nothing new can be acknowledged, nothing to see
        elif self.client is None:
            self.client = self.rds.client()
        c = self.client
        t0 = time.monotonic()
        try:
            pipe = c.pipeline(transaction=True)
            pipe.hgetall(f"{self.ns}:leader:beat")
            pipe.get(f"{self.ns}:lease:cluster:leader")
            beat, lease = pipe.execute()
        except (redis.RedisError, OSError):
            self.client = None  # reconnect next time (Redis down, cut or restarted)
            return
        t1 = time.monotonic()
        key = (beat.get("epoch"), beat.get("seq"), beat.get("node"), lease)
        if beat and key != self._last_beat:
            self._last_beat = key
            self.hist.add("beat", t0=round(t0, 6), t1=round(t1, 6), node=beat.get("node"),
                          epoch=int(beat.get("epoch", 0)), seq=int(beat.get("seq", 0)),
                          fence=int(beat.get("_fence", 0)), lease=lease)
        with self._lock:
            jobs = sorted(self.tracked)
        for job_id in jobs:
            self._observe_job(c, job_id)

    def _observe_job(self, c: redis.Redis, job_id: str) -> None:
        base = f"{self.ns}:job:{job_id}"
        t0 = time.monotonic()
        try:
            pipe = c.pipeline(transaction=True)
            pipe.hmget(base, ["status", "epoch", "_fence", "owner", "agents_done"])
            pipe.hgetall(base + ":agents")
            pipe.hgetall(base + ":runs")
            pipe.get(f"{self.ns}:lease:job:{job_id}")
            (status, epoch, fence, owner, done), agents, runs, lease = pipe.execute()
        except (redis.RedisError, OSError):
            self.client = None
            return
        t1 = time.monotonic()
        completed = sorted(a for a, raw in agents.items() if json.loads(raw).get("status") == "completed")
        runs_i = {a: int(v) for a, v in runs.items()}
        key = (status, epoch, fence, owner, tuple(completed), tuple(sorted(runs_i.items())), lease)
        if key != self._last_job.get(job_id):
            self._last_job[job_id] = key
            self.hist.add("jobobs", job=job_id, t0=round(t0, 6), t1=round(t1, 6), status=status,
                          epoch=int(epoch or 0), fence=int(fence or 0), owner=owner, done=int(done or 0),
                          completed=completed, runs=runs_i, lease=lease)
        if status in ("completed", "failed", "cancelled"):
            with self._lock:
                self.tracked.discard(job_id)
                self.terminal[job_id] = status
                self._last_job.pop(job_id, None)


def job_params(rng: random.Random) -> dict[str, int]:
    """A prime_sweep_scale job of varied size: 2-20 workers of 2k-15k numbers somewhere
    below 10^11 (the reference sieve checks at most 300k numbers per job)."""
    return {
        "workers": rng.randint(2, 20),
        "chunk_size": rng.randint(2_000, 15_000),
        "start": rng.randint(10**6, 10**11),
    }


class Workload(Sampler):
    """A steady stream of prime_sweep_scale submissions through random live nodes."""

    interval = 1.5

    def __init__(self, hist: History, nodes: NodeSet, rs: RedisSampler, token: str, seed: int,
                 max_open: int = 4, interval: float = 1.5) -> None:
        super().__init__(hist, "workload")
        self.interval = interval
        self.nodes = nodes
        self.rs = rs
        self.token = token
        self.rng = random.Random(seed * 7919 + 1)
        self.max_open = max_open
        self.acked: dict[str, dict[str, int]] = {}
        self.submits = 0
        self.failed_submits = 0

    def step(self) -> None:
        if self.rs.open_jobs() >= self.max_open:
            return
        live = [n for n in self.nodes.nodes if n.alive()]
        if not live:
            return
        node = self.rng.choice(live)
        params = job_params(self.rng)
        self.submits += 1
        op = self.submits
        self.hist.add("op", op="submit", phase="invoke", id=op, node=node.name, params=params)
        try:
            status, body = http_post(node.api + "/api/v1/jobs",
                                     {"blueprint": "prime_sweep_scale", "params": params}, self.token)
        except (OSError, urllib.error.URLError) as e:
            # unknown outcome: the job may exist (the final dump checks every job in Redis)
            self.failed_submits += 1
            self.hist.add("op", op="submit", phase="info", id=op, node=node.name, error=repr(e)[:200])
            return
        if status == 201 and isinstance(body, dict) and body.get("job_id"):
            job_id = str(body["job_id"])
            self.acked[job_id] = params
            self.rs.track(job_id)
            self.hist.add("op", op="submit", phase="ok", id=op, node=node.name, job=job_id, params=params)
        else:
            self.failed_submits += 1
            self.hist.add("op", op="submit", phase="fail", id=op, node=node.name, status=status,
                          error=str(body)[:300])
