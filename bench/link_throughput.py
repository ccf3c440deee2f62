"""100-byte messages/s between two processes over the encrypted link (LinkManager) and over a
raw-TCP baseline with the same framing and message packing but no crypto, in the same run.

    python bench/link_throughput.py [--messages 2000000] [--rounds 3] [--json out.json]

Prints a table (stderr) and JSON (stdout). Goal (DESIGN §7): >= 1,000,000 msg/s and >= 50 % of
the baseline. Each process is one Python interpreter, as a node is; the sender sends as fast as
the link accepts (``send`` + ``drain`` every few thousand messages), the receiver counts in a
mailbox handler and acks the last message; the rate is messages / (ack time - first send).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit, end, loopback_prefix, machine, table
from mn_node.link import Identity, LinkManager
from mn_node.link.codec import HEADER, MAX_FRAME, FrameDecoder
from mn_node.link.conn import BATCH, FLUSH_BYTES, SEND

DRAIN_EVERY = 4096
BATCH_SIZE = 256
MODES = ("raw", "link", "raw_batch", "link_batch")


# ---- encrypted link --------------------------------------------------------------------
async def link_recv(host: str, port: int, cookie: bytes, n: int) -> None:
    links = LinkManager(Identity(cookie, f"recv@{host}", os.urandom(4).hex()), local_host=host)
    count = 0

    def sink(frm: str, msg: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            links.send(frm, "ack", count)
            count = 0

    links.register("sink", sink)
    await links.listen(host, port)
    print("READY", flush=True)
    await asyncio.Event().wait()


async def link_send(host: str, port: int, peer_host: str, cookie: bytes, n: int, size: int, batch: bool) -> float:
    links = LinkManager(Identity(cookie, f"send@{host}", os.urandom(4).hex()), local_host=host)
    await links.listen(host, 0)
    peer = f"recv@{peer_host}"
    done = asyncio.Event()
    links.register("ack", lambda frm, msg: done.set())
    links.ensure_peer(peer, peer_host, port)
    while peer not in links.links:
        await asyncio.sleep(0.01)
    payload = b"x" * size
    t0 = time.perf_counter()
    if batch:
        chunk = [payload] * BATCH_SIZE
        send_many = links.send_many
        for i in range(0, n, BATCH_SIZE):
            send_many(peer, "sink", chunk if i + BATCH_SIZE <= n else chunk[: n - i])
            if (i // BATCH_SIZE) % (DRAIN_EVERY // BATCH_SIZE) == 0:
                await links.drain(peer)
    else:
        send = links.send
        for i in range(n):
            send(peer, "sink", payload)
            if i % DRAIN_EVERY == DRAIN_EVERY - 1:
                await links.drain(peer)
    await links.drain(peer)
    await done.wait()
    dt = time.perf_counter() - t0
    await links.stop()
    return dt


# ---- raw TCP baseline: same frames and msgpack messages, no crypto, minimal dispatch ----
class RawRecv(asyncio.Protocol):
    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.dec = FrameDecoder(MAX_FRAME)
        self.transport: asyncio.Transport | None = None
        self.handlers = {"sink": self.sink}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def sink(self, frm: str, msg: Any) -> None:
        self.count += 1
        if self.count == self.n:
            assert self.transport is not None
            self.transport.write(b"!")
            self.count = 0

    def data_received(self, data: bytes) -> None:
        # the link's framing: each frame is one msgpack array of packed messages
        for frame in self.dec.feed(data):
            for msg in msgpack.unpackb(frame, raw=False, strict_map_key=False):
                if msg[0] == SEND:
                    self.handlers[msg[1]]("peer", msg[2])
                elif msg[0] == BATCH:
                    handler = self.handlers[msg[1]]
                    for item in msg[2]:
                        handler("peer", item)


class RawSend(asyncio.Protocol):
    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.can_write = asyncio.Event()
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        self.done.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()


async def raw_recv(host: str, port: int, n: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: RawRecv(n), host, port, reuse_address=True)
    print("READY", flush=True)
    await asyncio.Event().wait()


async def raw_send(host: str, port: int, peer_host: str, n: int, size: int, batch: bool) -> float:
    loop = asyncio.get_running_loop()
    tr, proto = await loop.create_connection(RawSend, peer_host, port, local_addr=(host, 0))
    tr.set_write_buffer_limits(high=4 * 1024 * 1024)
    packer = msgpack.Packer(use_bin_type=True)
    payload = b"x" * size
    out: list[bytes] = []
    out_n = 0

    def flush() -> None:
        nonlocal out, out_n
        if out:
            body = b"\xdd" + len(out).to_bytes(4, "big") + b"".join(out)
            tr.write(HEADER.pack(len(body)) + body)
            out, out_n = [], 0

    t0 = time.perf_counter()
    if batch:
        chunk = [payload] * BATCH_SIZE
        for i in range(0, n, BATCH_SIZE):
            b = packer.pack((BATCH, "sink", chunk if i + BATCH_SIZE <= n else chunk[: n - i]))
            out.append(b)
            out_n += len(b)
            if out_n >= FLUSH_BYTES:
                flush()
            if (i // BATCH_SIZE) % (DRAIN_EVERY // BATCH_SIZE) == 0:
                flush()
                await proto.can_write.wait()
    else:
        for i in range(n):
            b = packer.pack((SEND, "sink", payload))
            out.append(b)
            out_n += len(b)
            if out_n >= FLUSH_BYTES:
                flush()
            if i % DRAIN_EVERY == DRAIN_EVERY - 1:
                flush()
                await proto.can_write.wait()
    flush()
    await proto.done.wait()
    dt = time.perf_counter() - t0
    tr.close()
    return dt


# ---- driver ------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    cookie = bytes.fromhex(args.cookie)
    if args.role == "recv":
        if args.mode.startswith("link"):
            asyncio.run(link_recv(args.host, args.port, cookie, args.messages))
        else:
            asyncio.run(raw_recv(args.host, args.port, args.messages))
        return
    batch = args.mode.endswith("_batch")
    if args.mode.startswith("link"):
        dt = asyncio.run(link_send(args.host, args.port, args.peer_host, cookie, args.messages, args.size, batch))
    else:
        dt = asyncio.run(raw_send(args.host, args.port, args.peer_host, args.messages, args.size, batch))
    print(f"RESULT {dt:.6f}", flush=True)


def run_pair(mode: str, prefix: str, port: int, n: int, size: int, cookie: str) -> float:
    me = [sys.executable, os.path.abspath(__file__)]
    recv_host, send_host = f"{prefix}.2", f"{prefix}.1"
    common = ["--mode", mode, "--port", str(port), "--messages", str(n), "--size", str(size),
              "--cookie", cookie]
    recv = subprocess.Popen([*me, "--role", "recv", "--host", recv_host, *common],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None
        line = recv.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"receiver did not start: {line!r}")
        out = subprocess.run([*me, "--role", "send", "--host", send_host, "--peer-host", recv_host, *common],
                             capture_output=True, text=True, timeout=600)
        for ln in out.stdout.splitlines():
            if ln.startswith("RESULT "):
                return float(ln.split()[1])
        raise RuntimeError(f"sender failed: {out.stderr[-2000:]}")
    finally:
        end(recv)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=2_000_000)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", dest="json_path")
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
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for i, mode in enumerate(MODES):  # interleaved so all see the same machine state
            dt = run_pair(mode, prefix, 4370 + r * len(MODES) + i, args.messages, args.size, cookie)
            rates[mode].append(args.messages / dt)
    med = {m: sorted(v)[len(v) // 2] for m, v in rates.items()}
    best = {m: max(v) for m, v in rates.items()}
    ratio = {"send": med["link"] / med["raw"], "send_many": med["link_batch"] / med["raw_batch"]}
    top = max(med["link"], med["link_batch"])
    goal_met = any(med[lk] >= 1_000_000 and ratio[api] >= 0.5
                   for lk, api in (("link", "send"), ("link_batch", "send_many")))

    def block(mode: str) -> dict[str, Any]:
        return {"median": round(med[mode]), "best": round(best[mode]), "all": [round(x) for x in rates[mode]]}

    result = {
        "benchmark": "link_throughput",
        "message_bytes": args.size,
        "messages_per_round": args.messages,
        "rounds": args.rounds,
        "batch_size": BATCH_SIZE,
        "encrypted_send_msgs_per_s": block("link"),
        "raw_tcp_send_msgs_per_s": block("raw"),
        "encrypted_send_many_msgs_per_s": block("link_batch"),
        "raw_tcp_send_many_msgs_per_s": block("raw_batch"),
        "encrypted_vs_raw": {k: round(v, 3) for k, v in ratio.items()},
        "best_encrypted_median_msgs_per_s": round(top),
        "goal": {"msgs_per_s": 1_000_000, "ratio": 0.5},
        "goal_met": goal_met,
        "machine": machine(),
    }
    rows = [
        ["send()", "encrypted link", f"{med['link']:,.0f}", f"{best['link']:,.0f}", f"{ratio['send']:.0%}"],
        ["send()", "raw TCP", f"{med['raw']:,.0f}", f"{best['raw']:,.0f}", "100%"],
        [f"send_many({BATCH_SIZE})", "encrypted link", f"{med['link_batch']:,.0f}", f"{best['link_batch']:,.0f}",
         f"{ratio['send_many']:.0%}"],
        [f"send_many({BATCH_SIZE})", "raw TCP", f"{med['raw_batch']:,.0f}", f"{best['raw_batch']:,.0f}", "100%"],
    ]
    text = table(rows, ["api", "path", "median msg/s", "best msg/s", "vs raw"])
    text += (f"\n{args.size}-byte messages, {args.messages:,} per round, {args.rounds} rounds; goal >= "
             f"1,000,000 msg/s and >= 50% of raw: {'met' if goal_met else 'NOT met'}")
    emit(result, text, args.json_path)

if __name__ == "__main__":
    main()
