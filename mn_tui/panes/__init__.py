"""One widget per tab, plus the job drill-down, help and confirm screens."""

from __future__ import annotations

from mn_tui.panes._base import View
from mn_tui.panes.box import BoxPane
from mn_tui.panes.doctor import DoctorPane
from mn_tui.panes.jobs import JobScreen, JobsPane
from mn_tui.panes.leadership import LeadershipPane
from mn_tui.panes.members import MembersPane
from mn_tui.panes.modals import ConfirmKill, HelpScreen

__all__ = ["BoxPane", "ConfirmKill", "DoctorPane", "HelpScreen", "JobScreen", "JobsPane",
           "LeadershipPane", "MembersPane", "View"]
