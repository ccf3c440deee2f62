"""Who holds a TCP port (psutil), for "address in use" errors and doctor."""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass
class PortHolder:
    pid: int | None
    command: str
    address: str

    def describe(self) -> str:
        if self.pid is None:
            return f"{self.address} (owner not visible: run as root to see it)"
        return f"{self.address} by pid {self.pid} ({self.command})"


def _matches(laddr_ip: str, want: str) -> bool:
    return want in ("", "0.0.0.0", "::") or laddr_ip in (want, "0.0.0.0", "::")


def listeners(port: int, host: str = "") -> list[PortHolder]:
    """Processes listening on ``port`` (on ``host`` or a wildcard address)."""
    out: list[PortHolder] = []
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError):
        return out
    for c in conns:
        if c.status != psutil.CONN_LISTEN or not c.laddr or c.laddr.port != port:
            continue
        if not _matches(c.laddr.ip, host):
            continue
        cmd = ""
        if c.pid is not None:
            try:
                cmd = " ".join(psutil.Process(c.pid).cmdline()) or psutil.Process(c.pid).name()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                cmd = "?"
        out.append(PortHolder(c.pid, cmd[:200], f"{c.laddr.ip}:{c.laddr.port}"))
    return out


def describe_holder(port: int, host: str = "") -> str:
    found = listeners(port, host)
    if not found:
        return f"{host or '*'}:{port} (holder not found; it may be in another network namespace)"
    return "; ".join(h.describe() for h in found)
