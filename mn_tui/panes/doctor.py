"""Doctor: the `mn doctor` checks with their fixes."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from mn_tui import fmt
from mn_tui.model import DoctorReport
from mn_tui.panes._base import View

MARK = {"ok": ("[✓]", "green"), "warn": ("[!]", "yellow"), "fail": ("[✗]", "bold red")}


def report_text(rep: DoctorReport | None, view: View, running: bool) -> Text:
    t = Text()
    if rep is None:
        t.append("running mn doctor…" if running else "press r to run mn doctor", style="dim")
        return t
    if not rep.available or rep.error:
        t.append(rep.error, style="bold yellow" if not rep.available else "bold red")
        if not rep.checks:
            return t
        t.append("\n")
    counts = {s: sum(c.status == s for c in rep.checks) for s in ("ok", "warn", "fail")}
    t.append(f"{counts['ok']} ok", style="green")
    t.append(" · ")
    t.append(f"{counts['warn']} warn", style="yellow" if counts["warn"] else "")
    t.append(" · ")
    t.append(f"{counts['fail']} fail", style="bold red" if counts["fail"] else "")
    t.append(f" · ran at {fmt.clock(rep.fetched_at, view.tfn)}" + (" · re-running…" if running else "")
             + " · r: run again\n", style="dim")
    for c in rep.checks:
        line = f"{c.name} {c.status} {c.detail} {c.fix}"
        if view.filter and view.filter.lower() not in line.lower():
            continue
        mark, style = MARK.get(c.status, ("[?]", ""))
        t.append(f"\n{mark} ", style=style)
        t.append(c.name, style="bold")
        if c.detail:
            t.append(f": {c.detail}")
        if c.fix and c.status != "ok":
            t.append("\n    fix: ", style="dim")
            t.append(c.fix, style="cyan")
    return t


class DoctorPane(VerticalScroll):
    def compose(self) -> ComposeResult:
        yield Static(id="doctor-report")

    def update_view(self, rep: DoctorReport | None, view: View, running: bool) -> None:
        self.query_one("#doctor-report", Static).update(report_text(rep, view, running))
