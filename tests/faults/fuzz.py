"""Fuzzing the link's untrusted-input surface with hypothesis: the frame decoder and both
sides of the handshake (plus secretstream decryption of frames after it).

An *input* is one hypothesis example: a byte stream (split into chunks) fed to a fresh
``FrameDecoder``, or one message fed to a fresh ``Responder``/``Initiator``. The only exceptions
allowed out are :class:`mn_node.errors.LinkError` subclasses (the connection is dropped,
nothing else); anything else is a crash. Strategies mix raw bytes, msgpack maps with the
protocol's field names and random value types, and mutations (flips, cuts, splices) of
valid messages, so the checks deep inside the handshake are reached, not just the first one.

``fuzz_link(n, seed)`` spreads ``n`` inputs over the targets and over the CPUs (one process
per CPU, each with its own seed) and returns counts and crashes.

Hypothesis spends ~2 ms of CPU drawing one structured example, the targets ~50 µs running it.
With ``mutations=k`` every hypothesis example is also fed in ``k`` cheap random mutations
(bit flips, cuts, inserts, splices, re-chunking; ``random.Random`` seeded from the example),
each counted as one input: the big runs (``--inputs 1000000``) use this, so a million inputs
fit in minutes, not hours, on a loaded 2-core box. ``examples`` in the result says how many
of the inputs hypothesis drew itself.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import struct
import time
import traceback
from collections.abc import Callable
from typing import Any

import msgpack
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from mn_node.errors import LinkError
from mn_node.link import crypto
from mn_node.link.codec import MAX_FRAME, MAX_HANDSHAKE_FRAME, FrameDecoder, encode_frame

COOKIE = b"fuzz-cookie-0123456789abcdef0123456789"
ALICE = crypto.Identity(COOKIE, "mn1@10.0.0.1", "inc-a")
BOB = crypto.Identity(COOKIE, "mn2@10.0.0.2", "inc-b")
FIELDS = ["t", "v", "cid", "node", "inc", "pk", "n", "core", "hdr", "mac"]


def _valid_transcript() -> tuple[bytes, bytes, bytes]:
    ini = crypto.Initiator(ALICE)
    resp = crypto.Responder(BOB)
    hello = ini.hello()
    welcome = resp.on_hello(hello)
    finish, _ = ini.on_welcome(welcome)
    return hello, welcome, finish


HELLO, WELCOME, FINISH = _valid_transcript()

values = st.one_of(
    st.binary(max_size=80), st.text(max_size=40), st.integers(-(2**70), 2**70), st.booleans(), st.none(),
    st.floats(allow_nan=True), st.lists(st.integers(), max_size=3),
    st.sampled_from([crypto.PROTOCOL_VERSION, ALICE.cid, "hello", "welcome", "finish", "auth_failed", "version",
                     b"\x00" * 32, b"\x00" * 24]),
)


@st.composite
def packed_maps(draw: st.DrawFn) -> bytes:
    keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=8), st.integers(), st.binary(max_size=4))
    m = draw(st.dictionaries(keys, values, max_size=9))
    if draw(st.booleans()):
        m["core"] = draw(st.one_of(st.just(WELCOME), st.binary(max_size=200),
                                   st.builds(_pack, st.dictionaries(st.sampled_from(FIELDS), values))))
    return _pack(m)


def _pack(m: Any) -> bytes:
    try:
        return msgpack.packb(m, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError):
        return b"\x80"


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 4))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == 0 and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            del data[pos:]
        elif op == 2:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == 3 and data:
            data[pos] = draw(st.integers(0, 255))
        else:
            del data[pos : pos + draw(st.integers(1, 16))]
    return bytes(data)


def messages(*valid: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=600), packed_maps(), *(mutated(v) for v in valid), st.sampled_from(valid))


@st.composite
def frame_streams(draw: st.DrawFn) -> tuple[int, list[bytes], int]:
    limit = draw(st.sampled_from([MAX_HANDSHAKE_FRAME, MAX_FRAME, 1, 16, 300]))
    parts: list[bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            parts.append(encode_frame(draw(st.binary(min_size=1, max_size=300))))
        elif kind == 1:
            parts.append(struct.pack(">I", draw(st.sampled_from(
                [0, 1, limit, limit + 1, 2**31, 2**32 - 1, MAX_FRAME + 1]))) + draw(st.binary(max_size=40)))
        elif kind == 2:
            parts.append(draw(st.binary(max_size=64)))
        else:
            parts.append(draw(mutated(encode_frame(HELLO))))
    stream = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks, last = [], 0
    for c in [*cuts, len(stream)]:
        chunks.append(stream[last:c])
        last = c
    return limit, chunks, draw(st.integers(0, 3))


# ---- the targets: each returns normally or raises LinkError --------------------------------------
def t_decoder(arg: tuple[int, list[bytes], int]) -> None:
    limit, chunks, max_frames = arg
    d = FrameDecoder(limit)
    for ch in chunks:
        for fr in d.feed(ch, max_frames):
            assert 0 < len(fr) <= limit, f"decoder returned a {len(fr)}-byte frame over limit {limit}"


def t_responder(arg: tuple[bytes, bytes]) -> None:
    hello, finish = arg
    r = crypto.Responder(BOB)
    r.on_hello(hello)
    r.on_finish(finish)


def t_initiator(welcome: bytes) -> None:
    crypto.Initiator(ALICE).on_welcome(welcome)


def t_stream(arg: tuple[bytes, list[bytes]]) -> None:
    key, frames = arg
    send = crypto.SendStream(key)
    recv = crypto.RecvStream(key, send.header)
    good = [send.encrypt(b"x" * i) for i in range(3)]
    for f in [*good[:1], *frames, *good[1:]]:
        recv.decrypt(f)


TARGETS: dict[str, tuple[Callable[[Any], None], st.SearchStrategy[Any]]] = {
    "frame_decoder": (t_decoder, frame_streams()),
    "handshake_responder": (t_responder, st.tuples(messages(HELLO), messages(FINISH))),
    "handshake_initiator": (t_initiator, messages(WELCOME)),
    "secretstream_recv": (t_stream, st.tuples(st.binary(min_size=32, max_size=32),
                                               st.lists(st.binary(max_size=120), max_size=4))),
}
WEIGHTS = {"frame_decoder": 0.4, "handshake_responder": 0.25, "handshake_initiator": 0.25, "secretstream_recv": 0.1}


# ---- cheap mutations of one hypothesis example (the amplifier) --------------------------------------
def _mutate_bytes(rng: random.Random, data: bytes, other: bytes = b"") -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            del buf[pos:]
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and buf:
            buf[min(pos, len(buf) - 1)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 4:
            del buf[pos : pos + rng.randint(1, 16)]
        elif other:  # splice in a piece of another valid message
            a = rng.randrange(len(other))
            buf[pos:pos] = other[a : a + rng.randint(1, 48)]
    return bytes(buf)


def _recut(rng: random.Random, stream: bytes) -> list[bytes]:
    cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randint(0, 8)))
    out, last = [], 0
    for c in [*cuts, len(stream)]:
        out.append(stream[last:c])
        last = c
    return out


def mutate_arg(name: str, arg: Any, rng: random.Random) -> Any:
    if name == "frame_decoder":
        limit, chunks, max_frames = arg
        return limit, _recut(rng, _mutate_bytes(rng, b"".join(chunks), encode_frame(HELLO))), max_frames
    if name == "handshake_responder":
        hello, finish = arg
        if rng.random() < 0.5:
            return _mutate_bytes(rng, hello, HELLO), finish
        return hello if rng.random() < 0.5 else HELLO, _mutate_bytes(rng, finish, FINISH)
    if name == "handshake_initiator":
        return _mutate_bytes(rng, arg, WELCOME)
    key, frames = arg
    frames = list(frames) or [b""]
    i = rng.randrange(len(frames))
    frames[i] = _mutate_bytes(rng, frames[i])
    return key, frames


def run_target(name: str, n: int, seed_value: int, mutations: int = 0) -> dict[str, Any]:
    """``n`` hypothesis examples against one target, each also fed in ``mutations`` random
    mutations; returns counts (every call of the target is one input) and crash reports."""
    fn, strategy = TARGETS[name]
    stats = {"inputs": 0, "examples": 0, "refused": 0, "accepted": 0}
    crashes: list[str] = []

    def one(arg: Any) -> None:
        stats["inputs"] += 1
        try:
            fn(arg)
            stats["accepted"] += 1
        except LinkError:
            stats["refused"] += 1
        except Exception:
            if len(crashes) < 20:
                crashes.append(f"{name} input={arg!r:.300}\n{traceback.format_exc(limit=6)}")

    @seed(seed_value)
    @settings(max_examples=n, database=None, deadline=None, derandomize=False,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(strategy)
    def body(arg: Any) -> None:
        stats["examples"] += 1
        one(arg)
        if mutations:
            rng = random.Random(hashlib.blake2b(repr((seed_value, arg)).encode(), digest_size=8).digest())
            for _ in range(mutations):
                one(mutate_arg(name, arg, rng))

    body()
    return {"target": name, **stats, "crashes": crashes}


def _worker(job: tuple[str, int, int, int]) -> dict[str, Any]:
    return run_target(*job)


def fuzz_link(total: int, seed_value: int = 1, procs: int | None = None, batch: int = 25_000,
              mutations: int = 0) -> dict[str, Any]:
    """Spread ``total`` inputs over the targets (by weight) and processes; hypothesis is run in
    batches of ``batch`` inputs, each batch with its own seed derived from ``seed_value``; with
    ``mutations=k`` a batch is ``batch / (k + 1)`` hypothesis examples, each fed k+1 times."""
    per = mutations + 1
    jobs: list[tuple[str, int, int, int]] = []
    for i, (name, w) in enumerate(WEIGHTS.items()):
        left = int(total * w) if name != "secretstream_recv" else total - sum(int(total * x) for x in
                                                                           list(WEIGHTS.values())[:-1])
        b = 0
        while left > 0:
            k = min(batch, left)
            # k inputs: k // per examples with all their mutations, the rest as a last smaller job
            ex, rest = divmod(k, per)
            if ex:
                jobs.append((name, ex, seed_value * 1_000_003 + i * 10_007 + b, mutations))
            if rest:
                jobs.append((name, rest, seed_value * 1_000_003 + i * 10_007 + b + 500_000, 0))
            left -= k
            b += 1
    t0 = time.monotonic()
    procs = procs or os.cpu_count() or 1
    if procs > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            results = pool.map(_worker, jobs, chunksize=1)
    else:
        results = [_worker(j) for j in jobs]
    out: dict[str, Any] = {"seed": seed_value, "mutations_per_example": mutations, "inputs": 0, "examples": 0,
                           "targets": {}, "crashes": [], "seconds": round(time.monotonic() - t0, 1)}
    for r in results:
        t = out["targets"].setdefault(r["target"], {"inputs": 0, "examples": 0, "refused": 0, "accepted": 0})
        for k in ("inputs", "examples", "refused", "accepted"):
            t[k] += r[k]
        out["inputs"] += r["inputs"]
        out["examples"] += r["examples"]
        out["crashes"].extend(r["crashes"])
    return out
