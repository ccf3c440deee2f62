"""Network probes doctor builds on: staged TCP connect, a tiny HTTP GET, the link handshake.

Every probe takes an explicit timeout and reports *how* it failed, because the how is the
diagnosis: refused = nothing listening, timed out = packets dropped (firewall) or the process
is hung, closed = something else is listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mn_node.cli_base import client_ssl_context  # what mn trusts: system CAs + MIRROR_NEURON_API_CA
from mn_node.errors import AuthError, LinkError, ProtocolError, VersionError
from mn_node.link.codec import HEADER, MAX_HANDSHAKE_FRAME
from mn_node.link.crypto import Identity, Initiator

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking ``fn`` in a daemon thread: a stuck resolver or /proc scan can never keep
    doctor from exiting (the default executor's threads are joined at exit)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)

    def work() -> None:
        try:
            value = fn(*args)
        except BaseException as e:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(settle, None, e)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=work, name=f"doctor:{getattr(fn, '__name__', 'work')}", daemon=True).start()
    return await fut


class ProbeError(Exception):
    """A probe failed; ``how`` is one of refused, timeout, unreachable, closed, resolve, error."""

    def __init__(self, how: str, message: str) -> None:
        super().__init__(message)
        self.how = how


async def resolve(host: str, timeout: float) -> str:
    """The first address of ``host`` (literal addresses pass through)."""
    with contextlib.suppress(ValueError):
        import ipaddress

        return str(ipaddress.ip_address(host.strip("[]")))
    try:
        infos = await asyncio.wait_for(
            in_thread(socket.getaddrinfo, host, None, 0, socket.SOCK_STREAM), timeout
        )
    except TimeoutError:
        raise ProbeError("timeout", f"resolving {host} took over {timeout:.1f}s (DNS server slow or unreachable)") \
            from None
    except socket.gaierror as e:
        raise ProbeError("resolve", f"cannot resolve {host}: {e.strerror}") from None
    return str(infos[0][4][0])


def describe_os_error(e: OSError) -> tuple[str, str]:
    if isinstance(e, ConnectionRefusedError) or e.errno == errno.ECONNREFUSED:
        return "refused", "connection refused"
    if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable", f"no route to host ({e.strerror})"
    if e.errno == errno.EADDRNOTAVAIL:
        return "unreachable", "address not available on this box"
    if isinstance(e, ConnectionResetError):
        return "closed", "connection reset by peer"
    return "error", e.strerror or str(e)


async def tcp_connect(
    host: str, port: int, timeout: float, use_ssl: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
    """Connect; returns (reader, writer, connect time in ms) or raises ProbeError."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=client_ssl_context() if use_ssl else None),
            timeout,
        )
    except TimeoutError:
        raise ProbeError("timeout", f"no answer from {host}:{port} within {timeout:.1f}s") from None
    except OSError as e:
        how, text = describe_os_error(e)
        raise ProbeError(how, f"{host}:{port}: {text}") from None
    return reader, writer, (time.monotonic() - t0) * 1000


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 0.2)


@dataclass
class HttpReply:
    status: int
    body: Any  # parsed JSON, or None when the body is not JSON
    raw: bytes
    ms: float


async def http_get(host: str, port: int, path: str, timeout: float, use_ssl: bool = False) -> HttpReply:
    """GET over HTTP/1.0 (no client library, so nothing to import or pool)."""
    t0 = time.monotonic()
    reader, writer, _ = await tcp_connect(host, port, timeout, use_ssl)
    try:
        hosthdr = f"[{host}]" if ":" in host else host
        writer.write(
            f"GET {path} HTTP/1.0\r\nHost: {hosthdr}:{port}\r\nAccept: application/json\r\n"
            "User-Agent: mn-doctor\r\nConnection: close\r\n\r\n".encode()
        )
        left = max(0.05, timeout - (time.monotonic() - t0))
        try:
            raw = await asyncio.wait_for(reader.read(2 * 1024 * 1024), left)
            while raw and not reader.at_eof():
                more = await asyncio.wait_for(reader.read(2 * 1024 * 1024), left)
                if not more:
                    break
                raw += more
        except TimeoutError:
            raise ProbeError("timeout", f"{host}:{port} accepted the connection but sent no HTTP reply "
                                        f"within {timeout:.1f}s") from None
        except OSError as e:
            how, text = describe_os_error(e)
            raise ProbeError(how, f"{host}:{port}: {text}") from None
    finally:
        await close_writer(writer)
    head, _, body = raw.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/\d(?:\.\d)? (\d{3})", head)
    if not m:
        raise ProbeError("closed", f"{host}:{port} answered, but not with HTTP")
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    return HttpReply(int(m.group(1)), parsed, body, (time.monotonic() - t0) * 1000)


@dataclass
class Handshake:
    peer_node: str
    ms: float


_CID = re.compile(r"cookie hash ([0-9a-f?]+)")


class HandshakeFailed(Exception):
    def __init__(self, how: str, message: str, peer_cookie_hash: str | None = None) -> None:
        super().__init__(message)
        self.how = how  # auth, version, protocol, timeout, closed
        self.peer_cookie_hash = peer_cookie_hash


async def handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ident: Identity, timeout: float
) -> Handshake:
    """Run the initiator's half with the real link code, up to proving the peer knows our cookie.

    The ``finish`` message is never sent, so the peer never counts doctor as a link (a full
    link under this node's name would replace the running daemon's link to that peer)."""
    t0 = time.monotonic()
    init = Initiator(ident)
    hello = init.hello()
    writer.write(HEADER.pack(len(hello)) + hello)
    try:
        head = await asyncio.wait_for(reader.readexactly(4), timeout)
        (size,) = HEADER.unpack(head)
        if size == 0 or size > MAX_HANDSHAKE_FRAME:
            raise HandshakeFailed("protocol", f"the peer sent a {size}-byte first frame: not an mn-node link")
        left = max(0.05, timeout - (time.monotonic() - t0))
        body = await asyncio.wait_for(reader.readexactly(size), left)
    except TimeoutError:
        raise HandshakeFailed("timeout", f"no handshake reply within {timeout:.1f}s") from None
    except asyncio.IncompleteReadError:
        raise HandshakeFailed("closed", "the peer closed the connection without a handshake reply") from None
    except OSError as e:
        raise HandshakeFailed("closed", f"connection broke during the handshake ({e.strerror or e})") from None
    try:
        _finish, session = init.on_welcome(body)
    except AuthError as e:
        m = _CID.search(str(e))
        raise HandshakeFailed("auth", str(e), m.group(1) if m else None) from None
    except VersionError as e:
        raise HandshakeFailed("version", str(e)) from None
    except (ProtocolError, LinkError) as e:
        raise HandshakeFailed("protocol", f"not an mn-node link reply ({e})") from None
    return Handshake(session.peer_node, (time.monotonic() - t0) * 1000)
