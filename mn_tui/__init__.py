"""``mn-tui``: the admin terminal UI (membership, leadership, jobs, this box, doctor).

Layout: ``model`` (plain dataclasses parsed from the API), ``client`` (aiohttp JSON client),
``provider`` (where data comes from: :class:`~mn_tui.provider.LiveProvider` talks to a node,
:class:`~mn_tui.fixtures.StaticProvider` feeds fixed data for snapshots), ``localbox``
(psutil scan of this box), ``history`` (leader changes from the events stream), ``panes``
(one widget per tab) and ``app`` (the App, key bindings, polling).
"""

from __future__ import annotations

from mn_node import __version__  # one version for the whole distribution

__all__ = ["__version__"]
