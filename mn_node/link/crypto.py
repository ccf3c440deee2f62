"""Handshake and session crypto (sans-IO): cookie proof, X25519 session keys, secretstream.

Handshake, 3 messages (each a msgpack map in one plaintext frame):

1. initiator -> responder  ``hello``:   v, cid, node, inc, pk, n
2. responder -> initiator  ``welcome``: core = packed(v, cid, node, inc, pk, n), hdr, mac_r
   (or ``auth_failed`` / ``version`` and a close)
3. initiator -> responder  ``finish``:  hdr, mac_i (or ``auth_failed``)

Session keys are bound to the transcript hash H(m1 || core); ``mac_r`` covers m1, core and
the responder's stream header, ``mac_i`` covers m1, m2 and the initiator's header.

``cid`` is the public cookie hash. ``mac_r``/``mac_i`` are keyed BLAKE2b tags (key derived
from the cookie) over the transcript, compared in constant time. Both sides contribute a fresh
X25519 key and a 32-byte nonce, so a recorded handshake can never be replayed. Each direction
then runs one ``crypto_secretstream_xchacha20poly1305`` stream keyed by the kx session key
mixed with the cookie-derived key and the transcript hash: frames that are tampered with,
reordered, duplicated or truncated fail to decrypt and the link is dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Sized
from dataclasses import dataclass
from typing import Any, cast

import msgpack
from nacl import bindings as nb

from mn_node.config import cookie_hash
from mn_node.errors import AuthError, ProtocolError, VersionError

PROTOCOL_VERSION = 1
NONCE_BYTES = 32
REKEY_EVERY = 4096
"""Frames between explicit secretstream rekeys (forward secrecy inside a long-lived link)."""

_TAG_MESSAGE = nb.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
_TAG_REKEY = nb.crypto_secretstream_xchacha20poly1305_TAG_REKEY
_TAG_FINAL = nb.crypto_secretstream_xchacha20poly1305_TAG_FINAL
_HEADER_BYTES = nb.crypto_secretstream_xchacha20poly1305_HEADERBYTES
ABYTES = nb.crypto_secretstream_xchacha20poly1305_ABYTES
"""Ciphertext overhead of one frame (tag byte + Poly1305 MAC)."""
_PREFIX = struct.Struct(">I")


@dataclass(frozen=True)
class _Ffi:
    """libsodium's secretstream push/pull through PyNaCl's own cffi binding (``nacl._sodium``)."""

    push: Any
    pull: Any
    null: Any
    from_buffer: Any


def _load_ffi() -> _Ffi | None:
    """The zero-copy path, or None when ``nacl._sodium`` is missing or no longer has what it
    needs (it is PyNaCl's internal module): then the streams use the public ``nacl.bindings``
    functions, which produce and accept the same frames."""
    try:
        from nacl._sodium import ffi, lib

        return _Ffi(lib.crypto_secretstream_xchacha20poly1305_push, lib.crypto_secretstream_xchacha20poly1305_pull,
                    ffi.NULL, ffi.from_buffer)
    except (ImportError, AttributeError):
        return None


_FFI: _Ffi | None = _load_ffi()
"""The zero-copy binding in use (None: PyNaCl's public API; tests set it to None to compare)."""
KEEP_PLAIN_BUFFER = 1024 * 1024
"""A receive stream reuses one plaintext buffer for frames up to this size (bigger ones get a
buffer of their own, so one big message does not pin megabytes per link)."""


def _kdf(cookie: bytes, label: bytes) -> bytes:
    return hashlib.blake2b(cookie, digest_size=32, person=label[:16].ljust(16, b"\0")).digest()


def _mac(key: bytes, *parts: bytes) -> bytes:
    h = hashlib.blake2b(key=key, digest_size=32)
    for p in parts:
        h.update(len(p).to_bytes(4, "big"))
        h.update(p)
    return h.digest()


def _pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack_map(data: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=256, max_str_len=256)
    except Exception as e:  # msgpack raises many types on garbage
        raise ProtocolError(f"undecodable handshake message ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise ProtocolError("handshake message is not a map")
    return obj


def _field(m: dict[str, Any], key: str, typ: type, size: int | None = None) -> Any:
    v: Any = m.get(key)
    if not isinstance(v, typ) or isinstance(v, bool):
        raise ProtocolError(f"handshake field {key!r} missing or of the wrong type")
    if size is not None and len(cast("Sized", v)) != size:
        raise ProtocolError(f"handshake field {key!r} has the wrong length")
    return v


def _check_error_reply(m: dict[str, Any]) -> None:
    t = m.get("t")
    if t == "auth_failed":
        theirs = m.get("cid") if isinstance(m.get("cid"), str) else "?"
        raise AuthError(f"peer refused our cookie (its cookie hash {theirs})")
    if t == "version":
        raise VersionError(
            f"peer speaks link protocol v{m.get('v')!s}, we speak v{PROTOCOL_VERSION}; "
            "upgrade both nodes to the same mirror-neuron release"
        )


class SendStream:
    """Encrypting half of a link.

    The hot path calls libsodium's ``crypto_secretstream_xchacha20poly1305_push`` through
    PyNaCl's own cffi binding (``nacl._sodium``) instead of the ``nacl.bindings`` wrapper: same
    function, same state, but it reads the plaintext from any buffer (the connection's
    bytearray) and writes the ciphertext straight behind the frame's length prefix, which saves
    three copies of every frame. Without that module it uses the wrapper (:data:`_FFI` is None).
    """

    __slots__ = ("_count", "_state", "header")

    def __init__(self, key: bytes) -> None:
        self._state = nb.crypto_secretstream_xchacha20poly1305_state()
        self.header: bytes = nb.crypto_secretstream_xchacha20poly1305_init_push(self._state, key)
        self._count = 0

    def seal(self, plaintext: bytes | bytearray | memoryview, final: bool = False) -> bytearray:
        """One complete frame: 4-byte big-endian length, then the ciphertext of ``plaintext``
        (a new buffer: the caller may hand it to a transport that keeps it)."""
        self._count += 1
        tag = _TAG_FINAL if final else (_TAG_REKEY if self._count % REKEY_EVERY == 0 else _TAG_MESSAGE)
        n = len(plaintext)
        ffi = _FFI
        if ffi is None:
            ct = nb.crypto_secretstream_xchacha20poly1305_push(self._state, bytes(plaintext), None, tag)
            return bytearray(_PREFIX.pack(len(ct)) + ct)
        frame = bytearray(4 + n + ABYTES)
        _PREFIX.pack_into(frame, 0, n + ABYTES)
        fb = ffi.from_buffer
        with fb("unsigned char[]", frame, True) as dst, fb("unsigned char[]", plaintext) as src:
            rc = ffi.push(self._state.statebuf, dst + 4, ffi.null, src, n, ffi.null, 0, tag)
        if rc != 0:
            raise RuntimeError("crypto_secretstream push failed")
        return frame

    def encrypt(self, plaintext: bytes | bytearray | memoryview, final: bool = False) -> bytes:
        """The ciphertext of one frame body (without the length prefix)."""
        return bytes(memoryview(self.seal(plaintext, final))[4:])


class RecvStream:
    """Decrypting half of a link; any failure is a :class:`ProtocolError`."""

    __slots__ = ("_plain", "_state", "finished")

    def __init__(self, key: bytes, header: bytes) -> None:
        if len(header) != _HEADER_BYTES:
            raise ProtocolError("bad secretstream header")
        self._state = nb.crypto_secretstream_xchacha20poly1305_state()
        nb.crypto_secretstream_xchacha20poly1305_init_pull(self._state, header, key)
        self._plain = bytearray(0)
        self.finished = False

    def open(self, ciphertext: bytes | bytearray | memoryview) -> memoryview:
        """Authenticate and decrypt one frame body. The plaintext is a view into a buffer that
        this stream reuses: valid until the next call."""
        if self.finished:
            raise ProtocolError("frame after the final frame")
        clen = len(ciphertext)
        if clen < ABYTES:
            raise ProtocolError("frame failed authentication (tampered, reordered or replayed)")
        ffi = _FFI
        if ffi is None:
            return self._open_public(ciphertext)
        mlen = clen - ABYTES
        buf = self._plain
        if len(buf) < mlen:
            buf = bytearray(mlen)
            if mlen <= KEEP_PLAIN_BUFFER:
                self._plain = buf
        state = self._state
        fb = ffi.from_buffer
        with fb("unsigned char[]", buf, True) as dst, fb("unsigned char[]", ciphertext) as src:
            rc = ffi.pull(state.statebuf, dst, ffi.null, state.tagbuf, src, clen, ffi.null, 0)
        if rc != 0:
            raise ProtocolError("frame failed authentication (tampered, reordered or replayed)")
        if cast("Any", state.tagbuf)[0] == _TAG_FINAL:
            self.finished = True
        return memoryview(buf)[:mlen]

    def _open_public(self, ciphertext: bytes | bytearray | memoryview) -> memoryview:
        """:meth:`open` through PyNaCl's public ``nacl.bindings`` (one copy more per frame)."""
        try:
            plain, tag = nb.crypto_secretstream_xchacha20poly1305_pull(self._state, bytes(ciphertext), None)
        except Exception:  # PyNaCl raises its own CryptoError/RuntimeError subclasses
            raise ProtocolError("frame failed authentication (tampered, reordered or replayed)") from None
        if tag == _TAG_FINAL:
            self.finished = True
        return memoryview(plain)

    def decrypt(self, ciphertext: bytes | bytearray | memoryview) -> bytes:
        return bytes(self.open(ciphertext))


@dataclass
class Session:
    peer_node: str
    peer_incarnation: str
    send: SendStream
    recv: RecvStream


@dataclass(frozen=True)
class Identity:
    cookie: bytes
    node: str
    incarnation: str

    @property
    def cid(self) -> str:
        return cookie_hash(self.cookie)


def _session_keys(
    cookie: bytes, shared_rx: bytes, shared_tx: bytes, th: bytes, initiator: bool
) -> tuple[bytes, bytes]:
    """(receive key, send key): kx keys mixed with the cookie key and the transcript hash."""
    base = _kdf(cookie, b"mn-session")
    rx_label, tx_label = (b"r2i", b"i2r") if initiator else (b"i2r", b"r2i")
    return _mac(base, rx_label, shared_rx, th), _mac(base, tx_label, shared_tx, th)


class Initiator:
    """The dialling side of a handshake."""

    def __init__(self, ident: Identity) -> None:
        self.ident = ident
        self._pk, self._sk = nb.crypto_kx_keypair()
        self._m1 = _pack(
            {"t": "hello", "v": PROTOCOL_VERSION, "cid": ident.cid, "node": ident.node,
             "inc": ident.incarnation, "pk": self._pk, "n": os.urandom(NONCE_BYTES)}
        )

    def hello(self) -> bytes:
        return self._m1

    def on_welcome(self, data: bytes) -> tuple[bytes, Session]:
        """Check the responder's proof; return (finish message, session).

        Raises AuthError (the caller then sends :func:`auth_failed_message`),
        VersionError or ProtocolError.
        """
        outer = _unpack_map(data)
        _check_error_reply(outer)
        if outer.get("t") != "welcome":
            raise ProtocolError("expected a welcome message")
        core_bytes = _field(outer, "core", bytes)
        hdr = _field(outer, "hdr", bytes, _HEADER_BYTES)
        mac_r = _field(outer, "mac", bytes, 32)
        m = _unpack_map(core_bytes)
        if _field(m, "v", int) != PROTOCOL_VERSION:
            raise VersionError(f"peer speaks link protocol v{m['v']}, we speak v{PROTOCOL_VERSION}")
        cid = _field(m, "cid", str)
        node = _field(m, "node", str)
        inc = _field(m, "inc", str)
        pk = _field(m, "pk", bytes, nb.crypto_kx_PUBLIC_KEY_BYTES)
        _field(m, "n", bytes, NONCE_BYTES)
        if cid != self.ident.cid:
            raise AuthError(f"peer has another cookie (its cookie hash {cid})")
        auth = _kdf(self.ident.cookie, b"mn-auth")
        if not hmac.compare_digest(_mac(auth, b"R", self._m1, core_bytes, hdr), mac_r):
            raise AuthError("peer's cookie proof is invalid")
        th = hashlib.blake2b(self._m1 + core_bytes, digest_size=32).digest()
        rx, tx = nb.crypto_kx_client_session_keys(self._pk, self._sk, pk)
        k_rx, k_tx = _session_keys(self.ident.cookie, rx, tx, th, initiator=True)
        send = SendStream(k_tx)
        mac_i = _mac(auth, b"I", self._m1, data, send.header)
        finish = _pack({"t": "finish", "hdr": send.header, "mac": mac_i})
        return finish, Session(node, inc, send, RecvStream(k_rx, hdr))


class Responder:
    """The accepting side of a handshake."""

    def __init__(self, ident: Identity) -> None:
        self.ident = ident
        self._m1 = b""
        self._m2 = b""
        self._peer: tuple[str, str] | None = None
        self._k_rx = b""
        self._send: SendStream | None = None
        self.peer_hint = ""

    def on_hello(self, data: bytes) -> bytes:
        """Return the welcome message; raises VersionError/AuthError/ProtocolError
        (the caller then sends :func:`version_message` / :func:`auth_failed_message`)."""
        m = _unpack_map(data)
        if m.get("t") != "hello":
            raise ProtocolError("expected a hello message")
        v = _field(m, "v", int)
        node = _field(m, "node", str)
        self.peer_hint = node[:80]
        if v != PROTOCOL_VERSION:
            raise VersionError(f"peer {node} speaks link protocol v{v}, we speak v{PROTOCOL_VERSION}")
        cid = _field(m, "cid", str)
        inc = _field(m, "inc", str)
        pk = _field(m, "pk", bytes, nb.crypto_kx_PUBLIC_KEY_BYTES)
        _field(m, "n", bytes, NONCE_BYTES)
        if cid != self.ident.cid:
            raise AuthError(f"peer has another cookie (its cookie hash {cid})")
        my_pk, my_sk = nb.crypto_kx_keypair()
        core_bytes = _pack(
            {"v": PROTOCOL_VERSION, "cid": self.ident.cid, "node": self.ident.node,
             "inc": self.ident.incarnation, "pk": my_pk, "n": os.urandom(NONCE_BYTES)}
        )
        th = hashlib.blake2b(data + core_bytes, digest_size=32).digest()
        rx, tx = nb.crypto_kx_server_session_keys(my_pk, my_sk, pk)
        self._k_rx, k_tx = _session_keys(self.ident.cookie, rx, tx, th, initiator=False)
        self._send = SendStream(k_tx)
        auth = _kdf(self.ident.cookie, b"mn-auth")
        mac_r = _mac(auth, b"R", data, core_bytes, self._send.header)
        self._m1 = data
        self._m2 = _pack({"t": "welcome", "core": core_bytes, "hdr": self._send.header, "mac": mac_r})
        self._peer = (node, inc)
        return self._m2

    def on_finish(self, data: bytes) -> Session:
        if self._peer is None or self._send is None:
            raise ProtocolError("finish before hello")
        m = _unpack_map(data)
        _check_error_reply(m)
        if m.get("t") != "finish":
            raise ProtocolError("expected a finish message")
        hdr = _field(m, "hdr", bytes, _HEADER_BYTES)
        mac_i = _field(m, "mac", bytes, 32)
        auth = _kdf(self.ident.cookie, b"mn-auth")
        if not hmac.compare_digest(_mac(auth, b"I", self._m1, self._m2, hdr), mac_i):
            raise AuthError("peer's cookie proof is invalid")
        node, inc = self._peer
        return Session(node, inc, self._send, RecvStream(self._k_rx, hdr))


def auth_failed_message(ident: Identity) -> bytes:
    return _pack({"t": "auth_failed", "cid": ident.cid})


def version_message() -> bytes:
    return _pack({"t": "version", "v": PROTOCOL_VERSION})
