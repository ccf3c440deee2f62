"""Agent and log routes of the HTTP API (``mn agents``, ``mn logs``, the TUI's job view).

* ``GET /api/v1/jobs/<id>/agents?cursor=C&limit=N``: one page of the job's agents (``HSCAN``
  of ``{ns}:job:<id>:agents``, so a 100k-agent job is never read at once): agent, type,
  status, attempt, node, exit code, duration. ``cursor`` in the answer is ``"0"`` after the
  last page.
* ``GET /api/v1/jobs/<id>/logs?agent=A[&attempt=N][&stdout_offset=B&stderr_offset=B]``: the
  finished attempts of agent A as the executor records them (``{ns}:job:<id>:attempts``, field
  ``<agent>:<attempt>`` with the coordinator's dispatched attempt number, 1 up; a command's
  runner-internal retries are ``tries`` inside one record: exit code, duration, ``reason``,
  ``stdout``/``stderr`` tails) and, while A is dispatched, its live output asked of the node
  that runs it (``live``: ``{node, running, try, stdout, stderr, offsets}``; the offsets are
  the bytes of each stream already seen, passed back to follow it).
  Without ``agent``: one page (``cursor``/``limit``) of every finished attempt of the job.

A field an attempt record or an agent state lacks is ``null``; the clients print ``-``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from aiohttp import web

from mn_node.api import NODE_KEY, NodeAPI, error, json_response
from mn_node.jobs.api import job_or_404
from mn_node.jobs.outcome import tail
from mn_node.jobs.state import AgentState, read_spec
from mn_node.store import Store

MAX_PAGE = 1000
DEFAULT_PAGE = 200
MAX_CANDIDATES = 500  # attempt records looked up for one agent
_TYPES_CACHE: OrderedDict[str, dict[str, str]] = OrderedDict()
_TYPES_CACHE_AGENTS = 500_000


def _node(request: web.Request) -> NodeAPI:
    return request.app[NODE_KEY]


def attempts_key(store: Store, job_id: str) -> str:
    return store.key("job", job_id, "attempts")


async def agent_types(store: Store, job_id: str) -> dict[str, str]:
    """agent id -> agent type from the job's stored manifest, read (and decompressed) once per
    job: a job's manifest never changes, so paging a big job does not read it per page. The
    cache holds at most ``_TYPES_CACHE_AGENTS`` agents over its jobs."""
    cached = _TYPES_CACHE.get(job_id)
    if cached is not None:
        _TYPES_CACHE.move_to_end(job_id)
        return cached
    spec = await read_spec(store, job_id) or {}
    out: dict[str, str] = {}
    nodes = spec.get("nodes")
    for n in nodes if isinstance(nodes, list) else []:
        if isinstance(n, dict) and isinstance(n.get("node_id"), str):
            out[n["node_id"]] = str(n.get("agent_type") or "-")
    _TYPES_CACHE[job_id] = out
    while len(_TYPES_CACHE) > 1 and sum(len(v) for v in _TYPES_CACHE.values()) > _TYPES_CACHE_AGENTS:
        _TYPES_CACHE.popitem(last=False)
    return out


def _page_args(request: web.Request) -> tuple[int, int] | web.Response:
    try:
        cursor = int(request.query.get("cursor", "0") or 0)
        limit = int(request.query.get("limit", str(DEFAULT_PAGE)))
    except ValueError:
        return error(400, "cursor and limit must be integers", f"use ?cursor=0&limit=1..{MAX_PAGE}")
    if cursor < 0 or not 1 <= limit <= MAX_PAGE:
        return error(400, f"cursor {cursor} / limit {limit} out of range", f"use ?cursor=0&limit=1..{MAX_PAGE}")
    return cursor, limit


def decode_attempt(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        rec = json.loads(raw)
    except ValueError:
        return {"error": "unreadable attempt record"}
    return rec if isinstance(rec, dict) else {"error": "unreadable attempt record"}


def agent_row(agent: str, st: AgentState, atype: str, rec: dict[str, Any] | None) -> dict[str, Any]:
    """One agent: its state, completed by its current attempt's record where the state lacks a field."""
    rec = rec or {}

    def field(name: str) -> Any:  # an AgentState attribute, or a key it kept in extra, or the record's
        v = getattr(st, name, None)
        v = st.extra.get(name) if v is None else v
        return rec.get(name) if v is None else v

    started = field("started_ms")
    finished = field("finished_ms")
    duration = rec.get("duration_ms")
    if duration is None and isinstance(started, int) and isinstance(finished, int):
        duration = finished - started
    return {"agent": agent, "type": atype, "status": st.status, "attempt": st.attempt, "node": st.node or None,
            "exit_code": field("exit_code"), "duration_ms": duration,
            "started_ms": started, "finished_ms": finished, "error": st.error or rec.get("reason") or None}


async def agents(request: web.Request) -> web.Response:
    found = await job_or_404(request)
    if isinstance(found, web.Response):
        return found
    job_id, h = found
    page = _page_args(request)
    if isinstance(page, web.Response):
        return page
    store = _node(request).store
    cursor, raw = await store.guard(store.r.hscan(store.key("job", job_id, "agents"), page[0], count=page[1]))
    states = {k: AgentState.decode(v) for k, v in raw.items() if not k.startswith("_")}
    names = sorted(states)
    recs: list[str | None] = []
    if names:
        fields = [f"{a}:{states[a].attempt}" for a in names]
        recs = await store.guard(store.r.hmget(attempts_key(store, job_id), fields))
    specs = await agent_types(store, job_id)
    rows = [agent_row(a, states[a], specs.get(a, "-"), decode_attempt(r))
            for a, r in zip(names, recs, strict=True)]
    return json_response({"job_id": job_id, "status": h.get("status"), "agents": rows, "cursor": str(cursor),
                          "total": int(h.get("agents_total", "0") or 0)})


def _offsets(request: web.Request) -> dict[str, int] | web.Response:
    out: dict[str, int] = {}
    for stream in ("stdout", "stderr"):
        raw = request.query.get(f"{stream}_offset", "0") or "0"
        if not raw.isdigit():
            return error(400, f"{stream}_offset: {raw[:40]!r} is not a byte offset", "use a whole number >= 0")
        out[stream] = int(raw)
    return out


async def _all_attempts(request: web.Request, job_id: str, h: dict[str, str]) -> web.Response:
    page = _page_args(request)
    if isinstance(page, web.Response):
        return page
    store = _node(request).store
    cursor, raw = await store.guard(store.r.hscan(attempts_key(store, job_id), page[0], count=page[1]))
    recs = [_with_key(k, decode_attempt(v)) for k, v in raw.items()]
    recs.sort(key=lambda r: (str(r.get("agent")), _int(r.get("attempt"))))
    return json_response({"job_id": job_id, "status": h.get("status"), "attempts": recs, "cursor": str(cursor)})


def _from_state(agent: str, st: AgentState) -> dict[str, Any]:
    """The record of a successful entry-point run, which the executing node does not write
    (everything is in the agent state): its output is what the task returned, as stdout."""
    started, finished = st.started_ms, st.finished_ms
    return {"agent": agent, "attempt": st.attempt, "node": st.node, "runner": "entrypoint", "ok": True,
            "cancelled": False, "exit_code": st.exit_code, "tries": st.extra.get("tries", 1), "timed_out": False,
            "duration_ms": st.extra.get("duration_ms"), "started_ms": started, "finished_ms": finished,
            "reason": "", "stdout": tail(json.dumps(st.output)), "stderr": "", "from_agent_state": True}


def _with_key(field: str, rec: dict[str, Any] | None) -> dict[str, Any]:
    """A record with ``agent``/``attempt`` filled from its field name when it lacks them."""
    out = dict(rec or {})
    agent, _, attempt = field.rpartition(":")
    out.setdefault("agent", agent)
    out.setdefault("attempt", int(attempt) if attempt.isdigit() else attempt)
    return out


def _int(v: Any) -> int:
    return v if isinstance(v, int) else 0


async def logs(request: web.Request) -> web.Response:
    found = await job_or_404(request)
    if isinstance(found, web.Response):
        return found
    job_id, h = found
    agent = request.query.get("agent", "")
    if not agent:
        return await _all_attempts(request, job_id, h)
    want = request.query.get("attempt", "")
    if want and not want.isdigit():
        return error(400, f"attempt: {want[:40]!r} is not a number", "use ?attempt=1 (mn agents shows attempts)")
    offsets = _offsets(request)
    if isinstance(offsets, web.Response):
        return offsets
    node = _node(request)
    store = node.store
    raw_state = await store.guard(store.r.hget(store.key("job", job_id, "agents"), agent))
    if raw_state is None and agent not in await agent_types(store, job_id):
        return error(404, f"job {job_id} has no agent {agent[:80]!r}", f"list its agents with `mn agents {job_id}`")
    st = AgentState.decode(raw_state) if raw_state is not None else AgentState()
    # records are numbered by dispatched attempt (1 up); at most the latest MAX_CANDIDATES
    numbers = [int(want)] if want else list(range(max(1, st.attempt - MAX_CANDIDATES + 1), st.attempt + 1))
    fields = [f"{agent}:{n}" for n in numbers]
    recs = await store.guard(store.r.hmget(attempts_key(store, job_id), fields)) if fields else []
    attempts = [_with_key(f, decode_attempt(r)) for f, r in zip(fields, recs, strict=True) if r is not None]
    if not attempts and st.status == "completed" and st.extra.get("runner") == "entrypoint" \
            and (not want or int(want) == st.attempt):
        attempts = [_from_state(agent, st)]
    running = None
    if st.status == "dispatched" and st.node and (not want or int(want) == st.attempt):
        live = await node.exec_logs(st.node, job_id, agent, st.attempt, offsets)
        running = {"attempt": st.attempt, "node": st.node, "live": live}
    return json_response({"job_id": job_id, "job_status": h.get("status"), "agent": agent, "status": st.status,
                          "attempts": attempts, "running": running})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/jobs/{job_id}/agents", agents)
    app.router.add_get("/api/v1/jobs/{job_id}/logs", logs)
