"""Sans-IO handshake and session streams (mn_node.link.crypto)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mn_node.config import cookie_hash
from mn_node.errors import AuthError, LinkError, ProtocolError, VersionError
from mn_node.link import crypto
from mn_node.link.crypto import Identity, Initiator, Responder, Session

COOKIE = b"k" * 40
OTHER = b"o" * 40


def ident(node: str, cookie: bytes = COOKIE) -> Identity:
    return Identity(cookie, node, os.urandom(6).hex())


@dataclass(frozen=True)
class SpoofedIdentity(Identity):
    """Knows the public cluster id (from mDNS, say) but not the cookie."""

    spoof_cid: str = ""

    @property
    def cid(self) -> str:
        return self.spoof_cid


def handshake(a: Identity, b: Identity) -> tuple[Session, Session, list[bytes]]:
    i, r = Initiator(a), Responder(b)
    m1 = i.hello()
    m2 = r.on_hello(m1)
    m3, si = i.on_welcome(m2)
    sr = r.on_finish(m3)
    return si, sr, [m1, m2, m3]


def test_handshake_establishes_both_directions() -> None:
    a, b = ident("a@h"), ident("b@h")
    si, sr, _ = handshake(a, b)
    assert (si.peer_node, si.peer_incarnation) == ("b@h", b.incarnation)
    assert (sr.peer_node, sr.peer_incarnation) == ("a@h", a.incarnation)
    assert sr.recv.decrypt(si.send.encrypt(b"ping")) == b"ping"
    assert si.recv.decrypt(sr.send.encrypt(b"pong")) == b"pong"


def test_cookie_never_in_handshake_messages() -> None:
    _, _, msgs = handshake(ident("a@h"), ident("b@h"))
    for m in msgs:
        assert COOKIE not in m
    assert cookie_hash(COOKIE).encode() in msgs[0]


def test_wrong_cookie_refused_by_responder() -> None:
    i, r = Initiator(ident("a@h", OTHER)), Responder(ident("b@h"))
    with pytest.raises(AuthError, match="another cookie"):
        r.on_hello(i.hello())
    # what the responder then sends back makes the initiator refuse too
    with pytest.raises(AuthError, match="refused our cookie"):
        i.on_welcome(crypto.auth_failed_message(r.ident))


def test_wrong_cookie_refused_by_initiator() -> None:
    i = Initiator(ident("a@h"))
    fake = Responder(SpoofedIdentity(OTHER, "b@h", "x", spoof_cid=cookie_hash(COOKIE)))
    with pytest.raises(AuthError, match="proof is invalid"):
        i.on_welcome(fake.on_hello(i.hello()))


def test_spoofed_cluster_id_without_cookie_cannot_finish() -> None:
    """An attacker who knows the public cluster id still cannot produce the initiator proof."""
    attacker = Initiator(SpoofedIdentity(OTHER, "evil@h", "x", spoof_cid=cookie_hash(COOKIE)))
    r = Responder(ident("b@h"))
    m2 = r.on_hello(attacker.hello())
    with pytest.raises(AuthError):
        attacker.on_welcome(m2)  # it cannot check our proof either
    outer = msgpack.unpackb(m2)
    forged = msgpack.packb({"t": "finish", "hdr": outer["hdr"], "mac": os.urandom(32)})
    with pytest.raises(AuthError, match="proof is invalid"):
        r.on_finish(forged)


def test_recorded_handshake_replayed_to_responder_is_refused() -> None:
    a, b = ident("a@h"), ident("b@h")
    _, _, (m1, _m2, m3) = handshake(a, b)
    r2 = Responder(b)
    r2.on_hello(m1)  # the hello alone proves nothing
    with pytest.raises(AuthError):
        r2.on_finish(m3)


def test_recorded_welcome_replayed_to_initiator_is_refused() -> None:
    a, b = ident("a@h"), ident("b@h")
    _, _, (_m1, m2, _m3) = handshake(a, b)
    with pytest.raises(AuthError):
        Initiator(a).on_welcome(m2)


def test_sessions_of_two_handshakes_are_independent() -> None:
    a, b = ident("a@h"), ident("b@h")
    s1, _, _ = handshake(a, b)
    _, r2, _ = handshake(a, b)
    with pytest.raises(ProtocolError):
        r2.recv.decrypt(s1.send.encrypt(b"from another session"))


def test_version_mismatch_has_its_own_error() -> None:
    i, r = Initiator(ident("a@h")), Responder(ident("b@h"))
    hello = msgpack.unpackb(i.hello())
    hello["v"] = crypto.PROTOCOL_VERSION + 1
    with pytest.raises(VersionError, match=f"v{crypto.PROTOCOL_VERSION + 1}"):
        r.on_hello(msgpack.packb(hello))
    reply = msgpack.packb({"t": "version", "v": crypto.PROTOCOL_VERSION + 1})
    with pytest.raises(VersionError, match="upgrade"):
        i.on_welcome(reply)


def test_finish_before_hello_refused() -> None:
    with pytest.raises(ProtocolError):
        Responder(ident("b@h")).on_finish(msgpack.packb({"t": "finish"}))


# ---- session streams ----------------------------------------------------------------------
@pytest.fixture
def pair() -> tuple[Session, Session]:
    si, sr, _ = handshake(ident("a@h"), ident("b@h"))
    return si, sr


def test_tampered_frame_detected(pair: tuple[Session, Session]) -> None:
    si, sr = pair
    ct = bytearray(si.send.encrypt(b"x" * 100))
    ct[len(ct) // 2] ^= 0x01
    with pytest.raises(ProtocolError, match="authentication"):
        sr.recv.decrypt(bytes(ct))


def test_reordered_frames_detected(pair: tuple[Session, Session]) -> None:
    si, sr = pair
    c1, c2 = si.send.encrypt(b"one"), si.send.encrypt(b"two")
    with pytest.raises(ProtocolError):
        sr.recv.decrypt(c2)
    del c1


def test_duplicated_frame_detected(pair: tuple[Session, Session]) -> None:
    si, sr = pair
    c1 = si.send.encrypt(b"one")
    assert sr.recv.decrypt(c1) == b"one"
    with pytest.raises(ProtocolError):
        sr.recv.decrypt(c1)


def test_dropped_frame_detected(pair: tuple[Session, Session]) -> None:
    si, sr = pair
    si.send.encrypt(b"lost on the way")
    with pytest.raises(ProtocolError):
        sr.recv.decrypt(si.send.encrypt(b"next"))


@pytest.mark.parametrize("cut", [1, 16, 17, 40])
def test_truncated_frame_detected(pair: tuple[Session, Session], cut: int) -> None:
    si, sr = pair
    ct = si.send.encrypt(b"y" * 30)
    with pytest.raises(ProtocolError):
        sr.recv.decrypt(ct[:-cut] if cut < len(ct) else ct[:1])


def test_frame_after_final_refused(pair: tuple[Session, Session]) -> None:
    si, sr = pair
    assert sr.recv.decrypt(si.send.encrypt(b"bye", final=True)) == b"bye"
    assert sr.recv.finished
    with pytest.raises(ProtocolError):
        sr.recv.decrypt(si.send.encrypt(b"more"))


def test_rekey_keeps_stream_working(pair: tuple[Session, Session]) -> None:
    si, sr = pair
    for k in range(crypto.REKEY_EVERY * 2 + 5):
        msg = k.to_bytes(4, "big")
        assert sr.recv.decrypt(si.send.encrypt(msg)) == msg


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=2000), min_size=1, max_size=30))
def test_stream_roundtrip_property(msgs: list[bytes]) -> None:
    si, sr, _ = handshake(ident("a@h"), ident("b@h"))
    assert [sr.recv.decrypt(si.send.encrypt(m)) for m in msgs] == msgs


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=200), min_size=2, max_size=8), st.data())
def test_any_mutation_of_a_stream_is_detected(msgs: list[bytes], data: st.DataObject) -> None:
    si, sr, _ = handshake(ident("a@h"), ident("b@h"))
    cts = [si.send.encrypt(m) for m in msgs]
    kind = data.draw(st.sampled_from(["flip", "swap", "dup", "drop", "truncate"]))
    k = data.draw(st.integers(0, len(cts) - 2))
    wire = list(cts)
    if kind == "flip":
        b = bytearray(wire[k])
        pos = data.draw(st.integers(0, len(b) - 1))
        b[pos] ^= data.draw(st.integers(1, 255))
        wire[k] = bytes(b)
    elif kind == "swap":
        wire[k], wire[k + 1] = wire[k + 1], wire[k]
    elif kind == "dup":
        wire.insert(k + 1, wire[k])
    elif kind == "drop":
        del wire[k]
    else:
        wire[k] = wire[k][: data.draw(st.integers(0, len(wire[k]) - 1))]
    with pytest.raises(ProtocolError):
        for c in wire:
            sr.recv.decrypt(c)


# ---- garbage never raises anything but LinkError ---------------------------------------
RANDOM = st.one_of(
    st.binary(max_size=400),
    st.dictionaries(st.sampled_from(["t", "v", "cid", "node", "inc", "pk", "n", "core", "hdr", "mac"]),
                    st.one_of(st.binary(max_size=40), st.text(max_size=40), st.integers(-(2**63), 2**64 - 1), st.none(),
                              st.booleans(), st.lists(st.integers(0, 2**32), max_size=3)),
                    max_size=10).map(lambda m: msgpack.packb(m)),
)


@settings(max_examples=2000, deadline=None)
@given(RANDOM)
def test_random_hello_only_raises_link_errors(data: bytes) -> None:
    try:
        Responder(ident("b@h")).on_hello(data)
    except LinkError:
        pass


@settings(max_examples=1500, deadline=None)
@given(RANDOM)
def test_random_welcome_only_raises_link_errors(data: bytes) -> None:
    with pytest.raises(LinkError):
        Initiator(ident("a@h")).on_welcome(data)


@settings(max_examples=1500, deadline=None)
@given(RANDOM)
def test_random_finish_only_raises_link_errors(data: bytes) -> None:
    i, r = Initiator(ident("a@h")), Responder(ident("b@h"))
    r.on_hello(i.hello())
    with pytest.raises(LinkError):
        r.on_finish(data)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_random_ciphertext_only_raises_protocol_error(data: bytes) -> None:
    _, sr, _ = handshake(ident("a@h"), ident("b@h"))
    with pytest.raises(ProtocolError):
        sr.recv.decrypt(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=100))
def test_random_stream_header_only_raises_link_errors(hdr: bytes) -> None:
    try:
        crypto.RecvStream(os.urandom(32), hdr)
    except LinkError:
        pass


# ---- seal/open: the hot path's buffer-in, buffer-out secretstream calls -------------------
def test_seal_is_prefix_plus_standard_secretstream_ciphertext() -> None:
    """seal() calls libsodium directly: its output must be exactly what the PyNaCl wrapper
    expects (interoperable with any other secretstream implementation)."""
    from nacl import bindings as nb

    key = os.urandom(32)
    send = crypto.SendStream(key)
    state = nb.crypto_secretstream_xchacha20poly1305_state()
    nb.crypto_secretstream_xchacha20poly1305_init_pull(state, send.header, key)
    body = bytearray(b"\xdd\0\0\0\0" + b"m" * 1000)
    frame = send.seal(memoryview(body)[0:])
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4 == len(body) + crypto.ABYTES
    msg, tag = nb.crypto_secretstream_xchacha20poly1305_pull(state, bytes(frame[4:]), None)
    assert msg == body and tag == nb.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
    fin = send.seal(b"bye", final=True)
    assert nb.crypto_secretstream_xchacha20poly1305_pull(state, bytes(fin[4:]), None) == (
        b"bye", nb.crypto_secretstream_xchacha20poly1305_TAG_FINAL)


def test_open_reads_from_a_view_and_reuses_its_buffer(pair: tuple[Session, Session]) -> None:
    si, sr = pair
    wire = bytearray(b"junk" + bytes(si.send.seal(b"first")) + bytes(si.send.seal(b"second!")) + b"tail")
    view = memoryview(wire)
    p1 = sr.recv.open(view[8 : 8 + 5 + crypto.ABYTES])
    assert bytes(p1) == b"first"
    p1.release()
    start = 8 + 5 + crypto.ABYTES + 4
    assert bytes(sr.recv.open(view[start : start + 7 + crypto.ABYTES])) == b"second!"


@pytest.mark.parametrize("size", [0, 1, crypto.ABYTES - 1])
def test_open_of_a_frame_shorter_than_the_tag_refused(pair: tuple[Session, Session], size: int) -> None:
    _, sr = pair
    with pytest.raises(ProtocolError):
        sr.recv.open(b"\0" * size)


def test_open_does_not_keep_a_buffer_for_one_big_frame(pair: tuple[Session, Session]) -> None:
    si, sr = pair
    big = os.urandom(crypto.KEEP_PLAIN_BUFFER + 1)
    assert bytes(sr.recv.open(si.send.encrypt(big))) == big
    assert bytes(sr.recv.open(si.send.encrypt(b"small"))) == b"small"
    assert len(sr.recv._plain) <= crypto.KEEP_PLAIN_BUFFER


def test_tampered_sealed_frame_in_a_view_detected(pair: tuple[Session, Session]) -> None:
    si, sr = pair
    frame = si.send.seal(b"x" * 300)
    frame[100] ^= 0x80
    with pytest.raises(ProtocolError, match="authentication"):
        sr.recv.open(memoryview(frame)[4:])


def test_rekey_boundary_with_seal_and_open(pair: tuple[Session, Session]) -> None:
    si, sr = pair
    for k in range(crypto.REKEY_EVERY + 3):
        body = bytearray(k.to_bytes(4, "big") * 10)
        assert bytes(sr.recv.open(memoryview(si.send.seal(body))[4:])) == body
