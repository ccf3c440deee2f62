"""The check registry: every check has a name, a place in the fixed output order, a
one-line description and its own timeout."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mn_node.doctor.model import Result

if TYPE_CHECKING:
    from mn_node.doctor.context import Context

CheckFn = Callable[["Context"], Awaitable[Result | list[Result]]]


@dataclass(frozen=True)
class CheckSpec:
    name: str
    order: int
    title: str
    fn: CheckFn
    timeout: float
    """Seconds this check may take before it is reported as timed out (capped by --timeout)."""


_REGISTRY: dict[str, CheckSpec] = {}


def check(name: str, order: int, title: str, timeout: float = 3.0) -> Callable[[CheckFn], CheckFn]:
    """Register a check (decorator)."""

    def deco(fn: CheckFn) -> CheckFn:
        if name in _REGISTRY:
            raise RuntimeError(f"doctor check {name!r} registered twice")
        _REGISTRY[name] = CheckSpec(name, order, title, fn, timeout)
        return fn

    return deco


def all_checks() -> list[CheckSpec]:
    """Every check, in output order."""
    import mn_node.doctor.checks  # noqa: F401 (registers the checks)

    return sorted(_REGISTRY.values(), key=lambda s: (s.order, s.name))


class UnknownCheck(ValueError):
    pass


def select(names: list[str] | None) -> list[CheckSpec]:
    specs = all_checks()
    if not names:
        return specs
    known = {s.name: s for s in specs}
    for n in names:
        if n not in known:
            raise UnknownCheck(n)
    wanted = set(names)
    return [s for s in specs if s.name in wanted]
