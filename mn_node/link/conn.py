"""One TCP connection: handshake, then encrypted, coalesced message frames."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import msgpack

from mn_node.errors import AuthError, LinkError, ProtocolError, VersionError
from mn_node.link import crypto
from mn_node.link.codec import HEADER, MAX_FRAME, MAX_HANDSHAKE_FRAME, READ_BUFFER, FrameReader

if TYPE_CHECKING:
    from mn_node.link.manager import LinkManager

log = logging.getLogger("mn_node.link")

# message kinds inside encrypted frames
TICK, TOCK, SEND, CALL, REPLY, LEAVE, BATCH = range(7)
MAX_PLAINTEXT = MAX_FRAME - 64
"""Largest plaintext of one frame: a msgpack array (array32 header) of packed messages."""
_ARRAY32 = b"\xdd"
_FRAME_HEAD = _ARRAY32 + b"\0\0\0\0"
"""Plaintext of a frame starts with an array32 header whose count is patched in at flush."""
_COUNT = struct.Struct(">I")
FLUSH_BYTES = 256 * 1024
"""Flush at once (instead of at the end of this loop iteration) past this many queued bytes."""
_RUN_HEADERS_MAX = 1024
HANDSHAKE_READ_BUFFER = 4 * MAX_HANDSHAKE_FRAME
WRITE_BUFFER_LIMIT = 64 * 1024 * 1024
"""A peer that lets this much pile up unread is too slow: its link is dropped."""


_run_headers: dict[str, bytes] = {}


def _run_header(mailbox: str) -> bytes:
    """Packed ``[BATCH, mailbox, array32 ...`` with a zero count, patched when the run closes."""
    head = _run_headers.get(mailbox)
    if head is None:
        if len(_run_headers) >= _RUN_HEADERS_MAX:
            _run_headers.clear()
        head = _run_headers[mailbox] = (
            b"\x93" + msgpack.packb(BATCH) + msgpack.packb(mailbox, use_bin_type=True) + _FRAME_HEAD
        )
    return head


class Conn(asyncio.BufferedProtocol):
    """A link in the making or established. The manager owns the registry of links."""

    # slots: the hot path reads a few attributes per message (fast slot access, no dict)
    __slots__ = (
        "_can_write", "_flush_handle", "_hs_timer", "_initiator", "_items", "_responder", "_run_at",
        "bytes_in", "bytes_out", "close_reason", "closed", "error", "established_wall", "expected",
        "last_rx", "left", "m", "msgs_in", "msgs_out", "out", "outbound", "peername", "pending",
        "reader", "ready", "rtt_ms", "run_count", "run_mailbox", "session", "state", "transport",
    )

    def __init__(self, manager: LinkManager, outbound: bool, expected: str | None = None) -> None:
        self.m = manager
        self.outbound = outbound
        self.expected = expected
        self.transport: asyncio.Transport | None = None
        self.peername: tuple[str, int] = ("?", 0)
        # small buffer until the peer has authenticated: a connection flood costs little memory
        self.reader = FrameReader(MAX_HANDSHAKE_FRAME, HANDSHAKE_READ_BUFFER)
        self.state = "new"
        self._initiator: crypto.Initiator | None = None
        self._responder: crypto.Responder | None = None
        self.session: crypto.Session | None = None
        self.ready: asyncio.Future[Conn] = manager.loop.create_future()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.error: LinkError | None = None
        self._hs_timer: asyncio.TimerHandle | None = None
        # outgoing plaintext of the next frame: array32 header, then packed messages; a run of
        # messages to one mailbox is one BATCH item whose count is patched in when it closes
        self.out = bytearray(_FRAME_HEAD)
        self._items = 0
        self.run_mailbox: str | None = None
        self.run_count = 0
        self._run_at = 0
        self._flush_handle: asyncio.Handle | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.last_rx = time.monotonic()
        self.rtt_ms: float | None = None
        self.established_wall = 0.0
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = 0
        self.left = False

    # ---- identity -------------------------------------------------------------------
    @property
    def peer(self) -> str:
        return self.session.peer_node if self.session else (self.expected or "")

    @property
    def peer_inc(self) -> str:
        return self.session.peer_incarnation if self.session else ""

    @property
    def dialer(self) -> str:
        return self.m.ident.node if self.outbound else self.peer

    def describe(self) -> str:
        who = self.peer or (self._responder.peer_hint if self._responder else "")
        host, port = self.peername
        return f"{who} ({host}:{port})" if who else f"{host}:{port}"

    # ---- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a socket transport (asyncio's, or uvloop's, which does not subclass asyncio.Transport)
        self.transport = transport = cast("asyncio.Transport", transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peername = (str(peer[0]), int(peer[1]))
        transport.set_write_buffer_limits(high=4 * 1024 * 1024)
        self._hs_timer = self.m.loop.call_later(self.m.handshake_timeout, self._hs_timeout)
        if self.outbound:
            self._initiator = crypto.Initiator(self.m.ident)
            self._write_plain(self._initiator.hello())
            self.state = "await_welcome"
        else:
            self._responder = crypto.Responder(self.m.ident)
            self.state = "await_hello"

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        """The socket read ``nbytes`` into the reader's buffer: handle every complete frame in
        place (handshake frames one at a time: the frame limit grows once the link is up, and
        the dialler may send big frames right behind its finish message)."""
        if self.state == "closed":
            return
        reader = self.reader
        reader.buffer_updated(nbytes)
        try:
            while True:
                frame = reader.next_frame()
                if frame is None:
                    break
                if self.state == "up":
                    self._on_frame(frame)
                else:
                    self._on_handshake(bytes(frame))
                if self.state == "closed":
                    return
        except LinkError as e:
            self._fail(e)
        if self.state == "up":
            self.last_rx = time.monotonic()

    def data_received(self, data: bytes) -> None:
        """Bytes handed over rather than read in place (transports without buffered reads)."""
        view = memoryview(data)
        while view and self.state != "closed":
            n = self.reader.feed(view)
            view = view[n:]
            self.buffer_updated(0)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self.close_reason or (f"connection lost: {exc}" if exc else "closed by peer")
        self._finish_close(reason)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # ---- handshake ------------------------------------------------------------------
    def _write_plain(self, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(HEADER.pack(len(body)) + body)

    def _on_handshake(self, frame: bytes) -> None:
        if self.state == "await_hello":
            assert self._responder is not None
            if not self.m.admit(self.peername[0]):
                self.close("handshake rate limit exceeded", quiet=True)
                return
            try:
                reply = self._responder.on_hello(frame)
            except VersionError as e:
                self._write_plain(crypto.version_message())
                raise e from None
            except AuthError:
                self._write_plain(crypto.auth_failed_message(self.m.ident))
                raise
            self._write_plain(reply)
            self.state = "await_finish"
        elif self.state == "await_finish":
            assert self._responder is not None
            try:
                session = self._responder.on_finish(frame)
            except AuthError:
                self._write_plain(crypto.auth_failed_message(self.m.ident))
                raise
            self._established(session)
        elif self.state == "await_welcome":
            assert self._initiator is not None
            try:
                finish, session = self._initiator.on_welcome(frame)
            except AuthError as e:
                if "refused" not in str(e):
                    self._write_plain(crypto.auth_failed_message(self.m.ident))
                raise
            self._write_plain(finish)
            self._established(session)
        else:
            raise ProtocolError(f"unexpected frame in state {self.state}")

    def _established(self, session: crypto.Session) -> None:
        self.session = session
        self.state = "up"
        self.reader.limit = MAX_FRAME
        self.reader.resize(READ_BUFFER)
        self.established_wall = time.time()
        self.last_rx = time.monotonic()
        if self._hs_timer:
            self._hs_timer.cancel()
            self._hs_timer = None
        self.m.on_established(self)
        if self.state == "up" and not self.ready.done():
            self.ready.set_result(self)

    def _hs_timeout(self) -> None:
        if self.state != "up":
            self._fail(LinkError(f"handshake not completed within {self.m.handshake_timeout:g}s"))

    # ---- established traffic --------------------------------------------------------
    def _on_frame(self, frame: bytes | memoryview) -> None:
        """One encrypted frame = one msgpack array of messages: decrypt, unpack in one C call,
        dispatch (SEND and BATCH on a fast path: this is the throughput-critical loop)."""
        assert self.session is not None
        plain = self.session.recv.open(frame)
        self.bytes_in += len(frame) + 4
        try:
            msgs = msgpack.unpackb(plain, raw=False, strict_map_key=False)
        except Exception as e:  # msgpack raises many types on malformed input
            raise ProtocolError(f"malformed frame ({type(e).__name__})") from None
        finally:
            plain.release()
        if type(msgs) is not list:
            raise ProtocolError("frame is not an array of messages")
        self.msgs_in += len(msgs)
        m = self.m
        mailboxes = m._mailboxes
        peer = self.session.peer_node
        try:
            for msg in msgs:
                if type(msg) is list and len(msg) == 3:
                    kind = msg[0]
                    if kind == BATCH:
                        handler = mailboxes.get(msg[1])
                        items = msg[2]
                        if handler is not None and type(items) is list:
                            self.msgs_in += len(items) - 1
                            for item in items:
                                try:
                                    res = handler(peer, item)
                                except Exception:
                                    log.exception("mailbox %s handler failed on a message from %s", msg[1], peer)
                                    continue
                                if res is not None:
                                    m.handled(res, msg[1])
                            if self.state == "closed":
                                return
                            continue
                    elif kind == SEND:
                        handler = mailboxes.get(msg[1])
                        if handler is not None:
                            try:
                                res = handler(peer, msg[2])
                                if res is not None:
                                    m.handled(res, msg[1])
                            except Exception:
                                log.exception("mailbox %s handler failed on a message from %s", msg[1], peer)
                            continue
                m.dispatch(self, msg)
                if self.state == "closed":
                    return
        except LinkError:
            raise
        except (ValueError, TypeError) as e:
            raise ProtocolError(f"malformed message ({type(e).__name__}: {e})") from None

    def enqueue(self, packed: bytes, count: int = 1) -> None:
        """Queue one packed message (``count`` > 1 for a batch); flushed at the end of this loop
        iteration, or at once past FLUSH_BYTES."""
        if self.state != "up":
            raise LinkError(f"link to {self.peer} is not up")
        n = len(packed)
        if n > MAX_PLAINTEXT - len(_FRAME_HEAD):
            raise ProtocolError(f"message of {n} bytes exceeds the {MAX_PLAINTEXT}-byte maximum")
        if self.run_mailbox is not None:
            self._close_run()
        if len(self.out) + n > MAX_PLAINTEXT:
            self.flush()
        self.out += packed
        self._items += 1
        self.msgs_out += count
        self._appended()

    def push(self, mailbox: str, packed: bytes | memoryview, count: int = 1) -> None:
        """Append ``count`` packed messages for ``mailbox`` to the open run of messages to that
        mailbox (one BATCH item on the wire), opening a new run if needed. The manager's
        ``send`` appends to an open run itself; this is the general path."""
        if self.state != "up":
            raise LinkError(f"link to {self.peer} is not up")
        n = len(packed)
        out = self.out
        if self.run_mailbox != mailbox or len(out) + n > MAX_PLAINTEXT:
            head = _run_header(mailbox)
            if len(head) + n > MAX_PLAINTEXT - len(_FRAME_HEAD):
                raise ProtocolError(
                    f"message of {n} bytes exceeds the {MAX_PLAINTEXT - len(_FRAME_HEAD) - len(head)}-byte maximum"
                )
            if self.run_mailbox is not None:
                self._close_run()
            if len(out) + len(head) + n > MAX_PLAINTEXT:
                self.flush()
                out = self.out
            out += head
            self._items += 1
            self._run_at = len(out) - 4
            self.run_mailbox = mailbox
        out += packed
        self.run_count += count
        self._appended()

    def overflow(self, last: int) -> None:
        """The manager's ``send`` appended a message of ``last`` bytes to the open run and the
        buffer reached FLUSH_BYTES: flush it, unless that message pushed the buffer past the
        frame maximum; then take it back out and queue it through :meth:`push` (which flushes
        first, or refuses a message too big for any frame)."""
        out = self.out
        if len(out) <= MAX_PLAINTEXT:
            self.flush()
            return
        mailbox = self.run_mailbox
        assert mailbox is not None
        packed = bytes(out[-last:])
        del out[-last:]
        self.run_count -= 1
        self.push(mailbox, packed)

    def _appended(self) -> None:
        if len(self.out) >= FLUSH_BYTES:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = self.m.loop.call_soon(self.flush)

    def _close_run(self) -> None:
        _COUNT.pack_into(self.out, self._run_at, self.run_count)
        self.msgs_out += self.run_count
        self.run_mailbox = None
        self.run_count = 0

    def _reset_out(self) -> bytearray:
        out = self.out
        self.out = bytearray(_FRAME_HEAD)
        self._items = 0
        self.run_mailbox = None
        self.run_count = 0
        return out

    def flush(self, final: bool = False) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self.transport is None or self.session is None or self.transport.is_closing():
            self._reset_out()
            return
        if self.run_mailbox is not None:
            self._close_run()
        items = self._items
        if not items and not final:
            return
        body = self._reset_out()
        _COUNT.pack_into(body, 1, items)
        frame = self.session.send.seal(body, final=final)
        self.transport.write(frame)
        self.bytes_out += len(frame)
        if self.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            self._fail(LinkError(f"peer reads too slowly ({WRITE_BUFFER_LIMIT} bytes unsent)"))

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        if self._flush_handle is not None:
            self.flush()
        await self._can_write.wait()

    # ---- closing --------------------------------------------------------------------
    def _fail(self, err: LinkError) -> None:
        self.error = err
        self.m.on_conn_error(self, err)
        self.close(str(err))

    def close(self, reason: str, quiet: bool = False) -> None:
        if self.state == "closed":
            return
        if not self.close_reason:
            self.close_reason = reason
        if self.state == "up" and not quiet:
            self.flush()
        if self.transport is not None:
            self.transport.close()
        self._finish_close(reason)

    def abort(self, reason: str) -> None:
        self.close_reason = self.close_reason or reason
        if self.transport is not None:
            self.transport.abort()
        self._finish_close(reason)

    def _finish_close(self, reason: str) -> None:
        if self.state == "closed":
            return
        was_up = self.state == "up"
        self.state = "closed"
        if self._hs_timer:
            self._hs_timer.cancel()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self.ready.done():
            self.ready.set_exception(self.error or LinkError(reason))
            self.ready.exception()  # mark retrieved: the dialler may be gone
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(LinkError(f"link to {self.peer} lost: {reason}"))
        self.pending.clear()
        self.closed.set()
        self.m.on_closed(self, reason, was_up)


ConnFactory = Callable[[], Conn]
