"""mn-tui against real mn-node processes (tests/support/cluster.py): no stand-ins for the node."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from mn_node.config import api_token
from mn_tui.app import MnTui
from mn_tui.panes._base import Table
from mn_tui.provider import LiveProvider
from tests.support.cluster import Cluster
from tests.support.wait import wait_until
from tests.tui.helpers import cell, column, rows, wait_screen

pytestmark = pytest.mark.slow

SIZE = (160, 40)


def tui(api: str, refresh: float = 1.0, readonly: bool = False) -> MnTui:
    return MnTui(LiveProvider(api, timeout=1.0), refresh=refresh, readonly=readonly)


def non_leader(c: Cluster, leader: str) -> int:
    return next(n.index for n in c.nodes if n.name != leader)


async def test_killed_node_row_turns_down_within_one_refresh(make_cluster: Any) -> None:
    c: Cluster = make_cluster(3)
    c.wait_leader()
    refresh = 1.0
    app = tui(c.nodes[0].api, refresh)
    victim = c.nodes[2].name
    async with app.run_test(size=SIZE) as pilot:
        await wait_screen(pilot, lambda: column(pilot, "members-table", 2) == ["up", "up", "up"], 15,
                          "three members up on screen")
        polls_before = app.cluster_polls
        c.kill9(3)
        t0 = time.monotonic()
        await wait_screen(pilot, lambda: cell(pilot, "members-table", victim, 2).startswith("DOWN"),
                          refresh + 3, f"{victim} shown DOWN")
        elapsed = time.monotonic() - t0
        print(f"killed node shown DOWN after {elapsed * 1000:.0f} ms (refresh {refresh:g}s)")
        # one refresh: the first or second poll after the kill (one may have been in flight)
        assert app.cluster_polls - polls_before <= 2
        assert elapsed <= refresh + 0.5
        # it stays visible and marked, with the link's reason; the others stay up
        await pilot.pause(refresh * 1.5)
        assert cell(pilot, "members-table", victim, 2).startswith("DOWN")
        assert cell(pilot, "members-table", victim, 3) != ""  # its reason
        assert column(pilot, "members-table", 2).count("up") == 2


async def test_leader_change_appears_in_history_with_new_epoch(make_cluster: Any) -> None:
    c: Cluster = make_cluster(3)
    old = c.wait_leader()
    watcher = non_leader(c, old["node"])
    app = tui(c.nodes[watcher - 1].api, 0.5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await wait_screen(pilot, lambda: str(old["epoch"]) in column(pilot, "leader-history", 3), 10,
                          f"epoch {old['epoch']} in the history")
        c.kill9(c.node_named(old["node"]).index)

        def new_row() -> list[str] | None:
            for r in rows(pilot, "leader-history"):
                if r[1] == "elected" and r[3].isdigit() and int(r[3]) > old["epoch"]:
                    return r
            return None

        row = await wait_screen(pilot, new_row, 20, f"a leader elected after epoch {old['epoch']}")
        new = c.wait_leader(exclude=old["node"])
        assert row[2] == new["node"] and int(row[3]) == new["epoch"]
        assert old["node"].split("@")[0] in row[4]  # the reason names the previous holder
        holder = app.query_one("#leader-holder").render()
        await wait_screen(pilot, lambda: f"epoch {new['epoch']}" in str(app.query_one("#leader-holder").render()),
                          5, "holder line shows the new epoch")
        assert holder is not None


def _submit(c: Cluster, index: int, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(c.nodes[index - 1].api + "/api/v1/jobs", data=json.dumps(body).encode(),
                                 method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", f"Bearer {api_token(c.cookie.encode())}")
    with urllib.request.urlopen(req, timeout=5) as r:
        out: dict[str, Any] = json.loads(r.read())
    return out


async def test_running_job_progress_advances(make_cluster: Any) -> None:
    """Needs the jobs API (issue C). Until it lands this fails on the 404, on purpose."""
    c: Cluster = make_cluster(3)
    c.wait_leader()
    status, _ = c.get_status(1, "/api/v1/jobs")
    assert status == 200, "jobs API (GET /api/v1/jobs) not available on the node yet: issue C has not landed"
    # 48 executors over 3 nodes x 2 slots: several rounds, so the job is seen mid-way
    job = _submit(c, 1, {"blueprint": "prime_sweep_scale",
                         "params": {"workers": 48, "start": 10**12, "chunk_size": 400_000}})
    jid = job["job_id"]
    app = tui(c.nodes[0].api, 0.5)
    t0 = time.monotonic()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")

        def progress() -> tuple[int, int] | None:
            text = cell(pilot, "jobs-table", jid, 5)
            done, total = text.split()[-1].split("/")
            return int(done), int(total)

        def running_midway() -> tuple[int, int] | None:
            p = progress()
            st = cell(pilot, "jobs-table", jid, 2)
            return p if p and st == "running" and 0 < p[0] < p[1] else None

        first = await wait_screen(pilot, running_midway, 60, f"job {jid} running with partial progress")
        later = await wait_screen(pilot, lambda: (p := progress()) and p[0] > first[0] and p, 60,
                                  f"job {jid} progress beyond {first}")
        assert later[1] == first[1]
        print(f"job {jid}: progress seen {first[0]}/{first[1]} then {later[0]}/{later[1]}")
        assert cell(pilot, "jobs-table", jid, 6) != "—" or later[0] == later[1]  # executors per node
        await wait_screen(pilot, lambda: cell(pilot, "jobs-table", jid, 2) == "completed", 120,
                          f"job {jid} completed")
        done, total = progress() or (0, -1)
        assert done == total
        print(f"job {jid}: completed {done}/{total} after {time.monotonic() - t0:.1f}s")
        # drill into the job's events
        table = app.query_one("#jobs-table", Table)
        table.move_cursor(row=table.get_row_index(jid))
        await pilot.press("enter")
        await wait_screen(pilot, lambda: len(rows(pilot, "job-events")) > 0, 10, "the job's events")


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


async def test_port_taken_by_foreign_process_shows_as_conflict(make_cluster: Any) -> None:
    c: Cluster = make_cluster(3)
    c.wait_leader()
    victim = c.nodes[2]
    c.kill9(3)
    wait_until(lambda: not _listening(victim.host, 4000), 10, "node 3's API port to be free")
    squatter = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", victim.host, "4000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _listening(victim.host, 4000), 10, "the squatter to listen")
        app = tui(c.nodes[0].api, 0.5)
        key = f"port:{victim.host}:4000"
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("4")
            await wait_screen(pilot, lambda: cell(pilot, "box-ports", key, 2) == "CONFLICT", 15,
                              f"{victim.host}:4000 shown as a conflict")
            assert cell(pilot, "box-ports", key, 3) == str(squatter.pid)
            assert "http.server" in cell(pilot, "box-ports", key, 4)
            # the live nodes' own ports are not conflicts
            own = f"port:{c.nodes[0].host}:4000"
            assert cell(pilot, "box-ports", own, 2) == "ok"
            assert cell(pilot, "box-ports", own, 3) == str(c.nodes[0].pid)
            # confirm-before-kill: k asks, t sends SIGTERM, the squatter goes
            ports = app.query_one("#box-ports", Table)
            ports.focus()
            ports.move_cursor(row=ports.get_row_index(key))
            await pilot.press("k")
            await wait_screen(pilot, lambda: type(app.screen).__name__ == "ConfirmKill", 5, "the confirm dialog")
            assert squatter.poll() is None  # nothing happens before confirming
            await pilot.press("t")
            await wait_screen(pilot, lambda: squatter.poll() is not None, 10, "the squatter to exit")
            await wait_screen(pilot, lambda: cell(pilot, "box-ports", key, 2) == "free", 10,
                              "the port shown free again")
    finally:
        if squatter.poll() is None:
            squatter.kill()
        squatter.wait(10)


async def test_readonly_disables_kill(make_cluster: Any) -> None:
    c: Cluster = make_cluster(1)
    app = tui(c.nodes[0].api, 0.5, readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await wait_screen(pilot, lambda: rows(pilot, "box-procs"), 15, "this box's processes")
        assert app.check_action("kill", ()) is None  # shown, disabled
        await pilot.press("k")
        await pilot.pause(0.2)
        assert type(app.screen).__name__ != "ConfirmKill"
        assert c.nodes[0].alive()
        assert "READ-ONLY" in str(app.query_one("#status").render())


async def test_node_down_says_so_and_recovers(make_cluster: Any) -> None:
    c: Cluster = make_cluster(2)
    c.wait_leader()
    app = tui(c.nodes[0].api, 0.5)
    async with app.run_test(size=SIZE) as pilot:
        await wait_screen(pilot, lambda: app.cluster is not None, 10, "first answer")
        c.kill9(1)
        banner = app.query_one("#banner")
        await wait_screen(pilot, lambda: "node unreachable" in str(banner.render()), 10, "the unreachable banner")
        await wait_screen(pilot, lambda: app.cluster_failures >= 3, 10, "retries to continue")
        assert "(stale)" in str(app.query_one("#status").render())
        c.start(1)
        await wait_screen(pilot, lambda: not banner.has_class("shown") and app.cluster_failures == 0, 20,
                          "the banner to clear once the node answers again")


async def test_redis_unreachable_is_shown(make_cluster: Any, redis_server: Any) -> None:
    c: Cluster = make_cluster(2)
    c.wait_leader()
    app = tui(c.nodes[0].api, 0.5)
    async with app.run_test(size=SIZE) as pilot:
        await wait_screen(pilot, lambda: app.cluster is not None, 10, "first answer")
        redis_server.kill9()
        banner = app.query_one("#banner")
        await wait_screen(pilot, lambda: "Redis unreachable" in str(banner.render()), 20, "the Redis banner")
        # the members pane keeps working from the links
        assert column(pilot, "members-table", 2) == ["up", "up"]
