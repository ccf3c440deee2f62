"""mn-node daemons on a Sentinel-managed Redis: they follow the primary across a SIGKILL,
show the topology, export the new metrics, and say why when writes cannot be replicated."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.redis import MASTER, SentinelCluster
from tests.support.wait import wait_until


@pytest.fixture
def ha_nodes(sentinel_cluster: SentinelCluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(redis_url=sentinel_cluster.url, size=3, extra_env={
        "MIRROR_NEURON_REDIS_SENTINEL_PASSWORD": sentinel_cluster.sentinel_password,
        "MIRROR_NEURON_LEASE_TTL_MS": "2000"})
    try:
        c.start_all()
        yield c
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(c.dump_logs())
        c.cleanup()


def _topology(c: Cluster, index: int) -> dict[str, Any]:
    topo: dict[str, Any] = c.get(index, "/api/v1/system/summary")["redis"]["topology"]
    return topo


def test_nodes_follow_the_primary_and_show_the_topology(ha_nodes: Cluster, sentinel_cluster: SentinelCluster) -> None:
    c = ha_nodes
    before = c.wait_leader()
    topo = wait_until(lambda: (t := _topology(c, 1)) and len(t["replicas"] or []) == 2 and t,
                      15, "the topology with two replicas")
    assert topo["mode"] == "sentinel" and topo["min_acks"] == "all"
    wait_until(lambda: _topology(c, 1)["acks_needed"] == 2, 10, "every write to wait for both replicas")
    assert topo["primary"] == f"127.0.0.1:{sentinel_cluster.servers[0].port}"
    assert len(topo["sentinels"]) == 3 and all(s["reachable"] for s in topo["sentinels"])
    rows = c.get(1, "/api/v1/nodes")["nodes"]
    assert [r["redis_topology"]["mode"] for r in rows if r.get("is_self")] == ["sentinel"]
    metrics = c.get_text(1, "/metrics") if hasattr(c, "get_text") else _metrics(c, 1)
    for family in ("mn_redis_failovers_total", "mn_redis_writes_awaiting_ack", "mn_redis_ack_latency_seconds_bucket"):
        assert family in metrics
    for family in ("mn_redis_acks_needed 2.0",):
        assert family in metrics
    old = sentinel_cluster.primary()
    old.kill9()
    # the default (MIN_ACKS all): the dead primary is now a replica the Sentinels know of, and it is
    # waited for: after the failover nothing is acknowledged, so nothing is acted on, until it is back
    wait_until(lambda: _topology(c, 1)["failovers_seen"] >= 1, 40, "the nodes to follow the new primary")
    reasons = wait_until(lambda: _not_replicated(c), 20, "node 1's health to say writes are not replicated")
    assert "every replica the Sentinels know of" in reasons[0] and "SENTINEL RESET" in reasons[0], reasons
    old.start()  # it comes back with its old data; Sentinel makes it a replica of the new primary
    after = wait_until(lambda: (cur := c.leader()) and cur["epoch"] > before["epoch"] and cur, 40,
                       "a leader with a greater epoch on the new primary, once the old one is back")
    assert after["epoch"] > before["epoch"]
    topo = _topology(c, 1)
    assert topo["last_failover"]["from"] == f"127.0.0.1:{sentinel_cluster.servers[0].port}"
    assert all(n.alive for n in c.nodes)


def _not_replicated(c: Cluster) -> list[str]:
    reasons: list[str] = c.get_status(1, "/api/v1/health")[1].get("reasons", [])
    return [r for r in reasons if "not replicated" in r]


def _metrics(c: Cluster, index: int) -> str:
    import urllib.request

    with urllib.request.urlopen(c.nodes[index - 1].api + "/metrics", timeout=2) as r:
        return str(r.read().decode())


def test_without_replicas_nodes_stop_acting_and_say_why(ha_nodes: Cluster,
                                                        sentinel_cluster: SentinelCluster) -> None:
    c = ha_nodes
    c.wait_leader()
    for srv in sentinel_cluster.servers[1:]:
        srv.kill9()

    reasons = wait_until(lambda: _not_replicated(c), 20, "node 1's health to say writes are not replicated")
    assert "replica" in reasons[0] or "NOREPLICAS" in reasons[0]
    wait_until(lambda: c.leader() is None, 20, "the leader lease to lapse (no renewal is acknowledged)")


def test_unknown_master_name_exits_78_in_one_line(sentinel_cluster: SentinelCluster) -> None:
    c = Cluster(redis_url=sentinel_cluster.url.replace(f"/{MASTER}/", "/nobody/"), size=1, extra_env={
        "MIRROR_NEURON_REDIS_SENTINEL_PASSWORD": sentinel_cluster.sentinel_password})
    try:
        node = c.start(1)
        assert node.proc is not None
        code = node.proc.wait(30)
        log = node.log_text()
        assert code == 78, log
        assert "'nobody'" in log and sentinel_cluster.password not in log
    finally:
        c.cleanup()


def test_mn_doctor_accepts_a_sentinel_url(sentinel_cluster: SentinelCluster) -> None:
    env = {"MIRROR_NEURON_REDIS_URL": sentinel_cluster.url,
           "MIRROR_NEURON_REDIS_SENTINEL_PASSWORD": sentinel_cluster.sentinel_password,
           "MIRROR_NEURON_COOKIE": "x" * 44, "MIRROR_NEURON_CLUSTER_NODES": "a@127.0.0.1",
           "MIRROR_NEURON_NODE_NAME": "a@127.0.0.1", "PATH": "/usr/bin:/bin"}
    import os

    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-m", "mn_node.cli", "doctor", "--json", "--check", "redis", "--check",
                          "redis-sentinel", "--check", "redis-replication", "--check", "redis-clock"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert sentinel_cluster.password not in out.stdout + out.stderr
    doc = json.loads(out.stdout)
    statuses = {c["name"]: c["status"] for c in doc["checks"]}
    detail = {c["name"]: (c["detail"], c.get("info")) for c in doc["checks"]}
    assert statuses == {"redis": "ok", "redis-sentinel": "ok", "redis-replication": "ok", "redis-clock": "ok"}, detail
    assert out.returncode == 0


def test_a_node_started_without_replicas_waits_instead_of_exiting(sentinel_cluster: SentinelCluster) -> None:
    replicas = sentinel_cluster.servers[1:]
    for srv in replicas:
        srv.kill9()
    primary = sentinel_cluster.servers[0].client()
    wait_until(lambda: _refuses(primary), 15, "the primary to refuse writes (NOREPLICAS)")
    c = Cluster(redis_url=sentinel_cluster.url, size=1, extra_env={
        "MIRROR_NEURON_REDIS_SENTINEL_PASSWORD": sentinel_cluster.sentinel_password})
    try:
        c.start_all(wait=False)
        c.wait_started(timeout=20)
        assert c.nodes[0].alive, c.dump_logs()
        health = c.get_status(1, "/api/v1/health")[1]
        assert health["status"] != "ok", health
        for srv in replicas:
            srv.start()
        wait_until(lambda: c.leader(), 30, "a leader once the replicas are back")
        wait_until(lambda: c.get_status(1, "/api/v1/health")[1]["status"] == "ok", 20, "node 1 healthy")
        assert c.nodes[0].alive
    finally:
        c.cleanup()


def _refuses(client: Any) -> bool:
    try:
        client.set("probe", "1")
    except Exception as e:
        return "NOREPLICAS" in str(e)
    return False
