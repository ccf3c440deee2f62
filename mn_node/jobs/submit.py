"""Submitting a job: the one write path behind ``POST /api/v1/jobs``, bundle uploads and ``mn run``."""

from __future__ import annotations

import asyncio
from typing import Any

from mn_node.bundles.store import has_bundle
from mn_node.errors import DataError
from mn_node.jobs import tasks
from mn_node.jobs.manifest import validate
from mn_node.jobs.reducers import REDUCERS
from mn_node.jobs.state import OFFLOAD_AGENTS, create_job
from mn_node.store import Store


async def submit_job(store: Store, manifest_raw: dict[str, Any], *, bundle_sha: str | None, node: str,
                     request: dict[str, Any] | None = None) -> dict[str, str]:
    """Validate ``manifest_raw`` (either manifest format) with the one validator and write the
    job (hash, history, active set, first events); returns the job id. The stored spec is the
    normalized manifest plus ``"bundle": bundle_sha`` for a bundle job, whose archive must
    already be in Redis (:func:`mn_node.bundles.store.put_bundle`). Returns the job's view fields
    as written (``job_id`` among them). Raises
    :class:`~mn_node.jobs.manifest.ManifestError` (every problem) or ``DataError`` (exit 65),
    ``RedisUnavailable`` when Redis does not answer. The caller kicks placement."""
    args = (manifest_raw, set(tasks.available()), set(REDUCERS), bundle_sha)
    nodes = manifest_raw.get("nodes") if isinstance(manifest_raw, dict) else None
    # a big manifest is validated off the event loop: leases and heartbeats go on meanwhile
    big = isinstance(nodes, list) and len(nodes) > OFFLOAD_AGENTS
    manifest = await asyncio.to_thread(validate, *args) if big else validate(*args)
    if bundle_sha is None and manifest.bundle is not None:
        raise DataError("bundle: a manifest cannot name a bundle itself; fix: upload the bundle folder "
                        "(mn run DIR) so the node stores it")
    if manifest.has_commands and bundle_sha is None:
        raise DataError("nodes: command executors need their bundle; fix: run the bundle folder with mn run DIR")
    if bundle_sha is not None and not await has_bundle(store, bundle_sha):
        raise DataError(f"bundle: {bundle_sha[:12]} is not stored in Redis; fix: upload the bundle again")
    return await create_job(store, manifest, node, dict(request or {}))
