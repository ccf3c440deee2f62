"""Shared facts, each gathered once per run (see :meth:`Context.once`)."""

from __future__ import annotations

import ipaddress
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from mn_node.config import (
    DEFAULT_API_PORT,
    DEFAULT_REDIS_PORT,
    NodeAddr,
    is_sentinel_url,
    parse_env_file,
    parse_sentinel_url,
    redact_url,
)
from mn_node.doctor.context import Context
from mn_node.doctor.model import Kind
from mn_node.doctor.probes import (
    HandshakeFailed,
    HttpReply,
    ProbeError,
    close_writer,
    handshake,
    http_get,
    in_thread,
    resolve,
    tcp_connect,
)
from mn_node.errors import MirrorNeuronError
from mn_node.link.crypto import Identity
from mn_node.ports import PortHolder

# ---- Redis ----------------------------------------------------------------------------------


@dataclass
class RedisFacts:
    url: str  # redacted
    ok: bool
    error: str = ""
    kind: Kind = Kind.UNAVAILABLE
    fix: str = ""
    client: Any = None
    host: str = ""
    port: int = 0
    has_password: bool = False
    latency_ms: float = 0.0
    connect_ms: float = 0.0
    server: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    persistence: dict[str, Any] = field(default_factory=dict)
    time_ms: float = 0.0  # Redis TIME
    skew_ms: float = 0.0  # local clock minus Redis clock (RTT-compensated)
    sentinel: Any = None  # redis.asyncio.sentinel.Sentinel for a redis+sentinel:// URL
    master_name: str = ""
    password: str | None = field(default=None, repr=False)  # the data nodes' (to reach the replicas)

    def cli(self) -> str:
        """A copy-pasteable redis-cli prefix for this server (never with the password)."""
        if not self.host:
            return "redis-cli"
        auth = " --askpass" if self.has_password else ""
        return f"redis-cli -h {self.host} -p {self.port}{auth}"


def _redis_error(e: BaseException) -> tuple[str, Kind]:
    name = type(e).__name__
    text = (str(e) or name).splitlines()[0][:200]
    if "Authentication" in name or "NOAUTH" in text or "WRONGPASS" in text or "invalid password" in text:
        return "authentication failed (wrong or missing password)", Kind.CONFIG
    if "Timeout" in name or isinstance(e, TimeoutError):
        return "timed out", Kind.TIMEOUT
    return text, Kind.UNAVAILABLE


async def redis_facts(ctx: Context) -> RedisFacts:
    return await ctx.once("redis", lambda: _probe_redis(ctx))


async def _tcp_stage(facts: RedisFacts, url: str, st: float, envf: str) -> bool:
    """TCP to a redis:// host, to tell "nothing there" from "filtered" from "not answering".

    Fills host/port/password flag; on failure, the error, its kind and the fix. True if it connected."""
    parts = urlsplit(url)
    facts.host = parts.hostname or "127.0.0.1"
    try:
        facts.port = parts.port or DEFAULT_REDIS_PORT
    except ValueError:
        facts.port = DEFAULT_REDIS_PORT
    facts.has_password = bool(parts.password)
    try:
        addr = await resolve(facts.host, st)
        _r, w, facts.connect_ms = await tcp_connect(addr, facts.port, st)
        await close_writer(w)
        return True
    except ProbeError as e:
        facts.error = str(e)
        if e.how == "refused":
            facts.error = f"nothing listens at {facts.host}:{facts.port} (connection refused): Redis is down"
            facts.fix = (f"start Redis on {facts.host} (systemctl start redis-server) or correct "
                         f"MIRROR_NEURON_REDIS_URL in {envf}")
        elif e.how == "timeout":
            facts.kind = Kind.TIMEOUT
            facts.error = (f"TCP to {facts.host}:{facts.port} timed out after {st:.1f}s: packets are dropped "
                           "(firewall) or the host is down")
            facts.fix = (f"on {facts.host}: allow TCP {facts.port} from this box (nft list ruleset; "
                         "ufw status), and check the host is up")
        elif e.how == "resolve":
            facts.kind = Kind.CONFIG
            facts.fix = f"use a resolvable host or an IP address in MIRROR_NEURON_REDIS_URL ({envf})"
        else:
            facts.fix = f"check the network path to {facts.host}:{facts.port} (ip route get {facts.host})"
        return False


async def _query_stage(client: Any, facts: RedisFacts) -> None:
    """PING (median of 3), INFO server/memory/persistence, TIME and the clock skew."""
    pings = []
    for _ in range(3):
        t0 = time.monotonic()
        await client.ping()
        pings.append((time.monotonic() - t0) * 1000)
    facts.latency_ms = statistics.median(pings)
    facts.server = await client.info("server")
    facts.memory = await client.info("memory")
    facts.persistence = await client.info("persistence")
    t0 = time.time()
    sec, usec = await client.time()
    t1 = time.time()
    facts.time_ms = int(sec) * 1000 + int(usec) / 1000
    facts.skew_ms = (t0 + t1) / 2 * 1000 - facts.time_ms


def _query_failed(facts: RedisFacts, e: BaseException, st: float, envf: str) -> None:
    why, kind = _redis_error(e)
    facts.kind = kind
    shown = facts.url
    if kind is Kind.CONFIG:
        facts.error = f"Redis at {shown} refused us: {why}"
        facts.fix = f"put the right password in MIRROR_NEURON_REDIS_URL (redis://:PASSWORD@HOST:PORT/0) in {envf}"
    elif kind is Kind.TIMEOUT:
        facts.error = (f"Redis at {shown} accepted the connection but did not answer within {st:.1f}s: "
                       "it is paused (SIGSTOP), overloaded or blocked by a slow command")
        facts.fix = f"on the Redis host: {facts.cli()} --latency; systemctl status redis-server; check its log"
    else:
        facts.error = f"Redis at {shown}: {why}"
        facts.fix = f"check Redis with: {facts.cli()} ping"


async def _probe_redis(ctx: Context) -> RedisFacts:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    url = ctx.redis_url
    envf = ctx.env_file_hint
    if not url:
        return RedisFacts("(unset)", False, "MIRROR_NEURON_REDIS_URL is not set",
                          Kind.CONFIG, f"set MIRROR_NEURON_REDIS_URL=redis://HOST:6379/0 in {envf}")
    facts = RedisFacts(redact_url(url), False)
    st = ctx.stage
    kw: dict[str, Any] = {"socket_connect_timeout": st, "socket_timeout": st, "decode_responses": True,
                          "retry": Retry(NoBackoff(), 0), "health_check_interval": 0}
    if is_sentinel_url(url):
        if not await _sentinel_stage(ctx, facts, url, kw):
            return facts
        client = facts.sentinel.master_for(facts.master_name, redis_class=aioredis.Redis, password=facts.password,
                                           db=parse_sentinel_url(url).db, **kw)
    else:
        if urlsplit(url).scheme in ("redis", "rediss") and not await _tcp_stage(facts, url, st, envf):
            return facts
        facts.password = urlsplit(url).password
        client = aioredis.Redis.from_url(url, **kw)
    facts.client = client
    ctx.on_close(client.aclose)
    try:
        await _query_stage(client, facts)
    except Exception as e:
        _query_failed(facts, e, st, envf)
        return facts
    facts.ok = True
    return facts


async def _sentinel_stage(ctx: Context, facts: RedisFacts, url: str, kw: dict[str, Any]) -> bool:
    """Ask the Sentinels for the primary; fills host/port. False (with the error) if none names one."""
    from redis.asyncio.sentinel import MasterNotFoundError, Sentinel

    su = parse_sentinel_url(url)
    facts.master_name, facts.password, facts.has_password = su.master, su.password, bool(su.password)
    facts.sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(su.sentinels), sentinel_kwargs={**kw, "password": ctx.redis_sentinel_password})
    ctx.on_close(facts.sentinel.aclose)
    try:
        host, port = await facts.sentinel.discover_master(su.master)
    except MasterNotFoundError as e:
        known = await _sentinels_knowing(facts.sentinel, su.master)
        if known == 0:
            facts.kind = Kind.CONFIG
            facts.error = f"no reachable Sentinel of {facts.url} monitors a master named {su.master!r}"
            facts.fix = ("use the name given to `sentinel monitor` in MIRROR_NEURON_REDIS_URL "
                         "(redis-cli -p 26379 SENTINEL MASTERS lists them)")
        else:
            facts.error = f"no Sentinel of {facts.url} names a healthy primary for {su.master!r}: {_redis_error(e)[0]}"
            facts.fix = ("check the Sentinels and the Redis hosts: systemctl status redis-sentinel redis-server; "
                         "redis-cli -p 26379 SENTINEL MASTERS")
        return False
    facts.host, facts.port = str(host), int(port)
    return True


async def _sentinels_knowing(sentinel: Any, master: str) -> int | None:
    """How many Sentinels know ``master`` (0: all that answered deny it; None: none answered)."""
    from redis.exceptions import RedisError, ResponseError

    answered, known = 0, 0
    for s in sentinel.sentinels:
        try:
            await s.sentinel_master(master)
            answered, known = answered + 1, known + 1
        except ResponseError:
            answered += 1
        except (RedisError, OSError, TimeoutError):
            continue
    return known if answered else None


async def registrations(ctx: Context) -> dict[str, dict[str, str]] | None:
    """Every node registration in this namespace, or None when Redis is unavailable."""

    async def read() -> dict[str, dict[str, str]] | None:
        r = await redis_facts(ctx)
        if not r.ok:
            return None
        out: dict[str, dict[str, str]] = {}
        try:
            keys = [k async for k in r.client.scan_iter(match=ctx.key("node", "*"), count=500)]
            if keys:
                pipe = r.client.pipeline(transaction=False)
                for k in keys:
                    pipe.hgetall(k)
                for reg in await pipe.execute():
                    if reg and reg.get("name"):
                        out[reg["name"]] = reg
        except Exception:  # Redis went away between the probe and now
            return None
        return out

    return await ctx.once("registrations", read)


async def redis_now_ms(ctx: Context) -> float:
    """Redis's clock now (ms), from the TIME read at probe time plus elapsed monotonic time."""
    r = await redis_facts(ctx)
    return time.time() * 1000 - r.skew_ms if r.ok else time.time() * 1000


# ---- the local node's API -----------------------------------------------------------------


@dataclass
class ApiFacts:
    base: str
    reply: HttpReply | None = None
    error: ProbeError | None = None
    nodes: list[dict[str, Any]] | None = None

    @property
    def is_mn(self) -> bool:
        return bool(self.reply and isinstance(self.reply.body, dict) and "incarnation" in self.reply.body)

    @property
    def health(self) -> dict[str, Any]:
        if self.reply and isinstance(self.reply.body, dict):
            return self.reply.body
        return {}


async def local_api(ctx: Context) -> ApiFacts:
    async def probe() -> ApiFacts:
        assert ctx.api is not None
        f = ApiFacts(ctx.api.base)
        try:
            f.reply = await http_get(ctx.api.host, ctx.api.port, "/api/v1/health", ctx.stage, ctx.api.ssl)
        except ProbeError as e:
            f.error = e
            return f
        if f.is_mn:
            try:
                nodes = await http_get(ctx.api.host, ctx.api.port, "/api/v1/nodes", ctx.stage, ctx.api.ssl)
                if isinstance(nodes.body, dict) and isinstance(nodes.body.get("nodes"), list):
                    f.nodes = nodes.body["nodes"]
            except ProbeError:
                pass
        return f

    return await ctx.once("local_api", probe)


# ---- peers ----------------------------------------------------------------------------------


@dataclass
class PeerProbe:
    node: NodeAddr
    stage: str = "resolve"  # the stage reached: resolve, tcp, handshake, app, ok
    how: str = ""  # how the failing stage failed (refused, timeout, auth, ...)
    message: str = ""
    addr: str = ""
    tcp_ms: float | None = None
    hs_ms: float | None = None
    peer_cookie_hash: str | None = None
    found_node: str = ""
    health: dict[str, Any] | None = None
    health_note: str = ""

    @property
    def linked(self) -> bool:
        """The peer's mn-node proved it knows our cookie (reachable at the link level)."""
        return self.stage in ("app", "ok")


async def peer_probe(ctx: Context, node: NodeAddr) -> PeerProbe:
    return await ctx.once(f"peer:{node.name}", lambda: _probe_peer(ctx, node))


async def _probe_peer(ctx: Context, node: NodeAddr) -> PeerProbe:
    assert ctx.cfg is not None
    p = PeerProbe(node)
    st = ctx.stage
    try:
        p.addr = await resolve(node.host, st)
    except ProbeError as e:
        p.how, p.message = e.how, str(e)
        return p
    p.stage = "tcp"
    try:
        reader, writer, p.tcp_ms = await tcp_connect(p.addr, node.port, st)
    except ProbeError as e:
        p.how, p.message = e.how, str(e)
        return p
    p.stage = "handshake"
    try:
        ident = Identity(ctx.cfg.cookie, f"doctor:{ctx.cfg.name}", f"doctor{int(time.time() * 1000):x}")
        hs = await handshake(reader, writer, ident, st)
    except HandshakeFailed as e:
        p.how, p.message, p.peer_cookie_hash = e.how, str(e), e.peer_cookie_hash
        return p
    finally:
        await close_writer(writer)
    p.hs_ms = hs.ms
    p.found_node = hs.peer_node
    p.stage = "app"
    await _peer_app(ctx, p)
    return p


async def _peer_app(ctx: Context, p: PeerProbe) -> None:
    """Stage 4: is the peer's application healthy? Its API when reachable from here, else its
    registration's freshness in Redis."""
    regs = await registrations(ctx)
    reg = (regs or {}).get(p.node.name)
    api = reg.get("api", "") if reg else ""
    host, _, port_s = api.rpartition(":")
    host = host.strip("[]")
    if not host or not port_s.isdigit():
        host, port_s = p.node.host, str(ctx.cfg.api_port if ctx.cfg else DEFAULT_API_PORT)
    if host in ("0.0.0.0", "::", ""):
        host = p.addr
    loopback_only = host.startswith("127.") or host == "::1"
    if loopback_only and not p.addr.startswith("127.") and p.addr != "::1":
        p.health_note = f"its API is bound to {host} (loopback), so only its registration can be checked"
    else:
        try:
            reply = await http_get(host, int(port_s), "/api/v1/health", ctx.stage)
            if isinstance(reply.body, dict) and "status" in reply.body:
                p.health = reply.body
            else:
                p.health_note = f"its API at {host}:{port_s} answered HTTP {reply.status}, not mn-node health"
        except ProbeError as e:
            p.health_note = f"its API at {host}:{port_s} did not answer ({e})"
    if p.health is not None:
        if p.health.get("status") != "ok":
            reasons = "; ".join(str(x) for x in p.health.get("reasons") or []) or "unhealthy"
            p.how, p.message = "unhealthy", reasons
            return
        p.stage = "ok"
        return
    if regs is None:
        p.stage = "ok"  # nothing more we can learn; the link proof is the best evidence
        return
    if reg is None:
        p.how, p.message = "unregistered", "it has no registration in Redis (it cannot reach Redis, or uses " \
                                           "another Redis URL or namespace)"
        return
    now = await redis_now_ms(ctx)
    age = now - float(reg.get("refreshed_ms", "0") or 0)
    limit = 3 * (ctx.cfg.renew_interval_ms if ctx.cfg else 500) + 1000
    if age > limit:
        p.how, p.message = "stale", f"its registration was last refreshed {age / 1000:.1f}s ago (hung, or cut off " \
                                    "from Redis)"
        return
    p.stage = "ok"


# ---- local processes and ports -------------------------------------------------------------


@dataclass
class ProcInfo:
    pid: int
    node: str  # node name from its environment / env file; "" when unknown
    cmdline: str
    status: str
    create_time: float
    user: str

    def describe(self) -> str:
        state = "" if self.status in ("running", "sleeping", "disk-sleep", "idle") else f", {self.status}"
        started = time.strftime("%H:%M:%S", time.localtime(self.create_time))
        return f"pid {self.pid} ({self.cmdline[:80]}; user {self.user}; started {started}{state})"


def _is_daemon_cmd(cmd: list[str]) -> bool:
    text = " ".join(cmd)
    if "doctor" in cmd or "check-config" in cmd:
        return False
    if "mn_node.daemon" in text:
        return True
    return any(Path(a).name == "mn-node" for a in cmd[:3])


def _pids() -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]


def _cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _scan_processes() -> list[ProcInfo]:
    """mn-node daemons, from a raw /proc walk (psutil only for the few that match: a full
    psutil.process_iter costs seconds on a loaded box)."""
    out: list[ProcInfo] = []
    me = os.getpid()
    for pid in _pids():
        if pid == me:
            continue
        cmd = _cmdline(pid)
        if not cmd or not _is_daemon_cmd(cmd):
            continue
        try:
            proc = psutil.Process(pid)
            status = proc.status()
            if status == psutil.STATUS_ZOMBIE:
                continue
            node = ""
            try:
                node = proc.environ().get("MIRROR_NEURON_NODE_NAME", "")
            except (psutil.AccessDenied, psutil.NoSuchProcess):
                pass
            if "--env-file" in cmd:
                i = cmd.index("--env-file")
                if i + 1 < len(cmd):
                    try:
                        node = parse_env_file(Path(cmd[i + 1])).get("MIRROR_NEURON_NODE_NAME", node)
                    except MirrorNeuronError:
                        pass
            out.append(ProcInfo(pid, node.strip(), " ".join(cmd), str(status), proc.create_time(),
                                proc.username()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, KeyError):
            continue
    return out


async def processes(ctx: Context) -> list[ProcInfo]:
    """mn-node daemons running on this box (not doctor, not check-config)."""
    return await ctx.once("processes", lambda: in_thread(_scan_processes))


def _hex_addr(h: str) -> str:
    raw = bytes.fromhex(h)
    # /proc/net/tcp{,6} print each 32-bit word in host (little-endian) order
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return str(ipaddress.IPv4Address(words))
    v6 = ipaddress.IPv6Address(words)
    return str(v6.ipv4_mapped) if v6.ipv4_mapped else str(v6)


def _listening() -> list[tuple[str, int, int]]:
    """(ip, port, socket inode) of every listening TCP socket in this network namespace."""
    out: list[tuple[str, int, int]] = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != "0A":  # 0A = LISTEN
                continue
            ip_hex, port_hex = parts[1].split(":")
            out.append((_hex_addr(ip_hex), int(port_hex, 16), int(parts[9])))
    return out


def _pid_of_inode(inode: int, first: list[int]) -> int | None:
    """The process holding socket ``inode``: look at ``first`` (the mn-node pids), then everyone."""
    target = f"socket:[{inode}]"
    seen: set[int] = set()
    for group in (first, _pids()):
        for pid in group:
            if pid in seen:
                continue
            seen.add(pid)
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
                except OSError:
                    continue
    return None


def _holders(snapshot: list[tuple[str, int, int]], port: int, host: str, first: list[int]) -> list[PortHolder]:
    wild = ("", "0.0.0.0", "::")
    out: list[PortHolder] = []
    for ip, p, inode in snapshot:
        if p != port or not (host in wild or ip in (host, "0.0.0.0", "::")):
            continue
        pid = _pid_of_inode(inode, first)
        cmd = ""
        if pid is not None:
            cmd = " ".join(_cmdline(pid) or []) or "?"
        out.append(PortHolder(pid, cmd[:200], f"{ip}:{p}"))
    return out


async def port_holders(ctx: Context, port: int, host: str) -> list[PortHolder]:
    """Who listens on ``host:port`` (or a wildcard address) on this box (see mn_node.ports)."""
    snapshot = await ctx.once("listening", lambda: in_thread(_listening))
    first = [p.pid for p in await processes(ctx)]
    return await ctx.once(f"port:{host}:{port}", lambda: in_thread(_holders, snapshot, port, host, first))
