"""mDNS discovery (issue 2): nodes with empty static lists find each other and ignore another cluster.

Multicast does not work on ``lo``, so the test builds its own small L2: one namespace holding a
bridge (which also hosts Redis) and one namespace per node, each joined to the bridge by a veth
pair with fixed MACs. Every namespace, process and directory it makes is removed afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.redis import die_with_parent, server_binary
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl"),
]

REDIS_HOST_OCTET = 254


def sh(*args: str) -> None:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")


@dataclass
class Net:
    """A private L2 segment 10.a.b.0/24: a bridge namespace plus one namespace per node."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    a: int = field(default_factory=lambda: 1 + secrets.randbelow(254))
    b: int = field(default_factory=lambda: 1 + secrets.randbelow(254))
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mn-mdns-")))
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def bridge_ns(self) -> str:
        return f"mnt-mdns-{self.tag}-br"

    def node_ns(self, k: int) -> str:
        return f"mnt-mdns-{self.tag}-n{k}"

    def addr(self, k: int) -> str:
        return f"10.{self.a}.{self.b}.{k}"

    def mac(self, k: int, side: int) -> str:
        return f"02:{self.a:02x}:{self.b:02x}:00:{k:02x}:{side:02x}"

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def build_bridge(self) -> None:
        br = self.bridge_ns
        self._add_ns(br)
        sh("ip", "-n", br, "link", "add", "br0", "address", self.mac(0, 0xFE), "type", "bridge",
           "mcast_snooping", "0")
        sh("ip", "-n", br, "addr", "add", f"{self.addr(REDIS_HOST_OCTET)}/24", "dev", "br0")
        sh("ip", "-n", br, "link", "set", "br0", "up")

    def add_node_ns(self, k: int) -> str:
        ns = self.node_ns(k)
        self._add_ns(ns)
        # veth pair created in the bridge namespace; the node end moves straight into `ns`
        sh("ip", "-n", self.bridge_ns, "link", "add", f"v{k}", "address", self.mac(k, 2), "type", "veth",
           "peer", "name", "eth0", "address", self.mac(k, 1), "netns", ns)
        sh("ip", "-n", self.bridge_ns, "link", "set", f"v{k}", "master", "br0")
        sh("ip", "-n", self.bridge_ns, "link", "set", f"v{k}", "up")
        sh("ip", "-n", ns, "addr", "add", f"{self.addr(k)}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        return ns

    def spawn(self, ns: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        # `ip netns exec` execs in place, so the PID we hold is the real process's PID
        with open(log, "ab") as logf:
            p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=env, stdout=logf, stderr=logf,
                                 stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
        self.procs.append(p)
        return p

    def run_in(self, ns: str, *argv: str, timeout: float = 5) -> str:
        r = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{argv[0]} in {ns} failed ({r.returncode}): {r.stderr.strip()[-300:]}")
        return r.stdout

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class MdnsNode:
    k: int
    ns: str
    host: str
    cookie: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"mn{self.k}@{self.host}"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@pytest.fixture
def net(request: pytest.FixtureRequest) -> Iterator[Net]:
    n = Net()
    try:
        yield n
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            for log in sorted(n.workdir.glob("*.log")):
                print(f"===== {log.name}\n{log.read_text(errors='replace')[-4000:]}")
    finally:
        n.cleanup()


def cookie() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def start_node(net: Net, k: int, cookie_value: str, redis_url: str, redis_namespace: str) -> MdnsNode:
    ns = net.add_node_ns(k)
    node = MdnsNode(k, ns, net.addr(k), cookie_value, net.workdir / f"mn{k}.log")
    env = {key: v for key, v in os.environ.items() if not key.startswith("MIRROR_NEURON_")}
    env.update({
        "MIRROR_NEURON_COOKIE": cookie_value,
        "MIRROR_NEURON_CLUSTER_NODES": "",
        "MIRROR_NEURON_NODE_NAME": node.name,
        "MIRROR_NEURON_REDIS_URL": redis_url,
        "MIRROR_NEURON_REDIS_NAMESPACE": redis_namespace,
        "MIRROR_NEURON_API_BIND": node.host,
        "MIRROR_NEURON_API_INSECURE": "1",  # plain HTTP on the namespace address (test network)
        "MIRROR_NEURON_DISCOVERY": "mdns",
        "MIRROR_NEURON_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    })
    node.proc = net.spawn(ns, [sys.executable, "-m", "mn_node.daemon"], node.log, env)
    return node


def members(net: Net, node: MdnsNode) -> dict[str, str]:
    """``{name: status}`` from the node's own API, fetched inside its namespace."""
    if node.proc is not None and node.proc.poll() is not None:
        raise AssertionError(f"{node.name} exited {node.proc.returncode}: {node.log_text()[-1500:]}")
    body = net.run_in(node.ns, "curl", "-sf", "--max-time", "2", f"http://{node.host}:4000/api/v1/nodes")
    return {r["name"]: r["status"] for r in json.loads(body)["nodes"]}


def test_mdns_nodes_with_empty_static_lists_find_each_other_and_ignore_another_cluster(net: Net) -> None:
    net.build_bridge()
    redis_host = net.addr(REDIS_HOST_OCTET)
    net.spawn(net.bridge_ns, [server_binary(), "--port", "6379", "--bind", redis_host, "--save", "",
                              "--appendonly", "no", "--protected-mode", "no", "--dir", str(net.workdir)],
              net.workdir / "redis.log")
    wait_until(lambda: net.run_in(net.bridge_ns, "redis-cli", "-h", redis_host, "ping").strip() == "PONG",
               20, "redis in the bridge namespace to answer")
    redis_url = f"redis://{redis_host}:6379/0"

    cookie_a = cookie()
    cluster_a = [start_node(net, k, cookie_a, redis_url, f"mnt-a-{net.tag}") for k in (1, 2, 3)]
    stranger = start_node(net, 4, cookie(), redis_url, f"mnt-b-{net.tag}")
    want = {n.name for n in cluster_a}
    leaked: list[tuple[str, dict[str, str]]] = []

    def meshed() -> bool:
        views = {n.name: members(net, n) for n in cluster_a}
        for name, view in views.items():
            if stranger.name in view:
                leaked.append((name, view))
        return all({m for m, s in v.items() if s == "up"} >= want for v in views.values())

    wait_until(meshed, 60, f"{sorted(want)} to find each other over mDNS", interval=0.25)
    assert not leaked, f"node of another cluster appeared in cluster A: {leaked}"

    # the stranger is on the same L2, so every A node hears it announce and logs that it ignores it
    needle = f"mDNS: ignoring {stranger.name} of another cluster"
    wait_until(lambda: all(needle in n.log_text() for n in cluster_a), 30,
               f"every cluster-A node to log {needle!r}", interval=0.25)

    for n in cluster_a:
        view = members(net, n)
        assert stranger.name not in view, f"{n.name} lists {stranger.name}: {view}"
        assert {m for m, s in view.items() if s == "up"} >= want
        assert "mDNS: found" in n.log_text()
    # and the stranger, alone in its cluster, never lists any node of cluster A
    assert not (set(members(net, stranger)) & want)
