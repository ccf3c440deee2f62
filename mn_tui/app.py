"""The mn-tui App: tabs, key bindings, and the polling loop.

Every poll is a worker (``exclusive`` per kind, so a new one replaces a stuck one); network
waits are aiohttp awaits and psutil scans run in a thread, so a key press never waits on I/O.
Each worker re-arms a one-shot timer when it finishes, so a slow node makes polls slower,
never piled up; results arrive as messages that replace an older unprocessed one of their kind.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Footer, Input, Static, TabbedContent, TabPane

from mn_node.errors import MirrorNeuronError
from mn_tui import fmt
from mn_tui.client import ApiError
from mn_tui.model import BoxState, ClusterState, DoctorReport, JobsState, Member
from mn_tui.panes import (
    BoxPane,
    ConfirmKill,
    DoctorPane,
    HelpScreen,
    JobScreen,
    JobsPane,
    LeadershipPane,
    MembersPane,
    View,
)
from mn_tui.panes._base import Table
from mn_tui.provider import LiveProvider, Provider

log = logging.getLogger("mn_tui")

P = TypeVar("P", MembersPane, LeadershipPane, JobsPane, BoxPane, DoctorPane)

BOX_MIN_S = 2.0
BOX_IDLE_S = 15.0

TABS = (("members", "1 Members"), ("leadership", "2 Leadership"), ("jobs", "3 Jobs"),
        ("box", "4 This box"), ("doctor", "5 Doctor"))


class Polled(Message):
    """A poll's result (``data``) or why it failed (``error``). A newer one replaces an older one
    still queued, so a burst of results collapses into one redraw."""

    def __init__(self, data: Any, error: str = "") -> None:
        super().__init__()
        self.data = data
        self.error = error

    def can_replace(self, message: Message) -> bool:
        return type(message) is type(self)


class ClusterPolled(Polled):
    pass


class JobsPolled(Polled):
    pass


class BoxPolled(Polled):
    pass


class DoctorPolled(Polled):
    pass


CSS = """
#status { height: auto; background: $panel; color: $text; padding: 0 1; }
#banner { display: none; height: auto; padding: 0 1; background: $error 30%; color: $text; }
#banner.shown { display: block; }
#filter { dock: bottom; display: none; height: 3; margin-bottom: 1; }
#filter.shown { display: block; }
.summary { height: auto; padding: 0 1; }
.title { height: 1; padding: 0 1; margin-top: 1; color: $text-muted; }
TabPane { padding: 0; }
#box-ports { max-height: 8; }
HelpScreen, ConfirmKill { align: center middle; }
#help-box { width: 74; max-width: 95%; height: auto; max-height: 95%; border: round $accent;
            background: $surface; padding: 0 1; }
#confirm-box { width: 70; max-width: 95%; height: auto; border: thick $error; background: $surface;
               padding: 1 2; }
#confirm-buttons { height: auto; margin-top: 1; }
#confirm-buttons Button { margin-right: 1; }
JobScreen #job-progress { height: auto; padding: 0 1; }
JobScreen .agents { display: none; }
JobScreen .agents.shown { display: block; }
JobScreen #job-agents { max-height: 12; }
JobScreen #job-stderr { height: auto; padding: 0 1; }
DoctorPane { padding: 0 1; }
"""


class MnTui(App[None]):
    TITLE = "mn-tui"
    ENABLE_COMMAND_PALETTE = False
    CSS = CSS
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("r", "refresh", "Refresh"),
        Binding("1", "tab('members')", "Members", show=False),
        Binding("2", "tab('leadership')", "Leader", show=False),
        Binding("3", "tab('jobs')", "Jobs", show=False),
        Binding("4", "tab('box')", "Box", show=False),
        Binding("5", "tab('doctor')", "Doctor", show=False),
        Binding("k", "kill", "Kill pid"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self, provider: Provider, refresh: float = 2.0, readonly: bool = False,
                 clock: Callable[[], float] = time.time,
                 tfn: Callable[[float], time.struct_time] = time.localtime) -> None:
        super().__init__()
        self.provider = provider
        self.refresh_s = refresh
        self.readonly = readonly
        self.clock = clock
        self.tfn = tfn
        self.cluster: ClusterState | None = None
        self.cluster_error = ""
        self.cluster_failures = 0
        self.cluster_polls = 0
        self.last_ok: float | None = None
        self.seen: dict[str, Member] = {}
        self.jobs_state: JobsState | None = None
        self.box_state: BoxState | None = None
        self.doctor_report: DoctorReport | None = None
        self.doctor_running = False
        self.filter_text = ""
        self._poll_timers: dict[str, Timer] = {}
        self._closing = False

    # ---- layout ---------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="status")
        yield Static(id="banner")
        with TabbedContent(initial="members", id="tabs"):
            with TabPane(TABS[0][1], id="members"):
                yield MembersPane()
            with TabPane(TABS[1][1], id="leadership"):
                yield LeadershipPane()
            with TabPane(TABS[2][1], id="jobs"):
                yield JobsPane()
            with TabPane(TABS[3][1], id="box"):
                yield BoxPane()
            with TabPane(TABS[4][1], id="doctor"):
                yield DoctorPane()
        yield Input(placeholder="filter rows (Enter keeps, Esc clears)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self._status()
        self.query_one("#members-table", Table).focus()
        self.poll_cluster()
        self.poll_jobs()
        self.set_interval(0.2, self._tick)

    async def on_unmount(self) -> None:
        self._closing = True
        for t in self._poll_timers.values():
            t.stop()
        await self.provider.close()

    def _pane(self, cls: type[P]) -> P:
        return self.query_one(cls)

    def _alive(self) -> bool:
        """False while the app is shutting down: a late timer or message then has nothing to
        draw on, and must not crash the exit."""
        try:
            self.query_one(MembersPane)
        except NoMatches:
            return False
        return not self._closing

    def view(self) -> View:
        return View(self.clock(), self.tfn, self.filter_text)

    @property
    def active_tab(self) -> str:
        return self.query_one(TabbedContent).active

    # ---- polling --------------------------------------------------------------------
    def _rearm(self, name: str, fn: Callable[[], object], delay: float | None = None) -> None:
        old = self._poll_timers.pop(name, None)
        if old is not None:
            old.stop()
        if not self._closing:
            self._poll_timers[name] = self.set_timer(delay or self.refresh_s, fn, name=f"poll-{name}")

    @work(exclusive=True, group="cluster")
    async def poll_cluster(self) -> None:
        try:
            st = await self.provider.cluster()
        except ApiError as e:
            self.post_message(ClusterPolled(None, str(e)))
        except Exception as e:  # a bug must not end a session left open during an incident
            log.exception("cluster poll failed")
            self.post_message(ClusterPolled(None, f"internal error: {type(e).__name__}: {e}"))
        else:
            self.post_message(ClusterPolled(st))
        if "box" not in self._poll_timers and not self._closing:
            self.poll_box()  # first scan once registrations are known; it re-arms itself
        self._rearm("cluster", self.poll_cluster)

    @work(exclusive=True, group="jobs")
    async def poll_jobs(self) -> None:
        try:
            st = await self.provider.jobs()
        except ApiError as e:
            self.post_message(JobsPolled(None, str(e)))
        except Exception as e:
            log.exception("jobs poll failed")
            self.post_message(JobsPolled(None, f"internal error: {type(e).__name__}: {e}"))
        else:
            self.post_message(JobsPolled(st))
        self._rearm("jobs", self.poll_jobs)

    @work(exclusive=True, group="box")
    async def poll_box(self) -> None:
        """Scan this box (psutil, in a thread) against the latest registrations. A scan costs
        real CPU on a busy box (~1 s for 1000 processes), so at most every BOX_MIN_S while the
        pane is shown, every BOX_IDLE_S otherwise."""
        fresh = self.cluster if not self.cluster_error else None
        try:
            st = await self.provider.box(fresh)
        except Exception as e:
            log.exception("box scan failed")
            st = BoxState(self.clock(), error=f"{type(e).__name__}: {e}")
        self.post_message(BoxPolled(st))
        self._rearm("box", self.poll_box, self._box_interval())

    def _box_interval(self) -> float:
        return max(self.refresh_s, BOX_MIN_S) if self.active_tab == "box" else BOX_IDLE_S

    @work(exclusive=True, group="doctor")
    async def run_doctor(self) -> None:
        self.doctor_running = True
        if self._alive():
            self._render_doctor()
        try:
            rep = await self.provider.doctor()
        except Exception as e:
            log.exception("doctor failed")
            rep = DoctorReport(self.clock(), True, [], f"running mn doctor failed: {type(e).__name__}: {e}")
        self.post_message(DoctorPolled(rep))

    # ---- results --------------------------------------------------------------------
    def on_cluster_polled(self, msg: ClusterPolled) -> None:
        self.cluster_polls += 1
        if msg.data is None:
            self.cluster_failures += 1
            self.cluster_error = msg.error
        else:
            st: ClusterState = msg.data
            self.cluster = st
            self.cluster_error = ""
            self.cluster_failures = 0
            self.last_ok = st.fetched_at
            if "nodes" not in st.errors:
                current = {m.name for m in st.members}
                for m in st.members:
                    self.seen[m.name] = m
                for name, old in list(self.seen.items()):
                    if name not in current and old.status != "gone":
                        self.seen[name] = _gone(old, st.fetched_at)
        if self._alive():
            self._render_cluster()

    def on_jobs_polled(self, msg: JobsPolled) -> None:
        if msg.data is not None:
            self.jobs_state = msg.data
        else:
            old = self.jobs_state
            self.jobs_state = JobsState(self.clock(), True, old.jobs if old else [], msg.error)
        if not self._alive():
            return
        self._pane(JobsPane).update_view(self.jobs_state, self.view())

    def on_box_polled(self, msg: BoxPolled) -> None:
        self.box_state = msg.data
        if not self._alive():
            return
        self._pane(BoxPane).update_view(self.box_state, self.view(), self.readonly)

    def on_doctor_polled(self, msg: DoctorPolled) -> None:
        self.doctor_report = msg.data
        self.doctor_running = False
        if self._alive():
            self._render_doctor()

    def on_jobs_pane_open(self, msg: JobsPane.Open) -> None:
        self.push_screen(JobScreen(msg.job_id, self.provider.job, self.refresh_s, self.view))

    # ---- rendering ------------------------------------------------------------------
    def _render_cluster(self) -> None:
        view = self.view()
        members = sorted(self.seen.values(), key=lambda m: m.name)
        self._pane(MembersPane).update_view(self.cluster, members, view)
        self._pane(LeadershipPane).update_view(self.cluster, view)
        self._status()
        self._banner()

    def _render_all(self) -> None:
        if not self._alive():
            return
        view = self.view()
        self._render_cluster()
        self._pane(JobsPane).update_view(self.jobs_state, view)
        self._pane(BoxPane).update_view(self.box_state, view, self.readonly)
        self._render_doctor()

    def _render_doctor(self) -> None:
        self._pane(DoctorPane).update_view(self.doctor_report, self.view(), self.doctor_running)

    def _tick(self) -> None:
        if self.cluster is not None and self.cluster.leader is not None and self._alive():
            self._pane(LeadershipPane).tick(self.cluster, self.clock())

    def _status(self) -> None:
        t = Text()
        node = self.cluster.health.node if self.cluster and self.cluster.health else None
        t.append(node or "mn-tui", style="bold")
        t.append(" via ", style="dim")
        t.append(self.provider.api, style="cyan")
        t.append(f" · every {self.refresh_s:g}s", style="dim")
        if self.last_ok is not None:
            t.append(f" · at {fmt.clock(self.last_ok, self.tfn)}", style="dim")
            if self.cluster_error:
                t.append(" (stale)", style="bold red")
        if self.filter_text:
            t.append(f" · filter {self.filter_text!r}", style="yellow")
        if self.readonly:
            t.append(" · READ-ONLY", style="bold magenta")
        self.query_one("#status", Static).update(t)

    def _banner(self) -> None:
        lines: list[Text] = []
        if self.cluster_error:
            since = f"last success {fmt.clock(self.last_ok, self.tfn)}" if self.last_ok else "no success yet"
            lines.append(Text(f"✗ node unreachable: {self.cluster_error} — retrying every "
                              f"{self.refresh_s:g}s (attempt {self.cluster_failures}, {since})",
                              style="bold"))
        elif self.cluster is not None:
            h = self.cluster.health
            if h is not None and h.redis != "ok":
                lines.append(Text(f"✗ Redis unreachable from {h.node}: {'; '.join(h.reasons) or h.redis} "
                                  "— leadership and jobs may be stale; retrying", style="bold"))
            elif h is not None and h.status != "ok":
                lines.append(Text(f"! {h.node} reports unhealthy: {'; '.join(h.reasons)}"))
            for ep, err in sorted(self.cluster.errors.items()):
                lines.append(Text(f"! {ep}: {err}"))
        banner = self.query_one("#banner", Static)
        banner.update(Text("\n").join(lines))
        banner.set_class(bool(lines), "shown")

    # ---- actions --------------------------------------------------------------------
    def action_tab(self, name: str) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = name
        self._focus_pane(tabs.get_pane(name))

    def _focus_pane(self, pane: TabPane | None) -> None:
        """Focus the pane's first table (or the pane's scroller): keys then act on what is shown,
        and focus never stays on a widget of a hidden pane (which would switch the tab back)."""
        if pane is None:
            return
        target = pane.query(Table).first() if pane.query(Table) else pane.query(DoctorPane).first()
        if self.focused is not target:
            target.focus()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.refresh_bindings()
        pane_id = event.pane.id or ""
        if pane_id == "doctor" and self.doctor_report is None and not self.doctor_running:
            self.run_doctor()
        stale = self.box_state is None or self.clock() - self.box_state.fetched_at > BOX_MIN_S
        if pane_id == "box" and stale and self.cluster_polls:
            self.poll_box()
        self._focus_pane(event.pane)

    def action_refresh(self) -> None:
        if self.active_tab == "doctor":
            self.run_doctor()
            return
        self.poll_cluster()
        self.poll_jobs()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_filter(self) -> None:
        inp = self.query_one("#filter", Input)
        inp.add_class("shown")
        inp.value = self.filter_text
        inp.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.filter_text = event.value.strip()
            self._render_all()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self._close_filter()

    def action_clear_filter(self) -> None:
        self.filter_text = ""
        self.query_one("#filter", Input).value = ""
        self._close_filter()
        self._render_all()

    def _close_filter(self) -> None:
        self.query_one("#filter", Input).remove_class("shown")
        self._focus_pane(self.query_one(TabbedContent).active_pane)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "kill":
            if self.screen is not self.screen_stack[0]:
                return False
            if self.active_tab != "box":
                return False
            return None if self.readonly or self.provider.readonly_reason else True
        return True

    def action_kill(self) -> None:
        if self.readonly:
            self.notify("read-only mode: kill is disabled", severity="warning")
            return
        sel = self._pane(BoxPane).selected_pid()
        if sel is None:
            self.notify("no process selected", severity="warning")
            return
        pid, cmd = sel
        if pid == os.getpid():
            self.notify("that is mn-tui itself", severity="warning")
            return

        def chosen(sig: int | None) -> None:
            if sig is not None:
                self.kill(pid, sig)

        self.push_screen(ConfirmKill(pid, cmd), chosen)

    @work(group="kill")
    async def kill(self, pid: int, sig: int) -> None:
        result = await self.provider.kill(pid, sig)
        self.notify(result)
        self.poll_box()


def _gone(m: Member, now: float) -> Member:
    from dataclasses import replace

    return replace(m, status="gone", reason="no longer reported by the node", since=now)


def request_timeout(refresh: float) -> float:
    return max(1.0, min(5.0, refresh * 1.5))


def build_parser() -> argparse.ArgumentParser:
    from mn_node.cli import default_api

    p = argparse.ArgumentParser(prog="mn-tui", description="Live terminal UI for a MirrorNeuron cluster.")
    p.add_argument("--api", default=default_api(),
                   help="node API URL, http:// or https:// (default: $MIRROR_NEURON_API_URL or "
                        "http://127.0.0.1:4000; $MIRROR_NEURON_API_CA: a CA to trust for https)")
    p.add_argument("--refresh", type=float, default=2.0, metavar="SECONDS", help="poll interval (default 2)")
    p.add_argument("--readonly", action="store_true", help="disable actions that change anything (kill)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="per-request timeout (default: 1.5 x refresh, 1-5 s)")
    p.add_argument("--dist-port", type=int, default=int(os.environ.get("MIRROR_NEURON_DIST_PORT", "4370")),
                   help="distribution port checked for conflicts (default $MIRROR_NEURON_DIST_PORT or 4370)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.1 <= args.refresh <= 3600:
        print("mn-tui: --refresh must be between 0.1 and 3600 seconds", file=sys.stderr)
        return 64
    timeout = args.timeout or request_timeout(args.refresh)
    try:
        provider = LiveProvider(args.api, timeout=timeout, dist_port=args.dist_port)
    except MirrorNeuronError as e:  # e.g. MIRROR_NEURON_API_CA names no readable CA
        print(f"mn-tui: {e}", file=sys.stderr)
        return e.exit_code
    MnTui(provider, refresh=args.refresh, readonly=args.readonly).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
