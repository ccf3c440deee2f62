"""Output: one line per check (``[✓] [!] [✗]``), an indented fix, a summary line; or JSON."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from mn_node.doctor.model import Result, Status

MARK = {Status.OK: "[✓]", Status.WARN: "[!]", Status.FAIL: "[✗]"}
ASCII_MARK = {Status.OK: "[ok]", Status.WARN: "[!]", Status.FAIL: "[x]"}
COLOR = {Status.OK: "\033[32m", Status.WARN: "\033[33m", Status.FAIL: "\033[31m"}
RESET = "\033[0m"


def _use_color(out: TextIO) -> bool:
    return out.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def _marks(out: TextIO) -> dict[Status, str]:
    enc = (getattr(out, "encoding", None) or "utf-8").lower()
    try:
        "✓✗".encode(enc)
    except (UnicodeEncodeError, LookupError):
        return ASCII_MARK
    return MARK


def summary(results: list[Result], code: int, elapsed_s: float) -> dict[str, Any]:
    counts = {s.value: sum(r.status is s for r in results) for s in Status}
    return {**counts, "total": len(results), "exit_code": code, "elapsed_s": round(elapsed_s, 3)}


def summary_line(s: dict[str, Any]) -> str:
    parts = [f"{s['ok']} ok", f"{s['warn']} warning{'s' if s['warn'] != 1 else ''}",
             f"{s['fail']} failure{'s' if s['fail'] != 1 else ''}"]
    verdict = "no problems found" if not s["fail"] and not s["warn"] else (
        "nothing fails" if not s["fail"] else "problems found")
    return f"Doctor summary: {', '.join(parts)} in {s['elapsed_s']:.2f}s: {verdict} (exit {s['exit_code']})"


def render_text(results: list[Result], header: str, summ: dict[str, Any], verbose: bool,
                out: TextIO = sys.stdout) -> None:
    color = _use_color(out)
    marks = _marks(out)
    print(header, file=out)
    for r in results:
        mark = marks[r.status]
        if color:
            mark = COLOR[r.status] + mark + RESET
        timing = f" ({r.duration_ms:.0f} ms)" if verbose else ""
        print(f"{mark} {r.name}: {r.detail}{timing}", file=out)
        if r.status is not Status.OK and r.fix:
            print(f"    fix: {r.fix}", file=out)
        if verbose:
            for line in r.info:
                print(f"    · {line}", file=out)
    print(summary_line(summ), file=out)


def render_json(results: list[Result], summ: dict[str, Any], meta: dict[str, Any], out: TextIO = sys.stdout) -> None:
    doc = {"checks": [r.to_json() for r in results], "summary": summ, **meta}
    print(json.dumps(doc, indent=2, default=str), file=out)
