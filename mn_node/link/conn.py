"""One TCP connection: handshake, then encrypted, coalesced message frames.

A :class:`Conn` knows the wire (frames, message kinds, the link's own TICK/TOCK, CALL/REPLY and
LEAVE messages); whoever keeps the registry of links (the :class:`ConnOwner`, in practice the
LinkManager) is told about its life through named callbacks and gets the application's messages
through :meth:`ConnOwner.deliver` and :meth:`ConnOwner.on_call`. Neither reads the other's
private state.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
import time
from typing import Any, Protocol, cast

import msgpack

from mn_node.errors import AuthError, LinkError, ProtocolError, RemoteError, VersionError
from mn_node.link import crypto
from mn_node.link.codec import HEADER, MAX_FRAME, MAX_HANDSHAKE_FRAME, READ_BUFFER, FrameReader

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

_refs = itertools.count(1)
"""References of this process' CALLs (a REPLY names the CALL it answers)."""
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


class ConnOwner(Protocol):
    """What a :class:`Conn` asks of the registry of links that made it."""

    @property
    def ident(self) -> crypto.Identity:
        """This node's identity and cookie, for the handshake."""
        ...

    @property
    def handshake_timeout(self) -> float:
        """Seconds a connection may take to authenticate before it is dropped."""
        ...

    def admit(self, ip: str) -> bool:
        """May a connection from ``ip`` start a handshake now (the per-source rate limit)?"""
        ...

    def on_established(self, conn: Conn) -> None:
        """``conn`` authenticated its peer; the owner may still close it (a duplicate)."""
        ...

    def on_conn_error(self, conn: Conn, err: LinkError) -> None:
        """``conn`` failed with ``err`` and is about to close."""
        ...

    def on_closed(self, conn: Conn, reason: str) -> None:
        """``conn`` is closed (called once, whatever closed it)."""
        ...

    def deliver(self, peer: str, mailbox: str, items: list[Any]) -> None:
        """Messages from ``peer`` to ``mailbox``, in order: hand each to its handler."""
        ...

    def on_call(self, conn: Conn, ref: Any, mailbox: str, body: Any) -> None:
        """``peer`` calls ``mailbox``; answer later with :meth:`Conn.reply`."""
        ...


class Conn(asyncio.BufferedProtocol):
    """A link in the making or established. The owner keeps the registry of links.

    Others see a Conn through read-only properties and methods, with one exception, the open
    run (the hot path of ``LinkManager.send``): while ``run_mailbox`` names the mailbox of the
    run at the end of ``out``, a sender may append one packed message to ``out``, add 1 to
    ``run_count`` and, once ``len(out)`` reaches FLUSH_BYTES, call :meth:`overflow` - the steps
    :meth:`push` takes, inline, which saves a Python call per message (about a tenth of the
    sender's CPU per 100-byte message). Nothing else of the buffer may be touched.
    """

    # slots: the hot path reads a few attributes per message (fast slot access, no dict)
    __slots__ = (
        "_bytes_in", "_bytes_out", "_can_write", "_close_reason", "_closed", "_error", "_expected",
        "_flush_handle", "_hs_timer", "_initiator", "_items", "_last_rx", "_left", "_loop",
        "_msgs_in", "_msgs_out", "_outbound", "_owner", "_peername", "_pending", "_reader", "_ready",
        "_responder", "_rtt_ms", "_run_at", "_session", "_sockname", "_state", "_transport", "out",
        "run_count", "run_mailbox",
    )

    def __init__(self, owner: ConnOwner, outbound: bool, expected: str | None = None) -> None:
        self._owner = owner
        self._loop = loop = asyncio.get_running_loop()
        self._outbound = outbound
        self._expected = expected
        self._transport: asyncio.Transport | None = None
        self._peername: tuple[str, int] = ("?", 0)
        self._sockname: tuple[str, int] = ("?", 0)
        # small buffer until the peer has authenticated: a connection flood costs little memory
        self._reader = FrameReader(MAX_HANDSHAKE_FRAME, HANDSHAKE_READ_BUFFER)
        self._state = "new"
        self._initiator: crypto.Initiator | None = None
        self._responder: crypto.Responder | None = None
        self._session: crypto.Session | None = None
        self._ready: asyncio.Future[None] = loop.create_future()
        self._closed = asyncio.Event()
        self._close_reason = ""
        self._error: LinkError | None = None
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
        self._pending: dict[Any, asyncio.Future[Any]] = {}
        self._last_rx = time.monotonic()
        self._rtt_ms: float | None = None
        self._msgs_in = self._msgs_out = self._bytes_in = self._bytes_out = 0
        self._left = False

    # ---- read-only view ---------------------------------------------------------------
    @property
    def peer(self) -> str:
        """The peer's node name (the expected one until it has authenticated)."""
        return self._session.peer_node if self._session else (self._expected or "")

    @property
    def peer_inc(self) -> str:
        """The peer's incarnation ("" until it has authenticated)."""
        return self._session.peer_incarnation if self._session else ""

    @property
    def outbound(self) -> bool:
        """True if we dialled, False if the peer did."""
        return self._outbound

    @property
    def expected(self) -> str | None:
        """The node name we dialled (None for an accepted connection)."""
        return self._expected

    @property
    def dialer(self) -> str:
        """Name of the node that dialled this connection."""
        return self._owner.ident.node if self._outbound else self.peer

    @property
    def peername(self) -> tuple[str, int]:
        return self._peername

    @property
    def sockname(self) -> tuple[str, int]:
        return self._sockname

    @property
    def is_up(self) -> bool:
        """Authenticated and not closed."""
        return self._state == "up"

    @property
    def left(self) -> bool:
        """The peer said it is leaving (an orderly stop, not a failure)."""
        return self._left

    @property
    def rtt_ms(self) -> float | None:
        """Round trip of the last keepalive, None before the first answer."""
        return self._rtt_ms

    @property
    def last_rx(self) -> float:
        """``time.monotonic()`` of the last bytes received."""
        return self._last_rx

    @property
    def msgs_in(self) -> int:
        return self._msgs_in

    @property
    def msgs_out(self) -> int:
        return self._msgs_out

    @property
    def bytes_in(self) -> int:
        return self._bytes_in

    @property
    def bytes_out(self) -> int:
        return self._bytes_out

    @property
    def pending_calls(self) -> int:
        """Our CALLs on this link still waiting for their REPLY."""
        return len(self._pending)

    @property
    def unflushed(self) -> int:
        """Plaintext bytes queued for the next frame."""
        return len(self.out) - len(_FRAME_HEAD)

    def describe(self) -> str:
        who = self.peer or (self._responder.peer_hint if self._responder else "")
        host, port = self._peername
        return f"{who} ({host}:{port})" if who else f"{host}:{port}"

    async def wait_up(self) -> None:
        """Until the handshake is done; raises the :class:`LinkError` that ended it otherwise."""
        await self._ready

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # ---- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a socket transport (asyncio's, or uvloop's, which does not subclass asyncio.Transport)
        self._transport = transport = cast("asyncio.Transport", transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for key, attr in (("peername", "_peername"), ("sockname", "_sockname")):
            addr = transport.get_extra_info(key)
            if addr:
                setattr(self, attr, (str(addr[0]), int(addr[1])))
        transport.set_write_buffer_limits(high=4 * 1024 * 1024)
        owner = self._owner
        self._hs_timer = self._loop.call_later(owner.handshake_timeout, self._hs_timeout)
        if self._outbound:
            self._initiator = crypto.Initiator(owner.ident)
            self._write_plain(self._initiator.hello())
            self._state = "await_welcome"
        else:
            self._responder = crypto.Responder(owner.ident)
            self._state = "await_hello"

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        """The socket read ``nbytes`` into the reader's buffer: handle every complete frame in
        place (handshake frames one at a time: the frame limit grows once the link is up, and
        the dialler may send big frames right behind its finish message)."""
        if self._state == "closed":
            return
        reader = self._reader
        reader.buffer_updated(nbytes)
        try:
            while True:
                frame = reader.next_frame()
                if frame is None:
                    break
                if self._state == "up":
                    self._on_frame(frame)
                else:
                    self._on_handshake(bytes(frame))
                if self._state == "closed":
                    return
        except LinkError as e:
            self._fail(e)
        if self._state == "up":
            self._last_rx = time.monotonic()

    def data_received(self, data: bytes) -> None:
        """Bytes handed over rather than read in place (transports without buffered reads)."""
        view = memoryview(data)
        while view and self._state != "closed":
            n = self._reader.feed(view)
            view = view[n:]
            self.buffer_updated(0)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self._close_reason or (f"connection lost: {exc}" if exc else "closed by peer")
        self._finish_close(reason)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # ---- handshake ------------------------------------------------------------------
    def _write_plain(self, body: bytes) -> None:
        assert self._transport is not None
        self._transport.write(HEADER.pack(len(body)) + body)

    def _on_handshake(self, frame: bytes) -> None:
        ident = self._owner.ident
        if self._state == "await_hello":
            assert self._responder is not None
            if not self._owner.admit(self._peername[0]):
                self.close("handshake rate limit exceeded", quiet=True)
                return
            try:
                reply = self._responder.on_hello(frame)
            except VersionError as e:
                self._write_plain(crypto.version_message())
                raise e from None
            except AuthError:
                self._write_plain(crypto.auth_failed_message(ident))
                raise
            self._write_plain(reply)
            self._state = "await_finish"
        elif self._state == "await_finish":
            assert self._responder is not None
            try:
                session = self._responder.on_finish(frame)
            except AuthError:
                self._write_plain(crypto.auth_failed_message(ident))
                raise
            self._established(session)
        elif self._state == "await_welcome":
            assert self._initiator is not None
            try:
                finish, session = self._initiator.on_welcome(frame)
            except AuthError as e:
                if "refused" not in str(e):
                    self._write_plain(crypto.auth_failed_message(ident))
                raise
            self._write_plain(finish)
            self._established(session)
        else:
            raise ProtocolError(f"unexpected frame in state {self._state}")

    def _established(self, session: crypto.Session) -> None:
        self._session = session
        self._state = "up"
        self._reader.limit = MAX_FRAME
        self._reader.resize(READ_BUFFER)
        self._last_rx = time.monotonic()
        if self._hs_timer:
            self._hs_timer.cancel()
            self._hs_timer = None
        self._owner.on_established(self)
        if self._state == "up" and not self._ready.done():
            self._ready.set_result(None)

    def _hs_timeout(self) -> None:
        if self._state != "up":
            self._fail(LinkError(f"handshake not completed within {self._owner.handshake_timeout:g}s"))

    # ---- established traffic: in --------------------------------------------------------
    def _on_frame(self, frame: bytes | memoryview) -> None:
        """One encrypted frame = one msgpack array of messages: decrypt, unpack in one C call,
        dispatch (BATCH, the runs of messages to one mailbox, on a fast path: this is the
        throughput-critical loop)."""
        assert self._session is not None
        plain = self._session.recv.open(frame)
        self._bytes_in += len(frame) + 4
        try:
            msgs = msgpack.unpackb(plain, raw=False, strict_map_key=False)
        except Exception as e:  # msgpack raises many types on malformed input
            raise ProtocolError(f"malformed frame ({type(e).__name__})") from None
        finally:
            plain.release()
        if type(msgs) is not list:
            raise ProtocolError("frame is not an array of messages")
        self._msgs_in += len(msgs)
        deliver = self._owner.deliver
        peer = self._session.peer_node
        try:
            for msg in msgs:
                if type(msg) is list and len(msg) == 3 and msg[0] == BATCH:
                    mailbox, items = msg[1], msg[2]
                    if type(mailbox) is not str:
                        raise ProtocolError("mailbox name is not a string")
                    if type(items) is not list:
                        raise ProtocolError("batch body is not an array")
                    self._msgs_in += len(items) - 1
                    deliver(peer, mailbox, items)
                else:
                    self._on_message(msg, peer)
                if self._state == "closed":
                    return
        except LinkError:
            raise
        except (ValueError, TypeError) as e:
            raise ProtocolError(f"malformed message ({type(e).__name__}: {e})") from None

    def _on_message(self, msg: Any, peer: str) -> None:
        """Every message but a BATCH: SEND, the link's own messages, CALL and REPLY."""
        if type(msg) is not list or not msg or type(msg[0]) is not int:
            raise ProtocolError("message is not a tagged tuple")
        kind, n = msg[0], len(msg)
        if kind == SEND and n == 3:
            if type(msg[1]) is not str:
                raise ProtocolError("mailbox name is not a string")
            self._owner.deliver(peer, msg[1], [msg[2]])
        elif kind == TICK and n == 2:
            self.enqueue(msgpack.packb((TOCK, msg[1])))
        elif kind == TOCK and n == 2 and type(msg[1]) is int:
            self._rtt_ms = max(0.0, (time.monotonic_ns() - msg[1]) / 1e6)
        elif kind == CALL and n == 4:
            if type(msg[2]) is not str:
                raise ProtocolError("mailbox name is not a string")
            self._owner.on_call(self, msg[1], msg[2], msg[3])
        elif kind == REPLY and n == 4:
            fut = self._pending.get(msg[1])
            if fut is not None and not fut.done():
                if msg[2]:
                    fut.set_result(msg[3])
                else:
                    fut.set_exception(RemoteError(f"{peer}: {msg[3]}"))
        elif kind == LEAVE and n == 2:
            self._left = True
            self.close(f"left: {msg[1]}", quiet=True)
        else:
            raise ProtocolError(f"unknown message kind {kind}")

    # ---- established traffic: out -------------------------------------------------------
    def push(self, mailbox: str, packed: bytes | memoryview, count: int = 1) -> None:
        """Queue ``count`` packed messages for ``mailbox``: appended to the open run of messages
        to that mailbox (one BATCH item on the wire), or to a new run. Flushed at the end of
        this loop iteration, or at once past FLUSH_BYTES. This is the hot path of ``send``."""
        if self.run_mailbox == mailbox:
            # the open run: the buffer is below FLUSH_BYTES before any append (a scheduled flush
            # is pending), and the link is up (closing resets the run)
            out = self.out
            out += packed
            self.run_count += count
            if len(out) >= FLUSH_BYTES:
                self.overflow(len(packed), count)
        else:
            self._push_new_run(mailbox, packed, count)

    def _push_new_run(self, mailbox: str, packed: bytes | memoryview, count: int) -> None:
        if self._state != "up":
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

    def overflow(self, last: int, count: int) -> None:
        """The last append (``last`` bytes, ``count`` messages) to the open run took the buffer
        to FLUSH_BYTES: flush it, unless it went past the frame maximum; then take the append
        back out and queue it again as a new run (which flushes first, or refuses a message too
        big for any frame)."""
        out = self.out
        if len(out) <= MAX_PLAINTEXT:
            self.flush()
            return
        mailbox = self.run_mailbox
        assert mailbox is not None
        packed = bytes(out[-last:])
        del out[-last:]
        self.run_count -= count
        self._push_new_run(mailbox, packed, count)

    def enqueue(self, packed: bytes) -> None:
        """Queue one packed message of any kind (not part of a run)."""
        if self._state != "up":
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
        self._msgs_out += 1
        self._appended()

    async def call(self, mailbox: str, msg: Any) -> Any:
        """Call the peer's ``mailbox`` and wait for its reply (its handler's result), or raise
        :class:`RemoteError` with the peer's error; :class:`LinkError` if the link is lost."""
        ref = next(_refs)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[ref] = fut
        try:
            self.enqueue(msgpack.packb((CALL, ref, mailbox, msg)))
            return await fut
        finally:
            self._pending.pop(ref, None)

    def reply(self, ref: Any, ok: bool, value: Any) -> None:
        """Answer the peer's CALL ``ref``: its result, or (``ok`` False) an error text. Dropped
        if the link is gone meanwhile."""
        if self._state != "up":
            return
        try:
            self.enqueue(msgpack.packb((REPLY, ref, ok, value)))
        except (LinkError, TypeError, ValueError) as e:
            self.enqueue(msgpack.packb((REPLY, ref, False, f"reply not sendable: {e}")))

    def ping(self) -> None:
        """Send a keepalive TICK (the peer's TOCK measures the round trip)."""
        if self._state == "up":
            self.enqueue(msgpack.packb((TICK, time.monotonic_ns())))

    def _appended(self) -> None:
        if len(self.out) >= FLUSH_BYTES:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def _close_run(self) -> None:
        _COUNT.pack_into(self.out, self._run_at, self.run_count)
        self._msgs_out += self.run_count
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
        """Seal and write what is queued now (``final``: the last frame of the link)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        transport, session = self._transport, self._session
        if transport is None or session is None or transport.is_closing():
            self._reset_out()
            return
        if self.run_mailbox is not None:
            self._close_run()
        items = self._items
        if not items and not final:
            return
        body = self._reset_out()
        _COUNT.pack_into(body, 1, items)
        frame = session.send.seal(body, final=final)
        transport.write(frame)
        self._bytes_out += len(frame)
        if transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            self._fail(LinkError(f"peer reads too slowly ({WRITE_BUFFER_LIMIT} bytes unsent)"))

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        if self._flush_handle is not None:
            self.flush()
        await self._can_write.wait()

    # ---- closing --------------------------------------------------------------------
    def leave(self, reason: str) -> None:
        """Orderly leave: tell the peer why, flush, close."""
        if self._state == "up":
            try:
                self.enqueue(msgpack.packb((LEAVE, reason)))
                self.flush(final=True)
            except LinkError:
                pass
        self.close(f"we left: {reason}")

    def _fail(self, err: LinkError) -> None:
        self._error = err
        self._owner.on_conn_error(self, err)
        self.close(str(err))

    def close(self, reason: str, quiet: bool = False) -> None:
        """Close (``quiet``: without flushing what is queued)."""
        if self._state == "closed":
            return
        if not self._close_reason:
            self._close_reason = reason
        if self._state == "up" and not quiet:
            self.flush()
        if self._transport is not None:
            self._transport.close()
        self._finish_close(reason)

    def _finish_close(self, reason: str) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        if self._hs_timer:
            self._hs_timer.cancel()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._reset_out()  # an open run is only ever appended to while the link is up
        if not self._ready.done():
            self._ready.set_exception(self._error or LinkError(reason))
            self._ready.exception()  # mark retrieved: the dialler may be gone
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(LinkError(f"link to {self.peer} lost: {reason}"))
        self._pending.clear()
        self._closed.set()
        self._owner.on_closed(self, reason)
