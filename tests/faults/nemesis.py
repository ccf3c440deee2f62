"""The nemesis: a seeded schedule of faults, each injected, held, healed and checked.

The schedule (fault type, target node, hold time, gap) is drawn from ``random.Random(seed)``
in decks: every deck is a shuffle of all fault types, so even a short run covers each type.
Timing of the system's reactions is of course not deterministic; the schedule is.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.faults.history import History
from tests.faults.netns import Net
from tests.faults.observe import HTTP_TIMEOUT, http_get
from tests.faults.system import DOWN_AFTER_MS, NodeProc, NodeSet, RedisProc, SentinelRedis

FAULTS = (
    "kill",            # SIGKILL a node, keep it down, start it again
    "pause",           # SIGSTOP a node longer than the lease TTL, then SIGCONT
    "cut_peers",       # one node cut from the other nodes, still reaching Redis
    "cut_redis",       # one node cut from Redis, still reaching the other nodes
    "isolate_redis",   # Redis cut from every node
    "loss",            # 30 % random packet loss in and out of one node
    "redis_restart",   # kill -9 Redis, restart it from its AOF
    "restart",         # same-name restart of a node (SIGKILL or SIGTERM, then start at once)
)
# --redis sentinel: a primary, two replicas, three Sentinels (system.SentinelRedis)
SENTINEL_FAULTS = (
    "primary_kill",    # SIGKILL the primary; it comes back as a replica of whoever was promoted
    "primary_pause",   # SIGSTOP the primary past Sentinel's down-after, then SIGCONT
    "primary_cut",     # the primary's host cut from the replicas, Sentinels and all nodes but one
    "replica_kill",    # SIGKILL a replica, start it again
)
ALL_FAULTS = FAULTS + SENTINEL_FAULTS
# the faults of a Sentinel run: the node faults, Redis cut from one node, and the four above, the
# three primary faults twice per deck (each ends in a failover only when it outlasts Sentinel's
# down-after + election: ~2 of 3 do), so a 60-minute run gives well over 100 failovers
PRIMARY_FAULTS = ("primary_kill", "primary_pause", "primary_cut")
SENTINEL_RUN_FAULTS = ("kill", "pause", "cut_peers", "cut_redis", "loss", "restart", *SENTINEL_FAULTS,
                       *PRIMARY_FAULTS)
NODE_FAULTS = {"kill", "pause", "cut_peers", "cut_redis", "loss", "restart", "primary_cut"}


@dataclass
class Fault:
    n: int
    type: str
    target: int  # node index (1-based); 0 for Redis faults
    hold: float
    gap: float
    graceful: bool = False


def schedule(seed: int, nodes: int, ttl_s: float, kinds: tuple[str, ...] = FAULTS) -> Callable[[], Fault]:
    rng = random.Random(seed)
    deck: list[str] = []
    count = 0
    unknown = set(kinds) - set(ALL_FAULTS)
    if unknown or not kinds:
        raise ValueError(f"fault kinds must be a non-empty subset of {ALL_FAULTS}, not {kinds}")

    def next_fault() -> Fault:
        nonlocal count
        if not deck:
            deck.extend(kinds)
            rng.shuffle(deck)
        kind = deck.pop()
        count += 1
        target = rng.randint(1, nodes) if kind in NODE_FAULTS else 0
        if kind == "pause":
            hold = ttl_s + rng.uniform(0.5, 3.0)  # longer than the lease TTL, by design
        elif kind == "primary_pause":
            hold = DOWN_AFTER_MS / 1000 + rng.uniform(0.5, 3.0)  # past Sentinel's down-after, by design
        elif kind in ("primary_kill", "replica_kill"):
            hold = rng.uniform(1.0, 5.0)
        elif kind in ("kill",):
            hold = rng.uniform(1.0, 6.0)
        elif kind == "redis_restart":
            hold = rng.uniform(0.2, 3.0)
        elif kind == "restart":
            hold = 0.0
        elif kind == "loss":
            hold = rng.uniform(4.0, 12.0)
        else:
            hold = rng.uniform(3.0, 10.0)
        return Fault(count, kind, target, round(hold, 3), round(rng.uniform(0.5, 3.0), 3),
                     graceful=kind == "restart" and rng.random() < 0.3)

    return next_fault


class Nemesis:
    def __init__(self, hist: History, net: Net, rds: RedisProc | SentinelRedis, nodes: NodeSet, ttl_s: float,
                 settle_timeout: float = 20.0) -> None:
        self.hist = hist
        self.net = net
        self.rds = rds
        self.nodes = nodes
        self.ttl_s = ttl_s
        self.settle_timeout = settle_timeout
        self.counts: Counter[str] = Counter()
        self.heal_failures = 0
        self.failovers: Counter[str] = Counter()  # primary changes seen, by the fault they happened in
        self.primary: str | None = rds.primary_addr() if isinstance(rds, SentinelRedis) else None

    def node(self, k: int) -> NodeProc:
        return self.nodes.nodes[k - 1]

    # ---- one fault ------------------------------------------------------------------------------
    def run_one(self, f: Fault, stop_at: float) -> None:
        """Inject, hold (the sleep *is* the fault), heal, then check the system settles."""
        node = self.node(f.target) if f.target else None
        detail: dict[str, Any] = {"n": f.n, "type": f.type, "target": node.name if node else "redis",
                                  "hold": f.hold}
        if f.type == "restart":
            detail["graceful"] = f.graceful
        self.hist.add("fault", phase="start", **detail)
        self.counts[f.type] += 1
        heal = self._inject(f, node)
        time.sleep(max(0.0, min(f.hold, stop_at + 30 - time.monotonic())))  # the fault's duration
        heal()
        self.hist.add("fault", phase="heal", **detail)
        self.settle(f"after {f.type} #{f.n}")
        self.note_primary(f.type)

    def note_primary(self, during: str) -> None:
        """Sentinel mode: record a failover when the primary most Sentinels name has changed
        since the last look (taken before every fault and after every settle)."""
        if not isinstance(self.rds, SentinelRedis):
            return
        now = self.rds.primary_addr()
        if now is not None and self.primary is not None and now != self.primary:
            self.failovers[during] += 1
            self.hist.add("failover", old=self.primary, new=now, during=during)
        self.primary = now or self.primary

    def _inject(self, f: Fault, node: NodeProc | None) -> Callable[[], None]:
        net, nodes = self.net, self.nodes
        if f.type == "kill":
            assert node is not None
            nodes.kill9(node)
            return lambda: nodes.start(node)
        if f.type == "restart":
            assert node is not None
            if f.graceful:
                rc = nodes.terminate(node)
                self.hist.add("note", what="graceful stop", node=node.name, rc=rc)
            else:
                nodes.kill9(node)
            nodes.start(node)
            return lambda: None
        if f.type == "pause":
            assert node is not None
            nodes.signal(node, signal.SIGSTOP)
            return lambda: nodes.signal(node, signal.SIGCONT)
        if f.type == "cut_peers":
            assert node is not None
            others = [n.addr for n in nodes.nodes if n is not node]
            net.drop(node.ns, others)
            return lambda: net.heal(node.ns)
        if f.type == "cut_redis":
            assert node is not None
            net.drop(node.ns, net.redis_addrs())
            return lambda: net.heal(node.ns)
        if f.type in SENTINEL_FAULTS:
            assert isinstance(self.rds, SentinelRedis), f"{f.type} needs --redis sentinel"
            return self._inject_sentinel(f, node, self.rds)
        if f.type == "isolate_redis":
            net.drop(net.redis_ns, net.all_node_addrs())
            return lambda: net.heal(net.redis_ns)
        if f.type == "loss":
            assert node is not None
            net.loss(node.ns, 30, [net.ctl_addr])
            return lambda: net.heal(node.ns)
        if f.type == "redis_restart":
            self.rds.kill9()
            return self._restart_redis
        raise ValueError(f"unknown fault {f.type}")

    def _inject_sentinel(self, f: Fault, node: NodeProc | None, rds: SentinelRedis) -> Callable[[], None]:
        self.note_primary("between faults")
        k = rds.primary_index()
        self.hist.add("note", what="redis primary before the fault", fault=f.n, primary=self.net.redis_host_addr(k))
        if f.type == "primary_kill":
            rds.kill_server(k)
            return lambda: rds.restart_as_replica(k)
        if f.type == "primary_pause":
            rds.signal_server(k, signal.SIGSTOP)
            return lambda: rds.signal_server(k, signal.SIGCONT)
        if f.type == "primary_cut":
            assert node is not None  # the one node left on the primary's side
            ns = self.net.redis_host_ns(k)
            cut = [self.net.redis_host_addr(j) for j in rds.hosts if j != k]
            cut += [n.addr for n in self.nodes.nodes if n is not node]
            self.net.drop(ns, cut)
            return lambda: self.net.heal(ns)
        replica = next((j for j in rds.hosts if j != k and rds.server_alive(j)), None)
        if replica is None:
            return lambda: None
        rds.kill_server(replica)
        return lambda: rds.restart_as_replica(replica)

    def restart_dead_redis(self) -> None:
        """Sentinel mode: a server still down after a heal (e.g. killed twice) comes back as a replica."""
        if isinstance(self.rds, SentinelRedis):
            for k in self.rds.hosts:
                if not self.rds.server_alive(k):
                    self.rds.restart_as_replica(k)

    def _restart_redis(self) -> None:
        self.rds.start()
        deadline = time.monotonic() + 20
        while not self.rds.pingable():
            if time.monotonic() > deadline:
                raise RuntimeError("redis did not come back from its AOF within 20 s")
            time.sleep(0.05)

    # ---- after a heal -------------------------------------------------------------------------
    def restart_crashed(self) -> None:
        self.restart_dead_redis()
        for n, rc in self.nodes.unexpected_exits():
            self.hist.add("node_exit", node=n.name, rc=rc, log_tail=self.nodes.log_tail(n, 2000))
            n.expected_exit = True
            self.nodes.start(n)

    def settle(self, why: str) -> bool:
        """Poll (deadline ``settle_timeout``) until every node answers, a leader exists and no
        job is claimed by two coordinators; record what was seen either way."""
        self.restart_crashed()
        t_start = time.monotonic()
        deadline = t_start + self.settle_timeout
        last: dict[str, Any] = {}
        while True:
            ok, last = self._settled_once()
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # poll interval
        rec = {"why": why, "settled": ok, "took": round(time.monotonic() - t_start, 3), **last}
        self.hist.add("heal_check", **rec)
        if not ok:
            self.heal_failures += 1
        return ok

    def _settled_once(self) -> tuple[bool, dict[str, Any]]:
        import json

        claims: dict[str, list[str]] = {}
        answered = []
        for n in self.nodes.nodes:
            if not n.alive():
                return False, {"reason": f"{n.name} not running"}
            try:
                status, body = http_get(n.api + "/api/v1/system/summary", HTTP_TIMEOUT)
            except OSError as e:
                return False, {"reason": f"{n.name} not answering: {e!r}"[:200]}
            if status != 200:
                return False, {"reason": f"{n.name} summary {status}"}
            summ = json.loads(body)
            answered.append(n.name)
            for job in summ.get("coordinating", []):
                claims.setdefault(job, []).append(n.name)
        try:
            c = self.rds.client()
            leader = c.get(f"{self.nodes.namespace}:lease:cluster:leader")
            holders = {j: c.get(f"{self.nodes.namespace}:lease:job:{j}") for j in claims}
        except Exception as e:
            return False, {"reason": f"redis: {e!r}"[:200]}
        if not leader:
            return False, {"reason": "no leader", "claims": claims}
        doubles = {j: ns for j, ns in claims.items() if len(ns) > 1}
        if doubles:
            return False, {"reason": "two_coordinators", "claims": doubles,
                           "holders": {j: holders.get(j) for j in doubles}}
        return True, {"leader": leader, "claims": claims, "holders": holders}
