"""The link manager: listener, diallers that retry forever, one link per peer, keepalive,
``send``/``call`` between mailboxes."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from mn_node.aio import Backoff, Signal, wait_event
from mn_node.errors import AuthError, CallTimeout, LinkError, NotConnected, VersionError
from mn_node.link import crypto
from mn_node.link.conn import FLUSH_BYTES, SEND, Conn

log = logging.getLogger("mn_node.link")

Handler = Callable[[str, Any], Any]
"""A mailbox handler: ``handler(from_node, msg)``; may return a value or an awaitable."""

COOKIE_MISMATCH = "cookie mismatch (invalid challenge reply) from {}"


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class _RateLimitedLog:
    """Logs a repeating condition once, then at most every ``every`` seconds."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}

    def warn(self, key: str, msg: str) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is None or now - last >= self.every:
            self._last[key] = now
            log.warning(msg)

    def forget(self, key: str) -> None:
        self._last.pop(key, None)


class LinkManager:
    """The registry of links of this node (the :class:`ConnOwner` of its connections).

    ``up`` is emitted with a link that came up, ``down`` with a link that went down and why.
    """

    def __init__(
        self,
        ident: crypto.Identity,
        *,
        tick: float = 0.4,
        timeout: float = 1.6,
        handshake_timeout: float = 5.0,
        backoff_base: float = 0.05,
        backoff_cap: float = 2.0,
        rate_per_ip: float = 20.0,
        burst_per_ip: float = 60.0,
        local_host: str = "",
    ) -> None:
        self.ident = ident
        self.local_host = "" if local_host in ("", "0.0.0.0", "::") else local_host
        self.loop = asyncio.get_running_loop()
        self.tick = tick
        self.timeout = timeout
        self.handshake_timeout = handshake_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.rate_per_ip = rate_per_ip
        self.burst_per_ip = burst_per_ip
        self.links: dict[str, Conn] = {}
        self.addresses: dict[str, tuple[str, int]] = {}
        self._mailboxes: dict[str, Handler] = {}
        self.up: Signal[[Conn]] = Signal("link up")
        self.down: Signal[[Conn, str]] = Signal("link down")
        self._dialers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._conns: set[Conn] = set()
        self._buckets: dict[str, _Bucket] = {}
        self._server: asyncio.Server | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._rlog = _RateLimitedLog()
        self.closing = False
        self.auth_failures = 0
        self.dropped_conns = 0

    # ---- lifecycle ------------------------------------------------------------------
    async def listen(self, host: str, port: int) -> None:
        self._server = await self.loop.create_server(
            lambda: self._track(Conn(self, outbound=False)), host, port, reuse_address=True, backlog=512
        )
        self._keepalive = self.loop.create_task(self._keepalive_loop(), name="link-keepalive")

    @property
    def connections(self) -> int:
        """Open connections, links and those still in their handshake."""
        return len(self._conns)

    def dialing(self, name: str) -> bool:
        """A dialler keeps (re)connecting to ``name``."""
        task = self._dialers.get(name)
        return task is not None and not task.done()

    @property
    def listening(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def stop(self, reason: str = "shutdown") -> None:
        """Orderly leave: tell every peer, flush, close."""
        self.closing = True
        for t in list(self._dialers.values()):
            t.cancel()
        if self._keepalive:
            self._keepalive.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.links.values()):
            conn.leave(reason)
        for conn in list(self._conns):
            conn.close(f"we left: {reason}", quiet=True)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._dialers.values(), *self._tasks, return_exceptions=True)

    def _track(self, conn: Conn) -> Conn:
        self._conns.add(conn)
        return conn

    # ---- registration -----------------------------------------------------------------
    def register(self, mailbox: str, handler: Handler) -> None:
        self._mailboxes[mailbox] = handler

    def on_up(self, cb: Callable[[Conn], object]) -> None:
        """Same as ``up.connect(cb)``."""
        self.up.connect(cb)

    def on_down(self, cb: Callable[[Conn, str], object]) -> None:
        """Same as ``down.connect(cb)``."""
        self.down.connect(cb)

    def ensure_peer(self, name: str, host: str, port: int) -> None:
        """Keep a link to this peer forever (dial, and redial after every loss)."""
        if name == self.ident.node or self.closing:
            return
        old = self.addresses.get(name)
        self.addresses[name] = (host, port)
        task = self._dialers.get(name)
        if task is None or task.done():
            self._wake[name] = asyncio.Event()
            self._dialers[name] = self.loop.create_task(self._dial_loop(name), name=f"dial {name}")
        elif old != (host, port):
            self._wake[name].set()

    def _redial_now(self, name: str) -> None:
        ev = self._wake.get(name)
        if ev is not None:
            ev.set()

    # ---- messaging --------------------------------------------------------------------
    def send(self, node: str, mailbox: str, msg: Any) -> None:
        try:
            conn = self.links[node]
        except KeyError:
            raise NotConnected(f"no link to {node}") from None
        packed = self._pack(msg)
        if conn.run_mailbox == mailbox:
            # the open run, inline (the contract in Conn's docstring): a few bytecodes, no call
            out = conn.out
            out += packed
            conn.run_count += 1
            if len(out) >= FLUSH_BYTES:
                conn.overflow(len(packed), 1)
        else:
            conn.push(mailbox, packed)

    def send_many(self, node: str, mailbox: str, msgs: list[Any]) -> None:
        """Send many messages to one mailbox: packed as one batch (the receiving handler is
        still called once per message, in order). The cheap way to move bulk traffic."""
        conn = self.links.get(node)
        if conn is None:
            raise NotConnected(f"no link to {node}")
        n = len(msgs)
        if not n:
            return
        packed = self._pack(msgs)
        # the items of the packed array, without its header, join the run for this mailbox
        body = memoryview(packed)[1 if n < 16 else 3 if n < 0x10000 else 5 :]
        if len(body) > FLUSH_BYTES and n > 1:
            # big batch: in slices of about FLUSH_BYTES, so each fits in one frame
            step = max(1, n * FLUSH_BYTES // len(body))
            for i in range(0, n, step):
                self.send_many(node, mailbox, msgs[i : i + step])
            return
        conn.push(mailbox, body, n)

    def broadcast(self, mailbox: str, msg: Any) -> int:
        packed = self._pack((SEND, mailbox, msg))
        n = 0
        for conn in list(self.links.values()):
            try:
                conn.enqueue(packed)
                n += 1
            except LinkError:
                pass
        return n

    async def call(self, node: str, mailbox: str, msg: Any, timeout: float = 5.0) -> Any:
        conn = self.links.get(node)
        if conn is None:
            raise NotConnected(f"no link to {node}")
        try:
            async with asyncio.timeout(timeout):
                return await conn.call(mailbox, msg)
        except TimeoutError:
            raise CallTimeout(f"{node} did not answer {mailbox} within {timeout:g}s") from None

    async def drain(self, node: str) -> None:
        conn = self.links.get(node)
        if conn is not None:
            await conn.drain()

    # ---- what the connections hand us (ConnOwner) -------------------------------------------
    def deliver(self, peer: str, mailbox: str, items: list[Any]) -> None:
        """Call ``mailbox``'s handler once per item, in order; a handler that raises is logged
        and the rest still delivered; an awaitable result runs in a task of its own."""
        handler = self._mailboxes.get(mailbox)
        if handler is None:
            log.debug("dropped %d message(s) for unknown mailbox %r from %s", len(items), mailbox, peer)
            return
        for item in items:
            try:
                res = handler(peer, item)
            except Exception:
                log.exception("mailbox %s handler failed on a message from %s", mailbox, peer)
                continue
            if res is not None and inspect.isawaitable(res):
                self._spawn(res, f"mailbox {mailbox}")

    def on_call(self, conn: Conn, ref: Any, mailbox: str, body: Any) -> None:
        self._spawn(self._answer(conn, ref, mailbox, body), f"call {mailbox}")

    async def _answer(self, conn: Conn, ref: Any, mailbox: str, body: Any) -> None:
        handler = self._mailboxes.get(mailbox)
        try:
            if handler is None:
                raise LookupError(f"no mailbox {mailbox!r} on {self.ident.node}")
            res = handler(conn.peer, body)
            if inspect.isawaitable(res):
                res = await res
        except asyncio.CancelledError:
            raise
        except Exception as e:
            conn.reply(ref, False, f"{type(e).__name__}: {e}")
        else:
            conn.reply(ref, True, res)

    def _spawn(self, aw: Awaitable[Any], name: str) -> None:
        async def run() -> None:
            await aw

        task = self.loop.create_task(run(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    # ---- connection events ------------------------------------------------------------
    def admit(self, ip: str) -> bool:
        """Per-source token bucket for handshakes."""
        now = time.monotonic()
        b = self._buckets.get(ip)
        if b is None:
            if len(self._buckets) > 4096:
                self._buckets.clear()
            b = self._buckets[ip] = _Bucket(self.burst_per_ip, now)
        b.tokens = min(self.burst_per_ip, b.tokens + (now - b.stamp) * self.rate_per_ip)
        b.stamp = now
        if b.tokens < 1:
            self._rlog.warn("rate:" + ip, f"handshake rate limit hit by {ip}: dropping its connections")
            return False
        b.tokens -= 1
        return True

    def on_conn_error(self, conn: Conn, err: LinkError) -> None:
        who = conn.describe()
        if isinstance(err, AuthError):
            self.auth_failures += 1
            self._rlog.warn("auth:" + conn.peername[0], COOKIE_MISMATCH.format(who) + f": {err}")
        elif isinstance(err, VersionError):
            self._rlog.warn("ver:" + conn.peername[0], f"protocol version mismatch with {who}: {err}")
        elif conn.is_up:
            log.warning("dropping link to %s: %s", who, err)
        else:
            self.dropped_conns += 1
            log.info("dropping connection from %s: %s", who, err)

    def on_established(self, conn: Conn) -> None:
        me = self.ident.node
        peer = conn.peer
        if peer == me:
            conn.close("connected to ourselves", quiet=True)
            return
        if conn.expected and conn.expected != peer:
            self._rlog.warn(
                "name:" + conn.expected,
                f"expected {conn.expected} at {conn.peername[0]}:{conn.peername[1]} but found {peer}; "
                "check MIRROR_NEURON_CLUSTER_NODES",
            )
        existing = self.links.get(peer)
        if existing is not None and existing is not conn:
            if existing.peer_inc == conn.peer_inc:
                winner = min(me, peer)
                if conn.dialer == winner and existing.dialer != winner:
                    del self.links[peer]
                    existing.close("duplicate link (simultaneous dial)", quiet=True)
                    self.links[peer] = conn
                    return
                conn.close("duplicate link (simultaneous dial)", quiet=True)
                return
            # the peer restarted: the old link belongs to a dead incarnation
            existing.close(f"{peer} restarted (new incarnation)", quiet=True)
        self.links[peer] = conn
        self._rlog.forget("dial:" + peer)
        self._rlog.forget("auth:" + conn.peername[0])
        log.info("link up: %s (%s)", conn.describe(), "dialled" if conn.outbound else "accepted")
        self.up.emit(conn)

    def on_closed(self, conn: Conn, reason: str) -> None:
        self._conns.discard(conn)
        if self.links.get(conn.peer) is conn:
            del self.links[conn.peer]
            if not self.closing:
                log.info("link down: %s: %s", conn.describe(), reason)
            self.down.emit(conn, reason)
            self._redial_now(conn.peer)

    # ---- dialling -----------------------------------------------------------------------
    async def _dial_loop(self, name: str) -> None:
        backoff = Backoff(self.backoff_base, self.backoff_cap)
        wake = self._wake[name]
        while not self.closing:
            link = self.links.get(name)
            if link is not None:
                backoff.reset()
                await link.wait_closed()
                if link.left:
                    # an orderly leave: the node is stopping; give it a moment before redialling
                    await self._sleep(wake, 0.2)
                continue
            host, port = self.addresses[name]
            try:
                await self._dial(name, host, port)
                backoff.reset()
                continue
            except asyncio.CancelledError:
                raise
            except AuthError:
                pass  # already logged by on_conn_error
            except (OSError, LinkError, TimeoutError) as e:
                if self.links.get(name) is None:
                    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
                    self._rlog.warn(
                        "dial:" + name, f"cannot reach {name} at {host}:{port}: {why} (retrying forever)"
                    )
            await self._sleep(wake, backoff.next_delay())

    @staticmethod
    async def _sleep(wake: asyncio.Event, delay: float) -> None:
        """Wait ``delay`` seconds, or less if woken meanwhile (a wake from before is ignored)."""
        wake.clear()
        await wait_event(wake, delay)

    async def _dial(self, name: str, host: str, port: int) -> None:
        async with asyncio.timeout(self.handshake_timeout + 1):
            _, conn = await self.loop.create_connection(
                lambda: self._track(Conn(self, outbound=True, expected=name)), host, port,
                local_addr=(self.local_host, 0) if self.local_host else None,
            )
            await conn.wait_up()

    # ---- keepalive ------------------------------------------------------------------------
    async def _keepalive_loop(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            lag = now - last - self.tick
            last = now
            if lag > self.timeout / 2:
                # our own loop stalled: data may be waiting unread; do not blame peers for it
                log.warning("event loop stalled %.2fs; skipping one keepalive check", lag)
                continue
            for conn in list(self.links.values()):
                idle = now - conn.last_rx
                if idle > self.timeout:
                    conn.close(f"no traffic for {idle:.1f}s (keepalive timeout)", quiet=True)
                else:
                    conn.ping()

    def stats(self) -> dict[str, int]:
        links = list(self.links.values())
        return {
            "links": len(links),
            "msgs_in": sum(c.msgs_in for c in links),
            "msgs_out": sum(c.msgs_out for c in links),
            "bytes_in": sum(c.bytes_in for c in links),
            "bytes_out": sum(c.bytes_out for c in links),
            "auth_failures": self.auth_failures,
        }
