"""The parts of one node, built in one place from its :class:`~mn_node.config.Config`.

:func:`build_parts` constructs every collaborator, in layer order, and wires them to each
other; nothing here does I/O (ports are bound and Redis is first contacted by
:class:`mn_node.daemon.Node` when it starts). :class:`NodeStatus` is the lifecycle state the
daemon writes and the API views read.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from mn_node.config import Config
from mn_node.errors import ConfigError
from mn_node.jobs.runtime import JobRuntime
from mn_node.leader import LeaderElection
from mn_node.leases import LeaseManager
from mn_node.link import Identity, LinkManager
from mn_node.membership import Membership
from mn_node.placement import Placement
from mn_node.registration import Registration
from mn_node.store import Store


@dataclass(frozen=True)
class NodeParts:
    """Every collaborator of one node incarnation, each built once, all present from the start."""

    cfg: Config
    incarnation: str
    started: float  # wall clock (s) when this incarnation began
    store: Store
    links: LinkManager
    members: Membership
    leases: LeaseManager
    election: LeaderElection
    registration: Registration
    jobs: JobRuntime
    placement: Placement

    @property
    def started_ms(self) -> int:
        return int(self.started * 1000)


@dataclass
class NodeStatus:
    """Where the node is in its life; written by the daemon, read by health."""

    up: bool = False  # start() finished: registered (when Redis answers), loops running, READY sent
    registered: bool = False  # this incarnation's claim on its name is written in Redis
    stopping: bool = False


def new_incarnation() -> str:
    """Unique per process start: hex start second + 32 random bits."""
    return f"{int(time.time()):x}{secrets.token_hex(4)}"


def build_parts(cfg: Config) -> NodeParts:
    """Construct store, links, membership, leases, election, registration, jobs and placement.

    Must run inside the event loop that will run the node (the link manager binds to it).
    """
    if cfg.redis_url is None:
        raise ConfigError("MIRROR_NEURON_REDIS_URL: not set; fix: set it to redis://host:6379/0")
    incarnation = new_incarnation()
    started = time.time()
    store = Store.from_config(cfg)
    links = LinkManager(
        Identity(cfg.cookie, cfg.name, incarnation),
        tick=cfg.link_tick_ms / 1000,
        timeout=cfg.link_timeout_ms / 1000,
        local_host=cfg.bind_host,
    )
    members = Membership(links, cfg.name, cfg.me.host, incarnation)
    leases = LeaseManager(store, cfg.name, incarnation, cfg.lease_ttl_ms, cfg.renew_interval_ms)
    election = LeaderElection(store, leases, links, cfg.name)
    registration = Registration(store, cfg, incarnation, int(started * 1000), max(5000, 4 * cfg.lease_ttl_ms))
    jobs = JobRuntime(cfg.name, store, leases, links, members, cfg.executor_capacity, cfg.renew_interval_ms / 1000,
                      state_dir=cfg.state_dir, commands=cfg.commands, command_timeout_s=cfg.command_timeout_s,
                      retention_ms=cfg.job_retention_ms)
    placement = Placement(cfg.name, store, leases, links, members, election, jobs)
    return NodeParts(cfg, incarnation, started, store, links, members, leases, election, registration, jobs,
                     placement)
