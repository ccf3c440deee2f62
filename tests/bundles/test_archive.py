"""Canonical, content-addressed bundle archives: deterministic, verified, traversal-proof."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from mn_node.bundles import BundleError, pack, unpack
from mn_node.bundles.archive import MiB, max_bytes


def bundle(root: Path) -> Path:
    (root / "payloads" / "scripts").mkdir(parents=True)
    (root / "payloads" / "empty").mkdir()
    (root / "manifest.json").write_text('{"graph_id": "g"}')
    run = root / "payloads" / "scripts" / "run.py"
    run.write_text("print(1)\n")
    run.chmod(0o755)
    (root / "payloads" / "data.txt").write_text("hello\n")
    (root / "payloads" / "scripts" / "__pycache__").mkdir()
    (root / "payloads" / "scripts" / "__pycache__" / "run.cpython-311.pyc").write_bytes(b"junk")
    return root


def test_same_content_same_hash_whatever_the_metadata(tmp_path: Path) -> None:
    a = bundle(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    os.utime(b / "payloads" / "data.txt", (1, 1))
    shutil.rmtree(b / "payloads" / "scripts" / "__pycache__")
    data_a, sha_a = pack(a)
    data_b, sha_b = pack(b)
    assert sha_a == sha_b and data_a == data_b and sha_a == hashlib.sha256(data_a).hexdigest()
    (b / "payloads" / "data.txt").write_text("changed\n")
    assert pack(b)[1] != sha_a


def test_unpack_verifies_and_caches(tmp_path: Path) -> None:
    data, sha = pack(bundle(tmp_path / "src"))
    cache = tmp_path / "cache"
    where = unpack(data, sha, cache)
    assert where == cache / sha
    assert (where / "payloads" / "data.txt").read_text() == "hello\n"
    assert os.access(where / "payloads" / "scripts" / "run.py", os.X_OK)
    assert (where / "payloads" / "empty").is_dir()
    assert not (where / "payloads" / "scripts" / "__pycache__").exists()
    assert unpack(data, sha, cache) == where
    assert [p.name for p in cache.iterdir()] == [sha]  # no temporary folder left
    with pytest.raises(BundleError, match="hashes to"):
        unpack(data + b"x", sha, tmp_path / "other")
    assert not (tmp_path / "other" / sha).exists()


def evil(names: list[tuple[str, bytes]], link: bool = False) -> tuple[bytes, str]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in names:
            info = tarfile.TarInfo(name)
            if link:
                info.type = tarfile.SYMTYPE
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("name", ["../escaped", "payloads/../../escaped", "/tmp/escaped-abs"])
def test_traversal_entries_are_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    cache = tmp_path / "deep" / "cache"
    data, sha = evil([("manifest.json", b"{}"), (name, b"pwned")])
    with pytest.raises(BundleError, match="leads out"):
        unpack(data, sha, cache)
    assert not (tmp_path / "deep" / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert not Path("/tmp/escaped-abs").exists()
    assert list(cache.iterdir()) == []


def test_link_entries_are_refused(tmp_path: Path) -> None:
    data, sha = evil([("payloads/passwd", b"")], link=True)
    with pytest.raises(BundleError, match="not a file or folder"):
        unpack(data, sha, tmp_path / "cache")


def test_pack_refuses_a_symlink_out_and_keeps_one_inside(tmp_path: Path) -> None:
    root = bundle(tmp_path / "b")
    (root / "payloads" / "alias.txt").symlink_to(root / "payloads" / "data.txt")
    data, sha = pack(root)
    assert (unpack(data, sha, tmp_path / "c") / "payloads" / "alias.txt").read_text() == "hello\n"
    (tmp_path / "secret").write_text("s")
    (root / "payloads" / "leak").symlink_to(tmp_path / "secret")
    with pytest.raises(BundleError, match="symlink leads out"):
        pack(root)


def test_the_size_cap(tmp_path: Path) -> None:
    root = bundle(tmp_path / "b")
    (root / "payloads" / "big.bin").write_bytes(b"\0" * (2 * MiB))
    with pytest.raises(BundleError, match=r"over the cap of 1\.0 MiB") as err:
        pack(root, cap=1 * MiB)
    assert err.value.exit_code == 65
    data, sha = pack(root)
    with pytest.raises(BundleError, match="over the cap"):
        unpack(data, sha, tmp_path / "c", cap=1 * MiB)
    assert max_bytes({}) == 64 * MiB and max_bytes({"MIRROR_NEURON_BUNDLE_MAX_BYTES": "1024"}) == 1024
    with pytest.raises(BundleError, match="not a number"):
        max_bytes({"MIRROR_NEURON_BUNDLE_MAX_BYTES": "lots"})
