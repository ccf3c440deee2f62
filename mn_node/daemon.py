"""``mn-node``: the node daemon (foreground; systemd runs it) and ``mn-node check-config``.

:class:`Node` is the lifecycle only: bind the ports, claim the name, start discovery and the
background loops, keep the registration fresh, stop gracefully. The collaborators come from
:func:`mn_node.node.build_parts`; the API sees the node through :class:`mn_node.views.NodeView`;
``/metrics`` is :class:`mn_node.metrics.NodeMetrics`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from mn_node import __version__, aio
from mn_node.api import build_app, server_ssl_context
from mn_node.config import Config, NodeAddr, load_config
from mn_node.discovery import MdnsDiscovery, StaticDiscovery
from mn_node.errors import (
    EX_CONFIG,
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    ConfigError,
    MirrorNeuronError,
    UnavailableError,
)
from mn_node.jobs.api import add_routes as add_job_routes
from mn_node.logs import current_level, set_level, setup_logging
from mn_node.membership import Member
from mn_node.metrics import NodeMetrics
from mn_node.node import NodeStatus, build_parts
from mn_node.ports import describe_holder
from mn_node.reload import Reloader, forward_reload, reload_environ, snapshot_path
from mn_node.sdnotify import Notifier
from mn_node.views import NodeView, node_load

log = logging.getLogger("mn_node.daemon")

GRACEFUL_S = 5.0  # hand-over, lease release and deregistration together
MDNS_STOP_S = 2.0
EX_INTERRUPTED = 130  # shell convention for "ended by SIGINT"


class Node:
    """One node's life: start, background loops, graceful stop. Build it inside the event loop."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.parts = build_parts(cfg)
        self.status = NodeStatus()
        self.metrics = NodeMetrics(self.parts)
        self.view = NodeView(self.parts, self.status, self.metrics)
        self.notifier = Notifier()
        self.runner: web.AppRunner | None = None
        self.mdns: MdnsDiscovery | None = None
        self.exit_code = EX_OK
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.parts.members.on_nodedown(self._on_nodedown)
        self._start_environ = dict(os.environ)
        self.reloader = Reloader(cfg, self._load_again)
        self._register_live_fields()

    # ---- start ------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg, p = self.cfg, self.parts
        # 1. ports first, so a conflict is reported before anything else happens
        await self._bind_api()
        try:
            await p.links.listen(cfg.bind_host, cfg.me.port)
        except OSError as e:
            await self._close_api()
            raise _bind_error("MIRROR_NEURON_DIST_PORT", cfg.bind_host, cfg.me.port, e) from None
        # 2. Redis: claim our name (a live holder stops us with exit 69)
        if await p.store.check():
            await self._register(host=cfg.me.host)
        else:
            log.warning("redis unreachable at start (%s); will register when it answers", p.store.last_error)
        # 3. discovery, background loops, readiness; a reload snapshot of an earlier incarnation is
        # older than the environment this one started with
        with contextlib.suppress(OSError):
            snapshot_path(self._start_environ, cfg.state_dir).unlink(missing_ok=True)
        await self._start_discovery()
        self._start_loops()
        self.status.up = True
        self.notifier.ready(f"listening on {cfg.bind_host}:{cfg.me.port}, API {cfg.api_bind}:{cfg.api_port}")
        log.info("mn-node %s up as %s (incarnation %s), link %s:%d, API %s, event loop %s",
                 __version__, cfg.name, p.incarnation, cfg.bind_host, cfg.me.port, cfg.api_url,
                 type(asyncio.get_running_loop()).__module__.split(".")[0])

    async def _bind_api(self) -> None:
        tls = server_ssl_context(self.cfg.api_tls)
        self.runner = web.AppRunner(build_app(self.view, add_job_routes), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.api_bind, self.cfg.api_port, reuse_address=True, ssl_context=tls)
        try:
            await site.start()
        except OSError as e:
            await self._close_api()
            raise _bind_error("MIRROR_NEURON_API_PORT", self.cfg.api_bind, self.cfg.api_port, e) from None

    async def _close_api(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _register(self, **event: str) -> None:
        """Claim the name for this incarnation and record ``node_up``."""
        p = self.parts
        await p.registration.claim(node_load(p.jobs))
        self.status.registered = True
        await p.store.event("node_up", self.cfg.name, incarnation=p.incarnation, **event)

    async def _start_discovery(self) -> None:
        p = self.parts
        if "static" in self.cfg.discovery:
            StaticDiscovery(self.cfg, p.links, p.members).start()
        if "mdns" in self.cfg.discovery:
            self.mdns = MdnsDiscovery(self.cfg, p.links, p.members)
            try:
                await self.mdns.start()
            except OSError as e:
                log.warning("mDNS unavailable on %s: %s (static discovery continues)", self.cfg.bind_host, e)
                self.mdns = None

    def _start_loops(self) -> None:
        p = self.parts
        p.jobs.start()
        self._spawn(p.leases.run(), "leases")
        self._spawn(p.election.run(), "election")
        self._spawn(p.placement.run(), "placement")
        self._spawn(self._housekeeping(), "housekeeping")
        if self.notifier.watchdog_interval:
            self._spawn(self._watchdog(), "watchdog")

    # ---- reload (SIGHUP) ------------------------------------------------------------------
    def _load_again(self) -> Config:
        env = reload_environ(self._start_environ, snapshot_path(self._start_environ, self.cfg.state_dir))
        return load_config(env, env_file=self.cfg.env_file)

    def _register_live_fields(self) -> None:
        """The settings a reload applies while running (see :mod:`mn_node.reload`); every other
        changed setting is logged as needing a restart."""
        r, p = self.reloader, self.parts
        r.register("log_level", lambda old, new: set_level(new))
        r.register("log_format", lambda old, new: setup_logging(self.cfg.name, current_level(), new))
        r.register("executor_capacity", self._apply_capacity)
        r.register("command_timeout_s", lambda old, new: setattr(p.jobs.executor.commands, "default_timeout_s", new),
                   show=lambda s: f"{s:g}s")
        r.register("job_retention_ms", lambda old, new: setattr(p.jobs, "retention_ms", new),
                   var="MIRROR_NEURON_JOB_RETENTION", show=lambda ms: f"{ms / 1000:g}s")
        r.register("nodes", self._apply_nodes, show=lambda ns: ",".join(n.name for n in ns), refuse=_nodes_refused)

    def _apply_capacity(self, old: int, new: int) -> None:
        self.parts.jobs.capacity = new
        self.parts.jobs.executor.set_capacity(new)

    def _apply_nodes(self, old: tuple[NodeAddr, ...], new: tuple[NodeAddr, ...]) -> None:
        """Dial the added nodes (static discovery) now; the registration lists them from here on."""
        p = self.parts
        if "static" in self.cfg.discovery:
            for peer in sorted(set(new) - set(old)):
                if peer.name != self.cfg.name:
                    p.members.expect(peer.name, peer.host)
                    p.links.ensure_peer(peer.name, peer.host, peer.port)

    def request_reload(self) -> None:
        if self.status.stopping:
            log.info("reload requested while stopping: ignored")
            return
        self._spawn(self.reload(), "reload")

    async def reload(self) -> None:
        """Re-read the configuration and apply it (systemd's reload protocol around it)."""
        log.info("reload requested (SIGHUP)")
        self.notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        status = "reload failed, running configuration kept"
        try:
            report = await self.reloader.reload()
            self.cfg = self.reloader.cfg
            self.parts.registration.cfg = self.cfg
            if not report.refused:
                status = f"reloaded: {len(report.applied)} applied, {len(report.restart)} need a restart"
        finally:
            self.notifier.notify(f"READY=1\nSTATUS={status}")

    # ---- stop -------------------------------------------------------------------------------
    def request_stop(self, why: str = "signal") -> None:
        if not self._stop.is_set():
            log.info("stopping (%s)", why)
            self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Graceful: hand over leadership, release leases, leave the cluster, close."""
        p = self.parts
        self.status.stopping = True
        self.notifier.stopping()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._graceful(), GRACEFUL_S)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await p.jobs.stop()
        await p.links.stop("shutdown")
        if self.mdns is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.mdns.stop(), MDNS_STOP_S)
        await self._close_api()
        await p.store.close()
        self.metrics.close()
        log.info("stopped")

    async def abort_start(self) -> None:
        """After a failed start(): close what start() may have opened."""
        await self._close_api()
        await self.parts.links.stop("startup failed")
        await self.parts.store.close()
        self.metrics.close()

    async def _graceful(self) -> None:
        p = self.parts
        await p.election.step_down()
        coordinated = sorted(p.jobs.coordinators)
        await p.leases.release_all()
        if coordinated:
            # successors take over now instead of after a TTL
            p.placement.kick_all()
            for conn in list(p.links.links.values()):
                conn.flush()
        if p.store.available:
            await p.store.event("node_left", self.cfg.name, incarnation=p.incarnation, reason="shutdown")
            await p.registration.remove()

    # ---- background tasks -------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> None:
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
            self.exit_code = EX_SOFTWARE
            self.request_stop("internal error")

    async def _housekeeping(self) -> None:
        """Redis availability, registration refresh, recovery after Redis returns."""
        p = self.parts
        interval = self.cfg.renew_interval_ms / 1000
        while True:
            if await p.store.check():
                if not self.status.registered:
                    await self._register()
                elif not await p.registration.refresh(node_load(p.jobs)):
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
        election = self.parts.election
        if election.is_leader and not self.status.stopping and not m.reason.startswith("left"):
            self._spawn(self.parts.store.event("node_down", m.name, election.lease.epoch if election.lease else "",
                                               reason=m.reason, observed_by=self.cfg.name))


def _nodes_refused(old: tuple[NodeAddr, ...], new: tuple[NodeAddr, ...]) -> str | None:
    """Nodes may be added live; a removed node or a changed address needs a restart."""
    gone = sorted(n.name for n in set(old) - set(new))
    return f"removed or changed: {', '.join(gone)}" if gone else None


def _bind_error(var: str, host: str, port: int, e: OSError) -> MirrorNeuronError:
    if e.errno == errno.EADDRINUSE:
        return UnavailableError(
            f"{var}: {host}:{port} is already in use, held by {describe_holder(port, host)}; "
            f"fix: stop that process or set {var} to a free port"
        )
    if e.errno == errno.EADDRNOTAVAIL:
        return ConfigError(
            f"{var}: cannot bind {host}:{port}: {host} is not an address of this machine; "
            "fix: check MIRROR_NEURON_NODE_NAME / the bind address"
        )
    return UnavailableError(f"{var}: cannot bind {host}:{port}: {e.strerror}; fix: check the address and port")


async def run_node(cfg: Config) -> int:
    try:
        node = Node(cfg)
    except MirrorNeuronError as e:
        log.error("%s", e)
        return e.exit_code
    loop = asyncio.get_running_loop()
    for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
        loop.add_signal_handler(sig, node.request_stop, name)
    loop.add_signal_handler(signal.SIGHUP, node.request_reload)
    try:
        await node.start()
    except MirrorNeuronError as e:
        log.error("%s", e)
        await node.abort_start()
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
    rl = sub.add_parser("reload", help="hand this environment to a running daemon and make it reload "
                                       "(the unit's ExecReload)")
    rl.add_argument("pid", type=int, help="the daemon's pid ($MAINPID)")
    return p


def _forward(pid: int) -> int:
    """``mn-node reload PID``: no validation here, the daemon says what is wrong (and keeps running)."""
    from mn_node.config import DEFAULT_STATE_DIR

    fallback = Path(os.environ.get("MIRROR_NEURON_STATE_DIR", "") or DEFAULT_STATE_DIR)
    try:
        path = forward_reload(pid, os.environ, fallback)
    except ProcessLookupError:
        print(f"mn-node: no process {pid}; fix: pass the daemon's pid (systemd's $MAINPID)", file=sys.stderr)
        return EX_UNAVAILABLE
    except OSError as e:
        print(f"mn-node: reload: {e}; fix: run it as the service user with its state directory", file=sys.stderr)
        return EX_TEMPFAIL
    print(f"mn-node: configuration handed to pid {pid} ({path}); see its log for what changed")
    return EX_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "reload":
        return _forward(args.pid)
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
        return EX_OK
    setup_logging(cfg.name, cfg.log_level, cfg.log_format)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop's handler reloads: never die of it
    for w in cfg.warnings:
        log.warning("%s", w)
    try:
        aio.tune_gc()
        return aio.run(run_node(cfg))
    except KeyboardInterrupt:
        return EX_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
