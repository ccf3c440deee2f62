"""Membership with real mn-node processes on 127.a.b.k (issue A, "Must show")."""

from __future__ import annotations

import base64
import os
import signal
import time
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

MISMATCH = "cookie mismatch (invalid challenge reply) from "


def row(c: Cluster, viewer: int, name: str) -> dict[str, Any]:
    rows = c.get(viewer, "/api/v1/nodes")["nodes"]
    return next(r for r in rows if r["name"] == name)


def status_is(c: Cluster, viewer: int, name: str, status: str) -> dict[str, Any] | None:
    r = row(c, viewer, name)
    return r if r["status"] == status else None


def test_three_nodes_see_all_members(make_cluster: Any) -> None:
    c: Cluster = make_cluster(3)
    names = {n.name for n in c.nodes}
    for n in c.nodes:
        rows = c.get(n.index, "/api/v1/nodes")["nodes"]
        assert {r["name"] for r in rows if r["status"] == "up"} == names
        me = next(r for r in rows if r["is_self"])
        assert me["name"] == n.name
        for r in rows:
            assert r["incarnation"], r
            if not r["is_self"]:
                assert r["address"] == c.node_named(r["name"]).host


def test_ten_nodes_see_all_members(make_cluster: Any) -> None:
    c: Cluster = make_cluster(10, start=False)
    for n in c.nodes:
        c.start(n.index)
    c.wait_mesh(timeout=40)
    names = {n.name for n in c.nodes}
    for n in c.nodes:
        assert c.up_view(n.index) == names


def test_kill9_seen_down_then_rejoins_after_restart(make_cluster: Any) -> None:
    c: Cluster = make_cluster(3)
    victim = c.nodes[2]
    inc_before = row(c, 1, victim.name)["incarnation"]
    t0 = time.monotonic()
    c.kill9(3)
    for viewer in (1, 2):
        r = wait_until(lambda v=viewer: status_is(c, v, victim.name, "down"), 5,
                       f"node {viewer} to report {victim.name} down")
        assert r["reason"], r
    took = time.monotonic() - t0
    assert took < 5
    c.start(3)
    c.wait_mesh(timeout=15)
    r = row(c, 1, victim.name)
    assert r["status"] == "up" and r["incarnation"] != inc_before


def test_sigstop_silent_peer_declared_down_by_keepalive_then_back(make_cluster: Any) -> None:
    c: Cluster = make_cluster(3)
    victim = c.nodes[2]
    c.signal(3, signal.SIGSTOP)
    try:
        r = wait_until(lambda: status_is(c, 1, victim.name, "down"), 6, f"{victim.name} down by keepalive")
        assert "keepalive" in r["reason"], r
        wait_until(lambda: status_is(c, 2, victim.name, "down"), 6, "node 2 sees it too")
    finally:
        c.signal(3, signal.SIGCONT)
    wait_until(lambda: status_is(c, 1, victim.name, "up"), 10, f"{victim.name} back up after SIGCONT")


def test_sigterm_gives_immediate_orderly_leave(make_cluster: Any) -> None:
    c: Cluster = make_cluster(3)
    victim = c.nodes[2]
    t0 = time.monotonic()
    c.signal(3, signal.SIGTERM)
    for viewer in (1, 2):
        r = wait_until(lambda v=viewer: status_is(c, v, victim.name, "down"), 5,
                       f"node {viewer} to see {victim.name} leave")
        assert r["reason"] == "left: shutdown", r  # not a keepalive timeout or a reset
    took = time.monotonic() - t0
    assert victim.proc is not None and victim.proc.wait(10) == 0
    assert took < 1.6, f"leave took {took:.2f}s, as long as a keepalive timeout"


def test_other_cookie_never_joins_and_both_sides_log_mismatch(make_cluster: Any) -> None:
    c: Cluster = make_cluster(3, start=False)
    c.start(1)
    c.start(2)
    other = base64.b64encode(os.urandom(32)).decode()
    c.start(3, MIRROR_NEURON_COOKIE=other)
    c.wait_mesh(nodes=c.nodes[:2])
    wait_until(lambda: MISMATCH in c.nodes[2].log_text(), 10, "the intruder to log the mismatch")
    wait_until(lambda: any(MISMATCH in c.nodes[i].log_text() for i in (0, 1)), 10,
               "a member to log the mismatch")
    # both sides name the other end: members name the intruder (its node name or address)
    member_lines = [ln for i in (0, 1) for ln in c.nodes[i].log_text().splitlines() if MISMATCH in ln]
    assert any(c.nodes[2].host in ln for ln in member_lines), member_lines
    intruder_lines = [ln for ln in c.nodes[2].log_text().splitlines() if MISMATCH in ln]
    assert any(c.nodes[0].host in ln or c.nodes[1].host in ln for ln in intruder_lines), intruder_lines
    for n in c.nodes:
        assert c.cookie not in n.log_text() and other not in n.log_text()
    # still not joined after several redials (a fixed observation window, not a sync point)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        for viewer in (1, 2):
            assert row(c, viewer, c.nodes[2].name)["status"] == "down"
        assert c.up_view(3) == {c.nodes[2].name}
        time.sleep(0.2)


def test_unreachable_listed_peer_retried_without_harming_the_rest(make_cluster: Any) -> None:
    c: Cluster = make_cluster(4, start=False)
    for i in (1, 2, 3):
        c.start(i)
    c.wait_mesh(nodes=c.nodes[:3])
    ghost = c.nodes[3].name
    r = row(c, 1, ghost)
    assert r["status"] == "down"
    wait_until(lambda: f"cannot reach {ghost}" in c.nodes[0].log_text(), 5, "a 'cannot reach' line")
    c.wait_leader()
    # the peer appears later and is picked up by the diallers that kept retrying
    c.start(4)
    c.wait_mesh(nodes=c.nodes, timeout=15)
