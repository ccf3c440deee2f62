"""Bundle routes of the HTTP API: upload a bundle archive, run a job from a stored bundle.

* ``GET /api/v1/bundles/<sha256>``: ``{sha256, stored, max_bytes}`` (a client skips an upload
  the cluster already has, and refuses locally an archive over the node's cap).
* ``PUT /api/v1/bundles/<sha256>``: the body is the canonical archive
  (:func:`mn_node.bundles.archive.pack`). The node reads at most the size cap
  (``MIRROR_NEURON_BUNDLE_MAX_BYTES``, 413 past it), verifies the hash and stores it in Redis
  once (:func:`mn_node.bundles.store.put_bundle`).
* ``POST /api/v1/bundles/<sha256>/jobs``: unpacks the *stored* bundle into a temporary folder,
  validates its own manifest (never one sent by the client) and submits the job
  (:func:`mn_node.jobs.submit.submit_job`). A bad bundle is a 400 listing every problem.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from mn_node.api import NODE_KEY, NodeAPI, error, json_response
from mn_node.bundles import archive
from mn_node.bundles.manifest import Validation, validate_bundle
from mn_node.bundles.store import get_bundle, has_bundle, put_bundle
from mn_node.jobs.state import job_view
from mn_node.jobs.submit import submit_job

_SHA = re.compile(r"^[0-9a-f]{64}$")
READ_CHUNK = 256 * 1024


def _node(request: web.Request) -> NodeAPI:
    return request.app[NODE_KEY]


def _sha_or_error(request: web.Request) -> str | web.Response:
    sha = request.match_info["sha256"]
    if not _SHA.match(sha):
        return error(400, f"{sha[:80]!r} is not a sha256 (64 lowercase hex digits)",
                     "address a bundle by the sha256 of its canonical archive (mn run computes it)")
    return sha


def too_big(size: int, cap: int) -> web.Response:
    return error(413, f"bundle archive is {size / archive.MiB:.1f} MiB or more, over this node's cap of "
                      f"{cap / archive.MiB:.1f} MiB",
                 f"leave large data out of the bundle, or raise {archive.MAX_BYTES_ENV} on every node")


async def bundle_info(request: web.Request) -> web.Response:
    sha = _sha_or_error(request)
    if isinstance(sha, web.Response):
        return sha
    stored = await has_bundle(_node(request).store, sha)
    return json_response({"sha256": sha, "stored": stored, "max_bytes": archive.max_bytes()})


async def _read_capped(request: web.Request, cap: int) -> bytes | None:
    """The body, or None once it passes ``cap`` bytes (the rest is not read)."""
    if request.content_length is not None and request.content_length > cap:
        return None
    buf = bytearray()
    while True:
        chunk = await request.content.read(READ_CHUNK)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > cap:
            return None


async def upload(request: web.Request) -> web.Response:
    sha = _sha_or_error(request)
    if isinstance(sha, web.Response):
        return sha
    cap = archive.max_bytes()
    data = await _read_capped(request, cap)
    if data is None:
        return too_big(max(request.content_length or 0, cap + 1), cap)
    if not data:
        return error(400, "empty body", "send the bundle archive (mn run packs and sends it)")
    created = await put_bundle(_node(request).store, data, sha)  # a wrong hash: DataError -> 400
    return json_response({"sha256": sha, "size": len(data), "created": created}, 201 if created else 200)


def _unpack_and_validate(data: bytes, sha: str) -> tuple[Validation, Any]:
    """Unpack into a temporary folder, validate the bundle there; (validation, raw manifest)."""
    with tempfile.TemporaryDirectory(prefix="mn-bundle-") as tmp:
        folder = archive.unpack(data, sha, Path(tmp))
        v = validate_bundle(folder)
        raw: Any = None
        if v.ok and v.manifest_file is not None:
            raw = read_manifest(v.manifest_file)
        return v, raw


def read_manifest(path: Path) -> Any:
    """The decoded manifest file of a bundle that validated (so it parses)."""
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.name.endswith(".json") else yaml.safe_load(text)


async def run_bundle(request: web.Request) -> web.Response:
    sha = _sha_or_error(request)
    if isinstance(sha, web.Response):
        return sha
    node = _node(request)
    data = await get_bundle(node.store, sha)
    if data is None:
        return error(404, f"no bundle {sha[:12]} in this cluster",
                     f"upload it first: PUT /api/v1/bundles/{sha} (mn run does both)")
    v, raw = await asyncio.to_thread(_unpack_and_validate, data, sha)
    if not v.ok:
        return json_response({
            "error": f"bundle {sha[:12]} has {len(v.problems)} problem(s): {v.problems[0]}",
            "fix": "fix every problem listed (mn validate DIR shows them), then mn run DIR again",
            "problems": [str(p) for p in v.problems], "warnings": [str(w) for w in v.warnings],
        }, 400)
    h = await submit_job(node.store, raw, bundle_sha=sha, node=node.name)
    node.kick_placement()
    view = job_view(h)
    view["bundle"] = sha
    view["warnings"] = [str(w) for w in v.warnings]
    return json_response(view, 201)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/bundles/{sha256}", bundle_info)
    app.router.add_put("/api/v1/bundles/{sha256}", upload)
    app.router.add_post("/api/v1/bundles/{sha256}/jobs", run_bundle)
