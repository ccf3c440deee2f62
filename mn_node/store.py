"""The Redis connection: one client, every script as a named attribute, availability and
``run_id`` tracking."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from mn_node import scripts
from mn_node.aio import Signal
from mn_node.config import redact_url
from mn_node.errors import FencedWriteRefused, RedisUnavailable

log = logging.getLogger("mn_node.store")

# Length cap (approximate MAXLEN) of every events stream: the cluster's and each job's.
EVENTS_MAXLEN = 10_000
BINARY_OP_TIMEOUT_S = 30.0


class Script:
    """One Lua script of :mod:`mn_node.scripts` bound to a :class:`Store`:
    ``await script(keys, args)`` runs it by SHA with the store's error handling.
    ``redis_script`` is the plain redis-py script (e.g. to queue it on a pipeline)."""

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
        self.store_result = Script(store, "store_result", scripts.STORE_RESULT)
        self.claim_start = Script(store, "claim_start", scripts.CLAIM_START)
        self.cancel_job = Script(store, "cancel_job", scripts.CANCEL_JOB)
        self.pause_job = Script(store, "pause_job", scripts.PAUSE_JOB)
        self.prune_job = Script(store, "prune_job", scripts.PRUNE_JOB)
        self.record_attempt = Script(store, "record_attempt", scripts.RECORD_ATTEMPT)


class Store:
    def __init__(self, url: str, namespace: str, *, op_timeout: float = 1.0) -> None:
        self.url = url
        self.ns = namespace
        self.op_timeout = op_timeout
        self.r: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=op_timeout,
            socket_connect_timeout=op_timeout,
            decode_responses=True,
            # No silent retries: a failed command surfaces at once (as RedisUnavailable), so
            # a lease holder never has a renewal or fenced write retried behind its back past
            # its local deadline, and every caller decides itself whether to try again.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.scripts = Scripts(self)
        self._binary: aioredis.Redis | None = None
        self.available = False
        self.last_error = "not connected yet"
        self.run_id: str | None = None
        self._suspect_restart = True
        # (new run_id, old run_id) when the server's run_id changes: every lease is lost
        self.restarted: Signal[[str, str | None]] = Signal("redis restarted")

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
            self._binary = aioredis.Redis.from_url(
                self.url, socket_timeout=BINARY_OP_TIMEOUT_S, socket_connect_timeout=self.op_timeout,
                decode_responses=False, retry=Retry(NoBackoff(), 0), health_check_interval=0,
            )
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
        """Ping; after any failure also re-read ``run_id`` to detect a server restart."""
        try:
            if self._suspect_restart:
                info = await self.r.info("server")
                new = str(info.get("run_id"))
                old = self.run_id
                self.run_id = new
                self._suspect_restart = False
                if old is not None and new != old:
                    log.warning("redis restarted (run_id %s -> %s): treating all leases as lost", old[:8], new[:8])
                    self.restarted.emit(new, old)
            else:
                await self.r.ping()
        except (TimeoutError, RedisError, OSError) as e:
            self.mark_error(e)
            return False
        if not self.available:
            log.info("redis reachable at %s", self.display_url)
        self.available = True
        self.last_error = ""
        return True

    async def run_script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script`` (call it as ``store.scripts.<name>(keys, args)``); connection
        problems become :class:`RedisUnavailable`, fencing refusals :class:`FencedWriteRefused`."""
        await self._settle_restart()
        try:
            res = await script.redis_script(keys=list(keys), args=list(args))
        except ResponseError as e:
            if str(e).startswith("FENCED"):
                raise FencedWriteRefused(str(e)) from None
            if isinstance(e, ReadOnlyError):
                self.mark_error(e)
            raise RedisUnavailable(f"redis refused {script.name}: {e}") from None
        except (TimeoutError, RedisError, OSError) as e:
            self.mark_error(e)
            raise RedisUnavailable(f"redis unreachable: {_describe(e)}") from None
        self.available = True
        return res

    async def _settle_restart(self) -> None:
        """After a connection error, learn whether the server restarted *before* running
        anything on it: the restart callbacks (all leases lost) must fire before a lease is
        granted by the new server, or they would drop that fresh lease too."""
        if self._suspect_restart and not await self.check():
            raise RedisUnavailable(f"redis unreachable: {self.last_error}")

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
