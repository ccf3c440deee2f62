"""LinkManager in-process: real sockets on 127.x addresses, one event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack
import pytest

from mn_node.errors import CallTimeout, NotConnected, RemoteError
from mn_node.link import crypto
from mn_node.link.codec import HEADER, FrameDecoder
from mn_node.link.conn import SEND
from mn_node.link.crypto import Identity
from mn_node.link.manager import COOKIE_MISMATCH, LinkManager
from tests.support.wait import async_wait_until

COOKIE = os.urandom(32)
Factory = Callable[..., Awaitable[LinkManager]]


def prefix() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"


@pytest.fixture
async def managers() -> AsyncIterator[Factory]:
    made: list[LinkManager] = []
    net = prefix()
    count = 0

    async def make(short: str | None = None, cookie: bytes = COOKIE, **kw: Any) -> LinkManager:
        nonlocal count
        count += 1
        host = f"{net}.{count}"
        name = f"{short or f'n{count}'}@{host}"
        m = LinkManager(Identity(cookie, name, os.urandom(6).hex()), local_host=host, **kw)
        await m.listen(host, 0)
        made.append(m)
        return m

    yield make
    for m in made:
        await m.stop("test over")


def addr(m: LinkManager) -> tuple[str, int]:
    host, port = m.listening[0]
    return str(host), int(port)


def connect(a: LinkManager, b: LinkManager) -> None:
    a.ensure_peer(b.ident.node, *addr(b))


async def linked(a: LinkManager, b: LinkManager, timeout: float = 5.0) -> None:
    await async_wait_until(
        _async(lambda: b.ident.node in a.links and a.ident.node in b.links), timeout,
        f"a link between {a.ident.node} and {b.ident.node}",
    )


async def inbox_pair(managers: Factory) -> tuple[LinkManager, LinkManager, list[Any]]:
    """Two linked managers; every message b's ``inbox`` receives is appended to the list."""
    a, b = await managers(), await managers()
    got: list[Any] = []
    b.register("inbox", lambda frm, msg: got.append(msg))
    connect(a, b)
    await linked(a, b)
    return a, b, got


def _async(fn: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        return fn()

    return run


async def until(fn: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    return await async_wait_until(_async(fn), timeout, what)


# ---- raw peers (the test speaks the wire protocol itself) -------------------------------
class RawPeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer
        self.dec = FrameDecoder(1 << 22)

    @classmethod
    async def open(cls, m: LinkManager, source: str | None = None) -> RawPeer:
        host, port = addr(m)
        r, w = await asyncio.open_connection(host, port, local_addr=(source, 0) if source else None)
        return cls(r, w)

    def send_frame(self, body: bytes) -> None:
        self.w.write(HEADER.pack(len(body)) + body)

    async def read_frame(self, timeout: float = 5.0) -> bytes | None:
        """The next frame, or None when the other side closed the connection."""
        async with asyncio.timeout(timeout):
            while True:
                frames = self.dec.feed(b"")
                if frames:
                    return frames[0]
                data = await self.r.read(65536)
                if not data:
                    return None
                frames = self.dec.feed(data)
                if frames:
                    # keep the rest for later calls
                    rest = b"".join(HEADER.pack(len(f)) + f for f in frames[1:])
                    self.dec = FrameDecoder(1 << 22)
                    self.dec.feed(rest)
                    return frames[0]

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await self.r.read(65536)
                except ConnectionResetError:
                    return True
                if not data:
                    return True

    async def handshake(self, ident: Identity) -> crypto.Session:
        i = crypto.Initiator(ident)
        self.send_frame(i.hello())
        welcome = await self.read_frame()
        assert welcome is not None, "closed during handshake"
        finish, session = i.on_welcome(welcome)
        self.send_frame(finish)
        await self.w.drain()
        return session

    def close(self) -> None:
        self.w.close()


# ---- messaging ---------------------------------------------------------------------------
async def test_send_and_call(managers: Factory) -> None:
    a, b = await managers(), await managers()
    got: list[tuple[str, Any]] = []
    b.register("inbox", lambda frm, msg: got.append((frm, msg)))

    async def echo(frm: str, msg: Any) -> Any:
        await asyncio.sleep(0)
        return {"from": frm, "echo": msg}

    b.register("echo", echo)
    b.register("sync", lambda frm, msg: msg * 2)
    connect(a, b)
    connect(b, a)
    await linked(a, b)
    for k in range(100):
        a.send(b.ident.node, "inbox", {"k": k, "blob": b"\x00" * k})
    await until(lambda: len(got) == 100, "100 messages delivered")
    assert [m["k"] for _, m in got] == list(range(100))  # in order
    assert all(frm == a.ident.node for frm, _ in got)
    assert await a.call(b.ident.node, "echo", [1, "two"]) == {"from": a.ident.node, "echo": [1, "two"]}
    assert await a.call(b.ident.node, "sync", 21) == 42
    results = await asyncio.gather(*(a.call(b.ident.node, "sync", k) for k in range(200)))
    assert results == [k * 2 for k in range(200)]


async def test_call_timeout_and_remote_error(managers: Factory) -> None:
    a, b = await managers(), await managers()
    never = asyncio.Event()

    async def hang(frm: str, msg: Any) -> Any:
        await never.wait()

    def boom(frm: str, msg: Any) -> Any:
        raise ValueError(f"bad input {msg}")

    b.register("hang", hang)
    b.register("boom", boom)
    connect(a, b)
    await linked(a, b)
    with pytest.raises(CallTimeout, match=r"did not answer hang within 0\.2s"):
        await a.call(b.ident.node, "hang", 1, timeout=0.2)
    with pytest.raises(RemoteError, match="ValueError: bad input 7"):
        await a.call(b.ident.node, "boom", 7)
    with pytest.raises(RemoteError, match="no mailbox 'nobody'"):
        await a.call(b.ident.node, "nobody", 7)
    with pytest.raises(NotConnected):
        await a.call("ghost@127.0.0.1", "echo", 1)
    # the link survived all of that
    assert b.ident.node in a.links and not a.links[b.ident.node].pending_calls


async def test_large_message_right_after_handshake(managers: Factory) -> None:
    """The dialler may send big frames the moment its handshake finishes."""
    a, b = await managers(), await managers()
    got: list[int] = []
    b.register("inbox", lambda frm, msg: got.append(len(msg)))
    ups: list[str] = []
    a.up.connect(lambda conn: [a.send(conn.peer, "inbox", b"z" * 200_000) for _ in range(3)] and ups.append(conn.peer))
    connect(a, b)
    await until(lambda: got == [200_000] * 3, "three 200 kB messages sent at link-up")
    assert b.dropped_conns == 0 and a.ident.node in b.links


async def test_failing_up_subscriber_breaks_neither_the_link_nor_the_others(
    managers: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await managers(), await managers()
    seen: list[str] = []

    def broken(conn: Any) -> None:
        raise RuntimeError("subscriber bug")

    a.up.connect(broken)
    a.on_up(lambda conn: seen.append(conn.peer))  # the wrapper membership uses
    connect(a, b)
    await linked(a, b)
    await until(lambda: seen == [b.ident.node], "the second subscriber to see the link")
    assert any("subscriber" in r.getMessage() and "link up" in r.getMessage() for r in caplog.records)
    await _assert_pair_healthy(a, b)


async def test_simultaneous_dial_leaves_exactly_one_link(managers: Factory) -> None:
    for _ in range(8):
        a, b = await managers(), await managers()
        connect(a, b)
        connect(b, a)
        await linked(a, b)

        def settled(a: LinkManager = a, b: LinkManager = b) -> bool:
            ca, cb = a.links.get(b.ident.node), b.links.get(a.ident.node)
            if ca is None or cb is None:
                return False
            return ca.sockname == cb.peername and a.connections == 1 and b.connections == 1

        await until(settled, "one shared connection per pair")
        ca = a.links[b.ident.node]
        winner = min(a.ident.node, b.ident.node)
        assert ca.dialer == winner
        await a.stop()
        await b.stop()


async def test_mesh_of_five_has_one_link_per_pair(managers: Factory) -> None:
    ms = [await managers() for _ in range(5)]
    for x in ms:
        for y in ms:
            if x is not y:
                connect(x, y)

    def full() -> bool:
        return all(len(m.links) == 4 and m.connections == 4 for m in ms)

    await until(full, "5 nodes, 4 links each, no extra connections")


# ---- bad input drops only that connection -----------------------------------------------
async def _assert_pair_healthy(a: LinkManager, b: LinkManager) -> None:
    b.register("ping", lambda frm, msg: "pong")
    assert await a.call(b.ident.node, "ping", None, timeout=3) == "pong"


async def test_garbage_oversized_and_slow_input_drop_only_that_connection(managers: Factory) -> None:
    # a long keepalive timeout: this test is about the bad connections, and a loaded machine
    # must not make the good link time out during the slowloris' 3 s
    a = await managers(timeout=10.0)
    b = await managers(handshake_timeout=0.5, timeout=10.0)
    connect(a, b)
    await linked(a, b)
    before = b.links[a.ident.node]

    garbage = await RawPeer.open(b)
    garbage.w.write(b"\x00\x00\x00\x05hello this is not msgpack")
    assert await garbage.closed_by_peer()

    oversized = await RawPeer.open(b)
    oversized.w.write(b"\x7f\xff\xff\xff")
    assert await oversized.closed_by_peer()

    silent = await RawPeer.open(b)
    assert await silent.closed_by_peer(timeout=3)

    slowloris = await RawPeer.open(b)
    hello = crypto.Initiator(Identity(COOKIE, "slow@h", "x")).hello()
    wire = HEADER.pack(len(hello)) + hello
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        for byte in wire[:-1]:  # one byte every 20 ms: never completes the hello in time
            slowloris.w.write(bytes([byte]))
            await slowloris.w.drain()
            if slowloris.r.at_eof():
                break
            await asyncio.sleep(0.02)
    except ConnectionResetError:
        pass
    assert await slowloris.closed_by_peer(timeout=3)
    assert loop.time() - t0 >= 0.4  # dropped by the handshake timeout, not by the bytes

    assert b.links.get(a.ident.node) is before
    await _assert_pair_healthy(a, b)
    for p in (garbage, oversized, silent, slowloris):
        p.close()


async def test_tampered_frame_on_established_link_drops_it(managers: Factory, caplog: pytest.LogCaptureFixture) -> None:
    a, b = await managers(), await managers()
    connect(a, b)
    await linked(a, b)
    got: list[Any] = []
    b.register("inbox", lambda frm, msg: got.append(msg))
    peer = await RawPeer.open(b)
    session = await peer.handshake(Identity(COOKIE, "raw@127.0.0.1", "inc1"))
    await until(lambda: "raw@127.0.0.1" in b.links, "raw peer linked")
    ok = session.send.encrypt(msgpack.packb([(SEND, "inbox", "first")]))
    peer.send_frame(ok)
    await until(lambda: got == ["first"], "first message delivered")
    bad = bytearray(session.send.encrypt(msgpack.packb([(SEND, "inbox", "second")])))
    bad[-1] ^= 0xFF
    peer.send_frame(bytes(bad))
    assert await peer.closed_by_peer()
    await until(lambda: "raw@127.0.0.1" not in b.links, "tampered link dropped")
    assert got == ["first"]
    await _assert_pair_healthy(a, b)
    peer.close()


async def test_replayed_frame_drops_link(managers: Factory) -> None:
    b = await managers()
    got: list[Any] = []
    b.register("inbox", lambda frm, msg: got.append(msg))
    peer = await RawPeer.open(b)
    session = await peer.handshake(Identity(COOKIE, "raw@127.0.0.1", "inc1"))
    frame = session.send.encrypt(msgpack.packb([(SEND, "inbox", "once")]))
    peer.send_frame(frame)
    peer.send_frame(frame)
    assert await peer.closed_by_peer()
    assert got == ["once"]


async def test_wrong_cookie_both_sides_log_mismatch(managers: Factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mn_node.link")
    a = await managers()
    b = await managers(cookie=os.urandom(32))
    connect(a, b)
    await until(lambda: a.auth_failures >= 1 and b.auth_failures >= 1, "both sides to count an auth failure")
    assert not a.links and not b.links
    texts = [r.getMessage() for r in caplog.records]
    prefix_ = COOKIE_MISMATCH.format("")
    assert prefix_ == "cookie mismatch (invalid challenge reply) from "
    a_host, b_host = addr(a)[0], addr(b)[0]
    assert any(t.startswith(prefix_) and b.ident.node in t and b_host in t for t in texts), texts
    assert any(t.startswith(prefix_) and a.ident.node in t and a_host in t for t in texts), texts
    assert not any(COOKIE.hex() in t for t in texts)


async def test_protocol_version_mismatch_has_its_own_message(
    managers: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mn_node.link")
    b = await managers()
    # an old/new peer dials us
    peer = await RawPeer.open(b)
    hello = msgpack.unpackb(crypto.Initiator(Identity(COOKIE, "future@127.0.0.1", "x")).hello())
    hello["v"] = crypto.PROTOCOL_VERSION + 1
    peer.send_frame(msgpack.packb(hello))
    reply = await peer.read_frame()
    assert reply is not None and msgpack.unpackb(reply) == {"t": "version", "v": crypto.PROTOCOL_VERSION}
    assert await peer.closed_by_peer()
    # we dial an old/new peer
    srv_frames: list[bytes] = []

    async def fake_server(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        srv_frames.append(await r.read(4096))
        body = msgpack.packb({"t": "version", "v": crypto.PROTOCOL_VERSION + 1})
        w.write(HEADER.pack(len(body)) + body)
        await w.drain()
        w.close()

    host = addr(b)[0]
    server = await asyncio.start_server(fake_server, host, 0)
    port = server.sockets[0].getsockname()[1]
    a = await managers()
    a.ensure_peer("future@" + host, host, port)
    await until(lambda: any("protocol version mismatch" in r.getMessage() and "future@" in r.getMessage()
                            for r in caplog.records), "a's version-mismatch log line")
    texts = [r.getMessage() for r in caplog.records]
    assert any("protocol version mismatch with future@127.0.0.1" in t and f"v{crypto.PROTOCOL_VERSION + 1}" in t
               for t in texts), texts
    assert not any(t.startswith("cookie mismatch") for t in texts), texts
    server.close()
    peer.close()


async def test_handshake_rate_limit_is_per_source(managers: Factory) -> None:
    b = await managers(rate_per_ip=0.5, burst_per_ip=3)
    src1, src2 = f"{addr(b)[0].rsplit('.', 1)[0]}.201", f"{addr(b)[0].rsplit('.', 1)[0]}.202"
    answered = 0
    for _ in range(6):
        p = await RawPeer.open(b, source=src1)
        p.send_frame(crypto.Initiator(Identity(COOKIE, "burst@h", os.urandom(4).hex())).hello())
        if await p.read_frame() is not None:
            answered += 1
        p.close()
    assert answered == 3
    # another source is unaffected
    p = await RawPeer.open(b, source=src2)
    p.send_frame(crypto.Initiator(Identity(COOKIE, "other@h", "x")).hello())
    assert await p.read_frame() is not None
    p.close()


async def test_orderly_leave_is_seen_at_once(managers: Factory) -> None:
    a, b = await managers(), await managers()
    downs: list[tuple[str, str]] = []
    b.down.connect(lambda conn, reason: downs.append((conn.peer, reason)))
    connect(a, b)
    connect(b, a)
    await linked(a, b)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await a.stop("shutdown")
    await until(lambda: downs, "b to see a leave")
    assert downs == [(a.ident.node, "left: shutdown")]
    assert loop.time() - t0 < 1.0  # far less than the keepalive timeout


async def test_silent_peer_declared_down_by_keepalive(managers: Factory) -> None:
    b = await managers(tick=0.1, timeout=0.4)
    downs: list[str] = []
    b.down.connect(lambda conn, reason: downs.append(reason))
    peer = await RawPeer.open(b)
    await peer.handshake(Identity(COOKIE, "mute@127.0.0.1", "inc"))
    await until(lambda: "mute@127.0.0.1" in b.links, "mute peer linked")
    await until(lambda: downs, "keepalive timeout", timeout=3)
    assert "keepalive timeout" in downs[0]
    peer.close()


async def test_reconnects_after_peer_restart(managers: Factory) -> None:
    a = await managers(backoff_base=0.01, backoff_cap=0.2)
    b = await managers()
    host, port = addr(b)
    connect(a, b)
    await linked(a, b)
    inc1 = a.links[b.ident.node].peer_inc
    await b.stop("restart")
    await until(lambda: b.ident.node not in a.links, "link down")
    b2 = LinkManager(Identity(COOKIE, b.ident.node, "newinc"), local_host=host)
    await b2.listen(host, port)
    try:
        await until(lambda: b.ident.node in a.links, "redialled after restart")
        assert a.links[b.ident.node].peer_inc == "newinc" != inc1
    finally:
        await b2.stop()


async def test_unreachable_peer_retried_without_harming_others(managers: Factory) -> None:
    a, b = await managers(backoff_base=0.01, backoff_cap=0.1), await managers()
    s = socket.socket()
    s.bind((addr(a)[0], 0))
    dead_port = s.getsockname()[1]
    s.close()
    a.ensure_peer("ghost@" + addr(a)[0], addr(a)[0], dead_port)
    connect(a, b)
    await linked(a, b)
    await _assert_pair_healthy(a, b)
    assert "ghost@" + addr(a)[0] not in a.links
    assert a.dialing("ghost@" + addr(a)[0])  # still retrying


async def test_send_many_delivers_each_message_in_order(managers: Factory) -> None:
    a, b, got = await inbox_pair(managers)
    a.send(b.ident.node, "inbox", -1)
    a.send_many(b.ident.node, "inbox", list(range(10_000)))
    big = [b"y" * 100_000 for _ in range(100)]  # 10 MB: split into frames under the maximum
    a.send_many(b.ident.node, "inbox", big)
    a.send(b.ident.node, "inbox", -2)
    await until(lambda: len(got) == 10_102, "10,102 messages", timeout=30)
    assert got[:10_001] == [-1, *range(10_000)] and got[-1] == -2
    assert got[10_001:10_101] == big
    assert a.links[b.ident.node].msgs_out >= 10_102
    assert b.links[a.ident.node].msgs_in >= 10_102


@pytest.mark.parametrize(
    "body",
    [msgpack.packb({"not": "an array"}), msgpack.packb([[99, "x"]]), msgpack.packb([(SEND, ["unhashable"], 1)]),
     msgpack.packb([(6, "inbox", "not a list")]), b"\xdd\x00\x00\x00\x05\x01", b"\xc1"],
    ids=["not-array", "unknown-kind", "bad-mailbox", "bad-batch", "short-array", "invalid-byte"],
)
async def test_malformed_plaintext_from_authenticated_peer_drops_link(managers: Factory, body: bytes) -> None:
    b = await managers()
    got: list[Any] = []
    b.register("inbox", lambda frm, msg: got.append(msg))
    peer = await RawPeer.open(b)
    session = await peer.handshake(Identity(COOKIE, "raw@127.0.0.1", "inc1"))
    peer.send_frame(session.send.encrypt(body))
    assert await peer.closed_by_peer()
    await until(lambda: "raw@127.0.0.1" not in b.links, "link dropped")
    assert got == []


# ---- batch framing: runs of messages to one mailbox, at the frame maximum --------------------
def _largest_single(mailbox: str) -> int:
    """Size of the biggest bytes payload one send() can carry to ``mailbox``: frame header,
    run header and the payload's bin32 header must fit under MAX_PLAINTEXT."""
    from mn_node.link.conn import MAX_PLAINTEXT, _run_header

    return MAX_PLAINTEXT - 5 - len(_run_header(mailbox)) - 5


async def test_send_at_the_frame_maximum_and_one_byte_over(managers: Factory) -> None:
    from mn_node.errors import ProtocolError

    a, b, got = await inbox_pair(managers)
    peer = b.ident.node
    biggest = _largest_single("inbox")
    a.send(peer, "inbox", 1)  # opens a run: the big ones below go through the run fast path
    a.send(peer, "inbox", b"m" * biggest)  # cannot share the frame: flushed separately
    with pytest.raises(ProtocolError, match="exceeds"):
        a.send(peer, "inbox", b"o" * (biggest + 1))
    a.send(peer, "inbox", 2)  # the refused message left nothing behind
    with pytest.raises(ProtocolError, match="exceeds"):
        a.send(peer, "other", b"o" * (biggest + 1))  # refused when opening a run, too
    a.send(peer, "inbox", 3)
    await until(lambda: len(got) == 4, "4 messages", timeout=30)
    assert got[0] == 1 and got[1] == b"m" * biggest and got[2:] == [2, 3]
    assert peer in a.links and a.ident.node in b.links  # no frame was over the maximum


async def test_run_overflowing_the_frame_is_split_in_order(managers: Factory) -> None:
    """Small messages fill the run below FLUSH_BYTES, then one big message would push the frame
    past the maximum: it is taken back out and sent in the next frame, order kept."""
    from mn_node.link.conn import FLUSH_BYTES

    a, b, got = await inbox_pair(managers)
    peer = b.ident.node
    conn = a.links[peer]
    small = b"s" * 1000
    n_small = (FLUSH_BYTES - 2000) // 1003
    for _ in range(n_small):
        a.send(peer, "inbox", small)
    assert conn.unflushed < FLUSH_BYTES  # all in the open run, nothing flushed yet
    big = b"B" * (_largest_single("inbox") - 10)
    a.send(peer, "inbox", big)
    a.send(peer, "inbox", b"end")
    await until(lambda: len(got) == n_small + 2, "all messages", timeout=30)
    assert got == [small] * n_small + [big, b"end"]


@pytest.mark.parametrize("n", [1, 15, 16, 65535, 65536])
async def test_send_many_array_header_sizes_join_the_run(managers: Factory, n: int) -> None:
    """send_many strips the packed array's header (fixarray / array16 / array32) and appends
    the items to the mailbox's run: the receiver sees every item exactly once, in order, with
    send() messages before and after in the same run."""
    a, b, got = await inbox_pair(managers)
    peer = b.ident.node
    a.send(peer, "inbox", "first")
    a.send_many(peer, "inbox", list(range(n)))
    a.send(peer, "inbox", "last")
    await until(lambda: len(got) == n + 2, f"{n + 2} messages", timeout=30)
    assert got == ["first", *range(n), "last"]


async def test_interleaved_mailboxes_kinds_and_calls_keep_order(managers: Factory) -> None:
    a, b = await managers(), await managers()
    seen: list[tuple[str, Any]] = []
    b.register("x", lambda frm, msg: seen.append(("x", msg)))
    b.register("y", lambda frm, msg: seen.append(("y", msg)))
    b.register("echo", lambda frm, msg: seen.append(("echo", msg)) or msg)
    connect(a, b)
    await linked(a, b)
    peer = b.ident.node
    a.send(peer, "x", 1)
    a.send(peer, "x", 2)
    a.send(peer, "y", 3)
    a.send_many(peer, "y", [4, 5])
    a.send(peer, "x", 6)
    a.broadcast("y", 7)
    a.send_many(peer, "x", [9])
    a.send(peer, "nobody", 0)  # unknown mailbox: dropped, the rest still delivered
    a.send(peer, "x", 10)
    await until(lambda: len(seen) == 9, "9 messages")
    assert seen == [("x", 1), ("x", 2), ("y", 3), ("y", 4), ("y", 5), ("x", 6), ("y", 7), ("x", 9), ("x", 10)]
    # a call travels in the same frames (its handler runs in a task of its own)
    a.send(peer, "x", 11)
    assert await a.call(peer, "echo", 8) == 8
    assert seen[-2:] == [("x", 11), ("echo", 8)]


async def test_handler_error_in_a_batch_does_not_stop_the_rest(managers: Factory) -> None:
    a, b = await managers(), await managers()
    got: list[int] = []

    def picky(frm: str, msg: int) -> None:
        if msg % 3 == 0:
            raise ValueError("no multiples of three")
        got.append(msg)

    b.register("inbox", picky)
    connect(a, b)
    await linked(a, b)
    a.send_many(b.ident.node, "inbox", list(range(1, 10)))
    await until(lambda: len(got) == 6, "6 messages")
    assert got == [1, 2, 4, 5, 7, 8]
    assert a.ident.node in b.links


async def test_flood_of_sends_is_delivered_in_frames_under_the_maximum(managers: Factory) -> None:
    """A burst far bigger than one frame, of mixed sizes: everything arrives, in order."""
    a, b, got = await inbox_pair(managers)
    peer = b.ident.node
    msgs = [bytes([i % 256]) * ((i * 7919) % 20_000) for i in range(600)]
    for m in msgs:
        a.send(peer, "inbox", m)
    await until(lambda: len(got) == len(msgs), "600 messages", timeout=30)
    assert got == msgs
