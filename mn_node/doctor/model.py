"""Results, statuses and how they map to the exit code."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mn_node.errors import EX_CONFIG, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


class Kind(StrEnum):
    """What a failure means for the exit code (sysexits)."""

    UNAVAILABLE = "unavailable"  # 69: something is down, refused, held or broken
    TIMEOUT = "timeout"  # 75: something did not answer in time (filtered, hung, paused)
    CONFIG = "config"  # 78: this box's own configuration is wrong


EXIT_FOR_KIND = {Kind.CONFIG: EX_CONFIG, Kind.UNAVAILABLE: EX_UNAVAILABLE, Kind.TIMEOUT: EX_TEMPFAIL}


@dataclass
class Result:
    """One line of doctor output: what was found and, unless all is well, the fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    kind: Kind = Kind.UNAVAILABLE
    info: list[str] = field(default_factory=list)
    duration_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "fix": self.fix,
        }
        if self.status is Status.FAIL:
            out["kind"] = self.kind.value
        out["duration_ms"] = round(self.duration_ms, 1)
        if self.info:
            out["info"] = list(self.info)
        return out


def ok(name: str, detail: str, info: list[str] | None = None) -> Result:
    return Result(name, Status.OK, detail, info=info or [])


def warn(name: str, detail: str, fix: str, info: list[str] | None = None) -> Result:
    return Result(name, Status.WARN, detail, fix, info=info or [])


def fail(name: str, detail: str, fix: str, kind: Kind = Kind.UNAVAILABLE, info: list[str] | None = None) -> Result:
    return Result(name, Status.FAIL, detail, fix, kind, info=info or [])


def exit_code(results: list[Result]) -> int:
    """78 if this box's config is bad, else 69 if anything is down/broken, else 75 if
    something only timed out, else 0 (warnings never fail the run)."""
    kinds = {r.kind for r in results if r.status is Status.FAIL}
    for kind in (Kind.CONFIG, Kind.UNAVAILABLE, Kind.TIMEOUT):
        if kind in kinds:
            return EXIT_FOR_KIND[kind]
    return EX_OK


def split_fix(message: str) -> tuple[str, str]:
    """Split a project error line ``what; fix: how`` into (what, how)."""
    what, sep, how = message.partition("; fix: ")
    return (what, how) if sep else (message, "")
