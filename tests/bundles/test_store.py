"""Bundles stored in real Redis by content hash: write once, read back bytes, refuse a wrong hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mn_node.bundles.archive import BundleError, pack, unpack
from mn_node.bundles.store import get_bundle, has_bundle, put_bundle
from mn_node.store import Store
from tests.support.redis import RedisServer


@pytest.fixture
async def store(redis_server: RedisServer):
    s = Store(redis_server.url, "t-bundles")
    assert await s.check()
    yield s
    await s.close()


async def test_put_get_round_trip_and_unpack(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "b"
    (src / "payloads").mkdir(parents=True)
    (src / "manifest.json").write_text('{"nodes": []}')
    (src / "payloads" / "x.bin").write_bytes(bytes(range(256)) * 40)  # not UTF-8: needs the binary client
    data, sha = pack(src)
    assert await has_bundle(store, sha) is False
    assert await put_bundle(store, data, sha) is True
    assert await put_bundle(store, data, sha) is False  # already there, unchanged
    got = await get_bundle(store, sha)
    assert got == data
    out = unpack(got, sha, tmp_path / "cache")
    assert (out / "payloads" / "x.bin").read_bytes() == bytes(range(256)) * 40


async def test_wrong_hash_is_refused_and_nothing_stored(store: Store) -> None:
    data = b"not what the hash says"
    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(BundleError, match="hashes to"):
        await put_bundle(store, data, wrong)
    assert await get_bundle(store, wrong) is None
