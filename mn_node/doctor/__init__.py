"""``mn doctor``: concurrent checks with their own timeouts, printed in a fixed order with a fix.

Layout: :mod:`.model` (results, statuses, exit codes), :mod:`.registry` (the check table),
:mod:`.runner` (concurrency and timeouts), :mod:`.context` / :mod:`.facts` / :mod:`.probes`
(what checks share and the network probes), :mod:`.checks` (the checks by area),
:mod:`.render` (text and JSON), :mod:`.cli`.
"""

from mn_node.doctor.cli import main
from mn_node.doctor.model import Kind, Result, Status, exit_code

__all__ = ["Kind", "Result", "Status", "exit_code", "main"]
