"""A node's on-disk cache of unpacked bundles: ``<state dir>/bundles/<sha256>/``.

A bundle is fetched from Redis (:func:`mn_node.bundles.store.get_bundle`) at most once per
sha256 per node: concurrent requests for the same sha wait for the one fetch in progress.
The archive is verified against its sha256 and unpacked (:func:`mn_node.bundles.archive.unpack`,
in a thread) before anyone uses it; a folder already in the cache is used as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from mn_node.bundles.archive import BundleError, unpack
from mn_node.bundles.store import get_bundle
from mn_node.store import Store

log = logging.getLogger("mn_node.bundles")


class BundleCache:
    def __init__(self, store: Store, root: Path) -> None:
        self.store = store
        self.root = root
        self._pending: dict[str, asyncio.Future[Path]] = {}

    async def get(self, sha256: str) -> Path:
        """The unpacked bundle folder; raises ``BundleError`` or ``RedisUnavailable``."""
        final = self.root / sha256
        if len(sha256) == 64 and final.is_dir():
            return final
        pending = self._pending.get(sha256)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        self._pending[sha256] = fut
        try:
            data = await get_bundle(self.store, sha256)
            if data is None:
                raise BundleError(f"bundle {sha256[:12]} is not in Redis; fix: submit the bundle again (mn run DIR)")
            path = await asyncio.to_thread(unpack, data, sha256, self.root)
            log.info("bundle %s fetched and unpacked into %s", sha256[:12], path)
            fut.set_result(path)
            return path
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as e:
            fut.set_exception(e)
            with contextlib.suppress(Exception):
                fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._pending[sha256]
