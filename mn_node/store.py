"""The Redis connection: one client, all scripts by SHA, availability and ``run_id`` tracking."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from mn_node import scripts
from mn_node.config import redact_url
from mn_node.errors import FencedWriteRefused, RedisUnavailable

log = logging.getLogger("mn_node.store")

EVENTS_MAXLEN = 10_000


class Store:
    def __init__(self, url: str, namespace: str, *, op_timeout: float = 1.0) -> None:
        self.url = url
        self.ns = namespace
        self.r: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=op_timeout,
            socket_connect_timeout=op_timeout,
            decode_responses=True,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self.s = {name: self.r.register_script(src) for name, src in scripts.ALL.items()}
        self.available = False
        self.last_error = "not connected yet"
        self.run_id: str | None = None
        self._suspect_restart = True
        self._restart_cbs: list[Callable[[str, str | None], None]] = []

    def key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def on_restart(self, cb: Callable[[str, str | None], None]) -> None:
        """Called with (new run_id, old run_id) when the server's run_id changes."""
        self._restart_cbs.append(cb)

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
                    for cb in self._restart_cbs:
                        cb(new, old)
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

    async def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script by name; connection problems become :class:`RedisUnavailable`,
        fencing refusals :class:`FencedWriteRefused`."""
        await self._settle_restart()
        try:
            res = await self.s[name](keys=keys, args=args)
        except ResponseError as e:
            if str(e).startswith("FENCED"):
                raise FencedWriteRefused(str(e)) from None
            if isinstance(e, ReadOnlyError):
                self.mark_error(e)
            raise RedisUnavailable(f"redis refused {name}: {e}") from None
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


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if "Authentication" in type(err).__name__ or "NOAUTH" in text or "WRONGPASS" in text:
        return "authentication failed (check the password in MIRROR_NEURON_REDIS_URL)"
    if isinstance(err, asyncio.TimeoutError) or "Timeout" in type(err).__name__:
        return "timed out"
    return text.splitlines()[0][:200]


def now_ms() -> int:
    return int(time.time() * 1000)


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
