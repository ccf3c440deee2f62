"""``mn-node``: the node daemon (foreground; systemd runs it) and ``mn-node check-config``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
import signal
import sys
import time
from typing import Any

from aiohttp import web

from mn_node import __version__
from mn_node.api import build_app
from mn_node.config import Config, load_config
from mn_node.discovery import MdnsDiscovery, StaticDiscovery
from mn_node.errors import EX_CONFIG, EX_USAGE, MirrorNeuronError, UnavailableError
from mn_node.jobs.api import add_routes as add_job_routes
from mn_node.jobs.runtime import JobRuntime
from mn_node.leader import LeaderElection
from mn_node.leases import LeaseManager
from mn_node.link import Identity, LinkManager
from mn_node.logs import setup_logging
from mn_node.membership import Member, Membership
from mn_node.placement import Placement
from mn_node.ports import describe_holder
from mn_node.registration import Registration, read_all
from mn_node.sdnotify import Notifier
from mn_node.store import Store

log = logging.getLogger("mn_node.daemon")


class Node:
    """Wires the layers: link -> membership -> leases -> placement -> jobs -> API."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.incarnation = f"{int(time.time()):x}{secrets.token_hex(4)}"
        self.started = time.time()
        self.started_ms = int(self.started * 1000)
        self.notifier = Notifier()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.runner: web.AppRunner | None = None
        self.mdns: MdnsDiscovery | None = None
        self.exit_code = 0
        self.stopping = False
        self.up = False  # start() finished: registered (when Redis answers), loops running, READY sent
        self._registered = False

    # ---- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.cfg
        assert cfg.redis_url is not None
        self.store = Store(cfg.redis_url, cfg.namespace)
        self.links = LinkManager(
            Identity(cfg.cookie, cfg.name, self.incarnation),
            tick=cfg.link_tick_ms / 1000,
            timeout=cfg.link_timeout_ms / 1000,
            local_host=cfg.bind_host,
        )
        self.members = Membership(self.links, cfg.name, cfg.me.host, self.incarnation)
        self.leases = LeaseManager(self.store, cfg.name, self.incarnation, cfg.lease_ttl_ms, cfg.renew_interval_ms)
        self.election = LeaderElection(self.store, self.leases, self.links, cfg.name)
        self.registration = Registration(
            self.store, cfg, self.incarnation, self.started_ms, max(5000, 4 * cfg.lease_ttl_ms)
        )
        self.jobs = JobRuntime(cfg.name, self.store, self.leases, self.links, self.members,
                               cfg.executor_capacity, cfg.renew_interval_ms / 1000)
        self.placement = Placement(cfg.name, self.store, self.leases, self.links, self.members,
                                   self.election, self.jobs)
        self.members.on_nodedown(self._on_nodedown)

        # 1. ports first, so a conflict is reported before anything else happens
        await self._bind_api()
        try:
            await self.links.listen(cfg.bind_host, cfg.me.port)
        except OSError as e:
            await self._close_api()
            raise _bind_error("MIRROR_NEURON_DIST_PORT", cfg.bind_host, cfg.me.port, e) from None

        # 2. Redis: claim our name (a live holder stops us with exit 69)
        if await self.store.check():
            await self.registration.claim(self.load())
            self._registered = True
            await self.store.event("node_up", cfg.name, incarnation=self.incarnation, host=cfg.me.host)
        else:
            self._registered = False
            log.warning("redis unreachable at start (%s); will register when it answers", self.store.last_error)

        # 3. discovery, background loops, readiness
        if "static" in cfg.discovery:
            StaticDiscovery(cfg, self.links, self.members).start()
        if "mdns" in cfg.discovery:
            self.mdns = MdnsDiscovery(cfg, self.links, self.members)
            try:
                await self.mdns.start()
            except OSError as e:
                log.warning("mDNS unavailable on %s: %s (static discovery continues)", cfg.bind_host, e)
                self.mdns = None
        self.jobs.start()
        self._spawn(self.leases.run(), "leases")
        self._spawn(self.election.run(), "election")
        self._spawn(self.placement.run(), "placement")
        self._spawn(self._housekeeping(), "housekeeping")
        if self.notifier.watchdog_interval:
            self._spawn(self._watchdog(), "watchdog")
        self.up = True
        self.notifier.ready(f"listening on {cfg.bind_host}:{cfg.me.port}, API {cfg.api_bind}:{cfg.api_port}")
        log.info("mn-node %s up as %s (incarnation %s), link %s:%d, API http://%s:%d",
                 __version__, cfg.name, self.incarnation, cfg.bind_host, cfg.me.port, cfg.api_bind, cfg.api_port)

    async def _bind_api(self) -> None:
        app = build_app(self, self._extra_routes)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.api_bind, self.cfg.api_port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self._close_api()
            raise _bind_error("MIRROR_NEURON_API_PORT", self.cfg.api_bind, self.cfg.api_port, e) from None

    def _extra_routes(self, app: web.Application) -> None:
        add_job_routes(app)

    async def _close_api(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def request_stop(self, why: str = "signal") -> None:
        if not self._stop.is_set():
            log.info("stopping (%s)", why)
            self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Graceful: hand over leadership, release leases, leave the cluster, close."""
        self.stopping = True
        self.notifier.stopping()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._graceful(), 5.0)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.jobs.stop()
        await self.links.stop("shutdown")
        if self.mdns is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.mdns.stop(), 2.0)
        await self._close_api()
        await self.store.close()
        log.info("stopped")

    async def _graceful(self) -> None:
        await self.election.step_down()
        coordinated = sorted(self.jobs.coordinators)
        await self.leases.release_all()
        if coordinated:
            # successors take over now instead of after a TTL
            self.placement.kick_all()
            for conn in list(self.links.links.values()):
                conn.flush()
        if self.store.available:
            await self.store.event("node_left", self.cfg.name, incarnation=self.incarnation, reason="shutdown")
            await self.registration.remove()

    def _spawn(self, coro: Any, name: str = "") -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name or None)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, MirrorNeuronError):
            log.error("%s", exc)
            self.exit_code = exc.exit_code
            self.request_stop(str(exc))
        elif exc is not None:
            log.error("task %s crashed", task.get_name(), exc_info=exc)
            self.exit_code = 70
            self.request_stop("internal error")

    # ---- background -----------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        """Redis availability, registration refresh, recovery after Redis returns."""
        interval = self.cfg.renew_interval_ms / 1000
        while True:
            ok = await self.store.check()
            if ok:
                if not self._registered:
                    await self.registration.claim(self.load())
                    self._registered = True
                    await self.store.event("node_up", self.cfg.name, incarnation=self.incarnation)
                elif not await self.registration.refresh(self.load()):
                    raise UnavailableError(
                        f"another daemon took over the name {self.cfg.name}; this one stops"
                    )
            await asyncio.sleep(interval)

    async def _watchdog(self) -> None:
        assert self.notifier.watchdog_interval is not None
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(self.notifier.watchdog_interval)

    def _on_nodedown(self, m: Member) -> None:
        if self.election.is_leader and not self.stopping and not m.reason.startswith("left"):
            self._spawn(self.store.event("node_down", m.name, self.election.lease.epoch if self.election.lease else "",
                                         reason=m.reason, observed_by=self.cfg.name))

    # ---- views --------------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        try:
            la = os.getloadavg()[0]
        except OSError:
            la = 0.0
        out: dict[str, Any] = {"loadavg1": round(la, 2)}
        if hasattr(self, "jobs"):
            out["executors_busy"] = self.jobs.executor.busy
            out["coordinating"] = len(self.jobs.coordinators)
        return out

    def health_reasons(self) -> list[str]:
        reasons = []
        if not self.up:
            reasons.append("starting")
        if not self.store.available:
            reasons.append(f"redis unreachable: {self.store.last_error}")
        elif not self._registered:
            reasons.append("not registered in redis yet")
        if self.stopping:
            reasons.append("stopping")
        return reasons

    async def node_table(self) -> list[dict[str, Any]]:
        rows = {m.name: m.to_dict() for m in self.members.members()}
        regs: dict[str, dict[str, str]] = {}
        if self.store.available:
            with contextlib.suppress(MirrorNeuronError, Exception):
                regs = await read_all(self.store)
        for name, reg in regs.items():
            row = rows.setdefault(name, {"name": name, "address": reg.get("host", ""), "status": "down",
                                         "incarnation": reg.get("incarnation", ""), "since": 0.0,
                                         "last_seen": 0.0, "rtt_ms": None, "reason": "no link",
                                         "is_self": False})
            row["registered"] = True
            row["version"] = reg.get("version")
            row["capacity"] = int(reg.get("capacity", "0") or 0)
            row["load"] = json.loads(reg.get("load", "{}") or "{}")
            row["pid"] = int(reg.get("pid", "0") or 0)
            row["started_ms"] = int(reg.get("started_ms", "0") or 0)
            row["config_fingerprint"] = reg.get("config_fingerprint")
        for row in rows.values():
            row.setdefault("registered", False)
        return sorted(rows.values(), key=lambda r: str(r["name"]))

    async def summary(self) -> dict[str, Any]:
        members = self.members.members()
        leader = None
        if self.store.available:
            with contextlib.suppress(MirrorNeuronError):
                leader = await self.election.current()
        return {
            "node": self.cfg.name,
            "incarnation": self.incarnation,
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 3),
            "members": {"up": sum(m.status == "up" for m in members),
                        "down": sum(m.status == "down" for m in members)},
            "leader": leader,
            "is_leader": self.election.is_leader,
            "redis": {"available": self.store.available, "url": self.store.display_url,
                      "error": self.store.last_error or None},
            "config_fingerprint": self.cfg.fingerprint(),
            "executor_capacity": self.cfg.executor_capacity,
            "executors_busy": self.jobs.executor.busy,
            "coordinating": sorted(self.jobs.coordinators),
        }

    def metrics_text(self) -> str:
        st = self.links.stats()
        members = self.members.members()
        lease = self.election.lease
        lines = [
            "# HELP mn_members_up Members with a live link (including this node).",
            "# TYPE mn_members_up gauge",
            f"mn_members_up {sum(m.status == 'up' for m in members)}",
            "# TYPE mn_members_down gauge",
            f"mn_members_down {sum(m.status == 'down' for m in members)}",
            "# HELP mn_is_leader 1 if this node holds a valid leader lease.",
            "# TYPE mn_is_leader gauge",
            f"mn_is_leader {int(self.election.is_leader)}",
            "# TYPE mn_leader_epoch gauge",
            f"mn_leader_epoch {lease.epoch if lease and lease.valid() else 0}",
            "# TYPE mn_leader_changes_total counter",
            f"mn_leader_changes_total {self.election.changes}",
            "# TYPE mn_redis_up gauge",
            f"mn_redis_up {int(self.store.available)}",
            "# HELP mn_lease_renew_latency_seconds Latency of the last batched lease renewal.",
            "# TYPE mn_lease_renew_latency_seconds gauge",
            f"mn_lease_renew_latency_seconds {(self.leases.renew_latency_ms or 0) / 1000:.6f}",
            "# TYPE mn_leases_held gauge",
            f"mn_leases_held {len(self.leases.held)}",
            "# TYPE mn_fenced_writes_total counter",
            f'mn_fenced_writes_total{{result="ok"}} {self.leases.fenced_ok}',
            f'mn_fenced_writes_total{{result="refused"}} {self.leases.fenced_refused}',
            "# TYPE mn_link_messages_total counter",
            f'mn_link_messages_total{{direction="in"}} {st["msgs_in"]}',
            f'mn_link_messages_total{{direction="out"}} {st["msgs_out"]}',
            "# TYPE mn_link_bytes_total counter",
            f'mn_link_bytes_total{{direction="in"}} {st["bytes_in"]}',
            f'mn_link_bytes_total{{direction="out"}} {st["bytes_out"]}',
            "# TYPE mn_executor_runs_total counter",
            f'mn_executor_runs_total{{result="stored"}} {self.jobs.executor.completed}',
            f'mn_executor_runs_total{{result="refused"}} {self.jobs.executor.refused}',
            "# TYPE mn_jobs_coordinating gauge",
            f"mn_jobs_coordinating {len(self.jobs.coordinators)}",
            "# TYPE mn_orphan_sweeps_total counter",
            f"mn_orphan_sweeps_total {self.placement.sweeps}",
            "# TYPE mn_link_auth_failures_total counter",
            f"mn_link_auth_failures_total {st['auth_failures']}",
        ]
        for m in members:
            if not m.is_self:
                lines.append(f'mn_member_up{{node="{m.name}"}} {int(m.status == "up")}')
                if m.rtt_ms is not None and m.status == "up":
                    lines.append(f'mn_link_rtt_seconds{{node="{m.name}"}} {m.rtt_ms / 1000:.6f}')
        return "\n".join(lines) + "\n"


def _bind_error(var: str, host: str, port: int, e: OSError) -> MirrorNeuronError:
    if e.errno == errno.EADDRINUSE:
        return UnavailableError(
            f"{var}: {host}:{port} is already in use, held by {describe_holder(port, host)}; "
            f"fix: stop that process or set {var} to a free port"
        )
    if e.errno == errno.EADDRNOTAVAIL:
        from mn_node.errors import ConfigError

        return ConfigError(
            f"{var}: cannot bind {host}:{port}: {host} is not an address of this machine; "
            "fix: check MIRROR_NEURON_NODE_NAME / the bind address"
        )
    return UnavailableError(f"{var}: cannot bind {host}:{port}: {e.strerror}; fix: check the address and port")


async def run_node(cfg: Config) -> int:
    node = Node(cfg)
    loop = asyncio.get_running_loop()
    for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
        loop.add_signal_handler(sig, node.request_stop, name)
    try:
        await node.start()
    except MirrorNeuronError as e:
        log.error("%s", e)
        if hasattr(node, "store"):
            await node.links.stop("startup failed")
            await node.store.close()
        return e.exit_code
    await node.wait()
    await node.stop()
    return node.exit_code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        print(f"mn-node: {message}; fix: see mn-node --help", file=sys.stderr)
        sys.exit(EX_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mn-node", description="mirror-neuron node daemon (runs in the foreground)")
    p.add_argument("--env-file", help="read MIRROR_NEURON_* variables from this file (overrides the environment)")
    p.add_argument("--version", action="version", version=f"mn-node {__version__}", help="print the version and exit")
    sub = p.add_subparsers(dest="cmd")
    sub.add_parser("run", help="run the daemon (default)")
    cc = sub.add_parser("check-config", help="print the effective configuration (cookie shown as its hash)")
    cc.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(env_file=args.env_file)
    except MirrorNeuronError as e:
        print(f"mn-node: {e}", file=sys.stderr)
        return e.exit_code if e.exit_code else EX_CONFIG
    if args.cmd == "check-config":
        eff = cfg.effective()
        if args.json:
            print(json.dumps(eff, indent=2))
        else:
            for k, v in eff.items():
                if k != "warnings":
                    print(f"{k:20} {v}")
        for w in cfg.warnings:
            print(f"warning: {w}", file=sys.stderr)
        return 0
    setup_logging(cfg.name, cfg.log_level)
    for w in cfg.warnings:
        log.warning("%s", w)
    try:
        return asyncio.run(run_node(cfg))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
