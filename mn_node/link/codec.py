"""Length-prefixed frames with a hard maximum, decoded without trusting the prefix."""

from __future__ import annotations

import struct

from mn_node.errors import ProtocolError

HEADER = struct.Struct(">I")
MAX_FRAME = 4 * 1024 * 1024
"""Largest frame body (ciphertext) accepted on an established link."""
MAX_HANDSHAKE_FRAME = 1024
"""Largest frame accepted before the peer has authenticated."""


def encode_frame(body: bytes) -> bytes:
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte maximum")
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder for callers handed bytes (test peers, tools; a link reads in place
    with :class:`FrameReader`). ``feed`` returns complete frames; it never allocates a body
    before its bytes have arrived, so a huge length prefix costs nothing but a refusal."""

    __slots__ = ("_buf", "limit")

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.limit = limit

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes, max_frames: int = 0) -> list[bytes]:
        """Append ``data``; return the complete frames (at most ``max_frames`` if > 0, the rest
        stays buffered: the limit may change after a frame, e.g. once a handshake completes)."""
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4 and not (max_frames and len(frames) >= max_frames):
            (size,) = HEADER.unpack_from(buf, pos)
            if size > self.limit:
                raise ProtocolError(f"frame length {size} exceeds the {self.limit}-byte maximum")
            if size == 0:
                raise ProtocolError("empty frame")
            if end - pos - 4 < size:
                break
            frames.append(bytes(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if pos:
            del buf[:pos]
        return frames


READ_BUFFER = 512 * 1024
"""Default size of a :class:`FrameReader`'s buffer (and so of one socket read)."""
_MIN_READ = 64 * 1024


class FrameReader:
    """In-place frame reader for :class:`asyncio.BufferedProtocol`: the socket reads straight
    into this buffer (:meth:`get_buffer`), and :meth:`next_frame` hands out each complete frame
    body as a view into it, so a frame is never copied before it is decrypted.

    Same rules as :class:`FrameDecoder`: a length prefix above ``limit`` (which may change
    between frames, e.g. once a handshake completes) or of zero is refused before any buffer
    is grown for it; the buffer grows only to hold a frame whose prefix was accepted, and
    shrinks back once that frame is consumed. A view from :meth:`next_frame` is valid until
    the next call to :meth:`get_buffer`.
    """

    __slots__ = ("_buf", "_end", "_need", "_size", "_start", "limit")

    def __init__(self, limit: int = MAX_FRAME, size: int = READ_BUFFER) -> None:
        self._size = size
        self._buf = bytearray(size)
        self._start = 0
        self._end = 0
        self._need = 0  # bytes (prefix + body) of the frame waiting at _start, once its prefix is known
        self.limit = limit

    def resize(self, size: int) -> None:
        """Use a buffer of ``size`` bytes from the next read on (e.g. a small one while a
        connection is unauthenticated, a big one once it is a link)."""
        self._size = size

    @property
    def buffered(self) -> int:
        return self._end - self._start

    @property
    def capacity(self) -> int:
        return len(self._buf)

    def get_buffer(self) -> memoryview:
        """Free space to receive into; make room first (move the partial frame to the front,
        grow the buffer for an accepted oversized frame, shrink it back after one)."""
        buf = self._buf
        start, end = self._start, self._end
        pending = end - start
        need = max(self._need, 4)
        size = len(buf)
        default = self._size
        if size != default and need <= default and pending <= default // 2:
            new = bytearray(default)  # back to the default size (e.g. a big frame is done)
            new[:pending] = buf[start:end]
            self._buf, self._start, self._end = new, 0, pending
        elif need > size:
            new = bytearray(need)  # need was checked against the limit by next_frame
            new[:pending] = buf[start:end]
            self._buf, self._start, self._end = new, 0, pending
        elif start and (size - end < min(_MIN_READ, size // 2) or start + need > size):
            buf[:pending] = buf[start:end]
            self._start, self._end = 0, pending
        if self._end == len(self._buf):  # only if next_frame was not drained: never hand out 0 bytes
            new = bytearray(self._end + self._size)
            new[: self._end] = self._buf
            self._buf = new
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Copy in as much of ``data`` as fits now; return how many bytes were taken (for
        callers handed bytes rather than reading in place: take, drain :meth:`next_frame`,
        repeat with the rest)."""
        room = self.get_buffer()
        n = min(len(room), len(data))
        room[:n] = memoryview(data)[:n]
        self._end += n
        return n

    def next_frame(self) -> memoryview | None:
        """The next complete frame body, or None if it has not fully arrived yet."""
        start = self._start
        avail = self._end - start
        if avail < 4:
            self._need = 0
            if not avail:
                self._start = self._end = 0
            return None
        (size,) = HEADER.unpack_from(self._buf, start)
        if size > self.limit:
            raise ProtocolError(f"frame length {size} exceeds the {self.limit}-byte maximum")
        if size == 0:
            raise ProtocolError("empty frame")
        if avail - 4 < size:
            self._need = size + 4
            return None
        self._need = 0
        self._start = start + 4 + size
        return memoryview(self._buf)[start + 4 : start + 4 + size]
