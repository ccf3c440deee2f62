"""``/metrics``: Prometheus exposition of a real running node, and one registry per node."""

from __future__ import annotations

import base64
import os
import platform
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from mn_node import __version__
from mn_node.config import load_config
from mn_node.metrics import NodeMetrics
from mn_node.node import build_parts
from tests.support.cluster import Cluster
from tests.support.wait import wait_until

# the names and labels other code reads (fault observers, election/job tests) or operators graph
CONTRACT = {
    "mn_members_up", "mn_members_down", "mn_is_leader", "mn_leader_epoch", "mn_leader_changes_total",
    "mn_redis_up", "mn_leases_held", "mn_fenced_writes_total", "mn_link_messages_total", "mn_link_bytes_total",
    "mn_executor_runs_total", "mn_jobs_coordinating", "mn_orphan_sweeps_total", "mn_link_auth_failures_total",
    "mn_member_up", "mn_link_rtt_seconds", "mn_build_info",
}
HISTOGRAM = "mn_lease_renew_latency_seconds"


def _scrape(node_api: str) -> tuple[str, str]:
    with urllib.request.urlopen(node_api + "/metrics", timeout=3) as r:
        return r.headers.get("Content-Type", ""), r.read().decode()


def _samples(text: str) -> list[Sample]:
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def _renewals_seen(node_api: str) -> str | None:
    _, text = _scrape(node_api)
    count = next((s.value for s in _samples(text) if s.name == f"{HISTOGRAM}_count"), 0)
    return text if count > 0 else None


@pytest.mark.slow
def test_metrics_exposition_of_a_running_node(make_cluster: Any) -> None:
    c: Cluster = make_cluster(2)
    lead = c.wait_leader()
    me = c.node_named(lead["node"])  # only a lease holder renews: scrape the leader
    peer = next(n for n in c.nodes if n is not me)
    # a renewal has been observed and the peer's RTT is known (after a keepalive round trip)
    wait_until(lambda: "mn_link_rtt_seconds{" in _scrape(me.api)[1], 10, "mn_link_rtt_seconds of the peer")
    text = wait_until(lambda: _renewals_seen(me.api), 10, f"{HISTOGRAM}_count > 0 (a lease renewal)")
    ctype, _ = _scrape(me.api)
    assert ctype.startswith("text/plain") and "version=" in ctype, ctype

    families = list(text_string_to_metric_families(text))
    for fam in families:  # a family without HELP parses with "", without TYPE as "unknown"
        assert fam.documentation, f"{fam.name} has no HELP"
        assert fam.type != "unknown", f"{fam.name} has no TYPE"
    declared = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ")}
    helped = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# HELP ")}
    assert declared == helped, f"TYPE without HELP: {declared - helped}, HELP without TYPE: {helped - declared}"

    samples = _samples(text)
    names = {s.name for s in samples}
    assert CONTRACT <= names, f"missing: {CONTRACT - names}"
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds",
            "process_open_fds"} <= names, sorted(n for n in names if n.startswith("process_"))

    build = [s for s in samples if s.name == "mn_build_info"]
    assert [(b.labels, b.value) for b in build] == [({"version": __version__, "python": platform.python_version()},
                                                     1.0)]

    by_label = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}
    assert by_label[("mn_member_up", (("node", peer.name),))] == 1.0
    assert 0 < by_label[("mn_link_rtt_seconds", (("node", peer.name),))] < 1
    assert {k[1] for k in by_label if k[0] == "mn_fenced_writes_total"} == {(("result", "ok"),),
                                                                          (("result", "refused"),)}
    assert by_label[("mn_members_up", ())] == 2.0 and by_label[("mn_redis_up", ())] == 1.0

    hist = next(f for f in families if f.name == HISTOGRAM)
    assert hist.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in hist.samples if s.name == f"{HISTOGRAM}_bucket"]
    assert len(buckets) > 5 and buckets[-1][0] == "+Inf", buckets
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), f"buckets are not cumulative: {buckets}"
    count = next(s.value for s in hist.samples if s.name == f"{HISTOGRAM}_count")
    assert counts[-1] == count > 0


@pytest.mark.slow
def test_is_leader_metric_agrees_with_the_leader_route(make_cluster: Any) -> None:
    c: Cluster = make_cluster(2)
    lead = c.wait_leader()

    def leader_flags() -> dict[str, float] | None:
        flags = {}
        for n in c.nodes:
            flags[n.name] = next(s.value for s in _samples(_scrape(n.api)[1]) if s.name == "mn_is_leader")
        return flags if sum(flags.values()) == 1 else None

    flags = wait_until(leader_flags, 10, "exactly one node reporting mn_is_leader 1")
    assert flags[lead["node"]] == 1.0, flags


def _config(name: str) -> Any:
    return load_config({
        "MIRROR_NEURON_COOKIE": base64.b64encode(os.urandom(32)).decode(),
        "MIRROR_NEURON_CLUSTER_NODES": f"{name}@127.0.0.1",
        "MIRROR_NEURON_NODE_NAME": f"{name}@127.0.0.1",
        "MIRROR_NEURON_REDIS_URL": "redis://127.0.0.1:6379/0",  # never contacted: nothing here starts
        "MIRROR_NEURON_DISCOVERY": "none",
    })


async def test_each_node_has_its_own_registry() -> None:
    """Two nodes in one process: no 'Duplicated timeseries' and no shared histogram."""
    a, b = build_parts(_config("mna")), build_parts(_config("mnb"))
    ma, mb = NodeMetrics(a), NodeMetrics(b)
    try:
        a.leases.renewed.emit(0.003)
        a.leases.renewed.emit(0.004)
        b.leases.renewed.emit(0.2)

        def renewals(m: NodeMetrics) -> tuple[float, float]:
            s = {x.name: x.value for x in _samples(m.render().decode()) if not x.labels}
            return s[f"{HISTOGRAM}_count"], round(s[f"{HISTOGRAM}_sum"], 6)

        assert renewals(ma) == (2.0, 0.007)
        assert renewals(mb) == (1.0, 0.2)
        ma.close()  # a closed node's histogram stops observing; the other's is unaffected
        a.leases.renewed.emit(0.5)
        b.leases.renewed.emit(0.5)
        assert renewals(ma) == (2.0, 0.007)
        assert renewals(mb) == (2.0, 0.7)
    finally:
        mb.close()
        for parts in (a, b):
            await parts.links.stop("test over")
            await parts.store.close()
