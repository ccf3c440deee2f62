"""Real mn-node processes on loopback addresses 127.a.b.k with the default ports.

Each Cluster picks its own random 127.a.b.0/24 so concurrent test runs never collide, and
keeps configs realistic (dist 4370, API 4000 on every node, as on real boxes).
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.redis import die_with_parent
from tests.support.wait import wait_until


def loopback_prefix() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"


@dataclass
class NodeProc:
    index: int
    name: str
    host: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    api_port: int = 4000

    @property
    def api(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class Cluster:
    redis_url: str
    size: int = 3
    cookie: str = field(default_factory=lambda: base64.b64encode(os.urandom(32)).decode())
    prefix: str = field(default_factory=loopback_prefix)
    extra_env: dict[str, str] = field(default_factory=dict)
    namespace: str = field(default_factory=lambda: f"mnt{random.randint(0, 10**9)}")
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mn-cluster-")))
    nodes: list[NodeProc] = field(default_factory=list)

    def __post_init__(self) -> None:
        for k in range(1, self.size + 1):
            host = f"{self.prefix}.{k}"
            self.nodes.append(NodeProc(k, f"mn{k}@{host}", host, {}, self.workdir / f"mn{k}.log"))

    @property
    def node_list(self) -> str:
        return ",".join(n.name for n in self.nodes)

    def env_for(self, node: NodeProc, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")}
        env.update({
            "MIRROR_NEURON_COOKIE": self.cookie,
            "MIRROR_NEURON_CLUSTER_NODES": self.node_list,
            "MIRROR_NEURON_NODE_NAME": node.name,
            "MIRROR_NEURON_REDIS_URL": self.redis_url,
            "MIRROR_NEURON_REDIS_NAMESPACE": self.namespace,
            "MIRROR_NEURON_API_BIND": node.host,
            "MIRROR_NEURON_DISCOVERY": "static",
            "MIRROR_NEURON_LOG_LEVEL": "INFO",
            "MIRROR_NEURON_STATE_DIR": str(self.workdir / f"state-mn{node.index}"),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def start(self, index: int, **overrides: str) -> NodeProc:
        node = self.nodes[index - 1]
        node.env = self.env_for(node, **overrides)
        node.api_port = int(node.env.get("MIRROR_NEURON_API_PORT", "4000"))
        with open(node.log, "ab") as logf:
            node.proc = subprocess.Popen(
                [sys.executable, "-m", "mn_node.daemon"], env=node.env, stdout=logf, stderr=logf,
                start_new_session=True, preexec_fn=die_with_parent,
            )
        return node

    def start_all(self, wait: bool = True) -> Cluster:
        for node in self.nodes:
            self.start(node.index)
        if wait:
            self.wait_mesh()
        return self

    def wait_started(self, timeout: float = 15.0, nodes: list[NodeProc] | None = None) -> None:
        """Until every node's start() has finished (its health no longer says "starting");
        a node whose Redis is down is started but still unhealthy."""
        group = nodes or self.live()
        seen: dict[str, Any] = {}

        def started() -> bool:
            for n in group:
                seen[n.name] = self.get_status(n.index, "/api/v1/health")
            return all("starting" not in body.get("reasons", ["starting"]) for _, body in seen.values())

        try:
            wait_until(started, timeout, "every node to finish starting")
        except AssertionError as e:
            raise AssertionError(f"{e}; health seen: {seen}") from None

    def get(self, index: int, path: str, timeout: float = 2.0) -> Any:
        node = self.nodes[index - 1]
        with urllib.request.urlopen(node.api + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, index: int, path: str, body: Any = None, token: str | None = None, timeout: float = 5.0) -> Any:
        from mn_node.config import api_token

        node = self.nodes[index - 1]
        req = urllib.request.Request(node.api + path, data=json.dumps(body or {}).encode(), method="POST")
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {token or api_token(self.cookie.encode())}")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def post_status(self, index: int, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        try:
            return 200, self.post(index, path, body, token)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def get_status(self, index: int, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        try:
            return 200, self.get(index, path, timeout)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def up_view(self, index: int) -> set[str]:
        rows = self.get(index, "/api/v1/nodes")["nodes"]
        return {r["name"] for r in rows if r["status"] == "up"}

    def live(self) -> list[NodeProc]:
        return [n for n in self.nodes if n.alive()]

    def wait_mesh(self, timeout: float = 15.0, nodes: list[NodeProc] | None = None) -> None:
        group = nodes or self.live()
        want = {n.name for n in group}

        def meshed() -> bool:
            return all(self.up_view(n.index) >= want for n in group)

        wait_until(meshed, timeout, f"all of {sorted(want)} to see each other up")
        self.wait_started(timeout, group)

    def leader(self, index: int | None = None) -> dict[str, Any] | None:
        idx = index or self.live()[0].index
        cur: dict[str, Any] | None = self.get(idx, "/api/v1/leader")
        return cur if cur and cur.get("node") else None

    def wait_leader(self, timeout: float = 15.0, exclude: str | None = None) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            cur = self.leader()
            if cur and cur["node"] != exclude:
                return cur
            return None

        return wait_until(found, timeout, "a leader" + (f" other than {exclude}" if exclude else ""))

    def node_named(self, name: str) -> NodeProc:
        return next(n for n in self.nodes if n.name == name)

    def signal(self, index: int, sig: int) -> None:
        node = self.nodes[index - 1]
        if node.alive():
            os.kill(node.pid, sig)

    def kill9(self, index: int) -> None:
        node = self.nodes[index - 1]
        if node.alive():
            assert node.proc is not None
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)

    def stop(self, index: int, timeout: float = 10.0) -> int:
        node = self.nodes[index - 1]
        assert node.proc is not None
        if node.alive():
            node.proc.send_signal(signal.SIGCONT)
            node.proc.terminate()
        return node.proc.wait(timeout)

    def cleanup(self) -> None:
        for node in self.nodes:
            if node.alive():
                assert node.proc is not None
                try:
                    os.kill(node.pid, signal.SIGCONT)
                    node.proc.kill()
                    node.proc.wait(10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass

    def dump_logs(self) -> str:
        return "\n".join(f"--- {n.name} ---\n{n.log_text()[-4000:]}" for n in self.nodes)


def wait_gone(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {proc.pid} still running after {timeout}s")
        time.sleep(0.02)
    return proc.returncode
