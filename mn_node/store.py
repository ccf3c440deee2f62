"""The Redis connection: one client, every script as a named attribute, availability and
``run_id`` tracking."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError, ResponseError

from mn_node import scripts
from mn_node.acks import AckTarget
from mn_node.aio import Signal
from mn_node.config import ACKS_ALL, SentinelUrl, acks_label, is_sentinel_url, parse_sentinel_url, redact_url
from mn_node.errors import ConfigError, FencedWriteRefused, RedisUnavailable

if TYPE_CHECKING:
    from mn_node.config import Config

log = logging.getLogger("mn_node.store")

# Length cap (approximate MAXLEN) of every events stream: the cluster's and each job's.
EVENTS_MAXLEN = 10_000
BINARY_OP_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 2048  # per client (pool) of a node; Redis accepts 10,000 clients by default


class WriteNotReplicated(RedisUnavailable):
    """A write ran on the primary but too few replicas acknowledged it in time (``WAIT``), or
    the primary refused it for want of replicas (``NOREPLICAS``), or the primary changed under
    it. It counts as *not done*: a lease is not held, a result not stored; the caller retries
    as after any Redis error (every fenced script is safe to replay)."""


class _FollowingPool(SentinelConnectionPool):
    """The Sentinel pool, telling the store when Sentinel names a different primary (so the
    switch is handled like a restart before anything else runs on the new one)."""

    on_switch: Callable[[tuple[str, int], tuple[str, int]], None] | None = None

    async def get_master_address(self) -> Any:
        old = self.master_address
        addr = await super().get_master_address()  # type: ignore[no-untyped-call]
        if old is not None and tuple(addr) != tuple(old) and self.on_switch is not None:
            self.on_switch((str(old[0]), int(old[1])), (str(addr[0]), int(addr[1])))
        return addr


try:  # redis-py >= 7: one DriverInfo for every connection of the node
    from redis.driver_info import DriverInfo

    _DRIVER_INFO: Any = DriverInfo()
except ImportError:  # pragma: no cover - older redis-py
    _DRIVER_INFO = None


class Script:
    """One Lua script of :mod:`mn_node.scripts` bound to a :class:`Store`:
    ``await script(keys, args)`` runs it by SHA with the store's error handling.
    ``redis_script`` is the plain redis-py script (e.g. to queue it on a pipeline). In
    replicated mode every script is followed by ``WAIT`` (an attempt's log record travels in
    the same ``store_results`` call as its result, so it costs no round trip of its own)."""

    __slots__ = ("_store", "name", "redis_script")

    def __init__(self, store: Store, name: str, source: str) -> None:
        self._store = store
        self.name = name
        self.redis_script: AsyncScript = store.r.register_script(source)

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._store.run_script(self, keys, args)


class Scripts:
    """Every script as a named attribute, so a misspelt script fails at type-check time (and
    at attribute lookup), never as a missing-name lookup in the middle of a run. Sources are
    read from :mod:`mn_node.scripts` when the store is made."""

    def __init__(self, store: Store) -> None:
        self.acquire = Script(store, "acquire", scripts.ACQUIRE)
        self.renew_all = Script(store, "renew_all", scripts.RENEW_ALL)
        self.release = Script(store, "release", scripts.RELEASE)
        self.fenced_hset = Script(store, "fenced_hset", scripts.FENCED_HSET)
        self.fenced_xadd = Script(store, "fenced_xadd", scripts.FENCED_XADD)
        self.register = Script(store, "register", scripts.REGISTER)
        self.unregister = Script(store, "unregister", scripts.UNREGISTER)
        self.job_write = Script(store, "job_write", scripts.JOB_WRITE)
        self.store_results = Script(store, "store_results", scripts.STORE_RESULTS)
        self.claim_starts = Script(store, "claim_starts", scripts.CLAIM_STARTS)
        self.create_job = Script(store, "create_job", scripts.CREATE_JOB)
        self.cancel_job = Script(store, "cancel_job", scripts.CANCEL_JOB)
        self.pause_job = Script(store, "pause_job", scripts.PAUSE_JOB)
        self.prune_job = Script(store, "prune_job", scripts.PRUNE_JOB)
        self.trim_job_index = Script(store, "trim_job_index", scripts.TRIM_JOB_INDEX)


class Store:
    def __init__(self, url: str, namespace: str, *, op_timeout: float = 1.0,
                 sentinel_password: str | None = None, min_acks: int = 0, ack_timeout_ms: int = 250) -> None:
        self.url = url
        self.ns = namespace
        self.op_timeout = op_timeout
        # replicated mode: every script call is followed by WAIT n ack_timeout_ms; n = min_acks,
        # or with ACKS_ALL every replica the Sentinels know of (mn_node.acks)
        self.min_acks = min_acks
        self.ack_timeout_ms = ack_timeout_ms
        self.sentinel_url: SentinelUrl | None = parse_sentinel_url(url) if is_sentinel_url(url) else None
        self.sentinel: Sentinel | None = None
        if self.sentinel_url is not None:
            self.sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(self.sentinel_url.sentinels),
                sentinel_kwargs={"password": sentinel_password, "socket_timeout": op_timeout,
                                 "socket_connect_timeout": op_timeout, "retry": Retry(NoBackoff(), 0),
                                 "decode_responses": True},
            )
        # A WAIT blocks for up to its timeout on the write's connection.
        self.r: aioredis.Redis = self._client(op_timeout + (ack_timeout_ms / 1000 if min_acks else 0), True)
        if isinstance(self.r.connection_pool, _FollowingPool):
            self.r.connection_pool.on_switch = self._primary_switched
        self.scripts = Scripts(self)
        every = min_acks == ACKS_ALL and self.sentinel is not None
        self.acks = AckTarget(1 if every else min_acks, self._known_replicas if every else None)
        self._binary: aioredis.Redis | None = None
        self.available = False
        self.last_error = "not connected yet"
        self.run_id: str | None = None
        self._suspect_restart = True
        # (new run_id, old run_id) when the server's run_id changes: every lease is lost
        self.restarted: Signal[[str, str | None]] = Signal("redis restarted")
        # replication: the primary in use, failovers seen, acknowledgements
        self.primary: tuple[str, int] | None = None
        self.failovers = 0
        self.last_failover: dict[str, Any] | None = None
        self._switches = 0
        self.acks_waiting = 0
        self.write_refused = ""  # why the last replicated write was refused ("" once one succeeds)
        self.acked: Signal[[float]] = Signal("write acknowledged")  # seconds, script + WAIT
        self._topology: dict[str, Any] | None = None
        self._topology_at = 0.0

    @classmethod
    def from_config(cls, cfg: Config) -> Store:
        assert cfg.redis_url is not None
        return cls(cfg.redis_url, cfg.namespace, sentinel_password=cfg.redis_sentinel_password,
                   min_acks=cfg.redis_min_acks, ack_timeout_ms=cfg.redis_ack_timeout_ms)

    @property
    def replicated(self) -> bool:
        return self.min_acks != 0

    async def _known_replicas(self) -> int | None:
        """How many replicas of our master the Sentinels know of, up or down (the most any
        reachable Sentinel names: one just restarted may not have found them all yet); None
        when no Sentinel answers."""
        counts = [int(row["replicas"]) for row in await self._sentinel_views() if row["reachable"]]
        return max(counts) if counts else None

    def _client(self, socket_timeout: float, decode: bool) -> aioredis.Redis:
        # No silent retries: a failed command surfaces at once (as RedisUnavailable), so
        # a lease holder never has a renewal or fenced write retried behind its back past
        # its local deadline, and every caller decides itself whether to try again.
        # max_connections: the client's default (100) is exhausted by a few hundred concurrent jobs,
        # and an exhausted pool reads as "Redis unreachable" (503s, results not stored)
        kw: dict[str, Any] = {"socket_timeout": socket_timeout, "socket_connect_timeout": self.op_timeout,
                              "decode_responses": decode, "retry": Retry(NoBackoff(), 0),
                              "health_check_interval": 0, "max_connections": MAX_CONNECTIONS}
        if _DRIVER_INFO is not None:  # else every new connection reads redis-py's version from its metadata
            kw["driver_info"] = _DRIVER_INFO
        if self.sentinel is None or self.sentinel_url is None:
            return aioredis.Redis.from_url(self.url, **kw)
        client: aioredis.Redis = self.sentinel.master_for(
            self.sentinel_url.master, redis_class=aioredis.Redis, connection_pool_class=_FollowingPool,
            password=self.sentinel_url.password, db=self.sentinel_url.db, **kw)
        return client

    def _primary_switched(self, old: tuple[str, int], new: tuple[str, int]) -> None:
        log.warning("redis primary switched %s:%s -> %s:%s (Sentinel)", *old, *new)
        self._switches += 1
        self._suspect_restart = True
        self.acks.invalidate()

    def key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    @property
    def binary(self) -> aioredis.Redis:
        """A second client that returns bytes (bundle archives), made on first use. Its
        timeout allows a bundle at the size cap to cross a slow link; same no-retry rule."""
        if self._binary is None:
            self._binary = self._client(BINARY_OP_TIMEOUT_S, False)
        return self._binary

    # ---- availability -----------------------------------------------------------------
    def mark_error(self, err: BaseException) -> None:
        why = _describe(err)
        if self.available:
            log.warning("redis unreachable at %s: %s", self.display_url, why)
        self.available = False
        self.last_error = why
        self._suspect_restart = True

    async def check(self) -> bool:
        """Ping; after any failure also re-read the server's identity (``run_id``; in
        replicated mode also its replication id and role) to detect a restart or a new primary.
        Raises :class:`ConfigError` at first contact when the URL can never work (a replica
        given as the URL, a master name no Sentinel knows)."""
        try:
            if self._suspect_restart:
                await self._identify()
            else:
                await self.r.ping()
        except (TimeoutError, RedisError, OSError) as e:
            if isinstance(e, MasterNotFoundError) and self.run_id is None:
                await self._refuse_unknown_master()
            self.mark_error(e)
            return False
        if not self.available:
            log.info("redis reachable at %s", self.display_url)
        self.available = True
        self.last_error = ""
        return True

    async def _identify(self) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.info("server")
        pipe.info("replication")
        server, repl = await pipe.execute()
        if str(repl.get("role")) != "master":
            where = (f"{self.display_url} answered from a replica (of {repl.get('master_host')}:"
                     f"{repl.get('master_port')})")
            if self.sentinel is None and self.run_id is None:
                raise ConfigError(f"MIRROR_NEURON_REDIS_URL: {where}; fix: give the primary's address, or "
                                  "redis+sentinel://h1:26379,h2:26379,h3:26379/MASTER/0 to follow the primary")
            await self.r.connection_pool.disconnect()
            raise ReadOnlyError(f"{where}; writes wait for a primary")
        identity = str(server.get("run_id"))
        if self.replicated:  # a promotion changes the replication id, even of a known process
            identity += ":" + str(repl.get("master_replid"))
        old = self.run_id
        self.run_id = identity
        self._suspect_restart = False
        self.acks.invalidate()
        self._note_primary()
        if old is not None and identity != old:
            log.warning("redis restarted or primary changed (id %s -> %s): treating all leases as lost",
                        old[:8], identity[:8])
            self.restarted.emit(identity, old)

    def _note_primary(self) -> None:
        pool = self.r.connection_pool
        addr = getattr(pool, "master_address", None)
        if addr is None:
            return
        addr = (str(addr[0]), int(addr[1]))
        if self.primary is not None and addr != self.primary:
            self.failovers += 1
            self.last_failover = {"at_ms": int(time.time() * 1000), "from": _hostport(self.primary),
                                  "to": _hostport(addr)}
        self.primary = addr

    async def _refuse_unknown_master(self) -> None:
        """At first contact through Sentinel: a master name that every reachable Sentinel
        denies knowing is a configuration error (exit 78), not an outage."""
        assert self.sentinel is not None and self.sentinel_url is not None
        name = self.sentinel_url.master
        denied = 0
        for s in self.sentinel.sentinels:
            try:
                await s.sentinel_master(name)
                return  # known (down, perhaps): an outage, keep trying
            except ResponseError:
                denied += 1
            except (TimeoutError, RedisError, OSError):
                continue
        if denied:
            raise ConfigError(f"MIRROR_NEURON_REDIS_URL: no Sentinel of {self.display_url} monitors a master "
                              f"named {name!r}; fix: use the name given to `sentinel monitor` "
                              "(redis-cli -p 26379 SENTINEL MASTERS lists them)")

    async def run_script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script`` (call it as ``store.scripts.<name>(keys, args)``); connection
        problems become :class:`RedisUnavailable`, fencing refusals :class:`FencedWriteRefused`,
        in replicated mode a write not acknowledged by enough replicas :class:`WriteNotReplicated`."""
        await self._settle_restart()
        try:
            if self.replicated:
                res = await self._replicated_call(script, keys, args)
            else:
                res = await script.redis_script(keys=list(keys), args=list(args))
        except WriteNotReplicated:
            raise
        except ResponseError as e:
            if str(e).startswith("FENCED"):
                raise FencedWriteRefused(str(e)) from None
            if str(e).startswith("NOREPLICAS"):
                raise WriteNotReplicated(self._refuse_write(
                    f"the primary refused {script.name}: too few replicas in sync (NOREPLICAS)")) from None
            if isinstance(e, ReadOnlyError):
                self.mark_error(e)
            raise RedisUnavailable(f"redis refused {script.name}: {e}") from None
        except (TimeoutError, RedisError, OSError) as e:
            self.mark_error(e)
            raise RedisUnavailable(f"redis unreachable: {_describe(e)}") from None
        self.available = True
        return res

    async def _replicated_call(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA then ``WAIT min_acks timeout`` on the same connection (one pipeline, no
        MULTI). A write acknowledged by fewer replicas, or run while the primary changed, is
        reported as not done."""
        switches = self._switches
        need = await self.acks.needed()
        for attempt in (1, 2):
            pipe = self.r.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", script.redis_script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", need, self.ack_timeout_ms)
            self.acks_waiting += 1
            t0 = time.monotonic()
            try:
                res, acks = await pipe.execute(raise_on_error=False)
            finally:
                self.acks_waiting -= 1
            if isinstance(res, NoScriptError) and attempt == 1:
                await self.r.script_load(script.redis_script.script)  # not run: load it and run again
                continue
            break
        if isinstance(res, Exception):
            raise res
        if self._switches != switches:
            raise WriteNotReplicated(self._refuse_write(
                f"the redis primary changed during {script.name}; it counts as not done"))
        self._check_acks(script.name, acks, need)
        self.write_refused = ""
        self.acked.emit(time.monotonic() - t0)
        return res

    def _check_acks(self, what: str, acks: Any, need: int) -> None:
        """Refuse (as not done) a write that fewer than ``need`` replicas acknowledged (the
        fixed MIN_ACKS, or every replica the Sentinels knew of when it was sent)."""
        if isinstance(acks, Exception) or int(acks) < need:
            self.acks.invalidate()  # a replica may have left: count again before the next write
            which = "every replica the Sentinels know of" if self.acks.every_replica else "MIN_ACKS"
            fix = ("bring the replica back (mn doctor); a Redis host gone for good: SENTINEL RESET on each "
                   "Sentinel" if self.acks.every_replica else "check the replicas (mn doctor)")
            raise WriteNotReplicated(self._refuse_write(
                f"{what} was acknowledged by {acks} of the {need} replica(s) it waits for ({which}) within "
                f"{self.ack_timeout_ms} ms, so it counts as not done; fix: {fix}"))

    def _refuse_write(self, why: str) -> str:
        if why != self.write_refused:
            log.warning("replicated write refused: %s", why)
        self.write_refused = why
        self._suspect_restart = True  # re-read the primary's identity before the next write
        return why

    async def _settle_restart(self) -> None:
        """After a connection error, learn whether the server restarted *before* running
        anything on it: the restart callbacks (all leases lost) must fire before a lease is
        granted by the new server, or they would drop that fresh lease too."""
        if self._suspect_restart and not await self.check():
            raise RedisUnavailable(f"redis unreachable: {self.last_error}")

    async def execute_replicated(self, pipe: Any) -> list[Any]:
        """Execute a transaction pipeline (``r.pipeline(transaction=True)``) as ``MULTI … EXEC``
        and, in replicated mode, ``WAIT`` on the *same* connection; raise
        :class:`WriteNotReplicated` when fewer replicas than ``min_acks`` acknowledge it (the
        caller must not report it done). Replies are raw (no redis-py response callbacks).
        Single-Redis mode: plain ``pipe.execute()``. Wrap the call in :meth:`guard`."""
        if not self.replicated:
            return list(await pipe.execute())
        await self._settle_restart()
        need = await self.acks.needed()
        cmds: list[tuple[Any, ...]] = [("MULTI",), *(tuple(args) for args, _opts in pipe.command_stack),
                                       ("EXEC",), ("WAIT", need, self.ack_timeout_ms)]
        pipe.command_stack.clear()
        pool = self.r.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        replies: list[Any] = []
        self.acks_waiting += 1
        t0 = time.monotonic()
        try:
            await conn.send_packed_command(conn.pack_commands(cmds))
            for _ in cmds:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as e:
                    replies.append(e)
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            self.acks_waiting -= 1
            await pool.release(conn)
        exec_reply, acks = replies[-2], replies[-1]
        errors = [r for r in replies[:-1] if isinstance(r, Exception)]
        if any(str(e).startswith(("NOREPLICAS", "EXECABORT")) and "NOREPLICAS" in str(e) for e in errors):
            raise WriteNotReplicated(self._refuse_write(
                "the primary refused a transaction: too few replicas in sync (NOREPLICAS)"))
        if errors or exec_reply is None:
            raise ResponseError(f"transaction refused: {errors[0] if errors else 'EXEC returned nil'}")
        self._check_acks("a transaction", acks, need)
        self.write_refused = ""
        self.acked.emit(time.monotonic() - t0)
        return list(exec_reply)

    async def guard(self, coro: Any) -> Any:
        """Await a plain redis-py call, mapping connection errors to RedisUnavailable. A
        command the server refuses (bad argument, …) raises too, but does not mark Redis
        down: one bad request must not turn the node's health red. A read-only replica does."""
        try:
            res = await coro
        except ResponseError as e:
            if isinstance(e, ReadOnlyError):
                self.mark_error(e)
            raise RedisUnavailable(f"redis refused the command: {e}") from None
        except (TimeoutError, RedisError, OSError) as e:
            self.mark_error(e)
            raise RedisUnavailable(f"redis unreachable: {_describe(e)}") from None
        self.available = True
        return res

    # ---- topology (views, mn nodes --json) ------------------------------------------------
    @property
    def mode(self) -> str:
        """``sentinel``, ``replicated`` (a plain URL with MIN_ACKS) or ``single``."""
        return "sentinel" if self.sentinel is not None else ("replicated" if self.replicated else "single")

    async def topology(self) -> dict[str, Any]:
        """The Redis topology as this node sees it: mode, primary, replicas (state, lag),
        Sentinels (reachable, the primary each names), failovers seen. Never raises: a part
        that cannot be read says so. Cached for two seconds (the summary is polled)."""
        now = time.monotonic()
        if self._topology is None or now - self._topology_at >= 2.0:
            seen: dict[str, Any] = {"replicas": None, "sentinels": None}
            try:
                repl = await asyncio.wait_for(self.r.info("replication"), self.op_timeout)
                seen["replicas"] = _replicas(repl)
            except (TimeoutError, RedisError, OSError) as e:
                seen["replicas_error"] = _describe(e)
            if self.sentinel is not None:
                seen["sentinels"] = await self._sentinel_views()
            self._topology, self._topology_at = seen, now
        return {
            "mode": self.mode, "min_acks": acks_label(self.min_acks),
            "acks_needed": self.acks.current if self.replicated else None,
            "ack_timeout_ms": self.ack_timeout_ms,
            "primary": _hostport(self.primary) if self.primary else None, **self._topology,
            "failovers_seen": self.failovers, "last_failover": self.last_failover,
            "writes_refused": self.write_refused or None,
        }

    async def _sentinel_views(self) -> list[dict[str, Any]]:
        assert self.sentinel is not None and self.sentinel_url is not None
        name = self.sentinel_url.master

        async def one(client: aioredis.Redis) -> dict[str, Any]:
            kw = client.connection_pool.connection_kwargs
            row: dict[str, Any] = {"address": f"{kw.get('host')}:{kw.get('port')}", "reachable": False}
            try:
                st: dict[str, Any] = await asyncio.wait_for(client.sentinel_master(name),  # type: ignore[arg-type]
                                                            self.op_timeout)
            except (TimeoutError, RedisError, OSError) as e:
                row["error"] = _describe(e)
                return row
            row.update(reachable=True, primary=f"{st.get('ip')}:{st.get('port')}",
                       other_sentinels=int(st.get("num-other-sentinels", 0)), quorum=int(st.get("quorum", 0)),
                       replicas=int(st.get("num-slaves", 0)))
            return row

        return list(await asyncio.gather(*(one(c) for c in self.sentinel.sentinels)))

    async def event(self, type_: str, node: str, epoch: int | str = "", **data: Any) -> None:
        """Append to the cluster events stream (best effort: a lost event is logged)."""
        fields: dict[Any, Any] = {"type": type_, "node": node, "epoch": str(epoch), "data": json.dumps(data)}
        try:
            await self.guard(self.r.xadd(self.key("events"), fields, maxlen=EVENTS_MAXLEN, approximate=True))
        except RedisUnavailable as e:
            log.info("event %s not recorded: %s", type_, e)

    async def server_time_ms(self) -> int:
        sec, usec = await self.guard(self.r.time())
        return int(sec) * 1000 + int(usec) // 1000

    async def close(self) -> None:
        await self.r.aclose()
        if self._binary is not None:
            await self._binary.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()


def _hostport(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def _replicas(repl: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``slaveN`` entries of INFO replication (as redis-py parses them), as JSON rows."""
    master_offset = int(repl.get("master_repl_offset", 0) or 0)
    rows = []
    for key in sorted(k for k in repl if k.startswith("slave") and k[5:].isdigit()):
        v = repl[key]
        if not isinstance(v, dict):
            continue
        offset = int(v.get("offset", 0) or 0)
        rows.append({"address": f"{v.get('ip')}:{v.get('port')}", "state": v.get("state"),
                     "lag_s": int(v.get("lag", -1)), "behind_bytes": max(0, master_offset - offset)})
    return rows


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if "Authentication" in type(err).__name__ or "NOAUTH" in text or "WRONGPASS" in text:
        return "authentication failed (check the password in MIRROR_NEURON_REDIS_URL)"
    if isinstance(err, asyncio.TimeoutError) or "Timeout" in type(err).__name__:
        return "timed out"
    return text.splitlines()[0][:200]


def decode_event(eid: str, fields: dict[str, str]) -> dict[str, Any]:
    """A stream entry as API JSON: id, ts_ms, type, node, epoch, data."""
    try:
        data = json.loads(fields.get("data") or "{}")
    except ValueError:
        data = {"raw": fields.get("data")}
    epoch = fields.get("epoch") or ""
    return {
        "id": eid,
        "ts_ms": int(eid.split("-", 1)[0]),
        "type": fields.get("type", ""),
        "node": fields.get("node", ""),
        "epoch": int(epoch) if epoch.isdigit() else None,
        "data": data,
        **{k: v for k, v in fields.items() if k not in ("type", "node", "epoch", "data")},
    }
