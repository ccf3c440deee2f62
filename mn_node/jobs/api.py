"""Job routes of the HTTP API."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import web

from mn_node.api import NODE_KEY, NodeAPI, error, json_response, object_body, read_json
from mn_node.config import parse_span_ms
from mn_node.errors import ConfigError, DataError
from mn_node.jobs import blueprints
from mn_node.jobs.manifest import ManifestError
from mn_node.jobs.state import (
    TERMINAL,
    AgentState,
    JobKeys,
    agent_states,
    cancel_job,
    get_job,
    job_events,
    job_view,
    list_jobs,
    pause_job,
    prune_jobs,
    read_spec,
)
from mn_node.jobs.submit import submit_job
from mn_node.leases import Holder
from mn_node.store import Store

_JOB_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
_STREAM_ID = re.compile(r"^([0-9]{1,20})(?:-([0-9]{1,20}))?$")


def _stream_id_ok(value: str) -> bool:
    """``-``, ``0``, empty, or a Redis stream ID ``ms[-seq]`` that fits Redis' 64-bit fields."""
    if value in ("-", "0", ""):
        return True
    m = _STREAM_ID.match(value)
    return m is not None and all(int(g) < 2**64 for g in m.groups() if g is not None)


def _node(request: web.Request) -> NodeAPI:
    return request.app[NODE_KEY]


def _need_redis(node: NodeAPI) -> web.Response | None:
    if not node.store.available:
        return error(503, f"this node cannot reach Redis: {node.store.last_error}",
                     "submit through a node that reaches Redis, or fix Redis (mn doctor)")
    return None


async def submit(request: web.Request) -> web.Response:
    node = _node(request)
    try:
        body = await read_json(request)
    except web.HTTPException as e:
        if e.status == 413:
            return error(413, e.reason, "submit a big job as a blueprint, or as a bundle (mn run DIR: its manifest "
                                        "is uploaded in the bundle's archive), or split it")
        return error(e.status, e.reason, 'send {"blueprint": "prime_sweep_scale", "params": {...}} '
                     'or {"manifest": {...}}')
    if not isinstance(body, dict):
        return error(400, "body is not a JSON object", 'send {"blueprint": ..., "params": ...} or {"manifest": ...}')
    try:
        if "blueprint" in body:
            if not isinstance(body["blueprint"], str):
                raise DataError("blueprint: is not a string; fix: name a blueprint, e.g. prime_sweep_scale")
            raw = blueprints.generate(body["blueprint"], body.get("params", {}))
        elif "manifest" in body:
            raw = body["manifest"]
        else:
            raise DataError('body: neither "blueprint" nor "manifest" given; fix: send one of them')
    except DataError as e:
        return error(400, str(e))
    unavailable = _need_redis(node)
    if unavailable is not None:
        return unavailable
    try:
        h = await submit_job(node.store, raw, bundle_sha=None, node=node.name,
                             request={k: v for k, v in body.items() if k != "manifest"})
    except ManifestError as e:
        return json_response({"error": str(e), "problems": e.problems}, 400)
    except DataError as e:
        return error(400, str(e))
    node.kick_placement()
    return json_response(job_view(h), 201)


async def jobs(request: web.Request) -> web.Response:
    node = _node(request)
    try:
        limit = min(1000, max(1, int(request.query.get("limit", "50"))))
    except ValueError:
        return error(400, "limit must be an integer", "use ?limit=1..1000")
    return json_response({"jobs": await list_jobs(node.store, limit, request.query.get("status"))})


async def job_or_404(request: web.Request) -> tuple[str, dict[str, str]] | web.Response:
    job_id = request.match_info["job_id"]
    if not _JOB_ID.match(job_id):
        return error(404, f"no job {job_id[:80]!r}", "list jobs with `mn jobs`")
    h = await get_job(_node(request).store, job_id)
    if not h:
        return error(404, f"no job {job_id!r}", "list jobs with `mn jobs`")
    return job_id, h


# a job's agents are counted per status (one HSCAN walk over its states) up to this size; a
# bigger job's view shows its progress (agents_done / agents_total) and is counted on ?counts=1
COUNT_LIMIT = 5000


async def status_counts(store: Store, job_id: str) -> dict[str, int]:
    """Agents per status, read a thousand states at a time (HSCAN): a big job's states are
    never held at once."""
    counts: dict[str, int] = {}
    key = JobKeys(store, job_id).agents
    cursor = 0
    while True:
        cursor, raw = await store.guard(store.r.hscan(key, cursor, count=1000))
        for aid, value in raw.items():
            if not aid.startswith("_"):
                status = AgentState.decode(value).status
                counts[status] = counts.get(status, 0) + 1
        if not cursor:
            return counts


async def job(request: web.Request) -> web.Response:
    found = await job_or_404(request)
    if isinstance(found, web.Response):
        return found
    job_id, h = found
    node = _node(request)
    view = job_view(h)
    if request.query.get("manifest") == "1":
        view["manifest"] = await read_spec(node.store, job_id)
    small = int(h.get("agents_total", "0") or 0) <= COUNT_LIMIT
    view["agents"] = await status_counts(node.store, job_id) if small or request.query.get("counts") == "1" else None
    if request.query.get("agents") == "1":  # every agent at once: for tests and small jobs
        states = await agent_states(node.store, job_id)
        runs = await node.store.guard(node.store.r.hgetall(JobKeys(node.store, job_id).runs))
        view["agent_states"] = {aid: {"status": st.status, "attempt": st.attempt, "node": st.node,
                                      "runs": int(runs.get(aid, 0)), "error": st.error or None}
                                for aid, st in sorted(states.items())}
    token = await node.store.guard(node.store.r.get(node.store.key("lease", f"job:{job_id}")))
    view["lease"] = {"node": Holder(token, 0).node, "epoch": Holder(token, 0).epoch} if token else None
    return json_response(view)


async def events(request: web.Request) -> web.StreamResponse:
    found = await job_or_404(request)
    if isinstance(found, web.Response):
        return found
    job_id, h = found
    node = _node(request)
    after = request.query.get("after", "-")
    if not _stream_id_ok(after):
        return error(400, f"after: {after[:80]!r} is not an event id", "use the id of an event, e.g. 1700000000000-0")
    if request.query.get("follow") not in ("1", "true"):
        return json_response({"events": await job_events(node.store, job_id, after)})
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    status = h.get("status")
    while True:
        batch = await job_events(node.store, job_id, after)
        for ev in batch:
            await resp.write((json.dumps(ev) + "\n").encode())
            after = ev["id"]
        if status in TERMINAL and not batch:
            break
        status = await node.store.guard(node.store.r.hget(JobKeys(node.store, job_id).job, "status"))
        if not batch:
            await asyncio.sleep(0.25)
    await resp.write_eof()
    return resp


async def _job_to_change(request: web.Request) -> tuple[str, NodeAPI] | web.Response:
    """The job of a state-changing route and this node, or the answer when the job is unknown
    (404) or Redis cannot be reached (503)."""
    found = await job_or_404(request)
    if isinstance(found, web.Response):
        return found
    node = _node(request)
    unavailable = _need_redis(node)
    if unavailable is not None:
        return unavailable
    return found[0], node


async def cancel(request: web.Request) -> web.Response:
    target = await _job_to_change(request)
    if isinstance(target, web.Response):
        return target
    job_id, node = target
    cancelled, previous = await cancel_job(node.store, job_id, node.name, f"cancelled via API on {node.name}",
                                           node.job_retention_ms())
    if not cancelled:
        return error(409, f"job {job_id} is already {previous}",
                     "only pending, running or paused jobs can be cancelled")
    token = await node.store.guard(node.store.r.get(node.store.key("lease", f"job:{job_id}")))
    if token:
        node.tell_owner_cancel(Holder(token, 0).node, job_id)
    return json_response({"job_id": job_id, "status": "cancelled", "previous": previous})


_PAUSE_FIX = {"pause": "only a running job can be paused; `mn resume JOB` resumes a paused one",
              "resume": "only a paused job can be resumed; `mn pause JOB` pauses a running one"}


async def _pause_or_resume(request: web.Request, action: str) -> web.Response:
    target = await _job_to_change(request)
    if isinstance(target, web.Response):
        return target
    job_id, node = target
    changed, previous = await pause_job(node.store, job_id, node.name, action, f"{action}d via API on {node.name}")
    if not changed:
        return error(409, f"job {job_id} is {previous}: cannot {action} it", _PAUSE_FIX[action])
    return json_response({"job_id": job_id, "status": "paused" if action == "pause" else "running",
                          "previous": previous})


async def pause(request: web.Request) -> web.Response:
    """Running -> paused: nothing new is dispatched; running executors finish."""
    return await _pause_or_resume(request, "pause")


async def resume(request: web.Request) -> web.Response:
    """Paused -> running: the coordinator dispatches again."""
    return await _pause_or_resume(request, "resume")


def _prune_args(body: Any) -> tuple[int | None, str | None, bool]:
    """(older than ms, status, dry run) from ``{"older_than": "7d", "status": "failed", "dry_run": true}``."""
    body = object_body(body, ("older_than", "status", "dry_run"), '{"older_than": "7d", "status": "failed"} or {}')
    older, status, dry = body.get("older_than"), body.get("status"), body.get("dry_run", False)
    if status is not None and status not in TERMINAL:
        raise DataError(f"status: {str(status)[:40]!r} is not a terminal status; fix: one of {', '.join(TERMINAL)}")
    if not isinstance(dry, bool):
        raise DataError("dry_run: is not a boolean; fix: send true or false")
    if older is None:
        return None, status, dry
    if not isinstance(older, str):
        raise DataError('older_than: is not a string; fix: a duration such as "7d", "12h" or "90s"')
    try:
        return parse_span_ms(older, "older_than"), status, dry
    except ConfigError as e:
        raise DataError(str(e)) from None


async def prune(request: web.Request) -> web.Response:
    """Delete terminal jobs now (never pending, running or paused ones)."""
    node = _node(request)
    try:
        older_ms, status, dry = _prune_args(await read_json(request) if request.can_read_body else {})
    except web.HTTPException as e:
        return error(e.status, e.reason, 'send {"older_than": "7d", "status": "failed", "dry_run": true} or {}')
    except DataError as e:
        return error(400, str(e))
    unavailable = _need_redis(node)
    if unavailable is not None:
        return unavailable
    res = await prune_jobs(node.store, older_than_ms=older_ms, status=status, dry_run=dry,
                           retention_ms=node.job_retention_ms())
    return json_response(res.view())


def add_routes(app: web.Application) -> None:
    # imported here: those modules use job_or_404 of this one
    from mn_node.jobs import agents_api, bundle_api

    app.router.add_post("/api/v1/jobs", submit)
    app.router.add_get("/api/v1/jobs", jobs)
    app.router.add_get("/api/v1/jobs/{job_id}", job)
    app.router.add_get("/api/v1/jobs/{job_id}/events", events)
    app.router.add_post("/api/v1/jobs/{job_id}/cancel", cancel)
    app.router.add_post("/api/v1/jobs/{job_id}/pause", pause)
    app.router.add_post("/api/v1/jobs/{job_id}/resume", resume)
    app.router.add_post("/api/v1/jobs/prune", prune)
    agents_api.add_routes(app)
    bundle_api.add_routes(app)
    from mn_node import drain  # the drain routes (mn drain / mn undrain)
    drain.add_routes(app)
