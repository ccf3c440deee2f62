"""6. Redis (reachable, auth, latency, version, eviction policy, AOF, clock skew), 8. leadership."""

from __future__ import annotations

from mn_node.doctor.context import Context
from mn_node.doctor.facts import RedisFacts, redis_facts, redis_now_ms, registrations
from mn_node.doctor.model import Kind, Result, fail, ok, warn
from mn_node.doctor.registry import check

LATENCY_WARN_MS = 100.0
SKEW_WARN_MS = 500.0
MIN_VERSION = (6, 2)


def _not_checked(name: str, r: RedisFacts) -> Result:
    return warn(name, f"not checked: Redis unreachable ({r.error})", "fix the redis check first")


def _version(r: RedisFacts) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in str(r.server.get("redis_version", "0")).split(".")[:2])
    except ValueError:
        return (0,)


@check("redis", 60, "Redis reachable, auth, latency, version")
async def redis(ctx: Context) -> Result:
    r = await redis_facts(ctx)
    if not r.ok:
        return fail("redis", r.error, r.fix, r.kind)
    server = str(r.server.get("redis_version", "?"))
    flavor = "valkey" if r.server.get("valkey_version") or r.server.get("server_name") == "valkey" else "redis"
    detail = f"{flavor} {server} at {r.url}: PING {r.latency_ms:.2f} ms (median of 3), auth ok"
    info = [f"run_id {r.server.get('run_id')}", f"uptime {r.server.get('uptime_in_seconds')} s",
            f"connect {r.connect_ms:.2f} ms"]
    if _version(r) < MIN_VERSION:
        return warn("redis", f"{detail}; version {server} is older than {'.'.join(map(str, MIN_VERSION))}",
                    "upgrade Redis to 6.2 or newer (Debian 12: apt install redis-server)", info)
    if r.latency_ms > LATENCY_WARN_MS:
        return warn("redis", f"{detail}: slow (over {LATENCY_WARN_MS:.0f} ms); lease renewals may miss their TTL",
                    f"put Redis closer to the nodes, or check its load: {r.cli()} --latency", info)
    return ok("redis", detail, info)


@check("redis-eviction", 61, "Redis maxmemory-policy is noeviction (an evicted lease is silent double ownership)")
async def redis_eviction(ctx: Context) -> Result:
    name = "redis-eviction"
    r = await redis_facts(ctx)
    if not r.ok:
        return _not_checked(name, r)
    policy = str(r.memory.get("maxmemory_policy", "?"))
    maxmem = int(r.memory.get("maxmemory", 0) or 0)
    if policy != "noeviction":
        limit = f"maxmemory {maxmem} bytes" if maxmem else "no maxmemory set yet"
        return fail(name, f"maxmemory-policy is {policy} ({limit}): under memory pressure Redis may evict lease and "
                    "job keys, and two nodes would then own the same job",
                    f"{r.cli()} CONFIG SET maxmemory-policy noeviction && {r.cli()} CONFIG REWRITE "
                    "(and set maxmemory-policy noeviction in /etc/redis/redis.conf)")
    return ok(name, "maxmemory-policy noeviction" + (f", maxmemory {maxmem} bytes" if maxmem else ""))


@check("redis-persistence", 62, "Redis persistence: AOF on and writing")
async def redis_persistence(ctx: Context) -> Result:
    name = "redis-persistence"
    r = await redis_facts(ctx)
    if not r.ok:
        return _not_checked(name, r)
    p = r.persistence
    if str(p.get("aof_last_write_status", "ok")) != "ok" or str(p.get("aof_last_bgrewrite_status", "ok")) != "ok":
        return fail(name, f"AOF is failing: last write {p.get('aof_last_write_status')}, last rewrite "
                    f"{p.get('aof_last_bgrewrite_status')}: Redis refuses writes or loses them",
                    "check the Redis log and free disk space (df -h /var/lib/redis)")
    if int(p.get("aof_enabled", 0) or 0) != 1:
        return warn(name, "AOF is off: a Redis restart loses leases, job state and results since the last "
                    "snapshot", f"{r.cli()} CONFIG SET appendonly yes && {r.cli()} CONFIG REWRITE")
    return ok(name, f"AOF on (last write {p.get('aof_last_write_status')}"
                    f"{', rewrite in progress' if int(p.get('aof_rewrite_in_progress', 0) or 0) else ''})")


@check("clock-skew", 63, "clock skew between this box and Redis TIME")
async def clock_skew(ctx: Context) -> Result:
    name = "clock-skew"
    r = await redis_facts(ctx)
    if not r.ok:
        return _not_checked(name, r)
    skew = r.skew_ms
    detail = f"this box is {abs(skew):.0f} ms {'ahead of' if skew >= 0 else 'behind'} Redis"
    if abs(skew) > SKEW_WARN_MS:
        return warn(name, detail + ": event times and 'last seen' ages will be off (leases use Redis TTLs, so "
                    "they stay safe)", "enable NTP on every box and the Redis host: timedatectl set-ntp true "
                    "(check with chronyc tracking)")
    return ok(name, detail)


@check("leadership", 80, "leadership: current leader, epoch, TTL left; no leader for longer than a TTL")
async def leadership(ctx: Context) -> Result:
    name = "leadership"
    r = await redis_facts(ctx)
    if not r.ok:
        return _not_checked(name, r)
    ttl_ms = ctx.cfg.lease_ttl_ms if ctx.cfg else 2500
    key = ctx.key("lease", "cluster", "leader")
    pipe = r.client.pipeline(transaction=False)
    pipe.get(key)
    pipe.pttl(key)
    pipe.hgetall(ctx.key("leader", "beat"))
    token, pttl, beat = await pipe.execute()
    regs = await registrations(ctx) or {}
    if token:
        parts = str(token).split("|")
        node, inc, epoch = ([*parts, "", "", ""])[:3]
        detail = f"{node} leads (epoch {epoch}, TTL left {int(pttl)} ms of {ttl_ms})"
        reg = regs.get(node)
        if reg is None:
            return warn(name, f"{detail}, but {node} has no registration: it may be gone; the lease expires in "
                        f"{int(pttl)} ms", f"if it stays so, check {node} (mn doctor there)")
        if reg.get("incarnation") and inc and reg.get("incarnation") != inc:
            return warn(name, f"{detail}, held by incarnation {inc} while {node} now runs incarnation "
                        f"{reg.get('incarnation')}: a restarted node's old lease, expiring", "none: it hands over "
                        "within one TTL; if not, check the nodes reach Redis")
        return ok(name, detail)
    now = await redis_now_ms(ctx)
    last = float(beat.get("at_ms", "0") or 0) if beat else 0.0
    if last:
        gap_ms = now - last
        if gap_ms > ttl_ms:
            return fail(name, f"no leader for {gap_ms / 1000:.1f}s (over one lease TTL, {ttl_ms} ms); last leader "
                        f"{beat.get('node')} (epoch {beat.get('epoch')}); {len(regs)} node(s) registered",
                        "check that the nodes reach Redis (mn doctor on each) and their logs: journalctl -u "
                        "mirror-neuron -n 50", Kind.UNAVAILABLE)
        return warn(name, f"no leader right now; the last one ({beat.get('node')}) beat {gap_ms:.0f} ms ago: an "
                    "election is in progress", "rerun in a few seconds: mn doctor --check leadership")
    if regs:
        return fail(name, f"no leader has been elected in namespace {ctx.namespace!r} although {len(regs)} node(s) "
                    "are registered", "check the nodes' logs: journalctl -u mirror-neuron -n 50")
    return warn(name, f"no leader and no registered node in namespace {ctx.namespace!r}: the cluster is not running "
                "(or uses another MIRROR_NEURON_REDIS_NAMESPACE)", "start the nodes: systemctl start mirror-neuron")
