"""What is wrong on this box, from psutil: stale mn-node processes and port conflicts.

Blocking (process table and socket table scans): run it in a worker thread.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from mn_node.ports import PortHolder
from mn_tui.model import BoxState, LocalProc, Member, PortCheck

DEFAULT_DIST_PORT = 4370
START_SLACK_MS = 5000  # registration started_ms vs process create_time


def is_node_cmdline(cmd: list[str]) -> bool:
    """An mn-node daemon (console script or ``python -m mn_node.daemon``), not the CLI or TUI."""
    if "mn_node.daemon" in cmd:
        return True
    return any(os.path.basename(a) == "mn-node" for a in cmd[:2])


def local_addresses() -> set[str]:
    out: set[str] = set()
    try:
        for addrs in psutil.net_if_addrs().values():
            out.update(a.address.split("%", 1)[0] for a in addrs)
    except OSError:
        pass
    return out


def is_local(host: str, mine: set[str]) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host in ("localhost",) or host in mine
    return ip.is_loopback or str(ip) in mine


@dataclass
class _Proc:
    pid: int
    ppid: int
    status: str
    started: float
    cmd: str
    name: str
    node_name: str
    env_read: bool


def _scan_processes() -> tuple[list[_Proc], dict[int, str]]:
    """mn-node processes, and every process's short name (for zombie parents)."""
    found: list[_Proc] = []
    names: dict[int, str] = {}
    zombies: list[psutil.Process] = []
    for p in psutil.process_iter(["pid", "ppid", "name", "cmdline", "status", "create_time"]):
        info = p.info
        names[info["pid"]] = info.get("name") or "?"
        if info.get("status") == psutil.STATUS_ZOMBIE:
            zombies.append(p)
            continue
        cmd = info.get("cmdline") or []
        if not is_node_cmdline(cmd):
            continue
        node_name, env_read = "", False
        try:
            env = p.environ()
            node_name = env.get("MIRROR_NEURON_NODE_NAME", "")
            env_read = True
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            pass
        found.append(_Proc(info["pid"], info.get("ppid") or 0, str(info.get("status")),
                           float(info.get("create_time") or 0.0), " ".join(cmd)[:200],
                           info.get("name") or "", node_name, env_read))
    node_pids = {f.pid for f in found}
    for z in zombies:
        info = z.info
        nm = info.get("name") or ""
        if "mn-node" in nm or info.get("ppid") in node_pids:
            found.append(_Proc(info["pid"], info.get("ppid") or 0, "zombie",
                               float(info.get("create_time") or 0.0), f"[{nm}] <defunct>", nm, "", False))
    return found, names


def _verdict(p: _Proc, members: dict[str, Member] | None, names: dict[int, str],
             by_pid: dict[int, Member]) -> tuple[str, bool]:
    if p.status == "zombie":
        parent = names.get(p.ppid, "?")
        return f"zombie: parent pid {p.ppid} ({parent}) has not reaped it", True
    if members is None:
        return "unverified: registrations unknown (node API unreachable)", False
    m = by_pid.get(p.pid)
    if m is not None:
        if m.started_ms and abs(p.started * 1000 - m.started_ms) > START_SLACK_MS:
            return f"pid reused: {m.short}'s registration is for an older process with this pid", True
        return f"live: {m.name}" + (" (down)" if m.status != "up" else ""), False
    if p.node_name and p.node_name in members:
        m = members[p.node_name]
        if m.registered and m.pid:
            return f"stale: old incarnation of {m.short} (registered pid is {m.pid})", True
        return f"stale: {m.short} has no live registration", True
    if p.node_name:
        return f"other cluster or not registered ({p.node_name})", False
    if not p.env_read:
        return "unregistered mn-node (environment not readable)", True
    return "unregistered mn-node (no MIRROR_NEURON_NODE_NAME)", True


def _listening() -> list[tuple[str, int, int | None]]:
    """(ip, port, pid) of every TCP listener: one scan of the socket table per refresh."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError):
        return []
    return [(c.laddr.ip, c.laddr.port, c.pid) for c in conns
            if c.status == psutil.CONN_LISTEN and c.laddr]


def _holders(table: list[tuple[str, int, int | None]], port: int, host: str) -> list[PortHolder]:
    """Like mn_node.ports.listeners, on a table already read."""
    out = []
    for ip, p, pid in table:
        if p != port or ip not in (host, "0.0.0.0", "::"):
            continue
        cmd = ""
        if pid is not None:
            try:
                proc = psutil.Process(pid)
                cmd = " ".join(proc.cmdline()) or proc.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                cmd = "?"
        out.append(PortHolder(pid, cmd[:200], f"{ip}:{p}"))
    return out


def _port_check(host: str, port: int, role: str, expect: Member | None,
                node_pids: set[int], table: list[tuple[str, int, int | None]]) -> PortCheck:
    addr = f"{host}:{port}"
    holders = _holders(table, port, host)
    if not holders:
        want = f"{expect.short} is {expect.status}" if expect else "nothing expected"
        return PortCheck(addr, role, None, "", "free", f"no listener ({want})")
    h = holders[0]
    others = f" (+{len(holders) - 1} more)" if len(holders) > 1 else ""
    if h.pid is None:
        return PortCheck(addr, role, None, "", "unknown",
                         f"held by a process this user cannot see (run as root){others}")
    if expect is not None and expect.pid == h.pid:
        return PortCheck(addr, role, h.pid, h.command, "ok", f"held by {expect.short} itself{others}")
    if h.pid in node_pids:
        who = f"expected {expect.short} pid {expect.pid}" if expect and expect.pid else "no live registration"
        return PortCheck(addr, role, h.pid, h.command, "stale",
                         f"held by another mn-node process pid {h.pid} ({who}){others}")
    return PortCheck(addr, role, h.pid, h.command, "conflict",
                     f"held by foreign process pid {h.pid}: {h.command[:80]}{others}")


def scan_box(members: Iterable[Member] | None, api_host: str, api_port: int,
             api_node: str | None = None, dist_port: int = DEFAULT_DIST_PORT,
             now: float | None = None) -> BoxState:
    """Processes and port holders on this box, judged against the members the API reports.

    ``members`` None means the API is unreachable: processes are listed unverified, and only
    the API's own address is checked. ``api_node`` is the node answering at ``api_host``.
    """
    t = time.time() if now is None else now
    procs, names = _scan_processes()
    member_map = None if members is None else {m.name: m for m in members}
    by_pid: dict[int, Member] = {}
    mine = local_addresses()
    if member_map is not None:
        for m in member_map.values():
            if m.pid and is_local(m.address, mine):
                by_pid[m.pid] = m
    out_procs = []
    for p in sorted(procs, key=lambda x: x.pid):
        verdict, stale = _verdict(p, member_map, names, by_pid)
        out_procs.append(LocalProc(p.pid, p.ppid, p.status, p.started, p.cmd, p.node_name, verdict, stale))
    node_pids = {p.pid for p in procs if p.status != "zombie"}
    checks: list[PortCheck] = []
    seen: set[tuple[str, int]] = set()
    local_members = [m for m in (member_map or {}).values() if is_local(m.address, mine)]
    api_member = (member_map or {}).get(api_node or "") or next(
        (m for m in local_members if m.address == api_host), None)
    targets: list[tuple[str, int, str, Member | None]] = [
        (api_host, api_port, f"API ({api_member.short if api_member else 'target of --api'})", api_member)]
    for m in sorted(local_members, key=lambda x: x.name):
        targets.append((m.address, dist_port, f"dist of {m.short}", m))
        if m is not api_member:
            targets.append((m.address, api_port, f"API of {m.short}", m))
    if api_member is None:
        targets.append((api_host, dist_port, "dist (host of --api)", None))
    table = _listening()
    for host, port, role, expect in targets:
        if (host, port) in seen:
            continue
        seen.add((host, port))
        checks.append(_port_check(host, port, role, expect, node_pids, table))
    note = "" if member_map is not None else "registrations unknown (node API unreachable): verdicts unverified"
    return BoxState(t, out_procs, checks, note)
