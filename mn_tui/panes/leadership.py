"""Leadership: holder, epoch, TTL left (ticking locally between polls), change history."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from mn_tui import fmt
from mn_tui.history import leader_history
from mn_tui.model import ClusterState
from mn_tui.panes._base import Cell, Table, View, count_note

COLUMNS = ("time", "change", "node", "epoch", "reason")


def ttl_left(st: ClusterState, now: float) -> float | None:
    if st.leader is None or st.leader.ttl_ms is None:
        return None
    return st.leader.ttl_ms / 1000 - (now - st.fetched_at)


def holder_text(st: ClusterState | None, now: float) -> Text:
    t = Text()
    if st is None:
        return Text("waiting for the first answer…", style="dim")
    ld = st.leader
    if ld is None:
        t.append("leader unknown: ", style="bold yellow")
        t.append(st.errors.get("leader", "no answer"))
        return t
    if not ld.node:
        t.append("no leader right now", style="bold yellow")
        if ld.reason:
            t.append(f" ({ld.reason})", style="dim")
        return t
    t.append("holder ", style="dim")
    t.append(ld.node, style="bold")
    if ld.is_self:
        t.append(" (the node answering)", style="dim")
    t.append("   epoch ", style="dim")
    t.append(str(ld.epoch), style="bold cyan")
    left = ttl_left(st, now)
    t.append("   TTL left ", style="dim")
    if left is None:
        t.append("—")
    elif left > 0:
        t.append(f"{left:4.1f}s", style="bold green" if left > 1 else "bold yellow")
    else:
        t.append("expired: awaiting renewal or successor", style="bold red")
    if ld.incarnation:
        t.append(f"   incarnation {ld.incarnation}", style="dim")
    return t


class LeadershipPane(Vertical):
    def compose(self) -> ComposeResult:
        yield Static(id="leader-holder", classes="summary")
        yield Static("history of leader changes (newest first), from the cluster events stream",
                     id="leader-history-title", classes="title")
        yield Table(COLUMNS, id="leader-history")

    def tick(self, st: ClusterState | None, now: float) -> None:
        """Redraw the TTL countdown only: local arithmetic, no I/O."""
        self.query_one("#leader-holder", Static).update(holder_text(st, now))

    def update_view(self, st: ClusterState | None, view: View) -> None:
        self.tick(st, view.now)
        changes = leader_history(st.events) if st is not None else []
        rows: list[tuple[str, Sequence[Cell]]] = []
        for c in reversed(changes):
            kind = Text(c.kind, style="bold green" if c.kind == "elected" else "yellow")
            rows.append((f"{c.ts_ms}-{c.kind}-{c.epoch}",
                         [fmt.clock(c.ts_ms / 1000, view.tfn), kind, c.node,
                          "—" if c.epoch is None else str(c.epoch), c.reason]))
        table = self.query_one(Table)
        table.set_rows(rows, view)
        title = f"history of leader changes (newest first): {len(changes)} in the last " \
                f"{len(st.events) if st else 0} cluster events" + count_note(table, view)
        self.query_one("#leader-history-title", Static).update(Text(title, style="dim"))
