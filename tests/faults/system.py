"""The system under test: one redis-server and N mn-node processes, each in its own namespace.

Processes are started through ``nsenter --net=...``, which execs, so ``Popen.pid`` is the
real server / daemon PID: SIGKILL, SIGSTOP and SIGCONT go to exactly the process we started.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.faults.netns import Net
from tests.support import redis as redis_proc
from tests.support.redis import server_binary

REDIS_PORT = 6379


@dataclass
class RedisProc:
    net: Net
    dir: Path
    appendfsync: str = "always"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.net.redis_addr}:{REDIS_PORT}/0"

    def client(self, timeout: float = 1.0) -> redis.Redis:
        return redis.Redis(host=self.net.redis_addr, port=REDIS_PORT, decode_responses=True,
                           socket_timeout=timeout, socket_connect_timeout=timeout)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [*self.net.nsenter(self.net.redis_ns), server_binary(), "--port", str(REDIS_PORT),
                "--bind", self.net.redis_addr, "--dir", str(self.dir), "--save", "",
                "--appendonly", "yes", "--appendfsync", self.appendfsync,
                "--maxmemory-policy", "noeviction", "--logfile", str(self.dir / "redis.log"),
                "--daemonize", "no", "--protected-mode", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pingable(self) -> bool:
        try:
            return bool(self.client().ping())
        except (redis.RedisError, OSError):
            return False

    def kill9(self) -> None:
        redis_proc.kill9(self.proc)

    def stop(self) -> None:
        redis_proc.terminate(self.proc)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class NodeProc:
    index: int
    name: str
    addr: str
    ns: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    expected_exit: bool = True  # False while running: an exit we did not cause is a finding

    @property
    def api(self) -> str:
        return f"http://{self.addr}:4000"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NodeSet:
    net: Net
    redis_url: str
    workdir: Path
    namespace: str
    cookie: str = field(default_factory=lambda: base64.b64encode(os.urandom(32)).decode())
    capacity: int = 1
    node_module: str = "mn_node.daemon"  # tests only: a wrapper module that patches, then runs the daemon
    extra_env: dict[str, str] = field(default_factory=dict)
    nodes: list[NodeProc] = field(default_factory=list)

    def __post_init__(self) -> None:
        for k in range(1, self.net.nodes + 1):
            addr = self.net.node_addr(k)
            self.nodes.append(NodeProc(k, f"mn{k}@{addr}", addr, self.net.node_ns(k), self.workdir / f"mn{k}.log"))

    @property
    def node_list(self) -> str:
        return ",".join(n.name for n in self.nodes)

    def env(self, node: NodeProc) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")}
        env.update({
            "MIRROR_NEURON_COOKIE": self.cookie,
            "MIRROR_NEURON_CLUSTER_NODES": self.node_list,
            "MIRROR_NEURON_NODE_NAME": node.name,
            "MIRROR_NEURON_REDIS_URL": self.redis_url,
            "MIRROR_NEURON_REDIS_NAMESPACE": self.namespace,
            "MIRROR_NEURON_API_BIND": node.addr,
            "MIRROR_NEURON_API_INSECURE": "1",  # plain HTTP on the namespace address (test network)
            "MIRROR_NEURON_DISCOVERY": "static",
            "MIRROR_NEURON_EXECUTOR_CAPACITY": str(self.capacity),
            "MIRROR_NEURON_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        })
        if self.node_module != "mn_node.daemon":  # a tests.* wrapper must be importable in the namespace
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                              env.get("PYTHONPATH", "")]))
        env.update(self.extra_env)
        return env

    def start(self, node: NodeProc) -> None:
        with open(node.log, "ab") as logf:
            logf.write(f"\n===== start #{node.starts + 1} at {time.time():.3f} =====\n".encode())
            logf.flush()
            node.proc = subprocess.Popen(
                [*self.net.nsenter(node.ns), sys.executable, "-m", self.node_module],
                env=self.env(node), stdout=logf, stderr=logf, start_new_session=True,
            )
        node.starts += 1
        node.expected_exit = False

    def signal(self, node: NodeProc, sig: int) -> None:
        if node.alive():
            assert node.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.proc.pid, sig)

    def kill9(self, node: NodeProc) -> None:
        node.expected_exit = True
        if node.alive():
            assert node.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.proc.pid, signal.SIGCONT)
                node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)

    def terminate(self, node: NodeProc, timeout: float = 15.0) -> int | None:
        node.expected_exit = True
        if node.proc is None:
            return None
        if node.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.proc.pid, signal.SIGCONT)
                node.proc.terminate()
        try:
            return node.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            return node.proc.wait(5)

    def unexpected_exits(self) -> list[tuple[NodeProc, int]]:
        out = []
        for n in self.nodes:
            if n.proc is not None and not n.expected_exit:
                rc = n.proc.poll()
                if rc is not None:
                    out.append((n, rc))
        return out

    def cleanup(self) -> None:
        for n in self.nodes:
            if n.alive():
                self.kill9(n)

    def log_tail(self, node: NodeProc, chars: int = 3000) -> str:
        try:
            return node.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


# ---- Sentinel mode: a primary, two replicas and three Sentinels, one host namespace each ----------
SENTINEL_PORT = 26379
MASTER = "mn-master"
DOWN_AFTER_MS = 2000


@dataclass
class SentinelRedis:
    """Same surface as :class:`RedisProc` (url, client, pingable, start, stop, dir) for the runner,
    plus per-server faults for the nemesis. ``client()`` always talks to the primary Sentinel
    names now."""

    net: Net
    dir: Path
    appendfsync: str = "always"
    min_acks: int = 1  # MIRROR_NEURON_REDIS_MIN_ACKS of the nodes (the floor): replicas the observer needs
    servers: dict[int, subprocess.Popen[bytes] | None] = field(default_factory=dict)
    sentinels: dict[int, subprocess.Popen[bytes] | None] = field(default_factory=dict)

    @property
    def hosts(self) -> range:
        return range(1, self.net.redis_hosts + 1)

    @property
    def url(self) -> str:
        sentinels = ",".join(f"{self.net.redis_host_addr(k)}:{SENTINEL_PORT}" for k in self.hosts)
        return f"redis+sentinel://{sentinels}/{MASTER}/0"

    def _redis(self, addr: str, port: int = REDIS_PORT, timeout: float = 1.0) -> redis.Redis:
        return redis.Redis(host=addr, port=port, decode_responses=True, socket_timeout=timeout,
                           socket_connect_timeout=timeout)

    def primary_addr(self) -> str | None:
        """The primary most Sentinels name now (a cut-off Sentinel may still name the old one)."""
        votes: list[str] = []
        for k in self.hosts:
            try:
                got = self._redis(self.net.redis_host_addr(k), SENTINEL_PORT, 0.5).sentinel_get_master_addr_by_name(
                    MASTER)  # type: ignore[no-untyped-call]
            except (redis.RedisError, OSError):
                continue
            if got:
                votes.append(str(got[0]))
        return max(set(votes), key=votes.count) if votes else None

    def observer_client(self, timeout: float = 1.0) -> redis.Redis | None:
        """What the nodes were told is acknowledged: the least advanced replica linked to the
        current primary (the nodes wait for every replica in sync, so an acknowledged write is on
        each of them; reading the most advanced one would take a write that is on one replica only
        for acknowledged). None when fewer than ``min_acks`` replicas are linked: the sampler
        then observes nothing, because nothing new can be acknowledged and the primary itself
        holds writes no replica has (never read it: a write the nodes were refused would be taken
        as done)."""
        primary = self.primary_addr()
        linked: list[tuple[int, redis.Redis]] = []
        for k in self.hosts:
            addr = self.net.redis_host_addr(k)
            if addr == primary or not self.server_alive(k):
                continue
            c = self._redis(addr, timeout=timeout)
            try:
                info = c.info("replication")
            except (redis.RedisError, OSError):
                continue
            if info.get("master_host") == primary and info.get("master_link_status") == "up":
                linked.append((int(info.get("slave_repl_offset", 0)), c))
        if len(linked) < max(1, self.min_acks):
            return None
        return min(linked, key=lambda oc: oc[0])[1]

    def primary_index(self) -> int:
        addr = self.primary_addr() or self.net.redis_host_addr(1)
        return next(k for k in self.hosts if self.net.redis_host_addr(k) == addr)

    def client(self, timeout: float = 1.0) -> redis.Redis:
        return self._redis(self.primary_addr() or self.net.redis_host_addr(1), timeout=timeout)

    def pingable(self) -> bool:
        try:
            return bool(self.client().ping())
        except (redis.RedisError, OSError):
            return False

    def start(self) -> None:
        for k in self.hosts:
            self.start_server(k, None if k == 1 else self.net.redis_host_addr(1))
        for k in self.hosts:
            self._start_sentinel(k)

    def start_server(self, k: int, replicaof: str | None) -> None:
        d = self.dir / f"r{k}"
        d.mkdir(parents=True, exist_ok=True)
        addr = self.net.redis_host_addr(k)
        args = [*self.net.nsenter(self.net.redis_host_ns(k)), server_binary(), "--port", str(REDIS_PORT),
                "--bind", addr, "--dir", str(d), "--save", "", "--appendonly", "yes",
                "--appendfsync", self.appendfsync, "--maxmemory-policy", "noeviction",
                "--logfile", str(d / "redis.log"), "--daemonize", "no", "--protected-mode", "no",
                "--min-replicas-to-write", "1", "--min-replicas-max-lag", "2", "--repl-ping-replica-period", "1",
                "--repl-diskless-sync-delay", "0"]  # as the redis role: a returning replica resyncs at once
        if replicaof and replicaof != addr:
            args += ["--replicaof", replicaof, str(REDIS_PORT)]
        self.servers[k] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True)

    def restart_as_replica(self, k: int) -> None:
        """Start server k again, following the primary Sentinel names (or alone if that is k)."""
        self.start_server(k, self.primary_addr())

    def _start_sentinel(self, k: int) -> None:
        d = self.dir / f"s{k}"
        d.mkdir(parents=True, exist_ok=True)
        addr = self.net.redis_host_addr(k)
        (d / "sentinel.conf").write_text("\n".join([
            f"port {SENTINEL_PORT}", f"bind {addr}", f"dir {d}", "protected-mode no",
            f"logfile {d / 'sentinel.log'}", f"sentinel announce-ip {addr}",
            f"sentinel monitor {MASTER} {self.net.redis_host_addr(1)} {REDIS_PORT} {len(self.hosts) // 2 + 1}",
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER} 4000", f"sentinel parallel-syncs {MASTER} 2"]) + "\n")
        self.sentinels[k] = subprocess.Popen(
            [*self.net.nsenter(self.net.redis_host_ns(k)), server_binary(), str(d / "sentinel.conf"), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def ready(self) -> bool:
        """Every Sentinel sees the replicas and the other Sentinels (call after start)."""
        want = len(self.hosts) - 1
        for k in self.hosts:
            try:
                st = self._redis(self.net.redis_host_addr(k), SENTINEL_PORT).sentinel_master(MASTER)  # type: ignore[no-untyped-call]
            except (redis.RedisError, OSError):
                return False
            if int(st.get("num-slaves", 0)) < want or int(st.get("num-other-sentinels", 0)) < want:
                return False
        return True

    def switches_logged(self) -> int:
        """Failovers the Sentinels logged (``+switch-master``): the most any one Sentinel saw
        (a Sentinel cut off during two switches learns only the last one)."""
        counts = []
        for k in self.hosts:
            try:
                counts.append((self.dir / f"s{k}" / "sentinel.log").read_text(errors="replace").count("+switch-master"))
            except FileNotFoundError:
                counts.append(0)
        return max(counts, default=0)

    def server_alive(self, k: int) -> bool:
        p = self.servers.get(k)
        return p is not None and p.poll() is None

    def kill_server(self, k: int) -> None:
        redis_proc.kill9(self.servers.get(k))

    def signal_server(self, k: int, sig: int) -> None:
        p = self.servers.get(k)
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)

    def alive(self) -> bool:
        return any(self.server_alive(k) for k in self.hosts)

    def kill9(self) -> None:
        self.kill_server(self.primary_index())

    def stop(self) -> None:
        for p in [*self.sentinels.values(), *self.servers.values()]:
            redis_proc.terminate(p)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
