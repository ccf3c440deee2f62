"""The secretstream fallback: without PyNaCl's internal ``nacl._sodium`` the link streams use the
public ``nacl.bindings`` API, and both paths produce and accept the same frames."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mn_node.errors import ProtocolError
from mn_node.link import crypto
from mn_node.link.crypto import Identity, Initiator, RecvStream, Responder, SendStream, Session

ROOT = Path(__file__).resolve().parents[2]
COOKIE = b"f" * 40


def handshake() -> tuple[Session, Session]:
    i = Initiator(Identity(COOKIE, "a@h", "1"))
    r = Responder(Identity(COOKIE, "b@h", "2"))
    m3, si = i.on_welcome(r.on_hello(i.hello()))
    return si, r.on_finish(m3)


def frames(send: SendStream, messages: list[bytes]) -> list[bytes]:
    return [bytes(send.seal(m, final=k == len(messages) - 1))[4:] for k, m in enumerate(messages)]


MESSAGES = [b"", b"ping", os.urandom(70_000), b"x" * (crypto.REKEY_EVERY % 97), b"last"]


def test_the_fast_path_is_in_use_with_this_pynacl() -> None:
    assert crypto._FFI is not None, "nacl._sodium changed: the link now runs on the slower public API"


@pytest.mark.parametrize(("send_fast", "recv_fast"), [(True, False), (False, True), (False, False)])
def test_fallback_and_fast_path_interoperate(monkeypatch: pytest.MonkeyPatch, send_fast: bool,
                                             recv_fast: bool) -> None:
    fast = crypto._FFI
    si, sr = handshake()
    monkeypatch.setattr(crypto, "_FFI", fast if send_fast else None)
    sealed = frames(si.send, MESSAGES)
    monkeypatch.setattr(crypto, "_FFI", fast if recv_fast else None)
    assert [sr.recv.decrypt(c) for c in sealed] == MESSAGES
    assert sr.recv.finished


def test_fallback_rejects_tampered_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "_FFI", None)
    key = os.urandom(32)
    send = SendStream(key)
    recv = RecvStream(key, send.header)
    bad = bytearray(send.encrypt(b"payload"))
    bad[-1] ^= 1
    with pytest.raises(ProtocolError, match="failed authentication"):
        recv.open(bytes(bad))
    with pytest.raises(ProtocolError, match="failed authentication"):
        recv.open(b"short")


def test_missing_internal_module_falls_back_in_a_fresh_interpreter() -> None:
    """``nacl._sodium`` unimportable (as if PyNaCl renamed it): the module still loads, the
    handshake and a secretstream round trip work, and a fast-path process reads its frames."""
    script = textwrap.dedent("""
        import sys
        import nacl.bindings  # the public API loads its binding first
        sys.modules["nacl._sodium"] = None  # then any `from nacl._sodium import ...` fails
        from mn_node.link import crypto
        assert crypto._FFI is None, crypto._FFI
        key = bytes(range(32))
        send = crypto.SendStream(key)
        out = [send.header.hex()] + [bytes(send.seal(m))[4:].hex() for m in (b"one", b"two" * 999)]
        i = crypto.Initiator(crypto.Identity(b"c" * 40, "a@h", "1"))
        r = crypto.Responder(crypto.Identity(b"c" * 40, "b@h", "2"))
        m3, si = i.on_welcome(r.on_hello(i.hello()))
        sr = r.on_finish(m3)
        assert sr.recv.decrypt(si.send.encrypt(b"hello")) == b"hello"
        print(" ".join(out))
    """)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    header, *sealed = (bytes.fromhex(h) for h in r.stdout.split())
    assert crypto._FFI is not None
    recv = RecvStream(bytes(range(32)), header)
    assert [recv.decrypt(c) for c in sealed] == [b"one", b"two" * 999]
