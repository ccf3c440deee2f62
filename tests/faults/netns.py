"""Plain network namespaces for the fault runner: no systemd, one bridge, nft for partitions.

Layout (every name starts with the run's random prefix ``p``, e.g. ``mnf3a9c``)::

    p-hub     holds bridge br0 (no address)
    p-ctl     the observer / client (10.88.S.3): the runner's own thread lives here
    p-redis   redis-server (10.88.S.2)
    p-n1..nN  one mn-node each (10.88.S.(10+k))

Each namespace is cabled to br0 by a veth pair (fixed MACs: stale ARP otherwise). Faults are
nft tables named ``mnfault`` inside the namespace concerned; the observer's address is never
dropped, so a cut-off node can still be asked whether it thinks it leads. Everything is
removed by :meth:`Net.destroy` (processes left in a namespace are SIGKILLed by PID first).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
FAULT_TABLE = "mnfault"


class NetError(RuntimeError):
    pass


def sh(argv: Sequence[str], check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), text=True, capture_output=True, timeout=timeout)
    if check and res.returncode != 0:
        raise NetError(f"{' '.join(argv)} -> {res.returncode}: {res.stderr.strip()[:500]}")
    return res


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class Net:
    prefix: str
    subnet: str  # "10.88.S"
    nodes: int
    redis_hosts: int = 1  # 3: a primary, two replicas and a Sentinel each, in -r1..-r3 (.4-.6)
    created: list[str] = field(default_factory=list)
    _home_fd: int | None = None

    # ---- names and addresses ------------------------------------------------------------
    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    @property
    def ctl(self) -> str:
        return f"{self.prefix}-ctl"

    @property
    def redis_ns(self) -> str:
        return f"{self.prefix}-redis"

    def node_ns(self, k: int) -> str:
        return f"{self.prefix}-n{k}"

    @property
    def ctl_addr(self) -> str:
        return f"{self.subnet}.3"

    @property
    def redis_addr(self) -> str:
        return f"{self.subnet}.2"

    def node_addr(self, k: int) -> str:
        return f"{self.subnet}.{10 + k}"

    def redis_host_ns(self, k: int) -> str:
        return f"{self.prefix}-r{k}"

    def redis_host_addr(self, k: int) -> str:
        return f"{self.subnet}.{3 + k}"

    def redis_addrs(self) -> list[str]:
        """Every Redis-side address the nodes talk to (servers and Sentinels)."""
        if self.redis_hosts <= 1:
            return [self.redis_addr]
        return [self.redis_host_addr(k) for k in range(1, self.redis_hosts + 1)]

    def all_node_addrs(self) -> list[str]:
        return [self.node_addr(k) for k in range(1, self.nodes + 1)]

    def nsenter(self, ns: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{ns}", "--"]

    # ---- build / destroy --------------------------------------------------------------------
    def create(self) -> Net:
        try:
            self._add_ns(self.hub)
            sh(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
            sh(["ip", "-n", self.hub, "link", "set", "br0", "up"])
            self._cable(self.ctl, self.ctl_addr, 3)
            self._cable(self.redis_ns, self.redis_addr, 2)
            if self.redis_hosts > 1:
                for k in range(1, self.redis_hosts + 1):
                    self._cable(self.redis_host_ns(k), self.redis_host_addr(k), 3 + k)
            for k in range(1, self.nodes + 1):
                self._cable(self.node_ns(k), self.node_addr(k), 10 + k)
        except BaseException:
            self.destroy()
            raise
        return self

    def _add_ns(self, ns: str) -> None:
        sh(["ip", "netns", "add", ns])
        self.created.append(ns)
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _cable(self, ns: str, addr: str, host_byte: int) -> None:
        self._add_ns(ns)
        short = ns.rsplit("-", 1)[1]
        outer = f"{self.prefix}{short}"[:15]
        sh(["ip", "-n", self.hub, "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns])
        sh(["ip", "-n", self.hub, "link", "set", outer, "master", "br0", "up"])
        mac = f"02:4d:4e:{int(self.subnet.rsplit('.', 1)[1]):02x}:00:{host_byte:02x}"
        sh(["ip", "-n", ns, "link", "set", "eth0", "address", mac])
        sh(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def pids_in(self, ns: str) -> list[int]:
        res = sh(["ip", "netns", "pids", ns], check=False)
        return [int(p) for p in res.stdout.split() if p.strip().isdigit()]

    def destroy(self) -> list[str]:
        """Kill every process left in our namespaces (by PID), delete the namespaces.
        Returns what had to be killed (should be empty after an orderly run)."""
        leftovers: list[str] = []
        self.leave()
        for ns in reversed(self.created):
            for _ in range(50):
                pids = self.pids_in(ns)
                if not pids:
                    break
                for pid in pids:
                    leftovers.append(f"{ns}:{pid}")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)  # give the kernel a moment to reap before looking again
            sh(["ip", "netns", "del", ns], check=False)
        self.created.clear()
        return sorted(set(leftovers))

    # ---- the runner's own thread ----------------------------------------------------------
    def enter_ctl(self) -> None:
        """Move this (main) thread into the ctl namespace; threads started later inherit it."""
        if self._home_fd is None:
            self._home_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        _setns(f"/run/netns/{self.ctl}")

    def leave(self) -> None:
        if self._home_fd is None:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(self._home_fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the original namespace failed")
        os.close(self._home_fd)
        self._home_fd = None

    # ---- faults (nft tables inside one namespace) ----------------------------------------------
    def drop(self, ns: str, addrs: Sequence[str]) -> None:
        """Drop traffic to and from ``addrs`` inside namespace ``ns`` (both directions)."""
        s = ", ".join(addrs)
        rules = (
            f"table inet {FAULT_TABLE} {{\n"
            f"  chain in {{ type filter hook input priority 0; ip saddr {{ {s} }} drop; }}\n"
            f"  chain out {{ type filter hook output priority 0; ip daddr {{ {s} }} drop; }}\n"
            "}\n"
        )
        self._nft(ns, rules)

    def loss(self, ns: str, percent: int, spare: Sequence[str]) -> None:
        """Drop ``percent`` % of packets in and out of ``ns``, except to/from ``spare``."""
        s = ", ".join(spare)
        rules = (
            f"table inet {FAULT_TABLE} {{\n"
            f"  chain in {{ type filter hook input priority 0; ip saddr {{ {s} }} accept; "
            f"iifname lo accept; numgen random mod 100 < {percent} drop; }}\n"
            f"  chain out {{ type filter hook output priority 0; ip daddr {{ {s} }} accept; "
            f"oifname lo accept; numgen random mod 100 < {percent} drop; }}\n"
            "}\n"
        )
        self._nft(ns, rules)

    def heal(self, ns: str) -> None:
        sh([*self.nsenter(ns), "nft", "delete", "table", "inet", FAULT_TABLE], check=False)

    def has_rules(self, ns: str) -> bool:
        res = sh([*self.nsenter(ns), "nft", "list", "tables"], check=False)
        return FAULT_TABLE in res.stdout

    def _nft(self, ns: str, rules: str) -> None:
        res = subprocess.run([*self.nsenter(ns), "nft", "-f", "-"], input=rules, text=True,
                             capture_output=True, timeout=20)
        if res.returncode != 0:
            raise NetError(f"nft in {ns}: {res.stderr.strip()[:500]}")
