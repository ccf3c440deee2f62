"""Write docs/img/mn-tui-{members,leadership}.svg from a real 4-node local cluster.

    PYTHONPATH=. python tests/tui/make_screenshots.py

Starts Redis and four mn-node processes (tests/support), SIGKILLs the leader and one more node
so the screens show a down node and a leader change, then saves the two screens.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mn_tui.app import MnTui
from mn_tui.provider import LiveProvider
from tests.support.cluster import Cluster
from tests.support.redis import RedisServer
from tests.tui.helpers import wait_screen

OUT = Path(__file__).resolve().parents[2] / "docs" / "img"


async def shoot(c: Cluster, watcher: int, old_epoch: int) -> None:
    app = MnTui(LiveProvider(c.nodes[watcher - 1].api, timeout=1.0), refresh=1.0)
    async with app.run_test(size=(120, 32)) as pilot:
        await wait_screen(pilot, lambda: app.cluster is not None and app.cluster.leader is not None
                          and (app.cluster.leader.epoch or 0) > old_epoch, 20, "the new leader")
        await pilot.pause(0.5)
        OUT.mkdir(parents=True, exist_ok=True)
        app.save_screenshot(str(OUT / "mn-tui-members.svg"))
        await pilot.press("2")
        await pilot.pause(0.5)
        app.save_screenshot(str(OUT / "mn-tui-leadership.svg"))


def main() -> None:
    srv = RedisServer().start()
    c = Cluster(redis_url=srv.url, size=4)
    try:
        c.start_all()
        lead = c.wait_leader()
        idx = c.node_named(lead["node"]).index
        c.kill9(idx)
        other = next(n.index for n in c.nodes if n.index != idx)
        c.wait_leader(exclude=lead["node"], timeout=20)
        watcher = next(n.index for n in c.nodes if n.index not in (idx, other))
        c.kill9(other)
        time.sleep(0.2)  # script, not a test: let the down link register before the first poll
        asyncio.run(shoot(c, watcher, lead["epoch"]))
        print(f"wrote {OUT}/mn-tui-members.svg and mn-tui-leadership.svg")
    finally:
        c.cleanup()
        srv.cleanup()


if __name__ == "__main__":
    main()
