"""Jobs: status, owner, progress, executors per node; Enter drills into a job's events."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Static

from mn_tui import fmt
from mn_tui.client import ApiError
from mn_tui.model import Job, JobDetail, JobsState
from mn_tui.panes._base import Table, View, count_note

COLUMNS = ("job", "name", "status", "owner", "epoch", "progress", "executors per node", "updated")


def short_node(n: str) -> str:
    return n.split("@", 1)[0]


def executors(nodes: dict[str, int]) -> str:
    return " ".join(f"{short_node(k)}:{v}" for k, v in sorted(nodes.items())) or "—"


def job_cells(j: Job, view: View) -> list[str | Text]:
    return [j.job_id, j.job_name or j.graph_id, fmt.status(j.status), short_node(j.owner) or "—",
            "—" if j.epoch is None else str(j.epoch), fmt.bar(j.done, j.total), executors(j.nodes),
            fmt.ago(j.updated_ms / 1000, view.now) if j.updated_ms else "—"]


class JobsPane(Vertical):
    class Open(Message):
        def __init__(self, job_id: str) -> None:
            super().__init__()
            self.job_id = job_id

    def compose(self) -> ComposeResult:
        yield Static("waiting for the first answer…", id="jobs-summary", classes="summary")
        yield Table(COLUMNS, id="jobs-table")

    def update_view(self, st: JobsState | None, view: View) -> None:
        table = self.query_one(Table)
        summary = self.query_one("#jobs-summary", Static)
        if st is None:
            return
        if not st.available:
            table.set_rows([], view)
            summary.update(Text(st.error or "jobs API not available on this node", style="bold yellow"))
            return
        table.set_rows([(j.job_id, job_cells(j, view)) for j in st.jobs], view)
        counts: dict[str, int] = {}
        for j in st.jobs:
            counts[j.status] = counts.get(j.status, 0) + 1
        line = Text(f"{len(st.jobs)} jobs")
        for s in ("running", "pending", "completed", "failed", "cancelled"):
            if counts.get(s):
                line.append(" · ")
                line.append(f"{counts[s]} {s}", style=fmt.STATUS_STYLE.get(s, ""))
        line.append(" · Enter: events of the highlighted job" + count_note(table, view), style="dim")
        if st.error:
            line.append(f"\n{st.error} (showing the last good list; retrying)", style="bold red")
        summary.update(line)

    def on_data_table_row_selected(self, event: Table.RowSelected) -> None:
        if event.row_key.value is not None:
            self.post_message(self.Open(event.row_key.value))


EVENT_COLUMNS = ("time", "type", "node", "epoch", "details")


class JobScreen(Screen[None]):
    """One job: header, progress, executors per node, its events (live)."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("q", "app.pop_screen", "Back", show=False)]

    class Loaded(Message):
        def __init__(self, detail: JobDetail | None, error: str) -> None:
            super().__init__()
            self.detail = detail
            self.error = error

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, JobScreen.Loaded)

    def __init__(self, job_id: str, fetch: Callable[[str], Awaitable[JobDetail]], interval: float,
                 view: Callable[[], View]) -> None:
        super().__init__()
        self.job_id = job_id
        self.fetch = fetch
        self.interval = interval
        self.view = view
        self._timer: Timer | None = None
        self.detail: JobDetail | None = None

    def compose(self) -> ComposeResult:
        yield Static(f"job {self.job_id}: loading…", id="job-head", classes="summary")
        yield Static("", id="job-progress")
        yield Table(EVENT_COLUMNS, id="job-events")
        yield Footer()

    def on_mount(self) -> None:
        self.load()

    @work(exclusive=True, group="job")
    async def load(self) -> None:
        try:
            detail = await self.fetch(self.job_id)
            self.post_message(self.Loaded(detail, ""))
        except ApiError as e:
            self.post_message(self.Loaded(None, str(e)))
        finally:
            if self.is_attached:
                if self._timer is not None:
                    self._timer.stop()
                self._timer = self.set_timer(self.interval, self.load)

    def on_job_screen_loaded(self, msg: Loaded) -> None:
        if not self.is_attached or not self.is_current:
            return
        view = self.view()
        head = self.query_one("#job-head", Static)
        if msg.detail is None or msg.detail.job is None:
            head.update(Text(f"job {self.job_id}: {msg.error} (retrying)", style="bold red"))
            return
        self.detail = msg.detail
        j = msg.detail.job
        t = Text()
        t.append(f"job {j.job_id}", style="bold")
        t.append(f"  {j.job_name or j.graph_id}  ")
        t.append_text(fmt.status(j.status))
        t.append(f"  owner {j.owner or '—'} epoch {'—' if j.epoch is None else j.epoch}", style="dim")
        if j.error:
            t.append(f"\nerror: {j.error}", style="bold red")
        if j.result is not None:
            t.append(f"\nresult: {_brief(j.result)}", style="green")
        head.update(t)
        p = Text(f"progress {fmt.bar(j.done, j.total, 30)}   executors {executors(j.nodes)}")
        if msg.detail.error:
            p.append(f"\nevents: {msg.detail.error}", style="yellow")
        self.query_one("#job-progress", Static).update(p)
        rows = []
        for ev in reversed(msg.detail.events):
            rows.append((ev.id, [fmt.clock(ev.ts_ms / 1000, view.tfn), ev.type, short_node(ev.node),
                                 "—" if ev.epoch is None else str(ev.epoch), ev.summary()]))
        self.query_one(Table).set_rows(rows, view)


def _brief(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 200 else s[:197] + "…"
