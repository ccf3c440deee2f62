"""Peer discovery: the static list (dialled forever) and mDNS scoped to our cluster id."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any

from mn_node import __version__
from mn_node.config import Config
from mn_node.link.manager import LinkManager
from mn_node.membership import Membership

log = logging.getLogger("mn_node.discovery")

SERVICE_TYPE = "_mirror-neuron._tcp.local."


class StaticDiscovery:
    def __init__(self, cfg: Config, links: LinkManager, members: Membership) -> None:
        self.cfg, self.links, self.members = cfg, links, members

    def start(self) -> None:
        for peer in self.cfg.peers:
            self.members.expect(peer.name, peer.host)
            self.links.ensure_peer(peer.name, peer.host, peer.port)


class MdnsDiscovery:
    """Advertise this node and dial peers announcing the same cluster id."""

    def __init__(self, cfg: Config, links: LinkManager, members: Membership) -> None:
        self.cfg, self.links, self.members = cfg, links, members
        self._azc: Any = None
        self._browser: Any = None
        self._info: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.seen_other_clusters: dict[str, str] = {}
        self.seen_peers: dict[str, str] = {}

    def _bind_address(self) -> str:
        host = self.cfg.bind_host
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            return socket.gethostbyname(host)

    async def start(self) -> None:
        from zeroconf import IPVersion, ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        addr = self._bind_address()
        ip = ipaddress.ip_address(addr)
        if ip.is_unspecified:
            interfaces: Any = "all"
        else:
            interfaces = [addr]
        version = IPVersion.V6Only if ip.version == 6 else IPVersion.V4Only
        self._azc = AsyncZeroconf(interfaces=interfaces, ip_version=version)
        short = self.cfg.name.split("@", 1)[0]
        instance = f"{short}-{self.cfg.cookie_hash[:6]}-{abs(hash(self.cfg.name)) % 10**6}"
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{instance}.{SERVICE_TYPE}",
            addresses=[ip.packed],
            port=self.cfg.me.port,
            properties={
                "cluster": self.cfg.cookie_hash,
                "node": self.cfg.name,
                "api": str(self.cfg.api_port),
                "v": __version__,
            },
        )
        await self._azc.async_register_service(self._info, allow_name_change=True)

        def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
            if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
                t = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)

        self._resolve_cls = AsyncServiceInfo
        self._browser = AsyncServiceBrowser(self._azc.zeroconf, [SERVICE_TYPE], handlers=[on_change])
        log.info("mDNS: announcing %s on %s", self.cfg.name, addr)

    async def _resolve(self, service_type: str, name: str) -> None:
        info = self._resolve_cls(service_type, name)
        if not await info.async_request(self._azc.zeroconf, 3000):
            return
        props = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in (info.properties or {}).items()
        }
        node = props.get("node") or ""
        cluster = props.get("cluster") or ""
        addrs = info.parsed_addresses()
        if not node or not addrs or node == self.cfg.name:
            return
        if cluster != self.cfg.cookie_hash:
            if node not in self.seen_other_clusters:
                log.info("mDNS: ignoring %s of another cluster (%s)", node, cluster)
            self.seen_other_clusters[node] = cluster
            return
        if node not in self.seen_peers:
            log.info("mDNS: found %s at %s:%s", node, addrs[0], info.port)
        self.seen_peers[node] = addrs[0]
        self.members.expect(node, addrs[0])
        self.links.ensure_peer(node, addrs[0], int(info.port or 0))

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._azc is not None:
            if self._info is not None:
                await self._azc.async_unregister_service(self._info)
            await self._azc.async_close()
