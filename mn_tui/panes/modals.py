"""Help and confirm-before-kill."""

from __future__ import annotations

import signal

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

HELP = """\
[b]mn-tui[/b]: a live view of the cluster, through one node's API.

[b]Panes[/b]
  1  Members     every node seen; down ones stay, marked DOWN
  2  Leadership  holder, epoch, TTL left, leader change history
  3  Jobs        status, owner, progress, executors per node
                 Enter: the highlighted job's events
  4  This box    port conflicts, stale mn-node processes
                 k: kill the highlighted pid (asks first)
  5  Doctor      mn doctor checks with fixes; r: run again

[b]Keys[/b]
  /  filter rows (Enter keeps, Esc clears)    r  refresh now
  ?  this help    q  quit    Esc  back

Polls run in background workers every --refresh seconds: keys never
wait on the network. If the node or Redis is unreachable, a red banner
says so and polling keeps retrying.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Static(HELP, id="help-text")
            yield Static(Text("Esc / q / ? to close", style="dim"))


class ConfirmKill(ModalScreen[int | None]):
    """Returns the signal to send, or None."""

    BINDINGS = [Binding("escape,n", "cancel", "Cancel"), Binding("t", "term", "SIGTERM"),
                Binding("K", "kill", "SIGKILL")]

    def __init__(self, pid: int, command: str) -> None:
        super().__init__()
        self.pid = pid
        self.command = command

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(Text.assemble(("Kill pid ", "bold"), (str(self.pid), "bold red"), "?\n",
                                       (self.command[:300], "dim")), id="confirm-text")
            with Horizontal(id="confirm-buttons"):
                yield Button("SIGTERM (t)", id="term", variant="warning")
                yield Button("SIGKILL (K)", id="kill", variant="error")
                yield Button("Cancel (n)", id="cancel", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        {"term": self.action_term, "kill": self.action_kill}.get(event.button.id or "", self.action_cancel)()

    def action_term(self) -> None:
        self.dismiss(int(signal.SIGTERM))

    def action_kill(self) -> None:
        self.dismiss(int(signal.SIGKILL))

    def action_cancel(self) -> None:
        self.dismiss(None)
