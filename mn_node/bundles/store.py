"""Bundles in Redis, content-addressed: ``{ns}:bundle:<sha256>`` holds the canonical archive
(:func:`mn_node.bundles.archive.pack`). Written once (``SET NX``), never changed: the key *is*
the content's hash, so any node can fetch it, verify it and cache it on disk. Every node that
executes an agent of a bundle job fetches the archive once per sha256 and keeps the unpacked
folder in its cache; a job therefore survives the loss of the node that accepted it.

**Lifetime.** ``{ns}:bundle:<sha256>:jobs`` is the set of the bundle's live jobs: a submit adds
its job and PERSISTs the archive in the same transaction; the script that makes a job terminal
removes it, and when the set is empty gives the archive the job's retention TTL (never lowering
a longer one). An upload arrives with an :data:`UPLOAD_GRACE_MS` TTL, so an archive whose job
was never submitted does not stay forever.
"""

from __future__ import annotations

import hashlib

from mn_node.bundles.archive import BundleError
from mn_node.store import Store

UPLOAD_GRACE_MS = 3_600_000  # an uploaded archive no job refers to expires after an hour


def bundle_key(store: Store, sha256: str) -> str:
    return store.key("bundle", sha256)


def bundle_refs_key(store: Store, sha256: str) -> str:
    """The set of the live (pending, running, paused) jobs that use the bundle."""
    return store.key("bundle", sha256, "jobs")


async def put_bundle(store: Store, data: bytes, sha256: str) -> bool:
    """Store ``data`` under its hash; True if it was new. Refuses data that is not ``sha256``."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise BundleError(f"bundle content hashes to {actual}, not {sha256}; fix: upload the archive unchanged")
    created = await store.guard(store.binary.set(bundle_key(store, sha256), data, nx=True, px=UPLOAD_GRACE_MS))
    return bool(created)


async def has_bundle(store: Store, sha256: str) -> bool:
    return bool(await store.guard(store.r.exists(bundle_key(store, sha256))))


async def get_bundle(store: Store, sha256: str) -> bytes | None:
    """The archive, or None when Redis has no such bundle. The caller verifies the hash
    (``archive.unpack`` does) before using it."""
    data = await store.guard(store.binary.get(bundle_key(store, sha256)))
    return bytes(data) if data is not None else None
