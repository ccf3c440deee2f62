"""Fixtures that create faults for real, and remove them afterwards by name or pid."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.tools import skip_unless_tools
from tests.support.wait import wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def make_cluster(make_cluster: Callable[..., Cluster]) -> Iterator[Callable[..., Cluster]]:
    """The shared factory, plus: every node's whole process group is killed afterwards. A node
    SIGKILLed alone leaves its executor pool (forkserver + workers) behind as orphans."""
    made: list[Cluster] = []

    def factory(*args: object, **kw: object) -> Cluster:
        c = make_cluster(*args, **kw)
        made.append(c)
        return c

    try:
        yield factory
    finally:
        for c in made:
            for node in c.nodes:
                if node.proc is not None:
                    kill_group(node.proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group led by ``proc`` (started with start_new_session=True)."""
    try:
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(10)


@pytest.fixture
def nft_drop() -> Iterator[Callable[[str], None]]:
    """``drop(addr)``: silently drop every packet this box sends to ``addr`` (a test's own
    127.a.b.k address), in a dedicated nft table deleted afterwards. Skips without nft or root."""
    skip_unless_tools("nft", root=True)
    table = f"mn_doctor_test_{os.getpid()}_{random.randint(0, 10**6)}"
    created = False

    def drop(addr: str) -> None:
        nonlocal created
        assert addr.startswith("127.") and addr not in ("127.0.0.1",), "only our own test addresses"
        script = ""
        if not created:
            script += (f"add table inet {table}\n"
                       f"add chain inet {table} out {{ type filter hook output priority 0 ; policy accept ; }}\n")
        script += f"add rule inet {table} out ip daddr {addr} drop\n"
        subprocess.run(["nft", "-f", "-"], input=script.encode(), check=True)
        created = True

    try:
        yield drop
    finally:
        if created:
            subprocess.run(["nft", "delete", "table", "inet", table], check=False)
    listing = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert table not in listing


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start helper processes (port blockers, proxies, stale daemons); all killed by pid after."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], env: dict[str, str] | None = None, wait_port: tuple[str, int] | None = None
              ) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, cwd=REPO)
        procs.append(p)
        if wait_port is not None:
            wait_until(lambda: _listening(*wait_port), 10, f"{argv[:3]} to listen on {wait_port}")
        return p

    try:
        yield start
    finally:
        for p in procs:
            kill_group(p)


def proxy_argv(listen: tuple[str, int], target: tuple[str, int]) -> list[str]:
    return [sys.executable, "-m", "tests.doctor._proxy", listen[0], str(listen[1]), target[0], str(target[1])]
