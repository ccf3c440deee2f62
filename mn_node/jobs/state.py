"""Job records in Redis and their JSON views.

The job hash ``{ns}:job:<id>`` holds the view fields (:data:`VIEW_FIELDS`, ``node:<name>``
executor counts) and the normalized manifest, compressed: ``spec_z`` is base64 of zlib (level 1)
of its JSON (a 100k-agent manifest is ~38 MB of JSON, ~3 MB stored). Jobs written before that
hold it as plain JSON in ``spec``; :func:`decode_spec` reads both. Views never read the spec:
:func:`get_job` and :func:`list_jobs` read only the view fields (``HMGET``), and the spec is read
only by :func:`read_spec` (the coordinator, ``?manifest=1``, agent types).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from mn_node.bundles.store import bundle_key, bundle_refs_key
from mn_node.jobs.manifest import Manifest
from mn_node.scripts import TERMINAL as TERMINAL  # job statuses never left (defined with the Lua)
from mn_node.store import EVENTS_MAXLEN, Store, decode_event


@dataclass(slots=True)
class AgentState:
    """One agent of a job (``{ns}:job:<id>:agents``). ``extra`` holds the other fields: for an
    executor run ``dispatched_ms``, ``started_ms``, ``finished_ms``, ``duration_ms``,
    ``exit_code``, ``tries``, ``runner``; structured stdout's ``complete_job``, ``emits`` and
    ``next_state`` (JSON strings); ``skipped`` for an agent that received nothing."""

    status: str = "pending"  # pending | dispatched | completed | failed
    attempt: int = 0
    node: str = ""
    output: Any = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def decode(cls, raw: str) -> AgentState:
        d = json.loads(raw)
        out = d.pop("output", None)
        if isinstance(out, str):
            try:
                out = json.loads(out)
            except ValueError:
                pass
        return cls(
            status=str(d.pop("status", "pending")), attempt=int(d.pop("attempt", 0) or 0),
            node=str(d.pop("node", "") or ""), output=out, error=str(d.pop("error", "") or ""), extra=d,
        )

    def encode(self) -> str:
        d: dict[str, Any] = dict(self.extra)
        d.update(status=self.status, attempt=self.attempt, node=self.node)
        if self.output is not None:
            d["output"] = json.dumps(self.output, separators=(",", ":"))
        if self.error:
            d["error"] = self.error
        return json.dumps(d, separators=(",", ":"))

    def _int(self, key: str) -> int | None:
        v = self.extra.get(key)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    @property
    def exit_code(self) -> int | None:
        return self._int("exit_code")

    @property
    def started_ms(self) -> int | None:
        return self._int("started_ms")

    @property
    def finished_ms(self) -> int | None:
        return self._int("finished_ms")

    def view(self) -> dict[str, Any]:
        """The fields ``mn agents`` shows (the API adds the agent's type and its starts)."""
        started, finished = self.started_ms, self.finished_ms
        return {"status": self.status, "attempt": self.attempt, "node": self.node or None,
                "exit_code": self.exit_code, "started_ms": started, "finished_ms": finished,
                "duration_ms": finished - started if started is not None and finished is not None else None,
                "error": self.error or None, "skipped": bool(self.extra.get("skipped"))}


class JobKeys:
    """Every key one job owns (:meth:`owned`), and the shared ones a terminal write touches."""

    def __init__(self, store: Store, job_id: str) -> None:
        self.job_id = job_id
        self.job = store.key("job", job_id)
        self.agents = store.key("job", job_id, "agents")
        self.events = store.key("job", job_id, "events")
        self.runs = store.key("job", job_id, "runs")
        self.attempts = store.key("job", job_id, "attempts")
        self.epoch = store.key("epoch", f"job:{job_id}")  # the job lease's epoch counter
        self.history = store.key("jobs")
        self.expiry = store.key("jobs", "expiry")
        self.active = store.key("jobs", "active")
        self._store = store

    def owned(self) -> list[str]:
        """The keys that exist only for this job (the lease key expires on its own)."""
        return [self.job, self.agents, self.events, self.runs, self.attempts, self.epoch]

    def bundle(self, sha: str | None) -> list[str]:
        """The bundle's archive key and its live-job set, or nothing for a job without a bundle."""
        return [bundle_key(self._store, sha), bundle_refs_key(self._store, sha)] if sha else []


# what job views, the coordinator's start, cancel and prune read of a job hash (never the spec)
VIEW_FIELDS = ("job_id", "graph_id", "job_name", "status", "owner", "epoch", "submitted_ms", "updated_ms",
               "finished_ms", "agents_total", "agents_done", "result", "error", "bundle")
SPEC_FIELDS = ("spec_z", "spec")
SPEC_ZLIB_LEVEL = 1  # ~15x smaller for generated manifests, ~10x faster than the default level
OFFLOAD_AGENTS = 2000  # manifests past this many agents are encoded off the event loop


def encode_spec(spec: dict[str, Any]) -> str:
    """The ``spec_z`` value: base64 of zlib of the compact JSON (the Redis client decodes every
    answer as text, so the stored value is ASCII)."""
    text = json.dumps(spec, separators=(",", ":"))
    return base64.b64encode(zlib.compress(text.encode(), SPEC_ZLIB_LEVEL)).decode("ascii")


def decode_spec(h: dict[str, str]) -> dict[str, Any] | None:
    """The normalized manifest from a job hash's ``spec_z`` (or, for a job stored before it was
    compressed, ``spec``); None when neither is there or it cannot be read."""
    try:
        if h.get("spec_z"):
            spec = json.loads(zlib.decompress(base64.b64decode(h["spec_z"], validate=True)))
        elif h.get("spec"):
            spec = json.loads(h["spec"])
        else:
            return None
    except (ValueError, binascii.Error, zlib.error):
        return None
    return spec if isinstance(spec, dict) else None


async def read_spec(store: Store, job_id: str) -> dict[str, Any] | None:
    """The job's normalized manifest (None: no such job, or no readable spec). A big one is
    decompressed and parsed off the event loop."""
    raw = await store.guard(store.r.hmget(store.key("job", job_id), list(SPEC_FIELDS)))
    return await _spec_of(raw)


async def _spec_of(raw: list[str | None]) -> dict[str, Any] | None:
    h = {k: v for k, v in zip(SPEC_FIELDS, raw, strict=True) if v}
    if sum(len(v) for v in h.values()) > 1 << 20:
        return await asyncio.to_thread(decode_spec, h)
    return decode_spec(h)


START_FIELDS = ("status", "bundle", "owner", "epoch")


async def read_start(store: Store, job_id: str) -> tuple[dict[str, str], dict[str, Any] | None, int]:
    """What a coordinator reads first, in one round trip: the job's :data:`START_FIELDS` ({} for
    no job), its normalized manifest (None when unreadable) and how many agent states it has
    (none yet for a fresh job: then there is nothing more to read)."""
    k = JobKeys(store, job_id)
    pipe = store.r.pipeline(transaction=False)
    pipe.hmget(k.job, [*START_FIELDS, *SPEC_FIELDS])
    pipe.hlen(k.agents)
    values, n = await store.guard(pipe.execute())
    h = {f: v for f, v in zip(START_FIELDS, values, strict=False) if v is not None}
    return h, await _spec_of(values[len(START_FIELDS):]), int(n)


def new_job_id(graph_id: str) -> str:
    return f"{graph_id}-{int(time.time() * 1000)}-{os.urandom(6).hex()}"


async def create_job(store: Store, manifest: Manifest, node: str, request: dict[str, Any]) -> dict[str, str]:
    """Write a new job (hash, history, active set, first events); returns its view fields as
    written (what :func:`get_job` would read back at once, without a round trip)."""
    job_id = new_job_id(manifest.graph_id)
    k = JobKeys(store, job_id)
    big = len(manifest.agents) > OFFLOAD_AGENTS
    spec_z = await asyncio.to_thread(encode_spec, manifest.raw) if big else encode_spec(manifest.raw)
    now = int(time.time() * 1000)
    view = {"job_id": job_id, "graph_id": manifest.graph_id, "job_name": manifest.job_name, "status": "pending",
            "submitted_ms": str(now), "updated_ms": str(now), "agents_total": str(len(manifest.agents)),
            "agents_done": "0", "epoch": "0"}
    if manifest.bundle:
        view["bundle"] = manifest.bundle
    fields = {**view, "spec_z": spec_z, "request": json.dumps(request), "submitted_via": node}
    data = json.dumps({"agents": len(manifest.agents), "graph_id": manifest.graph_id})
    # acknowledged to the client only once a replica has it (replicated mode, as every script):
    # a submit that a failover lost would otherwise be a job the user was told exists
    await store.scripts.create_job([k.job, k.history, k.active, k.events, *k.bundle(manifest.bundle)],
                                   [job_id, now, node, EVENTS_MAXLEN, data, *(x for kv in fields.items() for x in kv)])
    return view


async def cancel_job(store: Store, job_id: str, node: str, reason: str,
                     retention_ms: int) -> tuple[bool, str]:
    """Cancel a pending, running or paused job (``cancel_job`` script; its keys expire after
    ``retention_ms``). Returns (True, previous status), or (False, current status) when it is
    unknown (``"unknown"``) or already terminal."""
    k = JobKeys(store, job_id)
    sha = await store.guard(store.r.hget(k.job, "bundle"))
    keys = [k.job, k.events, k.active, k.agents, k.runs, k.attempts, k.epoch, k.history, k.expiry, *k.bundle(sha)]
    res = await store.scripts.cancel_job(keys, [job_id, node, reason, EVENTS_MAXLEN, retention_ms])
    return int(res[0]) == 1, str(res[1])


async def pause_job(store: Store, job_id: str, node: str, action: str, reason: str) -> tuple[bool, str]:
    """``action`` "pause" (running -> paused) or "resume" (paused -> running), atomically with
    its event. Returns (True, previous status), or (False, current status) when the job is
    unknown (``"unknown"``) or not in the state the change starts from."""
    k = JobKeys(store, job_id)
    res = await store.scripts.pause_job([k.job, k.events], [action, node, EVENTS_MAXLEN, reason])
    return int(res[0]) == 1, str(res[1])


@dataclass
class Pruned:
    """What :func:`prune_jobs` removed (or would remove, on a dry run)."""

    jobs: list[dict[str, Any]]
    dry_run: bool

    def view(self) -> dict[str, Any]:
        return {"pruned": len(self.jobs), "dry_run": self.dry_run, "jobs": self.jobs}


async def prune_jobs(store: Store, *, older_than_ms: int | None, status: str | None, dry_run: bool,
                     retention_ms: int, now_ms: int | None = None) -> Pruned:
    """Delete terminal jobs now (never pending, running or paused ones): those finished more than
    ``older_than_ms`` ago (None: any age) with ``status`` (None: any terminal status). Each
    deletion is one ``prune_job`` script, which checks again that the job is terminal."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    out: list[dict[str, Any]] = []
    cursor = 0
    while True:
        cursor, ids = await store.guard(store.r.zscan(store.key("jobs"), cursor, count=500))
        for jid, _ in ids:
            h = await get_job(store, jid)
            st = h.get("status")
            if st not in TERMINAL or (status and st != status):
                continue
            ended = int(h.get("finished_ms") or h.get("updated_ms") or 0)
            if older_than_ms is not None and now - ended < older_than_ms:
                continue
            if not dry_run:
                k = JobKeys(store, jid)
                res = await store.scripts.prune_job([*k.owned(), k.history, k.expiry, *k.bundle(h.get("bundle"))],
                                                    [jid, retention_ms])
                if int(res[0]) != 1:
                    continue
            out.append({"job_id": jid, "status": st, "finished_ms": ended})
        if not cursor:
            return Pruned(out, dry_run)


def job_view(h: dict[str, str]) -> dict[str, Any]:
    total = int(h.get("agents_total", "0") or 0)
    done = int(h.get("agents_done", "0") or 0)
    view: dict[str, Any] = {
        "job_id": h.get("job_id"),
        "graph_id": h.get("graph_id"),
        "job_name": h.get("job_name"),
        "status": h.get("status"),
        "owner": h.get("owner") or None,
        "epoch": int(h.get("epoch", "0") or 0),
        "submitted_ms": int(h.get("submitted_ms", "0") or 0),
        "updated_ms": int(h.get("updated_ms", "0") or 0),
        "finished_ms": int(h.get("finished_ms", "0") or 0) or None,
        "progress": {"done": done, "total": total},
        "nodes": {k[5:]: int(v) for k, v in h.items() if k.startswith("node:")},
        "result": json.loads(h["result"]) if h.get("result") else None,
        "error": h.get("error") or None,
    }
    return view


def _queue_view(pipe: Any, key: str) -> None:
    """Queue the reads of one job's view: its view fields and its ``node:<name>`` counts."""
    pipe.hmget(key, list(VIEW_FIELDS))
    pipe.hscan(key, 0, match="node:*", count=1000)


async def _view_of(store: Store, key: str, values: list[str | None],
                   scan: tuple[int, dict[str, str]]) -> dict[str, str]:
    h = {f: v for f, v in zip(VIEW_FIELDS, values, strict=True) if v is not None}
    if not h:
        return h
    cursor, nodes = scan
    h.update(nodes)
    while cursor:  # a hash being resized can need more than one pass
        cursor, more = await store.guard(store.r.hscan(key, cursor, match="node:*", count=1000))
        h.update(more)
    return h


async def get_job(store: Store, job_id: str) -> dict[str, str]:
    """The job hash without its spec (:data:`VIEW_FIELDS` and ``node:<name>``); {} for no job."""
    key = store.key("job", job_id)
    pipe = store.r.pipeline(transaction=False)
    _queue_view(pipe, key)
    values, scan = await store.guard(pipe.execute())
    return await _view_of(store, key, values, scan)


async def list_jobs(store: Store, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
    ids = await store.guard(store.r.zrevrange(store.key("jobs"), 0, max(0, limit - 1)))
    if not ids:
        return []
    pipe = store.r.pipeline(transaction=False)
    for jid in ids:
        _queue_view(pipe, store.key("job", jid))
    res = await store.guard(pipe.execute())
    rows = [await _view_of(store, store.key("job", jid), res[2 * i], res[2 * i + 1]) for i, jid in enumerate(ids)]
    gone = [jid for jid, h in zip(ids, rows, strict=True) if not h]
    if gone:  # expired under retention: dropped from the history as they are seen
        await store.guard(store.r.zrem(store.key("jobs"), *gone))
    out = [job_view(h) for h in rows if h]
    if status:
        out = [j for j in out if j["status"] == status]
    return out


async def agent_states(store: Store, job_id: str) -> dict[str, AgentState]:
    raw = await store.guard(store.r.hgetall(store.key("job", job_id, "agents")))
    return {k: AgentState.decode(v) for k, v in raw.items() if not k.startswith("_")}


async def job_events(store: Store, job_id: str, after: str = "-", count: int = 1000) -> list[dict[str, Any]]:
    start = "(" + after if after not in ("-", "0", "") else "-"
    raw = await store.guard(store.r.xrange(store.key("job", job_id, "events"), min=start, count=count))
    return [decode_event(eid, f) for eid, f in raw]
