"""6b. Redis high availability: Sentinel quorum, replicas in sync, min-replicas-to-write, clock
skew between the Redis hosts. On a single Redis (no Sentinel, no MIN_ACKS) each says so and passes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mn_node.config import ACKS_ALL, is_sentinel_url
from mn_node.doctor.context import Context
from mn_node.doctor.facts import RedisFacts, redis_facts
from mn_node.doctor.model import Kind, Result, fail, ok, warn
from mn_node.doctor.registry import check

LAG_WARN_S = 1
HOST_SKEW_WARN_MS = 100.0


def _single(ctx: Context) -> bool:
    return not is_sentinel_url(ctx.redis_url) and ctx.redis_min_acks == 0


def _not_checked(name: str, r: RedisFacts) -> Result:
    return warn(name, f"not checked: Redis unreachable ({r.error})", "fix the redis check first")


@check("redis-sentinel", 64, "Sentinel quorum reachable, all naming the same primary")
async def redis_sentinel(ctx: Context) -> Result:
    name = "redis-sentinel"
    if not is_sentinel_url(ctx.redis_url):
        return ok(name, "no Sentinel (MIRROR_NEURON_REDIS_URL is a plain redis:// URL)")
    r = await redis_facts(ctx)
    if r.sentinel is None:
        return _not_checked(name, r)
    views = await asyncio.gather(*(_sentinel_view(s, r.master_name) for s in r.sentinel.sentinels))
    up = [v for v in views if "error" not in v]
    info = [f"{v['address']}: " + (v.get("error") or f"primary {v['primary']}, quorum {v['quorum']}, "
            f"{v['other_sentinels']} other Sentinel(s)") for v in views]
    if not up:
        return fail(name, f"no Sentinel of {r.url} answers: a failover cannot happen", "start them: systemctl "
                    "start redis-sentinel (on each Redis host); allow TCP 26379 from this box", info=info)
    quorum = max(int(v["quorum"]) for v in up)
    primaries = {v["primary"] for v in up}
    if len(primaries) > 1:
        return fail(name, f"the Sentinels disagree on the primary ({', '.join(sorted(primaries))})",
                    "wait a few seconds; if it stays so, check the network between the Redis hosts", info=info)
    majority = len(views) // 2 + 1
    if len(up) < max(quorum, majority):
        return fail(name, f"{len(up)} of {len(views)} Sentinels answer, fewer than the quorum {quorum} / a majority "
                    f"{majority}: a failover cannot be authorised", "start the missing Sentinels: systemctl start "
                    "redis-sentinel", info=info)
    if len(views) % 2 == 0:
        return warn(name, f"{len(views)} Sentinels in the URL: an even number tolerates no more failures than one "
                    "fewer", "run 3 (or 5) Sentinels and list them all in MIRROR_NEURON_REDIS_URL", info)
    return ok(name, f"{len(up)}/{len(views)} Sentinels answer (quorum {quorum}), all name {primaries.pop()}",
              info)


async def _sentinel_view(client: Any, master: str) -> dict[str, Any]:
    kw = client.connection_pool.connection_kwargs
    row: dict[str, Any] = {"address": f"{kw.get('host')}:{kw.get('port')}"}
    try:
        st = await client.sentinel_master(master)
    except Exception as e:
        row["error"] = (str(e) or type(e).__name__).splitlines()[0][:120]
        return row
    row.update(primary=f"{st.get('ip')}:{st.get('port')}", quorum=int(st.get("quorum", 0)),
               other_sentinels=int(st.get("num-other-sentinels", 0)), replicas=int(st.get("num-slaves", 0)))
    return row


@check("redis-replication", 65, "replicas connected and in sync; min-replicas-to-write set")
async def redis_replication(ctx: Context) -> Result:
    name = "redis-replication"
    if _single(ctx):
        return ok(name, "single Redis: writes are not replicated (no Sentinel URL, MIRROR_NEURON_REDIS_MIN_ACKS 0)")
    r = await redis_facts(ctx)
    if not r.ok:
        return _not_checked(name, r)
    repl = await r.client.info("replication")
    if repl.get("role") != "master":
        return fail(name, f"{r.url} answers as a {repl.get('role')}, not the primary",
                    "point MIRROR_NEURON_REDIS_URL at the primary, or use redis+sentinel://", Kind.CONFIG)
    replicas = _replicas(repl)
    info = [f"{v.get('ip')}:{v.get('port')} {v.get('state')} lag {v.get('lag')} s" for v in replicas]
    online = [v for v in replicas if v.get("state") == "online" and int(v.get("lag", 99)) <= LAG_WARN_S]
    # MIN_ACKS all (the Sentinel default): every write waits for every replica; the Sentinel check
    # counts the ones that are not even connected
    need = max(1, ctx.redis_min_acks)
    if ctx.redis_min_acks == ACKS_ALL:
        known = [v["replicas"] for v in await asyncio.gather(*(_sentinel_view(s, r.master_name)
                                                               for s in r.sentinel.sentinels)) if "error" not in v] \
            if r.sentinel is not None else []
        need = max(1, len(replicas), *known)
    if len(online) < need:
        return fail(name, f"{len(online)} replica(s) online and in sync (of {len(replicas)} connected), {need} "
                    "needed: every fenced write is refused until they catch up", "check the replicas: "
                    "systemctl status redis-server on each; redis-cli INFO replication", info=info)
    mrw = await _config_int(r, "min-replicas-to-write")
    lag = await _config_int(r, "min-replicas-max-lag")
    if mrw is None:
        return warn(name, f"{len(online)} replica(s) in sync; min-replicas-to-write unreadable (CONFIG disabled?)",
                    "check /etc/redis/redis.conf has min-replicas-to-write 1", info)
    if mrw < 1:
        return warn(name, f"{len(online)} replica(s) in sync, but min-replicas-to-write is 0: a primary cut off from "
                    "its replicas keeps accepting writes (nodes refuse to act on them, but they can be lost)",
                    f"{r.cli()} CONFIG SET min-replicas-to-write 1 && {r.cli()} CONFIG REWRITE", info)
    return ok(name, f"{len(online)}/{len(replicas)} replica(s) online and in sync; min-replicas-to-write {mrw}, "
              f"min-replicas-max-lag {lag} s", info)


def _replicas(repl: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``slaveN`` entries of ``INFO replication`` (redis-py parses each into a dict)."""
    return [v for k, v in repl.items() if k.startswith("slave") and k[5:].isdigit() and isinstance(v, dict)]


async def _config_int(r: RedisFacts, key: str) -> int | None:
    try:
        got = await r.client.config_get(key)
        return int(got.get(key))
    except Exception:
        return None


@check("redis-clock", 66, "clock skew between the Redis hosts (lease TTLs move to the new primary's clock)")
async def redis_clock(ctx: Context) -> Result:
    name = "redis-clock"
    if _single(ctx):
        return ok(name, "single Redis: one clock")
    r = await redis_facts(ctx)
    if not r.ok:
        return _not_checked(name, r)
    import redis.asyncio as aioredis

    repl = await r.client.info("replication")
    addrs = [(str(v.get("ip")), int(v.get("port", 0))) for v in _replicas(repl)]
    primary_ms = await _time_ms(r.client)
    info, worst = [], 0.0
    for host, port in addrs:
        c = aioredis.Redis(host=host, port=port, password=r.password, socket_timeout=ctx.stage,
                           socket_connect_timeout=ctx.stage, decode_responses=True)
        try:
            skew = await _time_ms(c) - primary_ms
        except Exception as e:
            info.append(f"{host}:{port}: TIME failed ({(str(e) or type(e).__name__)[:80]})")
            continue
        finally:
            await c.aclose()
        info.append(f"{host}:{port}: {skew:+.0f} ms vs the primary")
        worst = max(worst, abs(skew))
    ttl = ctx.cfg.lease_ttl_ms if ctx.cfg else 2500
    if worst > ttl / 4:
        return fail(name, f"a replica's clock is {worst:.0f} ms off the primary's (over TTL/4 = {ttl / 4:.0f} ms): "
                    "after a failover leases would expire early or late", "enable NTP on every Redis host: "
                    "timedatectl set-ntp true (check with chronyc tracking)", info=info)
    if worst > HOST_SKEW_WARN_MS:
        return warn(name, f"a replica's clock is {worst:.0f} ms off the primary's", "enable NTP on every Redis "
                    "host: timedatectl set-ntp true", info)
    return ok(name, f"{len(addrs)} replica clock(s) within {worst:.0f} ms of the primary's", info)


async def _time_ms(client: Any) -> float:
    """The server's clock minus this box's at the middle of the round trip, in ms: two of these
    subtract to the skew between the two servers, whatever this box's own clock says."""
    t0 = time.time()
    sec, usec = await client.time()
    t1 = time.time()
    return int(sec) * 1000 + int(usec) / 1000 - (t0 + t1) * 500
