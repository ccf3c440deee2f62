"""The member table: authenticated links plus this node, with nodeup/nodedown events."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from mn_node.aio import Signal
from mn_node.link.conn import Conn
from mn_node.link.manager import LinkManager

log = logging.getLogger("mn_node.membership")

@dataclass
class Member:
    name: str
    address: str
    status: str  # "up" | "down"
    incarnation: str
    since: float
    last_seen: float
    rtt_ms: float | None = None
    reason: str = ""
    is_self: bool = False

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["rtt_ms"] = None if self.rtt_ms is None else round(self.rtt_ms, 3)
        return d


class Membership:
    def __init__(self, links: LinkManager, me: str, address: str, incarnation: str) -> None:
        self.links = links
        self.me = me
        now = time.time()
        self._members: dict[str, Member] = {
            me: Member(me, address, "up", incarnation, now, now, 0.0, is_self=True)
        }
        self.up: Signal[[Member]] = Signal("nodeup")  # a peer (incarnation) came up
        self.down: Signal[[Member]] = Signal("nodedown")  # a peer went down, left or restarted
        links.on_up(self._on_link_up)
        links.on_down(self._on_link_down)

    def on_nodedown(self, cb: Callable[[Member], object]) -> None:
        """Same as ``down.connect(cb)`` (kept for the daemon's wiring)."""
        self.down.connect(cb)

    def expect(self, name: str, address: str) -> None:
        """A configured or discovered peer not linked yet shows as down (never seen)."""
        if name not in self._members:
            self._members[name] = Member(name, address, "down", "", 0.0, 0.0, reason="never seen")

    def up_names(self) -> list[str]:
        return sorted(n for n, m in self._members.items() if m.status == "up")

    def is_up(self, name: str) -> bool:
        m = self._members.get(name)
        return m is not None and m.status == "up"

    def members(self) -> list[Member]:
        """Snapshot with live RTT and last-seen from the links."""
        out = []
        now_wall, now_mono = time.time(), time.monotonic()
        for name in sorted(self._members):
            m = self._members[name]
            conn = self.links.links.get(name)
            if conn is not None and not m.is_self:
                m.rtt_ms = conn.rtt_ms
                m.last_seen = now_wall - (now_mono - conn.last_rx)
            elif m.is_self:
                m.last_seen = now_wall
            out.append(m)
        return out

    def get(self, name: str) -> Member | None:
        return self._members.get(name)

    def _on_link_up(self, conn: Conn) -> None:
        now = time.time()
        known = self.links.addresses.get(conn.peer)
        host = known[0] if known else conn.peername[0]
        prev = self._members.get(conn.peer)
        if prev is not None and prev.status == "up" and prev.incarnation != conn.peer_inc:
            # restarted between two of our observations: report the old incarnation gone first
            prev.status, prev.reason = "down", "restarted"
            self.down.emit(prev)
        m = Member(conn.peer, host, "up", conn.peer_inc, now, now, conn.rtt_ms)
        self._members[conn.peer] = m
        log.info("nodeup %s incarnation %s", conn.peer, conn.peer_inc)
        self.up.emit(m)

    def _on_link_down(self, conn: Conn, reason: str) -> None:
        m = self._members.get(conn.peer)
        if m is None or m.status == "down" or m.incarnation != conn.peer_inc:
            return
        m.status = "down"
        m.since = time.time()
        m.reason = reason
        log.info("nodedown %s: %s", conn.peer, reason)
        self.down.emit(m)
