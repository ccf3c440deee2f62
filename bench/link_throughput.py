"""100-byte messages/s between two processes over the encrypted link (LinkManager) and over a
raw-TCP baseline, in the same run.

    python bench/link_throughput.py [--messages 2000000] [--rounds 3] [--json out.json] [--loop uvloop]

Prints a table (stderr) and JSON (stdout). Goal (docs/architecture.md, "Numbers"): >= 1,000,000 msg/s and >= 50 % of
the baseline.

Each process is one Python interpreter, as a node is. The sender calls the API as an
application would (``send`` per message, or ``send_many`` with 256 messages) and awaits
``drain`` every 4096 messages; the receiver counts in a mailbox handler (called once per
message) and acks the last one; the rate is messages / (ack time - first send).

The raw baseline is the same thing without the link: a minimal sender object with the same
``send`` / ``send_many`` / ``drain`` calls, the same plaintext wire layout (length-prefixed
frames, each one msgpack array in which consecutive messages to one mailbox form one
``[BATCH, mailbox, [...]]`` run), the same coalescing (flush at the end of the loop iteration or
past FLUSH_BYTES) and a receiver that reads in place with the same FrameReader and calls the
handler once per message. What differs is only what the link adds: secretstream encryption and
authentication, the link's checks and its statistics.

Because the machine is shared, wall-clock rates move with the load; the CPU time each process
spent per message (``cpu_ns_per_msg``) is printed too: it is what the link costs, and it does
not depend on how many other processes compete for the cores. Compare ratios from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit, end, loopback_prefix, machine, table
from mn_node.link import Identity, LinkManager
from mn_node.link.codec import HEADER, MAX_FRAME, FrameReader
from mn_node.link.conn import BATCH, FLUSH_BYTES, SEND

DRAIN_EVERY = 4096
BATCH_SIZE = 256
MODES = ("raw", "link", "raw_batch", "link_batch")


def run_loop(coro: Any, loop_kind: str) -> Any:
    if loop_kind == "uvloop":
        import uvloop  # optional: only when asked for

        return uvloop.run(coro)
    return asyncio.run(coro)


# ---- the sending application, identical for both paths ------------------------------------
async def drive(send: Callable[[str, str, Any], None], send_many: Callable[[str, str, list[Any]], None],
                drain: Callable[[str], Any], peer: str, n: int, size: int, batch: bool) -> None:
    payload = b"x" * size
    if batch:
        chunk = [payload] * BATCH_SIZE
        per_drain = DRAIN_EVERY // BATCH_SIZE
        full, rest = divmod(n, BATCH_SIZE)
        for i in range(full):
            send_many(peer, "sink", chunk)
            if i % per_drain == per_drain - 1:
                await drain(peer)
        if rest:
            send_many(peer, "sink", chunk[:rest])
    else:
        repeat = itertools.repeat
        full, rest = divmod(n, DRAIN_EVERY)
        for _ in range(full):
            for _ in repeat(None, DRAIN_EVERY):
                send(peer, "sink", payload)
            await drain(peer)
        for _ in repeat(None, rest):
            send(peer, "sink", payload)
    await drain(peer)


def counter(n: int, ack: Callable[[str], None]) -> Callable[[str, Any], None]:
    """The receiving application: a mailbox handler that counts (and acks the n-th message)."""
    count = 0

    def sink(frm: str, msg: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            count = 0
            ack(frm)

    return sink


def report_cpu(cpu0: float) -> None:
    """Receiver: CPU seconds since it was ready, printed for the driver (read after the ack)."""
    print(f"CPU {time.process_time() - cpu0:.6f}", flush=True)


# ---- encrypted link --------------------------------------------------------------------
async def link_recv(host: str, port: int, cookie: bytes, n: int) -> None:
    links = LinkManager(Identity(cookie, f"recv@{host}", os.urandom(4).hex()), local_host=host)
    await links.listen(host, port)
    print("READY", flush=True)
    cpu0 = time.process_time()

    def ack(frm: str) -> None:
        links.send(frm, "ack", n)
        report_cpu(cpu0)

    links.register("sink", counter(n, ack))
    await asyncio.Event().wait()


async def link_send(host: str, port: int, peer_host: str, cookie: bytes, n: int, size: int,
                    batch: bool) -> tuple[float, float]:
    links = LinkManager(Identity(cookie, f"send@{host}", os.urandom(4).hex()), local_host=host)
    await links.listen(host, 0)
    peer = f"recv@{peer_host}"
    done = asyncio.Event()
    links.register("ack", lambda frm, msg: done.set())
    links.ensure_peer(peer, peer_host, port)
    while peer not in links.links:
        await asyncio.sleep(0.01)
    c0, t0 = time.process_time(), time.perf_counter()
    await drive(links.send, links.send_many, links.drain, peer, n, size, batch)
    await done.wait()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    await links.stop()
    return dt, cpu


# ---- raw TCP baseline: the same wire layout and coalescing, no crypto ---------------------
def nodelay(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY, as the link's connections have."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_FRAME_HEAD = b"\xdd\0\0\0\0"


class RawRecv(asyncio.BufferedProtocol):
    def __init__(self, n: int) -> None:
        self.reader = FrameReader(MAX_FRAME)
        self.transport: asyncio.Transport | None = None
        self.handlers: dict[str, Callable[[str, Any], Any]] = {"sink": counter(n, self.ack)}
        self.cpu0 = time.process_time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is no asyncio.Transport
        nodelay(transport)

    def ack(self, frm: str) -> None:
        assert self.transport is not None
        self.transport.write(b"!")
        report_cpu(self.cpu0)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        handlers = self.handlers
        reader = self.reader
        reader.buffer_updated(nbytes)
        while (frame := reader.next_frame()) is not None:
            for msg in msgpack.unpackb(frame, raw=False, strict_map_key=False):
                if msg[0] == BATCH:
                    handler = handlers[msg[1]]
                    for item in msg[2]:
                        handler("peer", item)
                elif msg[0] == SEND:
                    handlers[msg[1]]("peer", msg[2])


class RawSend(asyncio.Protocol):
    """A minimal unencrypted ``send`` / ``send_many`` / ``drain`` with the link's coalescing."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.transport: asyncio.Transport | None = None
        self.out = bytearray(_FRAME_HEAD)
        self.items = 0
        self.run_mailbox: str | None = None
        self.run_at = 0
        self.run_count = 0
        self.handle: asyncio.Handle | None = None
        self.pack = msgpack.Packer(use_bin_type=True).pack

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is no asyncio.Transport
        nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.done.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def send(self, node: str, mailbox: str, msg: Any) -> None:
        packed = self.pack(msg)
        if self.run_mailbox == mailbox:
            out = self.out
            out += packed
            self.run_count += 1
            if len(out) >= FLUSH_BYTES:
                self.flush()
        else:
            self.push(mailbox, packed, 1)

    def send_many(self, node: str, mailbox: str, msgs: list[Any]) -> None:
        n = len(msgs)
        self.push(mailbox, memoryview(self.pack(msgs))[1 if n < 16 else 3 if n < 0x10000 else 5 :], n)

    def push(self, mailbox: str, packed: bytes | memoryview, count: int) -> None:
        out = self.out
        if self.run_mailbox != mailbox:
            self.close_run()
            out += b"\x93" + msgpack.packb(BATCH) + msgpack.packb(mailbox) + _FRAME_HEAD
            self.items += 1
            self.run_at = len(out) - 4
            self.run_mailbox = mailbox
        out += packed
        self.run_count += count
        if len(out) >= FLUSH_BYTES:
            self.flush()
        elif self.handle is None:
            self.handle = asyncio.get_running_loop().call_soon(self.flush)

    def close_run(self) -> None:
        if self.run_mailbox is not None:
            self.out[self.run_at : self.run_at + 4] = self.run_count.to_bytes(4, "big")
            self.run_mailbox = None
            self.run_count = 0

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.close_run()
        if self.items:
            body = self.out
            body[1:5] = self.items.to_bytes(4, "big")
            self.out, self.items = bytearray(_FRAME_HEAD), 0
            assert self.transport is not None
            self.transport.write(HEADER.pack(len(body)) + body)

    async def drain(self, node: str) -> None:
        self.flush()
        await self.can_write.wait()


async def raw_recv(host: str, port: int, n: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: RawRecv(n), host, port, reuse_address=True)
    print("READY", flush=True)
    await asyncio.Event().wait()


async def raw_send(host: str, port: int, peer_host: str, n: int, size: int, batch: bool) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    tr, proto = await loop.create_connection(RawSend, peer_host, port, local_addr=(host, 0))
    tr.set_write_buffer_limits(high=4 * 1024 * 1024)  # as the link's Conn
    c0, t0 = time.process_time(), time.perf_counter()
    await drive(proto.send, proto.send_many, proto.drain, "peer", n, size, batch)
    await proto.done.wait()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    tr.close()
    return dt, cpu


# ---- driver ------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    cookie = bytes.fromhex(args.cookie)
    if args.role == "recv":
        if args.mode.startswith("link"):
            run_loop(link_recv(args.host, args.port, cookie, args.messages), args.loop)
        else:
            run_loop(raw_recv(args.host, args.port, args.messages), args.loop)
        return
    batch = args.mode.endswith("_batch")
    if args.mode.startswith("link"):
        coro = link_send(args.host, args.port, args.peer_host, cookie, args.messages, args.size, batch)
    else:
        coro = raw_send(args.host, args.port, args.peer_host, args.messages, args.size, batch)
    dt, cpu = run_loop(coro, args.loop)
    print(f"RESULT {dt:.6f} {cpu:.6f}", flush=True)


def run_pair(mode: str, prefix: str, port: int, args: argparse.Namespace, cookie: str) -> tuple[float, float, float]:
    """(seconds, sender CPU seconds, receiver CPU seconds) for one round of one mode."""
    me = [sys.executable, os.path.abspath(__file__)]
    recv_host, send_host = f"{prefix}.2", f"{prefix}.1"
    common = ["--mode", mode, "--port", str(port), "--messages", str(args.messages), "--size", str(args.size),
              "--cookie", cookie, "--loop", args.loop]
    recv = subprocess.Popen([*me, "--role", "recv", "--host", recv_host, *common],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None
        line = recv.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"receiver did not start: {line!r}")
        out = subprocess.run([*me, "--role", "send", "--host", send_host, "--peer-host", recv_host, *common],
                             capture_output=True, text=True, timeout=600)
        result = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if not result:
            raise RuntimeError(f"sender failed: {out.stderr[-2000:]}")
        line = recv.stdout.readline()
        if not line.startswith("CPU "):
            raise RuntimeError(f"receiver did not report its CPU time: {line!r}")
        return float(result[0][1]), float(result[0][2]), float(line.split()[1])
    finally:
        end(recv)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=2_000_000)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", dest="json_path")
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                   help="event loop of both processes (uvloop must be installed)")
    p.add_argument("--role", choices=["recv", "send"], help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--host", help=argparse.SUPPRESS)
    p.add_argument("--peer-host", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--cookie", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role:
        child(args)
        return
    cookie = os.urandom(32).hex()
    prefix = loopback_prefix()
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    cpu_send: dict[str, list[float]] = {m: [] for m in MODES}
    cpu_recv: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for i, mode in enumerate(MODES):  # interleaved so all see the same machine state
            dt, cs, cr = run_pair(mode, prefix, 4370 + r * len(MODES) + i, args, cookie)
            rates[mode].append(args.messages / dt)
            cpu_send[mode].append(cs / args.messages * 1e9)
            cpu_recv[mode].append(cr / args.messages * 1e9)
    load_after = os.getloadavg()

    def median(v: list[float]) -> float:
        return sorted(v)[len(v) // 2]

    med = {m: median(v) for m, v in rates.items()}
    best = {m: max(v) for m, v in rates.items()}
    # per-round ratios: each pair ran back to back, so they saw about the same load
    round_ratio = {
        "send": [lk / rw for lk, rw in zip(rates["link"], rates["raw"], strict=True)],
        "send_many": [lk / rw for lk, rw in zip(rates["link_batch"], rates["raw_batch"], strict=True)],
    }
    ratio = {k: median(v) for k, v in round_ratio.items()}
    cs = {m: median(v) for m, v in cpu_send.items()}
    cr = {m: median(v) for m, v in cpu_recv.items()}
    # the pipeline's rate if each process had a core of its own: bounded by the busier side
    cpu_rate = {m: 1e9 / max(cs[m], cr[m]) for m in MODES}
    cpu_ratio = {"send": cpu_rate["link"] / cpu_rate["raw"],
                 "send_many": cpu_rate["link_batch"] / cpu_rate["raw_batch"]}
    top = max(med["link"], med["link_batch"])
    goal_met = any(med[lk] >= 1_000_000 and ratio[api] >= 0.5
                   for lk, api in (("link", "send"), ("link_batch", "send_many")))

    def block(mode: str) -> dict[str, Any]:
        return {"median": round(med[mode]), "best": round(best[mode]), "all": [round(x) for x in rates[mode]],
                "cpu_ns_per_msg": {"sender": round(cs[mode]), "receiver": round(cr[mode])},
                "cpu_bound_msgs_per_s": round(cpu_rate[mode])}

    result = {
        "benchmark": "link_throughput",
        "message_bytes": args.size,
        "messages_per_round": args.messages,
        "rounds": args.rounds,
        "batch_size": BATCH_SIZE,
        "event_loop": args.loop,
        "encrypted_send_msgs_per_s": block("link"),
        "raw_tcp_send_msgs_per_s": block("raw"),
        "encrypted_send_many_msgs_per_s": block("link_batch"),
        "raw_tcp_send_many_msgs_per_s": block("raw_batch"),
        "encrypted_vs_raw": {k: round(v, 3) for k, v in ratio.items()},
        "encrypted_vs_raw_per_round": {k: [round(x, 3) for x in v] for k, v in round_ratio.items()},
        "encrypted_vs_raw_cpu_bound": {k: round(v, 3) for k, v in cpu_ratio.items()},
        "best_encrypted_median_msgs_per_s": round(top),
        "goal": {"msgs_per_s": 1_000_000, "ratio": 0.5},
        "goal_met": goal_met,
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "machine": machine(),
    }
    rows = []
    for api, lk, rw in (("send()", "link", "raw"), (f"send_many({BATCH_SIZE})", "link_batch", "raw_batch")):
        key = "send" if lk == "link" else "send_many"
        for mode, path in ((lk, "encrypted link"), (rw, "raw TCP")):
            rows.append([api, path, f"{med[mode]:,.0f}", f"{best[mode]:,.0f}",
                         f"{ratio[key]:.0%}" if mode == lk else "100%",
                         f"{cs[mode]:,.0f}", f"{cr[mode]:,.0f}", f"{cpu_rate[mode]:,.0f}",
                         f"{cpu_ratio[key]:.0%}" if mode == lk else "100%"])
    text = table(rows, ["api", "path", "median msg/s", "best msg/s", "vs raw",
                        "send ns/msg", "recv ns/msg", "cpu-bound msg/s", "vs raw"])
    text += (f"\n{args.size}-byte messages, {args.messages:,} per round, {args.rounds} rounds, {args.loop} loop, "
             f"load average {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} CPUs"
             f"\nns/msg = CPU time of that process per message; cpu-bound msg/s = 1e9 / the busier side "
             f"(the rate with a free core per process)"
             f"\ngoal >= 1,000,000 msg/s and >= 50% of raw (wall clock): {'met' if goal_met else 'NOT met'}")
    emit(result, text, args.json_path)


if __name__ == "__main__":
    main()
