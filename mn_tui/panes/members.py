"""Members: every node this session has seen, down ones kept and marked."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from mn_tui import fmt
from mn_tui.model import ClusterState, Member
from mn_tui.panes._base import Table, View, count_note

# status carries the drain state (up draining); mem = available/total; slots = used/free executor slots
# (reason next to status: a down node's cause stays in view on narrow screens; the table scrolls sideways)
COLUMNS = ("name", "address", "status", "reason", "age", "rtt", "last seen", "version", "cpu", "load", "mem", "slots",
           "cmds")


def member_cells(m: Member, view: View) -> list[str | Text]:
    name = m.name + (" *" if m.is_self else "")
    age = fmt.dur(view.now - m.started_ms / 1000) if m.started_ms else "—"
    if m.is_self:
        seen = "self"
    elif m.status == "up":
        seen = fmt.ago(m.last_seen, view.now)
    else:
        seen = fmt.ago(m.last_seen, view.now) if m.last_seen else "never"
    load = "—"
    if m.loadavg1 is not None:
        load = f"{m.loadavg1:.2f}"
        if m.links is not None:
            load += f" {m.links}L"
    status = fmt.status(m.status)
    if m.status != "up" and m.since:
        status.append(f" {fmt.dur(view.now - m.since)}", style="dim")
    if m.drain:
        status.append(f" {m.drain}", style="bold yellow")
    return [name, m.address, status, m.reason, age, "self" if m.is_self else fmt.ms(m.rtt_ms), seen,
            m.version or "—", "—" if m.cpus is None else str(m.cpus), load, *fact_cells(m)]


def fact_cells(m: Member) -> list[str | Text]:
    """Memory available/total, executor slots used/free, commands on/off."""
    mem = "—"
    if m.mem_total:
        mem = f"{(m.mem_available or 0) / 2**30:.1f}/{m.mem_total / 2**30:.1f}G"
    slots = "—" if m.slots_used is None else f"{m.slots_used}/{m.slots_free if m.slots_free is not None else '—'}"
    return [mem, slots, m.commands or "—"]


class MembersPane(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("waiting for the first answer…", id="members-summary", classes="summary")
        yield Table(COLUMNS, id="members-table")

    def update_view(self, st: ClusterState | None, members: list[Member], view: View) -> None:
        table = self.query_one(Table)
        table.set_rows([(m.name, member_cells(m, view)) for m in members], view)
        up = sum(m.status == "up" for m in members)
        down = len(members) - up
        line = Text()
        line.append(f"{len(members)} members: ")
        line.append(f"{up} up", style="bold green")
        line.append(", ")
        line.append(f"{down} down", style="bold red" if down else "")
        if st is not None and st.leader is not None and st.leader.node:
            line.append(f" · leader {st.leader.node} (epoch {st.leader.epoch})")
        elif st is not None and "leader" not in st.errors:
            line.append(" · no leader right now", style="bold yellow")
        line.append(" · * = the node answering" + count_note(table, view), style="dim")
        self.query_one("#members-summary", Static).update(line)
