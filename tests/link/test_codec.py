"""Frame codec: length-prefixed frames with a hard maximum, never trusting the prefix."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mn_node.errors import LinkError, ProtocolError
from mn_node.link.codec import (
    HEADER,
    MAX_FRAME,
    MAX_HANDSHAKE_FRAME,
    READ_BUFFER,
    FrameDecoder,
    FrameReader,
    encode_frame,
)


def test_roundtrip_simple() -> None:
    d = FrameDecoder()
    assert d.feed(encode_frame(b"abc") + encode_frame(b"de")) == [b"abc", b"de"]
    assert d.buffered == 0


def test_partial_frames_wait_for_bytes() -> None:
    d = FrameDecoder()
    wire = encode_frame(b"hello world")
    assert d.feed(wire[:2]) == []
    assert d.feed(wire[2:7]) == []
    assert d.feed(wire[7:]) == [b"hello world"]


@pytest.mark.parametrize("limit", [MAX_HANDSHAKE_FRAME, MAX_FRAME])
def test_prefix_above_max_refused_without_allocating(limit: int) -> None:
    d = FrameDecoder(limit)
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="exceeds"):
            d.feed(HEADER.pack(limit + 1))
        with pytest.raises(ProtocolError, match="exceeds"):
            FrameDecoder(limit).feed(b"\xff\xff\xff\xff" + b"x" * 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"refusing a {limit + 1}-byte prefix allocated {peak} bytes"


def test_prefix_at_max_is_accepted_and_waits() -> None:
    d = FrameDecoder(MAX_HANDSHAKE_FRAME)
    assert d.feed(HEADER.pack(MAX_HANDSHAKE_FRAME) + b"x" * 10) == []
    assert d.feed(b"y" * (MAX_HANDSHAKE_FRAME - 10)) == [b"x" * 10 + b"y" * (MAX_HANDSHAKE_FRAME - 10)]


def test_empty_frame_refused() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(HEADER.pack(0))


def test_encode_refuses_oversized() -> None:
    with pytest.raises(ProtocolError):
        encode_frame(b"x" * (MAX_FRAME + 1))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=20), st.data())
def test_any_split_gives_the_same_frames(bodies: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(encode_frame(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    d = FrameDecoder()
    out: list[bytes] = []
    prev = 0
    for c in [*cuts, len(wire)]:
        out += d.feed(wire[prev:c])
        prev = c
    assert out == bodies
    assert d.buffered == 0


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=8))
def test_random_bytes_only_ever_raise_link_errors(chunks: list[bytes]) -> None:
    for limit in (MAX_HANDSHAKE_FRAME, MAX_FRAME):
        d = FrameDecoder(limit)
        try:
            for c in chunks:
                for f in d.feed(c):
                    assert 0 < len(f) <= limit
        except LinkError:
            pass
        assert d.buffered <= sum(len(c) for c in chunks)


# ---- FrameReader: in-place reads (what a link's BufferedProtocol uses) --------------------
def read_all(r: FrameReader, data: bytes) -> list[bytes]:
    """Hand ``data`` to the reader as a socket would (as much as fits per read), copying every
    frame out before the next read."""
    out: list[bytes] = []
    view = memoryview(data)
    while True:
        n = r.feed(view)
        view = view[n:]
        while (f := r.next_frame()) is not None:
            out.append(bytes(f))
        if not view:
            return out


def test_reader_roundtrip_and_reset() -> None:
    r = FrameReader()
    assert read_all(r, encode_frame(b"abc") + encode_frame(b"de")) == [b"abc", b"de"]
    assert r.buffered == 0
    assert len(r.get_buffer()) == READ_BUFFER  # all consumed: the whole buffer is free again


def test_reader_frames_are_views_into_its_buffer() -> None:
    r = FrameReader()
    r.feed(encode_frame(b"hello"))
    f = r.next_frame()
    assert isinstance(f, memoryview) and bytes(f) == b"hello"


@pytest.mark.parametrize("limit", [MAX_HANDSHAKE_FRAME, MAX_FRAME])
def test_reader_prefix_above_max_refused_without_allocating(limit: int) -> None:
    r = FrameReader(limit)
    tracemalloc.start()
    try:
        r.feed(HEADER.pack(limit + 1) + b"x" * 10)
        with pytest.raises(ProtocolError, match="exceeds"):
            r.next_frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"refusing a {limit + 1}-byte prefix allocated {peak} bytes"
    assert r.capacity == READ_BUFFER


def test_reader_empty_frame_refused() -> None:
    r = FrameReader()
    r.feed(HEADER.pack(0))
    with pytest.raises(ProtocolError, match="empty"):
        r.next_frame()


def test_reader_frame_of_exactly_max_grows_then_shrinks_back() -> None:
    r = FrameReader(MAX_FRAME)
    big = bytes(range(256)) * (MAX_FRAME // 256)
    assert len(big) == MAX_FRAME
    assert read_all(r, b"".join([encode_frame(b"before"), encode_frame(big), encode_frame(b"after")])) == [
        b"before", big, b"after"]
    assert r.buffered == 0
    r.get_buffer()
    assert r.capacity == READ_BUFFER  # the 4 MiB buffer is not kept once its frame is done


def test_reader_prefix_at_max_waits_without_growing_past_the_frame() -> None:
    r = FrameReader(MAX_FRAME)
    r.feed(HEADER.pack(MAX_FRAME) + b"x" * 10)
    assert r.next_frame() is None
    r.get_buffer()
    assert r.capacity == MAX_FRAME + 4


def test_reader_limit_applies_per_frame() -> None:
    """The handshake reads with a 1 KiB limit and raises it once the link is up, possibly with
    a big frame already in the same read."""
    r = FrameReader(MAX_HANDSHAKE_FRAME)
    r.feed(encode_frame(b"finish") + encode_frame(b"z" * 100_000)[:5000])
    assert r.next_frame() == b"finish"
    with pytest.raises(ProtocolError, match="exceeds"):
        r.next_frame()  # still the handshake limit
    r.limit = MAX_FRAME
    assert r.next_frame() is None
    assert read_all(r, encode_frame(b"z" * 100_000)[5000:]) == [b"z" * 100_000]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=20), st.data())
def test_reader_any_split_gives_the_same_frames(bodies: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(encode_frame(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    r = FrameReader()
    out: list[bytes] = []
    prev = 0
    for c in [*cuts, len(wire)]:
        out += read_all(r, wire[prev:c])
        prev = c
    assert out == bodies
    assert r.buffered == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 700_000), min_size=1, max_size=6), st.integers(1, 300_000))
def test_reader_big_frames_in_small_reads(sizes: list[int], chunk: int) -> None:
    """Frames bigger than the default buffer, read in arbitrary chunk sizes: every frame comes
    out whole, and the buffer never grows beyond the biggest frame."""
    bodies = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    wire = b"".join(encode_frame(b) for b in bodies)
    r = FrameReader()
    out: list[bytes] = []
    for i in range(0, len(wire), chunk):
        out += read_all(r, wire[i : i + chunk])
        assert r.capacity <= max(READ_BUFFER, max(sizes) + 4)
    assert out == bodies


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=8))
def test_reader_random_bytes_only_ever_raise_link_errors(chunks: list[bytes]) -> None:
    for limit in (MAX_HANDSHAKE_FRAME, MAX_FRAME):
        r = FrameReader(limit)
        try:
            for c in chunks:
                for f in read_all(r, c):
                    assert 0 < len(f) <= limit
        except LinkError:
            pass
        r.get_buffer()
        assert r.capacity <= max(READ_BUFFER, limit + 4)  # grown only for a prefix within the limit


def test_reader_small_buffer_for_handshakes_then_resized() -> None:
    r = FrameReader(MAX_HANDSHAKE_FRAME, 4 * MAX_HANDSHAKE_FRAME)
    assert r.capacity == 4 * MAX_HANDSHAKE_FRAME
    wire = b"".join(encode_frame(bytes([i]) * MAX_HANDSHAKE_FRAME) for i in range(10))
    assert read_all(r, wire) == [bytes([i]) * MAX_HANDSHAKE_FRAME for i in range(10)]
    assert r.capacity == 4 * MAX_HANDSHAKE_FRAME
    r.limit = MAX_FRAME
    r.resize(READ_BUFFER)
    assert len(r.get_buffer()) == READ_BUFFER
