"""Shared bits of the panes: the render context and a table that filters and keeps its cursor."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.text import Text
from textual.widgets import DataTable

from mn_tui.fmt import TimeFn

Cell = str | Text


@dataclass(frozen=True)
class View:
    """What every pane needs to render: the time, how to show it, and the filter."""

    now: float
    tfn: TimeFn = field(default=time.localtime)
    filter: str = ""

    def match(self, cells: Sequence[Cell]) -> bool:
        if not self.filter:
            return True
        needle = self.filter.lower()
        return any(needle in (c.plain if isinstance(c, Text) else str(c)).lower() for c in cells)


class Table(DataTable[Cell]):
    """A DataTable rebuilt from rows on each update; the cursor stays on the same row key."""

    DEFAULT_CSS = """
    Table { height: auto; max-height: 100%; }
    """

    def __init__(self, columns: Sequence[str], *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._columns = list(columns)
        self.shown = 0
        self.total = 0

    def on_mount(self) -> None:
        self.add_columns(*self._columns)

    def set_rows(self, rows: Sequence[tuple[str, Sequence[Cell]]], view: View) -> None:
        keep = None
        if self.row_count and 0 <= self.cursor_row < self.row_count:
            keep = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        self.clear()
        self.total = len(rows)
        shown = [(k, cells) for k, cells in rows if view.match(cells)]
        self.shown = len(shown)
        for key, cells in shown:  # plain str would be parsed as markup: "[mn-node]" must stay
            self.add_row(*(c if isinstance(c, Text) else Text(c) for c in cells), key=key)
        if keep is not None:
            for i, (k, _) in enumerate(shown):
                if k == keep:
                    self.move_cursor(row=i, animate=False)
                    break

    def cell_text(self, row_key: str, column: int) -> str:
        """The plain text of one cell (tests read the screen through this)."""
        cell = self.get_row(row_key)[column]
        return cell.plain if isinstance(cell, Text) else str(cell)

    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value


def count_note(table: Table, view: View) -> str:
    if view.filter and table.shown != table.total:
        return f" · filter {view.filter!r}: {table.shown} of {table.total} shown"
    return ""
