"""PLACEHOLDER for the h-surface branch only: the job engine's ``submit_job`` replaces this
module when the branches are merged. It validates and records the job, but does not make it
active (no coordinator picks it up), so the API and CLI can be tested without the engine."""

from __future__ import annotations

import json
import time
from typing import Any

from mn_node.bundles.manifest import validate_manifest
from mn_node.errors import DataError
from mn_node.jobs.state import JobKeys, new_job_id
from mn_node.store import Store


async def submit_job(store: Store, manifest_raw: dict[str, Any], *, bundle_sha: str | None, node: str) -> str:
    v = validate_manifest(manifest_raw)
    if v.manifest is None:
        raise DataError("\n".join(str(p) for p in v.problems))
    job_id = new_job_id(str(v.manifest["graph_id"]))
    now = int(time.time() * 1000)
    await store.guard(store.r.hset(JobKeys(store, job_id).job, mapping={
        "job_id": job_id, "graph_id": v.manifest["graph_id"], "job_name": v.manifest["job_name"],
        "status": "pending", "spec": json.dumps(v.manifest), "request": json.dumps({"bundle": bundle_sha}),
        "submitted_ms": now, "updated_ms": now, "submitted_via": node,
        "agents_total": len(v.manifest["nodes"]), "agents_done": 0, "epoch": 0}))
    await store.guard(store.r.zadd(store.key("jobs"), {job_id: now}))
    return job_id
