"""``/metrics`` of one node: Prometheus text from a registry of its own.

Each node has its own :class:`~prometheus_client.CollectorRegistry` (never the global one, so
several nodes can live in one process, as in tests) holding:

- :class:`NodeCollector`: the node's state read at scrape time (members, leadership, Redis,
  leases, link traffic, executor and coordinator counts) plus ``mn_build_info``;
- ``process_*`` from prometheus_client's :class:`~prometheus_client.ProcessCollector`;
- the histogram ``mn_lease_renew_latency_seconds``, fed by :attr:`LeaseManager.renewed`;
- the histogram ``mn_redis_ack_latency_seconds``, fed by :attr:`Store.acked` (replicated mode).

Every family carries HELP and TYPE. Names and labels are a contract: the fault observers,
the election and job tests read ``mn_is_leader``, ``mn_leader_epoch``,
``mn_fenced_writes_total{result}``, ``mn_jobs_coordinating`` and ``mn_redis_up``.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mn_node import __version__

if TYPE_CHECKING:
    from mn_node.node import NodeParts

CONTENT_TYPE = CONTENT_TYPE_LATEST

# a batched renewal is one Redis round trip: sub-millisecond on a LAN, a lease TTL (2.5 s) is hopeless
RENEW_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled_counter(name: str, doc: str, label: str, values: dict[str, float]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        fam.add_metric([key], value)
    return fam


class NodeCollector(Collector):
    """The node's own families, computed from its parts at every scrape."""

    def __init__(self, parts: NodeParts) -> None:
        self.parts = parts

    def collect(self) -> Iterable[Metric]:
        build = GaugeMetricFamily("mn_build_info", "Always 1; the labels say which build runs.",
                                  labels=["version", "python"])
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        yield from self._cluster()
        yield from self._leases()
        yield from self._links()
        yield from self._jobs()
        yield from self._peers()

    def _cluster(self) -> Iterator[Metric]:
        members = self.parts.members.members()
        election = self.parts.election
        lease = election.lease
        yield _gauge("mn_members_up", "Members with a live link (including this node).",
                     sum(m.status == "up" for m in members))
        yield _gauge("mn_members_down", "Known members (configured, discovered or seen) without a live link.",
                     sum(m.status == "down" for m in members))
        yield _gauge("mn_is_leader", "1 if this node holds a valid leader lease.", int(election.is_leader))
        yield _gauge("mn_leader_epoch", "Epoch of the leader lease this node holds (0 when it holds none).",
                     lease.epoch if lease and lease.valid() else 0)
        yield _counter("mn_leader_changes_total", "Times this node has been elected leader.", election.changes)
        yield _gauge("mn_redis_up", "1 if this node's last Redis call succeeded.", int(self.parts.store.available))
        yield from self._redis_ha()

    def _redis_ha(self) -> Iterator[Metric]:
        store = self.parts.store
        yield _counter("mn_redis_failovers_total", "Changes of the Redis primary this node has followed "
                       "(Sentinel named another primary).", store.failovers)
        yield _gauge("mn_redis_writes_awaiting_ack", "Fenced writes sent and waiting for a replica's "
                     "acknowledgement (WAIT) now.", store.acks_waiting)
        yield _gauge("mn_redis_writes_unreplicated", "1 while writes are refused for want of a replica's "
                     "acknowledgement (the node does not act on them).", int(bool(store.write_refused)))
        if store.replicated:
            yield _gauge("mn_redis_acks_needed", "Replica acknowledgements each replicated write waits for now "
                         "(MIRROR_NEURON_REDIS_MIN_ACKS, or with all every replica the Sentinels know of).",
                         store.acks.current)

    def _leases(self) -> Iterator[Metric]:
        leases = self.parts.leases
        yield _gauge("mn_leases_held", "Leases (leader and jobs) this node holds now.", len(leases.held))
        yield _labelled_counter("mn_fenced_writes_total", "Fenced writes by outcome: ok, or refused by Redis "
                                "because the writer's lease token was no longer current.", "result",
                                {"ok": leases.fenced_ok, "refused": leases.fenced_refused})

    def _links(self) -> Iterator[Metric]:
        st = self.parts.links.stats()
        yield _labelled_counter("mn_link_messages_total", "Messages over the links that are open now, by direction.",
                                "direction", {"in": st["msgs_in"], "out": st["msgs_out"]})
        yield _labelled_counter("mn_link_bytes_total", "Bytes over the links that are open now, by direction.",
                                "direction", {"in": st["bytes_in"], "out": st["bytes_out"]})
        yield _counter("mn_link_auth_failures_total", "Link handshakes refused because the peer could not "
                       "prove it knows the cookie.", st["auth_failures"])

    def _jobs(self) -> Iterator[Metric]:
        jobs = self.parts.jobs
        yield _labelled_counter("mn_executor_runs_total", "Executor runs on this node by outcome: result stored, "
                                "refused (no longer the current attempt of a running job when the result came), or not "
                                "started (no longer current when its turn came).", "result",
                                {"stored": jobs.executor.completed, "refused": jobs.executor.refused,
                                 "not_started": jobs.executor.skipped})
        yield _gauge("mn_jobs_coordinating", "Jobs this node coordinates (holds the job lease of) now.",
                     len(jobs.coordinators))
        yield _counter("mn_orphan_sweeps_total", "Jobs this node took over as leader after their lease stayed "
                       "free for a TTL.", self.parts.placement.sweeps)
        yield _counter("mn_job_index_trimmed_total", "Ids of expired jobs this node dropped from the job indexes "
                       "as leader.", self.parts.placement.index_trimmed)

    def _peers(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mn_member_up", "1 if the link to that peer is up.", labels=["node"])
        rtt = GaugeMetricFamily("mn_link_rtt_seconds", "Keepalive round trip to that peer (peers that are up).",
                                labels=["node"])
        for m in self.parts.members.members():
            if m.is_self:
                continue
            up.add_metric([m.name], int(m.status == "up"))
            if m.rtt_ms is not None and m.status == "up":
                rtt.add_metric([m.name], m.rtt_ms / 1000)
        yield up
        yield rtt


class NodeMetrics:
    """The registry of one node; :meth:`render` is the body of ``GET /metrics``."""

    def __init__(self, parts: NodeParts) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(parts))
        ProcessCollector(registry=self.registry)
        self.renew_latency = Histogram(
            "mn_lease_renew_latency_seconds", "Duration of each batched lease renewal (one Redis round trip).",
            buckets=RENEW_BUCKETS, registry=self.registry,
        )
        self._renewed = parts.leases.renewed
        self._renewed.connect(self.renew_latency.observe)
        self.ack_latency = Histogram(
            "mn_redis_ack_latency_seconds", "Duration of each replicated write: the script and the WAIT for "
            "its replica acknowledgement (one round trip).", buckets=RENEW_BUCKETS, registry=self.registry,
        )
        self._acked = parts.store.acked
        self._acked.connect(self.ack_latency.observe)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def close(self) -> None:
        """Stop observing renewals (the registry stays readable)."""
        self._renewed.disconnect(self.renew_latency.observe)
        self._acked.disconnect(self.ack_latency.observe)
