"""Jobs: status, owner, progress, executors per node; Enter drills into a job: its events and,
from nodes with the agents API, its agents (a page at a time) and the last lines of a failing
agent's stderr."""

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
from mn_tui.model import AgentRow, AgentsPage, Job, JobDetail, JobsState
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
        for s in ("running", "paused", "pending", "completed", "failed", "cancelled"):
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
AGENT_COLUMNS = ("agent", "type", "status", "try", "node", "exit", "duration")


def agent_cells(a: AgentRow) -> list[str | Text]:
    exit_code = "—" if a.exit_code is None else str(a.exit_code)
    return [a.agent, a.type, fmt.status(a.status), str(a.attempt) if a.attempt else "—",
            short_node(a.node) or "—", Text(exit_code, style="bold red" if a.failing and a.exit_code else ""),
            fmt.ms(a.duration_ms)]


def failing_text(page: AgentsPage) -> Text:
    t = Text()
    f = page.failing
    if f is not None:
        code = "—" if f.exit_code is None else f.exit_code
        t.append(f"✗ {f.agent} attempt {f.attempt}, exit {code}: ", style="bold red")
        t.append("last lines of stderr" if f.lines else "no stderr", style="dim")
        for line in f.lines:
            t.append("\n  " + line[:300], style="red")
    if page.error:
        t.append(("\n" if f is not None else "") + page.error, style="yellow")
    return t


class JobScreen(Screen[None]):
    """One job: header, progress, executors per node, its events (live)."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("q", "app.pop_screen", "Back", show=False),
                Binding("n", "page(1)", "Next agents"), Binding("p", "page(-1)", "Previous agents")]

    class Loaded(Message):
        def __init__(self, detail: JobDetail | None, error: str) -> None:
            super().__init__()
            self.detail = detail
            self.error = error

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, JobScreen.Loaded)

    def __init__(self, job_id: str, fetch: Callable[[str, str], Awaitable[JobDetail]], interval: float,
                 view: Callable[[], View]) -> None:
        super().__init__()
        self.job_id = job_id
        self.fetch = fetch
        self.interval = interval
        self.view = view
        self._timer: Timer | None = None
        self.detail: JobDetail | None = None
        self.cursors = ["0"]  # the agents pages seen: HSCAN cursors, the last one shown

    def compose(self) -> ComposeResult:
        yield Static(f"job {self.job_id}: loading…", id="job-head", classes="summary")
        yield Static("", id="job-progress")
        # shown once the node answers with agents (nodes without the agents API: events only)
        yield Static("", id="job-agents-title", classes="agents title")
        yield Table(AGENT_COLUMNS, id="job-agents").add_class("agents")
        yield Static("", id="job-stderr", classes="agents")
        yield Table(EVENT_COLUMNS, id="job-events")
        yield Footer()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action != "page":
            return True
        page = self.detail.agents if self.detail is not None else None
        if page is None:
            return False  # hidden: no agents shown
        forward = parameters and parameters[0] == 1
        return True if (page.cursor != "0" if forward else len(self.cursors) > 1) else None

    def action_page(self, step: int) -> None:
        page = self.detail.agents if self.detail is not None else None
        if page is None:
            return
        if step > 0 and page.cursor != "0":
            self.cursors.append(page.cursor)
        elif step < 0 and len(self.cursors) > 1:
            self.cursors.pop()
        else:
            return
        self.load()

    def on_mount(self) -> None:
        self.query_one("#job-events", Table).focus()  # the hidden agents table cannot take it
        self.load()

    @work(exclusive=True, group="job")
    async def load(self) -> None:
        try:
            detail = await self.fetch(self.job_id, self.cursors[-1])
            self.post_message(self.Loaded(detail, ""))
        except ApiError as e:
            self.post_message(self.Loaded(None, str(e)))
        finally:
            if self.is_attached:
                if self._timer is not None:
                    self._timer.stop()
                self._timer = self.set_timer(self.interval, self.load)

    def _render_agents(self, page: AgentsPage | None, view: View) -> None:
        for w in self.query(".agents"):
            w.set_class(page is not None, "shown")
        if page is None:
            return
        agents = self.query_one("#job-agents", Table)
        if not agents.has_class("seen"):  # first shown: arrow keys move through the agents
            agents.add_class("seen")
            agents.focus()
        n = len(self.cursors)
        more = "more: n" if page.cursor != "0" else "last page"
        title = f"agents · page {n} · {len(page.rows)} shown of {page.total} · {more}" + (" · back: p" if n > 1 else "")
        self.query_one("#job-agents-title", Static).update(title)
        agents.set_rows([(a.agent, agent_cells(a)) for a in page.rows], view)
        self.query_one("#job-stderr", Static).update(failing_text(page))

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
        self._render_agents(msg.detail.agents, view)
        self.refresh_bindings()
        rows = []
        for ev in reversed(msg.detail.events):
            rows.append((ev.id, [fmt.clock(ev.ts_ms / 1000, view.tfn), ev.type, short_node(ev.node),
                                 "—" if ev.epoch is None else str(ev.epoch), ev.summary()]))
        self.query_one("#job-events", Table).set_rows(rows, view)


def _brief(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 200 else s[:197] + "…"
