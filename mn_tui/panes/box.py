"""This box: port conflicts on the dist/API ports and stale mn-node processes (psutil)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from mn_tui import fmt
from mn_tui.model import BoxState
from mn_tui.panes._base import Table, View

PORT_COLUMNS = ("address", "role", "verdict", "pid", "detail")
PROC_COLUMNS = ("pid", "node", "verdict", "started", "command")


class BoxPane(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("scanning this box…", id="box-summary", classes="summary")
        yield Static("ports (dist + API of the nodes on this box)", classes="title")
        yield Table(PORT_COLUMNS, id="box-ports")
        yield Static("mn-node processes on this box", classes="title")
        yield Table(PROC_COLUMNS, id="box-procs")

    def update_view(self, st: BoxState | None, view: View, readonly: bool) -> None:
        if st is None:
            return
        ports = self.query_one("#box-ports", Table)
        procs = self.query_one("#box-procs", Table)
        ports.set_rows([(f"port:{p.address}", [p.address, p.role, fmt.status(p.verdict),
                                               "—" if p.pid is None else str(p.pid), p.detail])
                        for p in st.ports], view)
        procs.set_rows([(f"pid:{p.pid}", [str(p.pid), p.node_name.split("@")[0] or "—",
                                          Text(p.verdict, style="bold yellow" if p.stale else "green"),
                                          fmt.clock(p.started, view.tfn), p.command])
                        for p in st.processes], view)
        conflicts = sum(p.conflict for p in st.ports)
        stale = sum(p.stale for p in st.processes)
        t = Text()
        t.append(f"{conflicts} port conflict{'s' if conflicts != 1 else ''}",
                 style="bold red" if conflicts else "green")
        t.append(" · ")
        t.append(f"{stale} stale process{'es' if stale != 1 else ''}", style="bold yellow" if stale else "green")
        t.append(f" · {len(st.processes)} mn-node processes", style="dim")
        if st.note:
            t.append(f"\n{st.note}", style="yellow")
        if st.error:
            t.append(f"\nscan failed: {st.error}", style="bold red")
        t.append("\nk: kill the highlighted pid (asks first)" if not readonly
                 else "\nread-only: kill disabled", style="dim")
        self.query_one("#box-summary", Static).update(t)

    def selected_pid(self) -> tuple[int, str] | None:
        """The pid under the cursor of the focused table (processes by default)."""
        app = self.app
        focused = app.focused
        tables = [self.query_one("#box-procs", Table), self.query_one("#box-ports", Table)]
        if isinstance(focused, Table) and focused in tables:
            tables.remove(focused)
            tables.insert(0, focused)
        for t in tables:
            key = t.selected_key()
            if key is None:
                continue
            row = t.get_row(key)
            if t.id == "box-procs":
                return int(key.split(":", 1)[1]), str(row[4])
            pid_cell = str(row[3])
            if pid_cell.isdigit():
                cmd = row[4]
                return int(pid_cell), cmd.plain if isinstance(cmd, Text) else str(cmd)
        return None
