"""Bundles as content-addressed archives: ``pack`` a folder, ``unpack`` it into a cache.

The archive is an uncompressed POSIX tar built canonically: entries sorted by path, regular
files and folders only, mtime 0, uid/gid 0, no user/group names, mode 0755 for executables
and folders and 0644 for other files. The same folder content therefore always gives the same
bytes and the same sha256, on any machine. Skipped: ``__pycache__``, ``*.pyc``, ``.git``.
A symlink pointing to a file inside the bundle is stored as that file's content; a symlink
leading out of the bundle, a symlinked folder, or a special file is refused.

``unpack`` verifies the sha256 first, accepts only relative regular-file and folder entries
(no ``..``, no absolute names, no links, no devices), extracts into a temporary folder of
the cache and renames it to ``<cache>/<sha256>/`` in one step, so a reader sees a whole bundle
or none.

Size cap: ``DEFAULT_MAX_BYTES`` (64 MiB of archive), overridable with
``MIRROR_NEURON_BUNDLE_MAX_BYTES``; over it, packing fails with a ``DataError`` (exit 65).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mn_node.errors import DataError

MiB = 1024 * 1024
DEFAULT_MAX_BYTES = 64 * MiB
MAX_BYTES_ENV = "MIRROR_NEURON_BUNDLE_MAX_BYTES"
SKIPPED_DIRS = frozenset({"__pycache__", ".git"})
SKIPPED_SUFFIXES = (".pyc",)
TAR_OVERHEAD = 1536  # a header block per entry plus the end-of-archive blocks, roughly


class BundleError(DataError):
    """A bundle that cannot be packed, stored or unpacked as it is."""


def max_bytes(env: Mapping[str, str] | None = None) -> int:
    """The size cap: ``MIRROR_NEURON_BUNDLE_MAX_BYTES`` or 64 MiB."""
    raw = (os.environ if env is None else env).get(MAX_BYTES_ENV, "")
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise BundleError(f"{MAX_BYTES_ENV}={raw!r} is not a number of bytes; fix: e.g. 67108864") from None
    if value <= 0:
        raise BundleError(f"{MAX_BYTES_ENV}={raw!r} must be positive; fix: e.g. 67108864")
    return value


@dataclass(frozen=True)
class Entry:
    name: str  # posix path relative to the bundle root
    source: Path | None  # None for a folder
    executable: bool
    size: int


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def entry_of(path: Path, root: Path, name: str) -> Entry:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        real = path.resolve()
        if not _inside(real, root) or not real.exists():
            raise BundleError(f"{name}: symlink leads out of the bundle (or nowhere); "
                              "fix: put the file itself in the bundle")
        if real.is_dir():
            raise BundleError(f"{name}: symlinked folders are not supported; fix: copy the folder instead")
        st = real.stat()
        path = real
    if stat.S_ISDIR(st.st_mode):
        return Entry(name, None, True, 0)
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{name}: not a regular file or folder; fix: remove it from the bundle")
    return Entry(name, path, bool(st.st_mode & 0o111), st.st_size)


def scan(root: Path) -> Iterator[Entry]:
    """The bundle's entries in canonical order; raises ``BundleError`` on an unsafe entry."""
    root = root.resolve()

    def walk(folder: Path, prefix: str) -> Iterator[Entry]:
        for child in sorted(folder.iterdir(), key=lambda p: p.name):
            name = f"{prefix}{child.name}"
            if child.name in SKIPPED_DIRS or child.name.endswith(SKIPPED_SUFFIXES):
                continue
            entry = entry_of(child, root, name)
            yield entry
            if entry.source is None:
                yield from walk(child, name + "/")

    yield from walk(root, "")


def pack(path: Path, cap: int | None = None) -> tuple[bytes, str]:
    """The canonical archive of the bundle folder ``path`` and its sha256 (hex)."""
    if not path.is_dir():
        raise BundleError(f"{path}: not a folder; fix: give the bundle folder (with manifest.json)")
    limit = max_bytes() if cap is None else cap
    entries = list(scan(path))
    estimate = sum(e.size + TAR_OVERHEAD for e in entries)
    if estimate > limit:
        raise BundleError(f"bundle {path} is about {estimate / MiB:.1f} MiB, over the cap of {limit / MiB:.1f} MiB; "
                          f"fix: leave large data out of the bundle or raise {MAX_BYTES_ENV}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if e.executable else 0o644
            if e.source is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            data = e.source.read_bytes()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    if len(data) > limit:
        raise BundleError(f"bundle {path} is {len(data) / MiB:.1f} MiB, over the cap of {limit / MiB:.1f} MiB; "
                          f"fix: leave large data out of the bundle or raise {MAX_BYTES_ENV}")
    return data, hashlib.sha256(data).hexdigest()


def _member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name:
        raise BundleError(f"archive entry {name!r} leads out of the bundle; fix: re-pack the bundle with `pack`")
    return path


def _check_sha(sha256: str) -> None:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise BundleError(f"{sha256!r} is not a sha256 (64 lowercase hex digits); fix: pass the id `pack` gave")


def unpack(data: bytes, sha256: str, cache_dir: Path, cap: int | None = None) -> Path:
    """Verify ``data`` against ``sha256`` and make ``<cache_dir>/<sha256>/``; returns that path."""
    _check_sha(sha256)
    limit = max_bytes() if cap is None else cap
    if len(data) > limit:
        raise BundleError(f"bundle {sha256[:12]} is {len(data) / MiB:.1f} MiB, over the cap of "
                          f"{limit / MiB:.1f} MiB; fix: raise {MAX_BYTES_ENV} on this node")
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise BundleError(f"bundle content hashes to {got[:12]}, not {sha256[:12]}; fix: fetch it again")
    final = cache_dir / sha256
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=cache_dir))
    try:
        _extract(data, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _extract(data: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            rel = _member_path(member.name)
            target = dest.joinpath(*rel.parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if not member.isreg():
                raise BundleError(f"archive entry {member.name!r} is not a file or folder; "
                                  "fix: re-pack the bundle with `pack`")
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            if src is None:
                raise BundleError(f"archive entry {member.name!r} has no data; fix: re-pack the bundle")
            with src, open(target, "xb") as out:
                shutil.copyfileobj(src, out)
            os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
