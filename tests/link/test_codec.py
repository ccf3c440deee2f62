"""Frame codec: length-prefixed frames with a hard maximum, never trusting the prefix."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mn_node.errors import LinkError, ProtocolError
from mn_node.link.codec import HEADER, MAX_FRAME, MAX_HANDSHAKE_FRAME, FrameDecoder, encode_frame


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
