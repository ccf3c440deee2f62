"""HTTP API shapes on a real 3-node cluster (issue B item 6)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from mn_node.config import api_token
from tests.support.cluster import Cluster
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


def test_api_routes(make_cluster: Any) -> None:
    c: Cluster = make_cluster(3)
    lead = c.wait_leader()
    h = c.get(1, "/api/v1/health")
    assert h["status"] == "ok" and h["redis"] == "ok" and h["members_up"] == 3 and h["reasons"] == []
    rows = c.get(1, "/api/v1/nodes")["nodes"]
    assert [r["name"] for r in rows] == sorted(n.name for n in c.nodes)
    for r in rows:
        assert r["status"] == "up" and r["registered"] is True and r["pid"] > 0
        assert {"name", "address", "status", "incarnation", "rtt_ms", "last_seen", "version",
                "capacity", "load", "config_fingerprint"} <= r.keys()
    one = c.get(1, f"/api/v1/nodes/{c.nodes[1].name}")
    assert one["name"] == c.nodes[1].name and one["status"] == "up"
    assert c.get(1, "/api/v1/nodes/mn2")["name"] == c.nodes[1].name  # short name works too
    code, body = c.get_status(1, "/api/v1/nodes/nobody")
    assert code == 404 and "nobody" in body["error"]
    ld = c.get(2, "/api/v1/leader")
    assert ld["node"] == lead["node"] and ld["epoch"] >= 1 and 0 < ld["ttl_ms"] <= 2500
    summ = c.get(3, "/api/v1/system/summary")
    assert summ["members"] == {"up": 3, "down": 0} and summ["leader"]["node"] == lead["node"]
    with urllib.request.urlopen(c.nodes[0].api + "/metrics", timeout=3) as r:
        text = r.read().decode()
    for metric in ("mn_members_up 3", "mn_is_leader", "mn_leader_epoch", "mn_lease_renew_latency_seconds",
                   "mn_link_messages_total", "mn_link_bytes_total", 'mn_fenced_writes_total{result="refused"}'):
        assert metric in text, metric
    # RTT becomes known after a keepalive round trip
    wait_until(lambda: all(r["rtt_ms"] is not None for r in c.get(1, "/api/v1/nodes")["nodes"] if not r["is_self"]),
               5, "RTTs")


def _post(url: str, token: str | None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_state_changing_route_needs_bearer_token(make_cluster: Any) -> None:
    c: Cluster = make_cluster(1)
    url = c.nodes[0].api + "/api/v1/jobs/does-not-exist/cancel"
    code, body = _post(url, None)
    assert code == 401 and "bearer token" in body["error"]
    code, _ = _post(url, "wrong-token")
    assert code == 401
    code, _ = _post(url, api_token(c.cookie.encode()))
    assert code != 401  # authenticated: the route itself answers (404/409 for an unknown job)


def test_malformed_http_is_refused_with_one_info_line(make_cluster: Any) -> None:
    """Garbage from the network is the client's fault: 400 with the reason, one INFO line in
    the node's log, no ERROR and no traceback (a peer could otherwise flood the journal)."""
    import socket
    from urllib.parse import urlsplit

    c: Cluster = make_cluster(1)
    node = c.nodes[0]
    c.get(1, "/api/v1/health")
    u = urlsplit(node.api)
    with socket.create_connection((u.hostname, u.port), timeout=5) as s:
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.0 400") or reply.startswith(b"HTTP/1.1 400"), reply
    assert b"Content-Length" in reply  # the reason is in the answer
    line = wait_until(lambda: next((ln for ln in node.log_text().splitlines() if "malformed HTTP" in ln), None),
                      10, "the malformed-request log line")
    assert " INFO " in f" {line} " and "Duplicate Content-Length" in line, line
    assert "ERROR" not in node.log_text() and "Traceback" not in node.log_text()
    assert c.get(1, "/api/v1/health")["status"] in ("ok", "degraded")
