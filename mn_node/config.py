"""Configuration from environment variables and an optional env file (README, Configuration).

Every problem is a :class:`ConfigError` whose message is one line naming the variable,
the bad value (never the cookie) and the fix; the daemon exits 78 on it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from mn_node.errors import ConfigError

ENV_PREFIX = "MIRROR_NEURON_"
# MIRROR_NEURON_REDIS_MIN_ACKS=all (the default with a Sentinel URL): every replica the Sentinels know of
ACKS_ALL = -1


def acks_label(min_acks: int) -> int | str:
    """MIN_ACKS as shown to people: ``all`` or the number."""
    return "all" if min_acks == ACKS_ALL else min_acks

DEFAULT_DIST_PORT = 4370
DEFAULT_API_PORT = 4000
DEFAULT_REDIS_PORT = 6379
DEFAULT_ENV_FILE = "/etc/mirror-neuron/mirror-neuron.env"
ORIGINAL_DEFAULT_COOKIE = b"mirrorneuron"
MIN_COOKIE_BYTES = 32
DISCOVERY_SOURCES = frozenset({"static", "mdns"})
DEFAULT_STATE_DIR = Path("/var/lib/mirror-neuron")  # the unit's StateDirectory=
DEFAULT_COMMAND_TIMEOUT_S = 3600.0  # MIRROR_NEURON_COMMAND_TIMEOUT, per command try

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


@dataclass(frozen=True, order=True)
class NodeAddr:
    """One cluster member: its name ``short@host`` and where its link listener is."""

    name: str
    host: str
    port: int

    def __str__(self) -> str:
        return self.name


def cookie_hash(cookie: bytes) -> str:
    """Public identifier of a cookie (also the cluster id): safe to print and compare."""
    return hashlib.blake2b(cookie, digest_size=8, person=b"mn-cookie-id").hexdigest()


def parse_node_entry(entry: str, default_port: int, var: str) -> NodeAddr:
    """Parse ``name@host[:port]`` (IPv6 hosts in brackets)."""
    entry = entry.strip()
    fix = f"fix: write {var} entries as name@host[:port], e.g. mn1@10.0.0.1,mn2@10.0.0.2:4370"
    short, sep, rest = entry.partition("@")
    if not sep or not _NAME_RE.match(short) or not rest:
        raise ConfigError(f"{var}: entry {entry!r} is not name@host[:port]; {fix}")
    port = default_port
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket:
            raise ConfigError(f"{var}: entry {entry!r} has an unclosed '[' in its host; {fix}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{var}: entry {entry!r} has a bad IPv6 host; {fix}") from None
        if tail:
            if not tail.startswith(":"):
                raise ConfigError(f"{var}: entry {entry!r} has junk after ']'; {fix}")
            port = _parse_port(tail[1:], var, entry)
    else:
        host, colon, port_s = rest.partition(":")
        if colon:
            port = _parse_port(port_s, var, entry)
        if not _HOST_RE.match(host) or ".." in host:
            raise ConfigError(f"{var}: entry {entry!r} has a bad host {host!r}; {fix}")
    return NodeAddr(name=f"{short}@{host}", host=host, port=port)


def _parse_port(value: str, var: str, shown: str | None = None) -> int:
    shown = value if shown is None else shown
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(
            f"{var}: {shown!r} is not a port number; fix: use an integer 1-65535"
        ) from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{var}: port {port} in {shown!r} is out of range; fix: use 1-65535")
    return port


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for logs and errors).

    Works on the raw netloc, so it never raises, even on a URL with a bad port."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    netloc = f"{user}:***@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def validate_redis_url(url: str, var: str = "MIRROR_NEURON_REDIS_URL") -> str:
    fix = ("fix: use redis://[:password@]host:6379/0 (rediss:// for TLS, unix:///path.sock, "
           "redis+sentinel://[:password@]h1:26379,h2:26379,h3:26379/MASTER/0 for Sentinel)")
    shown = redact_url(url)
    if url.startswith(SENTINEL_SCHEME + "://"):
        parse_sentinel_url(url, var)
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{var}: {shown!r} is not a valid URL; {fix}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{var}: {shown!r} has scheme {parts.scheme!r}; {fix}")
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(f"{var}: {shown!r} names no socket path; {fix}")
        return url
    if not parts.hostname:
        raise ConfigError(f"{var}: {shown!r} names no host; {fix}")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"{var}: {shown!r} has port out of range; {fix}")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ConfigError(f"{var}: {shown!r} has database {db!r}, not a number; {fix}")
    return url


# ---- Redis high availability (Sentinel URL, replica acknowledgement of writes) ---------------
SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
_MASTER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class SentinelUrl:
    """``redis+sentinel://[:PASS@]h1:26379,h2:26379/MASTER/DB``: the Sentinels to ask, the
    master (service) name, the database and the data nodes' password."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    password: str | None = field(default=None, repr=False)


def is_sentinel_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str, var: str = "MIRROR_NEURON_REDIS_URL") -> SentinelUrl:
    """Parse and check a Sentinel URL; a bad one is a one-line :class:`ConfigError`."""
    shown = redact_url(url)
    fix = "fix: use redis+sentinel://[:password@]h1:26379,h2:26379,h3:26379/MASTER_NAME/0"
    rest = url[len(SENTINEL_SCHEME) + 3:]
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    password = None
    if at:
        if ":" not in userinfo:
            raise ConfigError(f"{var}: {shown!r} has a user but no password; {fix}")
        password = unquote(userinfo.split(":", 1)[1]) or None
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), str(DEFAULT_SENTINEL_PORT)
        host = host.strip("[]")
        if not host:
            raise ConfigError(f"{var}: {shown!r} names an empty Sentinel host; {fix}")
        sentinels.append((host, _parse_port(port, var, shown)))
    master, _, db = path.partition("/")
    if not master:
        raise ConfigError(f"{var}: {shown!r} names no master (service) name; {fix}")
    if not _MASTER_RE.match(master):
        raise ConfigError(f"{var}: master name {master!r} has bad characters; {fix}")
    db = db.strip("/") or "0"
    if not db.isdigit():
        raise ConfigError(f"{var}: {shown!r} has database {db!r}, not a number; {fix}")
    return SentinelUrl(tuple(sentinels), master, int(db), password)


def _redis_ha(env: Mapping[str, str], url: str | None, ttl_ms: int) -> tuple[str | None, int, int]:
    """The replication settings: Sentinel password, replica acknowledgements, their timeout.
    A Sentinel URL means replicated mode with every known replica acknowledging (ACKS_ALL)
    unless MIN_ACKS gives a number (mn_node/acks.py has why)."""
    sentinel = is_sentinel_url(url)
    raw = env.get(ENV_PREFIX + "REDIS_MIN_ACKS", "").strip().lower()
    if raw == "all" or (not raw and sentinel):
        if not sentinel:
            raise ConfigError(f"{ENV_PREFIX}REDIS_MIN_ACKS: 'all' needs a Sentinel URL (the Sentinels know every "
                              "replica); fix: use redis+sentinel://... or give a number of replicas")
        acks = ACKS_ALL
    else:
        acks = _int(env, "REDIS_MIN_ACKS", 0, 0, 16, " (or all, with a Sentinel URL)")
    timeout = _int(env, "REDIS_ACK_TIMEOUT_MS", max(10, min(ttl_ms // 4, 250)), 1, 60_000, " (milliseconds)")
    if acks and timeout * 2 >= ttl_ms:
        raise ConfigError(
            f"MIRROR_NEURON_REDIS_ACK_TIMEOUT_MS: {timeout} is not under half the lease TTL {ttl_ms}; "
            "fix: wait at most TTL/4 for a replica's acknowledgement (default min(TTL/4, 250))"
        )
    password = env.get(ENV_PREFIX + "REDIS_SENTINEL_PASSWORD", "").strip() or None
    return password, acks, timeout


def parse_env_file(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines (``#`` comments, optional ``export`` and quotes), as systemd does."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--env-file: {path} does not exist; fix: create it or pass another path") from None
    except PermissionError:
        raise ConfigError(
            f"--env-file: {path} is not readable by this user; fix: run as root or the service user"
        ) from None
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise ConfigError(f"--env-file: {path} line {lineno} is not KEY=VALUE; fix: edit that line")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def local_addresses() -> set[str]:
    """Every address configured on this machine's interfaces (plus loopback names)."""
    import psutil

    addrs = {"localhost"}
    for entries in psutil.net_if_addrs().values():
        for e in entries:
            if e.family in (socket.AF_INET, socket.AF_INET6):
                addrs.add(e.address.split("%", 1)[0])
    return addrs


def _host_is_local(host: str, local: set[str]) -> bool:
    if host in local:
        return True
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return any(str(info[4][0]) in local for info in infos)


@dataclass(frozen=True)
class Config:
    cookie: bytes = field(repr=False)
    nodes: tuple[NodeAddr, ...]
    me: NodeAddr
    redis_url: str | None
    namespace: str = "mirror_neuron"
    redis_sentinel_password: str | None = field(default=None, repr=False)
    redis_min_acks: int = 0  # replicas that must acknowledge a write (WAIT); 0: single Redis; ACKS_ALL: every one
    redis_ack_timeout_ms: int = 250
    dist_bind: str = ""
    api_bind: str = "127.0.0.1"
    api_port: int = DEFAULT_API_PORT
    api_tls: ApiTls = field(default_factory=lambda: ApiTls("", "", False))
    discovery: frozenset[str] = DISCOVERY_SOURCES
    lease_ttl_ms: int = 2500
    renew_interval_ms: int = 500
    link_tick_ms: int = 400
    link_timeout_ms: int = 1600
    executor_capacity: int = 0
    state_dir: Path = DEFAULT_STATE_DIR
    commands: bool = True
    command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S
    job_retention_ms: int = 7 * 86_400_000  # MIRROR_NEURON_JOB_RETENTION (7d)
    log_level: str = "INFO"
    log_format: str = "text"  # text | json (MIRROR_NEURON_LOG_FORMAT)
    env_file: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.me.name

    @property
    def cookie_hash(self) -> str:
        return cookie_hash(self.cookie)

    @property
    def peers(self) -> tuple[NodeAddr, ...]:
        return tuple(n for n in self.nodes if n.name != self.me.name)

    @property
    def bind_host(self) -> str:
        return self.dist_bind or self.me.host

    @property
    def api_url(self) -> str:
        scheme = "https" if self.api_tls.enabled else "http"
        host = f"[{self.api_bind}]" if ":" in self.api_bind else self.api_bind
        return f"{scheme}://{host}:{self.api_port}"

    def fingerprint(self) -> str:
        """Hash of what every box must agree on (node list, Redis URL, cookie hash)."""
        h = hashlib.blake2b(digest_size=8, person=b"mn-config-fp")
        h.update(",".join(sorted(n.name + ":" + str(n.port) for n in self.nodes)).encode())
        h.update(b"\0" + redact_url(self.redis_url or "").encode() + b"\0")
        h.update(self.cookie_hash.encode())
        return h.hexdigest()

    def effective(self) -> dict[str, object]:
        """The effective configuration, safe to print: the cookie appears only as its hash."""
        return {
            "node_name": self.me.name,
            "cookie_hash": self.cookie_hash,
            "cluster_nodes": [f"{n.name}:{n.port}" for n in self.nodes],
            "dist_bind": self.bind_host,
            "dist_port": self.me.port,
            "api_bind": self.api_bind,
            "api_port": self.api_port,
            "api_url": self.api_url,
            "api_insecure": self.api_tls.insecure,
            "redis_url": redact_url(self.redis_url) if self.redis_url else None,
            "redis_namespace": self.namespace,
            "redis_sentinel_password": "(set)" if self.redis_sentinel_password else None,
            "redis_min_acks": acks_label(self.redis_min_acks),
            "redis_ack_timeout_ms": self.redis_ack_timeout_ms,
            "discovery": sorted(self.discovery),
            "lease_ttl_ms": self.lease_ttl_ms,
            "renew_interval_ms": self.renew_interval_ms,
            "link_tick_ms": self.link_tick_ms,
            "link_timeout_ms": self.link_timeout_ms,
            "executor_capacity": self.executor_capacity,
            "state_dir": str(self.state_dir),
            "commands": "on" if self.commands else "off",
            "command_timeout_s": self.command_timeout_s,
            "log_level": self.log_level,
            "log_format": self.log_format,
            "config_fingerprint": self.fingerprint(),
            "env_file": self.env_file,
            "warnings": list(self.warnings),
        }


def _int(env: Mapping[str, str], key: str, default: int, lo: int, hi: int, unit: str = "") -> int:
    var = ENV_PREFIX + key
    raw = env.get(var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{var}: {raw!r} is not an integer; fix: set a whole number{unit}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{var}: {value} is out of range; fix: use {lo}-{hi}{unit}")
    return value


def _read_cookie(env: Mapping[str, str]) -> bytes:
    var = ENV_PREFIX + "COOKIE"
    raw = env.get(var)
    path = env.get(var + "_FILE", "").strip()
    creds = env.get("CREDENTIALS_DIRECTORY", "").strip()
    if raw is None and not path and creds and (Path(creds) / "cookie").is_file():
        path = str(Path(creds) / "cookie")
    if raw is None and path:
        try:
            data = Path(path).read_bytes().strip()
        except OSError as e:
            raise ConfigError(
                f"{var}_FILE: cannot read {path} ({e.strerror}); fix: point it at a readable file"
            ) from None
        if not data:
            raise ConfigError(f"{var}_FILE: {path} is empty; fix: write the shared cookie into it")
        return data
    if raw is None:
        raise ConfigError(
            f"{var} is not set; fix: set the same secret on every node, e.g. "
            f"{var}=$(head -c 32 /dev/urandom | base64) (or {var}_FILE=/path)"
        )
    if not raw.strip():
        raise ConfigError(f"{var} is empty; fix: set it to the cluster's shared secret (32+ random bytes)")
    return raw.strip().encode()


def _cookie_warnings(cookie: bytes) -> list[str]:
    """Warnings (not errors) about a weak cookie."""
    fix = "fix: generate one with head -c 32 /dev/urandom | base64"
    if cookie == ORIGINAL_DEFAULT_COOKIE:
        return [f"MIRROR_NEURON_COOKIE is the original's public default 'mirrorneuron'; {fix}"]
    if len(cookie) < MIN_COOKIE_BYTES:
        return [f"MIRROR_NEURON_COOKIE is {len(cookie)} bytes, under {MIN_COOKIE_BYTES}; {fix}"]
    return []


def _cluster_nodes(env: Mapping[str, str], dist_port: int) -> list[NodeAddr]:
    """MIRROR_NEURON_CLUSTER_NODES: each name once, each host:port once."""
    var = ENV_PREFIX + "CLUSTER_NODES"
    nodes: list[NodeAddr] = []
    for entry in env.get(var, "").split(","):
        if not entry.strip():
            continue
        addr = parse_node_entry(entry, dist_port, var)
        if any(n.name == addr.name for n in nodes):
            raise ConfigError(f"{var}: node {addr.name} is listed twice; fix: list each node once")
        clash = next((n for n in nodes if (n.host, n.port) == (addr.host, addr.port)), None)
        if clash:
            raise ConfigError(
                f"{var}: {clash.name} and {addr.name} both use {addr.host}:{addr.port}; "
                "fix: give each node on one host its own port (name@host:port)"
            )
        nodes.append(addr)
    return nodes


def _own_node(env: Mapping[str, str], nodes: list[NodeAddr], dist_port: int) -> NodeAddr:
    """This node: MIRROR_NEURON_NODE_NAME (added to ``nodes`` if unlisted), else the one local entry."""
    var_name, var_nodes = ENV_PREFIX + "NODE_NAME", ENV_PREFIX + "CLUSTER_NODES"
    own = env.get(var_name, "").strip()
    if own:
        me = parse_node_entry(own, dist_port, var_name)
        listed = next((n for n in nodes if n.name == me.name), None)
        if listed is None:
            nodes.append(me)
            return me
        if ":" in own.rsplit("]", 1)[-1].partition("@")[2] and listed.port != me.port:
            raise ConfigError(
                f"{var_name}: port {me.port} differs from {listed.port} in {var_nodes}; fix: make them agree"
            )
        return listed
    local = local_addresses()
    mine = [n for n in nodes if _host_is_local(n.host, local)]
    if not mine:
        shown = ",".join(n.name for n in nodes) or "(empty)"
        raise ConfigError(
            f"{var_name} is not set and no entry of {var_nodes} ({shown}) is an address of "
            f"this machine; fix: set {var_name}=name@<this box's address>"
        )
    if len(mine) > 1:
        raise ConfigError(
            f"{var_name} is not set and several entries are local "
            f"({', '.join(n.name for n in mine)}); fix: set {var_name} to one of them"
        )
    return mine[0]


def _redis_url(env: Mapping[str, str], require: bool) -> str | None:
    url = env.get(ENV_PREFIX + "REDIS_URL", "").strip() or None
    if url is not None:
        return validate_redis_url(url)
    if require:
        raise ConfigError(
            "MIRROR_NEURON_REDIS_URL is not set; fix: set it to the shared Redis, "
            "e.g. redis://:password@10.0.0.1:6379/0"
        )
    return None


def _discovery(env: Mapping[str, str]) -> frozenset[str]:
    var = ENV_PREFIX + "DISCOVERY"
    raw = env.get(var, "static,mdns").strip()
    sources = frozenset(s.strip() for s in raw.split(",") if s.strip())
    if sources == frozenset({"none"}):
        return frozenset()
    unknown = sources - DISCOVERY_SOURCES
    if unknown:
        raise ConfigError(
            f"{var}: unknown source {sorted(unknown)[0]!r}; fix: use a comma list of static, mdns (or none)"
        )
    return sources


def _namespace(env: Mapping[str, str]) -> str:
    namespace = env.get(ENV_PREFIX + "REDIS_NAMESPACE", "").strip() or "mirror_neuron"
    if not re.match(r"^[A-Za-z0-9_.:-]{1,64}$", namespace):
        raise ConfigError(
            f"MIRROR_NEURON_REDIS_NAMESPACE: {namespace!r} has bad characters; fix: use letters, digits, _ . : -"
        )
    return namespace


def _timings(env: Mapping[str, str]) -> tuple[int, int, int, int]:
    """(lease TTL, renew interval, link tick, link timeout) in ms, checked against each other.
    Each ``*_MS`` variable takes a bare number of milliseconds (as before) or a duration
    (``2500ms``, ``2.5s``)."""
    ttl = _ms(env, "LEASE_TTL_MS", 2500, 300, 600_000)
    renew = _ms(env, "RENEW_INTERVAL_MS", max(100, ttl // 5), 50, 600_000)
    if renew * 2 >= ttl:
        raise ConfigError(
            f"MIRROR_NEURON_RENEW_INTERVAL_MS: {renew} is not under half the lease TTL {ttl}; "
            "fix: renew at most every TTL/3 (default TTL/5)"
        )
    tick = _ms(env, "LINK_TICK_MS", 400, 50, 60_000)
    timeout = _ms(env, "LINK_TIMEOUT_MS", tick * 4, 100, 600_000)
    if timeout < 2 * tick:
        raise ConfigError(
            f"MIRROR_NEURON_LINK_TIMEOUT_MS: {timeout} is under two ticks ({2 * tick}); "
            "fix: allow at least 2 missed keepalive ticks"
        )
    return ttl, renew, tick, timeout


# ---- durations: 500ms, 90s, 15m, 2h, 7d ------------------------------------------------------
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(raw: str, var: str, *, bare_unit: str = "s") -> float:
    """Seconds from ``500ms``, ``90s``, ``15m``, ``2h`` or ``7d``. A bare number is in
    ``bare_unit``: seconds for the duration variables, milliseconds for an ``*_MS`` one (its
    old form keeps its meaning)."""
    m = _DURATION.match(raw.strip().lower())
    if m is None or float(m.group(1)) <= 0:
        raise ConfigError(f"{var}: {raw!r} is not a positive duration; "
                          "fix: write it like 90s, 15m or 2h (units ms, s, m, h, d)")
    return float(m.group(1)) * _UNIT_S[m.group(2) or bare_unit]


def _ms(env: Mapping[str, str], key: str, default: int, lo: int, hi: int) -> int:
    """An ``*_MS`` variable in whole milliseconds: a bare number (milliseconds, the old form)
    or a duration (``2500ms``, ``2.5s``, ``1m``)."""
    var = ENV_PREFIX + key
    raw = env.get(var, "").strip()
    if not raw:
        return default
    value = round(parse_duration(raw, var, bare_unit="ms") * 1000)
    if not lo <= value <= hi:
        raise ConfigError(f"{var}: {raw} ({value} ms) is out of range; fix: use {lo}-{hi} ms")
    return value


# ---- MIRROR_NEURON_JOB_RETENTION ----------------------------------------------------------
DEFAULT_JOB_RETENTION = "7d"
DEFAULT_JOB_RETENTION_MS = 7 * 86_400_000


def parse_span_ms(raw: str, var: str) -> int:
    """Milliseconds from a duration (``7d``, ``12h``, ``500ms``; a bare number is seconds)."""
    return int(parse_duration(raw, var) * 1000)


def job_retention_ms(env: Mapping[str, str]) -> int:
    """How long a terminal job's keys stay in Redis: ``MIRROR_NEURON_JOB_RETENTION``, a duration
    (``7d``, ``12h``, ``90s``; default 7d, at least 1 s)."""
    var = ENV_PREFIX + "JOB_RETENTION"
    raw = env.get(var, "").strip() or DEFAULT_JOB_RETENTION
    ms = parse_span_ms(raw, var)
    if ms < 1000:
        raise ConfigError(f"{var}: {raw!r} is under 1s; fix: keep terminal jobs at least 1s, e.g. 7d")
    return ms


def _state_dir(env: Mapping[str, str]) -> Path:
    """MIRROR_NEURON_STATE_DIR, else systemd's $STATE_DIRECTORY, else /var/lib/mirror-neuron when this
    user may write there, else ~/.local/state/mirror-neuron."""
    raw = env.get(ENV_PREFIX + "STATE_DIR", "").strip() or env.get("STATE_DIRECTORY", "").split(":")[0].strip()
    if raw:
        path = Path(raw)
        if not path.is_absolute():
            raise ConfigError(f"MIRROR_NEURON_STATE_DIR: {raw!r} is not absolute; fix: e.g. /var/lib/mirror-neuron")
        return path
    probe = DEFAULT_STATE_DIR if DEFAULT_STATE_DIR.exists() else DEFAULT_STATE_DIR.parent
    if os.access(probe, os.W_OK):
        return DEFAULT_STATE_DIR
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / "mirror-neuron"


def _commands(env: Mapping[str, str]) -> tuple[bool, float]:
    """(command agents allowed on this node, default timeout of one command try in seconds)."""
    raw = env.get(ENV_PREFIX + "COMMANDS", "").strip().lower() or "on"
    if raw not in ("on", "off"):
        raise ConfigError(f"MIRROR_NEURON_COMMANDS: {raw!r} is not on or off; fix: set on (default) or off")
    timeout_raw = env.get(ENV_PREFIX + "COMMAND_TIMEOUT", "").strip()
    timeout = parse_duration(timeout_raw, ENV_PREFIX + "COMMAND_TIMEOUT") if timeout_raw else DEFAULT_COMMAND_TIMEOUT_S
    return raw == "on", timeout


def _log_level(env: Mapping[str, str]) -> str:
    level = env.get(ENV_PREFIX + "LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(
            f"MIRROR_NEURON_LOG_LEVEL: {level!r} is unknown; fix: use DEBUG, INFO, WARNING or ERROR"
        )
    return level


def _log_format(env: Mapping[str, str]) -> str:
    fmt = env.get(ENV_PREFIX + "LOG_FORMAT", "").strip().lower() or "text"
    if fmt not in ("text", "json"):
        raise ConfigError(f"MIRROR_NEURON_LOG_FORMAT: {fmt!r} is unknown; fix: use text (default) or json")
    return fmt


# ---- API transport: HTTPS beyond loopback ----------------------------------------------------
API_TLS_CERT_VAR = ENV_PREFIX + "API_TLS_CERT"
API_TLS_KEY_VAR = ENV_PREFIX + "API_TLS_KEY"
API_INSECURE_VAR = ENV_PREFIX + "API_INSECURE"
API_CA_VAR = ENV_PREFIX + "API_CA"  # read by the clients (mn, mn-tui): a private CA to trust


@dataclass(frozen=True)
class ApiTls:
    """How the API serves: ``cert``/``key`` paths (PEM) for HTTPS, or plain HTTP. ``insecure``:
    the operator allowed plain HTTP beyond loopback (MIRROR_NEURON_API_INSECURE=1)."""

    cert: str
    key: str
    insecure: bool

    @property
    def enabled(self) -> bool:
        return bool(self.cert)


def is_loopback_bind(host: str) -> bool:
    """True when ``host`` (an address or a name) only ever means this machine's loopback."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def _api_tls(env: Mapping[str, str], api_bind: str) -> tuple[ApiTls, list[str]]:
    """The API's TLS settings; refuses plain HTTP beyond loopback unless explicitly allowed."""
    cert = env.get(API_TLS_CERT_VAR, "").strip()
    key = env.get(API_TLS_KEY_VAR, "").strip()
    raw_insecure = env.get(API_INSECURE_VAR, "").strip().lower()
    if raw_insecure not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ConfigError(f"{API_INSECURE_VAR}: {raw_insecure!r} is not 0 or 1; fix: set it to 1 or leave it unset")
    insecure = raw_insecure in ("1", "true", "yes")
    if bool(cert) != bool(key):
        missing = API_TLS_KEY_VAR if cert else API_TLS_CERT_VAR
        raise ConfigError(f"{missing}: not set while {API_TLS_CERT_VAR if cert else API_TLS_KEY_VAR} is; "
                          "fix: set both (PEM certificate and its private key) or neither")
    for var, path in ((API_TLS_CERT_VAR, cert), (API_TLS_KEY_VAR, key)):
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"{var}: {path} is missing or unreadable; fix: point it at a readable PEM file")
    warnings: list[str] = []
    if not cert and not is_loopback_bind(api_bind):
        if not insecure:
            raise ConfigError(
                f"MIRROR_NEURON_API_BIND: {api_bind} is beyond loopback and the API would serve plain HTTP "
                f"(its bearer token lets anyone run commands on every box); fix: set {API_TLS_CERT_VAR} and "
                f"{API_TLS_KEY_VAR} (PEM files), or bind 127.0.0.1, or set {API_INSECURE_VAR}=1 to accept the risk")
        warnings.append(f"{API_INSECURE_VAR}=1: the API serves plain HTTP on {api_bind}, beyond loopback; "
                        f"anyone on the network can read the bearer token; set {API_TLS_CERT_VAR}/_KEY instead")
    return ApiTls(cert, key, insecure), warnings


def load_config(
    environ: Mapping[str, str] | None = None,
    env_file: str | None = None,
    *,
    require_redis: bool = True,
) -> Config:
    """Build and validate the configuration. Raises :class:`ConfigError` on the first problem."""
    env: dict[str, str] = dict(os.environ if environ is None else environ)
    if env_file:
        env.update(parse_env_file(Path(env_file)))
    cookie = _read_cookie(env)
    dist_port = _int(env, "DIST_PORT", DEFAULT_DIST_PORT, 1, 65535)
    api_port = _int(env, "API_PORT", DEFAULT_API_PORT, 1, 65535)
    nodes = _cluster_nodes(env, dist_port)
    me = _own_node(env, nodes, dist_port)
    api_bind = env.get(ENV_PREFIX + "API_BIND", "").strip() or "127.0.0.1"
    dist_bind = env.get(ENV_PREFIX + "DIST_BIND", "").strip()
    if api_port == me.port and _binds_overlap(api_bind, dist_bind or me.host):
        raise ConfigError(
            f"MIRROR_NEURON_API_PORT: {api_port} is also this node's dist port; "
            "fix: use different ports (defaults: API 4000, dist 4370)"
        )
    api_tls, tls_warnings = _api_tls(env, api_bind)
    redis_url = _redis_url(env, require_redis)
    discovery = _discovery(env)
    namespace = _namespace(env)
    ttl, renew, tick, timeout = _timings(env)
    sentinel_pw, min_acks, ack_timeout = _redis_ha(env, redis_url, ttl)
    capacity = _int(env, "EXECUTOR_CAPACITY", os.cpu_count() or 1, 1, 4096)
    commands, command_timeout = _commands(env)
    return Config(
        cookie=cookie, nodes=tuple(sorted(nodes)), me=me, redis_url=redis_url, namespace=namespace,
        dist_bind=dist_bind, api_bind=api_bind, api_port=api_port, api_tls=api_tls, discovery=discovery,
        lease_ttl_ms=ttl, renew_interval_ms=renew, link_tick_ms=tick, link_timeout_ms=timeout,
        executor_capacity=capacity, state_dir=_state_dir(env), commands=commands, command_timeout_s=command_timeout,
        job_retention_ms=job_retention_ms(env), log_level=_log_level(env), log_format=_log_format(env),
        env_file=env_file,
        warnings=tuple(_cookie_warnings(cookie) + tls_warnings), redis_sentinel_password=sentinel_pw,
        redis_min_acks=min_acks, redis_ack_timeout_ms=ack_timeout,
    )


def _binds_overlap(a: str, b: str) -> bool:
    wild = {"", "0.0.0.0", "::"}
    return a in wild or b in wild or a == b


def api_token(cookie: bytes) -> str:
    """The bearer token for state-changing API calls, derived from the cookie."""
    return hashlib.blake2b(cookie, digest_size=24, person=b"mn-api-token").hexdigest()
