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
    """Incremental decoder. ``feed`` returns complete frames; it never allocates a body
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
        if not buf and len(data) >= 4:
            # fast path: nothing buffered, slice complete frames straight out of ``data``
            view = memoryview(data)
            frames_: list[bytes] = []
            pos_ = 0
            end_ = len(data)
            while end_ - pos_ >= 4 and not (max_frames and len(frames_) >= max_frames):
                (size,) = HEADER.unpack_from(data, pos_)
                if size > self.limit:
                    raise ProtocolError(f"frame length {size} exceeds the {self.limit}-byte maximum")
                if size == 0:
                    raise ProtocolError("empty frame")
                if end_ - pos_ - 4 < size:
                    break
                frames_.append(bytes(view[pos_ + 4 : pos_ + 4 + size]))
                pos_ += 4 + size
            if pos_ < end_:
                buf += view[pos_:]
            return frames_
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        view = memoryview(buf)
        try:
            while end - pos >= 4 and not (max_frames and len(frames) >= max_frames):
                (size,) = HEADER.unpack_from(buf, pos)
                if size > self.limit:
                    raise ProtocolError(f"frame length {size} exceeds the {self.limit}-byte maximum")
                if size == 0:
                    raise ProtocolError("empty frame")
                if end - pos - 4 < size:
                    break
                frames.append(bytes(view[pos + 4 : pos + 4 + size]))
                pos += 4 + size
        finally:
            view.release()
        if pos:
            del buf[:pos]
        return frames
