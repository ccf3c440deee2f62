"""3. Staged connectivity to every peer, 7. which side of a split this node is on."""

from __future__ import annotations

import asyncio

from mn_node.doctor.context import Context
from mn_node.doctor.facts import PeerProbe, local_api, peer_probe, redis_facts
from mn_node.doctor.model import Kind, Result, fail, ok, warn
from mn_node.doctor.registry import check


def _timings(p: PeerProbe) -> str:
    parts = []
    if p.tcp_ms is not None:
        parts.append(f"tcp {p.tcp_ms:.1f} ms")
    if p.hs_ms is not None:
        parts.append(f"handshake {p.hs_ms:.1f} ms")
    return ", ".join(parts)


def _verdict(ctx: Context, p: PeerProbe, daemon_view: dict[str, str]) -> Result:
    assert ctx.cfg is not None
    name = f"peer {p.node.name}"
    n = p.node
    where = f"{n.host}:{n.port}"
    envf = ctx.env_file_hint
    info = [f"stage reached: {p.stage}", *([_timings(p)] if _timings(p) else [])]
    if p.stage == "resolve":
        kind = Kind.TIMEOUT if p.how == "timeout" else Kind.CONFIG
        return fail(name, f"resolve: {p.message}", f"use an IP address or a resolvable name for {n.name} in "
                    f"MIRROR_NEURON_CLUSTER_NODES ({envf}), or fix DNS / /etc/hosts", kind, info)
    if p.stage == "tcp":
        if p.how == "refused":
            return fail(name, f"TCP {where}: connection refused: nothing listens on the dist port (mn-node is not "
                        f"running there, or uses another MIRROR_NEURON_DIST_PORT)",
                        f"on {n.host}: systemctl start mirror-neuron (journalctl -u mirror-neuron -n 50 says why it "
                        f"stopped); check its MIRROR_NEURON_DIST_PORT is {n.port}", Kind.UNAVAILABLE, info)
        if p.how == "timeout":
            return fail(name, f"TCP {where}: no answer within {ctx.stage:.1f}s: packets are silently dropped, most "
                        "likely a firewall filtering the dist port (or the host is down)",
                        f"on {n.host}: allow TCP {n.port} from this box, e.g. nft insert rule inet filter input "
                        f"tcp dport {n.port} accept (or ufw allow {n.port}/tcp); check nft list ruleset on both "
                        "boxes and any cloud security group", Kind.TIMEOUT, info)
        return fail(name, f"TCP {where}: {p.message}", f"check the route from this box: ip route get {p.addr}",
                    Kind.UNAVAILABLE, info)
    if p.stage == "handshake":
        if p.how == "auth":
            theirs = p.peer_cookie_hash or "?"
            return fail(name, f"cookie mismatch (invalid challenge reply): {n.name} has cookie hash {theirs}, this "
                        f"node {ctx.cfg.cookie_hash}",
                        f"set the same MIRROR_NEURON_COOKIE on every node (copy it from a healthy node into "
                        f"{envf} on the odd one out), then systemctl restart mirror-neuron there",
                        Kind.UNAVAILABLE, info)
        if p.how == "timeout":
            return fail(name, f"TCP {where} connects but the handshake got no reply within {ctx.stage:.1f}s: the "
                        "mn-node there is hung (stopped with SIGSTOP?) or overloaded",
                        f"on {n.host}: systemctl status mirror-neuron; if it stays hung: systemctl restart "
                        "mirror-neuron", Kind.TIMEOUT, info)
        if p.how == "version":
            return fail(name, f"link protocol mismatch: {p.message}",
                        "upgrade every node to the same mirror-neuron release", Kind.UNAVAILABLE, info)
        return fail(name, f"TCP {where} answers but not as an mn-node link ({p.message}): another program holds "
                    "the dist port there", f"on {n.host}: ss -ltnp 'sport = :{n.port}' shows the program; stop it "
                    "or move the dist port", Kind.UNAVAILABLE, info)
    if p.found_node and p.found_node != n.name:
        return fail(name, f"{where} is {p.found_node}, not {n.name}", f"fix the entry for {n.name} in "
                    f"MIRROR_NEURON_CLUSTER_NODES ({envf}) on every node", Kind.CONFIG, info)
    linked = f"link ok ({_timings(p)})"
    if p.stage == "app":
        if p.how == "unhealthy":
            return fail(name, f"{linked}, but it reports itself unhealthy: {p.message}",
                        f"run mn doctor on {n.host} (most often: that node cannot reach Redis)", Kind.UNAVAILABLE,
                        info)
        return fail(name, f"{linked}, but {p.message}", f"run mn doctor on {n.host}", Kind.UNAVAILABLE, info)
    app = "API healthy" if p.health is not None else (p.health_note or "registration fresh")
    if p.health is not None:
        app += f" (redis {p.health.get('redis')}, {p.health.get('members_up')} members up)"
    seen = daemon_view.get(n.name)
    if seen is not None and seen != "up":
        return warn(name, f"{linked}, {app}; but this node's daemon has no link to it ({seen})",
                    "look at the local node's log: journalctl -u mirror-neuron -n 50", info)
    return ok(name, f"{linked}, {app}", info)


@check("peers", 30, "staged connectivity to every peer: resolve, TCP to the dist port, handshake, application",
       timeout=4.0)
async def peers(ctx: Context) -> list[Result]:
    if ctx.cfg is None:
        return [warn("peers", "not checked: needs a valid local config (see config)", "fix the config check first")]
    if not ctx.cfg.peers:
        return [ok("peers", "no peers configured (a single-node cluster)")]
    probes, api = await asyncio.gather(asyncio.gather(*(peer_probe(ctx, p) for p in ctx.cfg.peers)), local_api(ctx))
    daemon_view: dict[str, str] = {}
    for row in api.nodes or []:
        status = str(row.get("status"))
        daemon_view[str(row.get("name"))] = status if status == "up" else f"{status}: {row.get('reason') or '?'}"
    return [_verdict(ctx, p, daemon_view) for p in probes]


@check("split-brain", 70, "split-brain side: peers reachable but Redis not, or Redis but no peers", timeout=4.0)
async def split_brain(ctx: Context) -> Result:
    name = "split-brain"
    if ctx.cfg is None:
        return warn(name, "not checked: needs a valid local config (see config)", "fix the config check first")
    redis, probes = await asyncio.gather(redis_facts(ctx), asyncio.gather(*(peer_probe(ctx, p)
                                                                          for p in ctx.cfg.peers)))
    linked = [p for p in probes if p.linked]
    cut = [p for p in probes if not p.linked]
    names = ", ".join(p.node.name for p in linked)
    if not redis.ok:
        if not probes:
            return fail(name, f"single node without Redis ({redis.error}): it will not lead or own jobs",
                        redis.fix, redis.kind)
        peers_with_redis = [p for p in linked if p.health and p.health.get("redis") == "ok"]
        if not linked:
            return fail(name, f"this node reaches neither Redis ({redis.error}) nor any peer: it is cut off and "
                        "will not lead or own jobs", f"check this box's network first (ip addr; ip route); then "
                        f"{redis.fix}", redis.kind)
        if peers_with_redis:
            return fail(name, f"this node is on the isolated side: it reaches peers {names} but not Redis "
                        f"({redis.error}), while {', '.join(p.node.name for p in peers_with_redis)} reach Redis: "
                        "it will not lead or own jobs",
                        f"restore this box's path to Redis {redis.url} (check it with {redis.cli()} ping from here) "
                        f"or correct MIRROR_NEURON_REDIS_URL in {ctx.env_file_hint}", redis.kind)
        return fail(name, f"this node is on the isolated side: it reaches peers {names} but not Redis "
                    f"({redis.error}): it will not lead or own jobs", redis.fix, redis.kind)
    if not probes:
        return ok(name, "single node; Redis reachable")
    if not linked:
        filtered = [p for p in cut if p.how == "timeout"]
        if filtered:
            return fail(name, f"this node reaches Redis but none of its {len(probes)} peers (no answer from "
                        f"{', '.join(p.node.name for p in filtered)}): it is on the Redis side and keeps leading and "
                        "owning jobs; the peers stop if they cannot reach Redis either",
                        "restore the network between the nodes (see the peer checks for each one)", Kind.TIMEOUT)
        return warn(name, f"Redis reachable, but none of the {len(probes)} peers is up (see the peer checks)",
                    "start the other nodes: systemctl start mirror-neuron on each box")
    if cut:
        return warn(name, f"partial: Redis and {names} reachable, {', '.join(p.node.name for p in cut)} not",
                    "see the peer checks for each unreachable node")
    return ok(name, f"no split: Redis and all {len(probes)} peers reachable")
