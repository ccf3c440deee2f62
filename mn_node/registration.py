"""Node registration ``{ns}:node:<name>`` and the "node name already in use" guard."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import psutil

from mn_node import __version__
from mn_node.config import Config
from mn_node.errors import RedisUnavailable, UnavailableError
from mn_node.store import Store, WriteNotReplicated

log = logging.getLogger("mn_node.registration")


def host_identity() -> dict[str, str]:
    """What makes two registrations "the same host" for pid checks: kernel boot + pid namespace."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    except OSError:
        boot = ""
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = ""
    return {"hostname": socket.gethostname(), "boot_id": boot, "pidns": pidns}


def is_mn_node_process(pid: int, started_before_ms: int | None = None) -> bool:
    try:
        p = psutil.Process(pid)
        cmd = " ".join(p.cmdline())
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        if started_before_ms is not None and p.create_time() * 1000 > started_before_ms + 1000:
            return False  # pid reused by a newer process
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "mn-node" in cmd or "mn_node" in cmd


@dataclass
class Registration:
    store: Store
    cfg: Config
    incarnation: str
    started_ms: int
    ttl_ms: int

    @property
    def key(self) -> str:
        return self.store.key("node", self.cfg.name)

    def _fields(self, load: dict[str, Any]) -> list[Any]:
        ident = host_identity()
        fields: dict[str, Any] = {
            "name": self.cfg.name,
            "host": self.cfg.me.host,
            "hostname": ident["hostname"],
            "boot_id": ident["boot_id"],
            "pidns": ident["pidns"],
            "pid": os.getpid(),
            "dist_port": self.cfg.me.port,
            "api": f"{self.cfg.api_bind}:{self.cfg.api_port}",
            "version": __version__,
            "config_fingerprint": self.cfg.fingerprint(),
            "cookie_hash": self.cfg.cookie_hash,
            "cluster_nodes": ",".join(n.name for n in self.cfg.nodes),
            "redis_url": self.store.display_url,
            "started_ms": self.started_ms,
            "capacity": self.cfg.executor_capacity,
            "commands": "on" if self.cfg.commands else "off",
            "load": json.dumps(load),
        }
        out: list[Any] = []
        for k, v in fields.items():
            out += [k, v]
        return out

    async def claim(self, load: dict[str, Any]) -> None:
        """Register, refusing a name held by a live other incarnation (:class:`UnavailableError`, exit 69)."""
        existing = await self.store.guard(self.store.r.hgetall(self.key))
        force = False
        if existing and existing.get("incarnation") != self.incarnation:
            live, why = await self._holder_is_live(existing)
            if live:
                since = time.strftime(
                    "%Y-%m-%d %H:%M:%S", time.localtime(int(existing.get("started_ms", "0")) / 1000)
                )
                raise UnavailableError(
                    f"node name {self.cfg.name} is already in use by pid {existing.get('pid')} on "
                    f"{existing.get('hostname')} (incarnation {existing.get('incarnation')}, since {since}, {why}); "
                    f"fix: stop it (systemctl stop mirror-neuron, or kill {existing.get('pid')} on that host) "
                    "or give this node another name"
                )
            log.info("taking over registration of %s from dead incarnation %s (%s)",
                     self.cfg.name, existing.get("incarnation"), why)
            force = True
        args = [self.incarnation, self.ttl_ms] + (["force"] if force else []) + self._fields(load)
        try:
            res = await self.store.scripts.register([self.key], args)
        except WriteNotReplicated as e:
            # The name claim guards no fenced action and is rewritten at every refresh (which
            # creates it when missing): an unreplicated claim is not a reason to stop the daemon.
            log.warning("registration of %s not acknowledged by a replica yet (%s); refreshed until it is",
                        self.cfg.name, e)
            return
        if int(res[0]) != 1:
            raise UnavailableError(
                f"node name {self.cfg.name} was claimed concurrently by incarnation {res[1]}; "
                "fix: make sure only one mn-node runs under this name"
            )

    async def _holder_is_live(self, reg: dict[str, str]) -> tuple[bool, str]:
        mine = host_identity()
        pid = int(reg.get("pid", "0") or 0)
        if reg.get("boot_id") == mine["boot_id"] and reg.get("pidns") == mine["pidns"]:
            started = int(reg.get("started_ms", "0") or 0) or None
            if pid and is_mn_node_process(pid, started):
                return True, "that process is still running"
            return False, f"its pid {pid} is gone"
        # another host: live if it refreshed recently
        now = await self.store.server_time_ms()
        age = now - int(reg.get("refreshed_ms", "0") or 0)
        if age < 3 * self.cfg.renew_interval_ms + 1000:
            return True, f"still refreshed {age} ms ago"
        return False, f"last refreshed {age / 1000:.1f}s ago"

    async def refresh(self, load: dict[str, Any]) -> bool:
        """Refresh; returns False if another incarnation took the name (we must stop)."""
        try:
            res = await self.store.scripts.register([self.key], [self.incarnation, self.ttl_ms, *self._fields(load)])
        except RedisUnavailable:
            return True
        return int(res[0]) == 1

    async def remove(self) -> None:
        try:
            await self.store.scripts.unregister([self.key], [self.incarnation])
        except RedisUnavailable:
            pass


async def read_all(store: Store) -> dict[str, dict[str, str]]:
    """Every live registration, by node name."""
    out: dict[str, dict[str, str]] = {}
    keys = [k async for k in store.r.scan_iter(match=store.key("node", "*"), count=500)]
    if not keys:
        return out
    pipe = store.r.pipeline(transaction=False)
    for k in keys:
        pipe.hgetall(k)
    for reg in await pipe.execute():
        if reg and reg.get("name"):
            out[reg["name"]] = reg
    return out
