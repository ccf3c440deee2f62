"""SVG snapshots of every screen at 120x40 and 80x24, fed the fixed data of mn_tui.fixtures.

Update after an intended change: pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from mn_tui.app import MnTui
from mn_tui.fixtures import StaticProvider, fixed_clock
from mn_tui.model import JobsState
from tests.tui.helpers import wait_screen

SIZES = {"120x40": (120, 40), "80x24": (80, 24)}


def make_app(**kw: Any) -> MnTui:
    return MnTui(StaticProvider(**kw), clock=fixed_clock, tfn=time.gmtime)


async def _loaded(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, MnTui)
    await wait_screen(pilot, lambda: app.cluster and app.jobs_state and app.box_state, 10, "fixture data")


def keys(*press: str, until: Callable[[MnTui], object] | None = None) -> Callable[[Pilot[Any]], Any]:
    async def run(pilot: Pilot[Any]) -> None:
        await _loaded(pilot)
        for k in press:
            await pilot.press(k)
        app = pilot.app
        assert isinstance(app, MnTui)
        if until is not None:
            await wait_screen(pilot, lambda: until(app), 10, "the screen to settle")
        await pilot.pause()

    return run


SCREENS: dict[str, Callable[[Pilot[Any]], Any]] = {
    "members": keys("1"),
    "leadership": keys("2"),
    "jobs": keys("3"),
    "job_detail": keys("3", "enter", until=lambda a: type(a.screen).__name__ == "JobScreen"
                        and a.screen.detail is not None),  # type: ignore[attr-defined]
    "box": keys("4"),
    "doctor": keys("5", until=lambda a: a.doctor_report is not None and not a.doctor_running),
    "help": keys("question_mark", until=lambda a: type(a.screen).__name__ == "HelpScreen"),
    "confirm_kill": keys("4", "down", "k", until=lambda a: type(a.screen).__name__ == "ConfirmKill"),
    "filter": keys("1", "slash", "d", "o", "w", "n", "enter"),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("screen", SCREENS)
def test_screen(snap_compare: Any, screen: str, size: str) -> None:
    assert snap_compare(make_app(), terminal_size=SIZES[size], run_before=SCREENS[screen])


@pytest.mark.parametrize("size", SIZES)
def test_jobs_api_missing(snap_compare: Any, size: str) -> None:
    app = make_app(jobs_state=JobsState(fixed_clock(), False, [], "jobs API not available on this node"))
    assert snap_compare(app, terminal_size=SIZES[size], run_before=keys("3"))


def _job_agents_open(a: MnTui) -> bool:
    detail = getattr(a.screen, "detail", None)
    return type(a.screen).__name__ == "JobScreen" and detail is not None and detail.agents is not None


AGENT_SCREENS: dict[str, Callable[[Pilot[Any]], Any]] = {
    # the failed job (third row): its agents, first page, and the failing worker's stderr tail
    "job_agents": keys("3", "down", "down", "enter", until=_job_agents_open),
    "job_agents_page2": keys("3", "down", "down", "enter", "n",
                             until=lambda a: _job_agents_open(a)
                             and a.screen.cursors == ["0", "17"]  # type: ignore[attr-defined]
                             and a.screen.detail.agents.cursor == "0"),  # type: ignore[attr-defined]
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("screen", AGENT_SCREENS)
def test_job_agents(snap_compare: Any, screen: str, size: str) -> None:
    from mn_tui.fixtures import agent_pages

    assert snap_compare(make_app(agent_pages=agent_pages()), terminal_size=SIZES[size],
                        run_before=AGENT_SCREENS[screen])
