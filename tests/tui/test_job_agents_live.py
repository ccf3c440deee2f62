"""The job view's agents against a real node: pages, and the stderr tail of a failing agent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from mn_tui.app import MnTui
from mn_tui.provider import LiveProvider
from tests.jobs._bundles import prime_bundle, submit_bundle
from tests.jobs._jobs import wait_done
from tests.support.cluster import Cluster
from tests.tui.helpers import column, wait_screen

pytestmark = pytest.mark.slow


FAIL = "import sys\nfor w in 'one two three four five six seven'.split(): print(w, file=sys.stderr)\n" \
       "print('disk on fire', file=sys.stderr)\nsys.exit(3)\n"


async def test_job_view_shows_agents_and_a_failing_agents_stderr(make_cluster: Any, tmp_path: Path) -> None:
    c: Cluster = make_cluster(1)
    c.wait_leader()
    # the prime sweep bundle, 30 workers, one of which really exits 3 after 8 lines of stderr
    bundle = prime_bundle(tmp_path / "primes", 30)
    m = json.loads((bundle / "manifest.json").read_text())
    for node in m["nodes"]:
        if node["node_id"] == "prime_worker_0007":
            node["config"].update(command=["python3", "-c", FAIL], max_attempts=1)
    (bundle / "manifest.json").write_text(json.dumps(m))
    jid = await asyncio.to_thread(submit_bundle, c, bundle)  # it runs its own event loop
    assert wait_done(c, jid)["status"] == "failed"
    provider = LiveProvider(c.nodes[0].api, timeout=2.0)
    detail = await provider.job(jid)
    page = detail.agents
    assert page is not None and page.total == 33 and page.rows
    seen = {a.agent for a in page.rows}
    cursor = page.cursor
    while cursor != "0":  # every agent once over the pages
        nxt = (await provider.job(jid, cursor)).agents
        assert nxt is not None
        assert not seen & {a.agent for a in nxt.rows}
        seen |= {a.agent for a in nxt.rows}
        cursor = nxt.cursor
    assert len(seen) == 33
    await provider.close()
    app = MnTui(LiveProvider(c.nodes[0].api, timeout=2.0), refresh=1.0)
    async with app.run_test(size=(140, 50)) as pilot:
        await wait_screen(pilot, lambda: jid in column(pilot, "jobs-table", 0), 15, "the job listed")
        await pilot.press("3", "enter")
        await wait_screen(pilot, lambda: type(app.screen).__name__ == "JobScreen"
                          and app.screen.detail is not None, 10, "the job view")  # type: ignore[attr-defined]
        screen: Any = app.screen

        def stderr_shown() -> str:
            text = str(screen.query_one("#job-stderr").render())
            page = screen.detail.agents
            if page is None or page.failing is None:  # the failing agent may be on another page
                return "" if page is None or page.cursor == "0" else screen.action_page(1) or ""
            return text if "disk on fire" in text else ""

        text = await wait_screen(pilot, stderr_shown, 15, "the failing agent's stderr")
        assert "prime_worker_0007 attempt 1, exit 3" in text and "six" in text and "two" not in text
