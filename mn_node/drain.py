"""Drain: take a node out of service without replaying its work (docs/architecture.md, "Drain").

State lives in Redis, apart from the node's registration (which expires when the node dies), so
it survives a restart of the node and of every daemon: ``{ns}:drain:<name>`` is a hash
``state`` (``draining`` | ``drained``), ``since_ms``, ``deadline_ms`` (empty: none), ``by`` (the
node that took the request), ``coordinating`` / ``running`` (what the node still has), and
``{ns}:drains`` is the set of names that have one. The node mirrors its state into the field
``drain`` of its registration ``{ns}:node:<name>`` ("" | draining | drained) for ``mn nodes``.

A draining node takes no new executors (coordinators skip it; its executor service refuses new
runs) and coordinates no new jobs (placement ranks only nodes that are not draining). Each job
it coordinates is handed over: the coordinator stops and releases its lease (fenced release);
the next-ranked node takes the lease and adopts the executors still running (no replay). Its own
executors run to their end; at the deadline they are stopped (command groups killed) and the
coordinators replay them elsewhere. A draining leader steps down and does not campaign while a
node that is not draining is up. Nothing left: ``drained``. ``mn undrain`` deletes the record.

API: ``POST /api/v1/nodes/<name>/drain`` ``{"deadline": "90s", "force": false}``, ``POST
/api/v1/nodes/<name>/undrain``, ``GET /api/v1/nodes/<name>/drain``. CLI: ``mn drain`` / ``mn undrain``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mn_node.api import NODE_KEY, error, json_response, object_body, read_json
from mn_node.cli_base import Api, add_json_flag
from mn_node.config import parse_duration
from mn_node.errors import (
    EX_OK,
    EX_TEMPFAIL,
    ConfigError,
    DataError,
    MirrorNeuronError,
    UsageError,
)
from mn_node.store import Store

if TYPE_CHECKING:
    from mn_node.jobs.runtime import JobRuntime
    from mn_node.leader import LeaderElection
    from mn_node.membership import Membership

log = logging.getLogger("mn_node.drain")

Fields = dict[bytes | bytearray | memoryview | str | int | float, bytes | bytearray | memoryview | str | int | float]

DRAINING = "draining"
DRAINED = "drained"
WAIT_POLL_S = 0.5
# the node's registration gets the field only while it exists: a dead node's hash is not re-created
_MIRROR = "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'drain', ARGV[1]) end return 1"


def drain_key(store: Store, name: str) -> str:
    return store.key("drain", name)


def index_key(store: Store) -> str:
    return store.key("drains")


async def read_drains(store: Store) -> dict[str, dict[str, str]]:
    """Every drain record, by node name."""
    names = sorted(await store.guard(store.r.smembers(index_key(store))))
    if not names:
        return {}
    pipe = store.r.pipeline(transaction=False)
    for n in names:
        pipe.hgetall(drain_key(store, n))
    recs = await store.guard(pipe.execute())
    return {n: dict(r) for n, r in zip(names, recs, strict=True) if r}


# ---- the node side: one step per placement pass -------------------------------------------------------
class DrainControl:
    """Applies this node's drain record: placement calls :meth:`poll` every pass."""

    def __init__(self, node: str, store: Store, runtime: JobRuntime, members: Membership,
                 election: LeaderElection, kick: Callable[[], None]) -> None:
        self.node = node
        self.store = store
        self.rt = runtime
        self.members = members
        self.election = election
        self.kick = kick
        self.state = ""  # this node's: "" | draining | drained
        self.draining: set[str] = set()  # every node with a drain record
        self._holding_election = False
        self._handed: set[str] = set()
        self._stopped_at_deadline = False
        self._mirrored: str | None = None
        self._kicked = False

    @property
    def active(self) -> bool:
        return self.state != ""

    async def poll(self) -> set[str]:
        """Read the drain records; act on ours. Returns the names of every draining node."""
        recs = await read_drains(self.store)
        self.draining = set(recs)
        self.rt.draining = self.draining
        mine = recs.get(self.node)
        if mine is None:
            await self._undrained()
        else:
            await self._drain(mine)
        if self.state or self._mirrored != self.state:  # rewritten while draining: a re-registration drops it
            await self.store.guard(self.store.r.eval(_MIRROR, 1, self.store.key("node", self.node), self.state))
            self._mirrored = self.state
        return self.draining

    async def _undrained(self) -> None:
        if self.state:
            log.info("undrained: taking jobs and executors again")
        self.state = ""
        self.rt.executor.draining = False
        self._handed.clear()
        self._stopped_at_deadline = False
        self._campaign_again()

    def _campaign_again(self) -> None:
        if self._holding_election:
            self._holding_election = False
            self.election.stopped = False
            self.election.wake()

    async def _drain(self, rec: dict[str, str]) -> None:
        if not self.state:
            log.warning("draining (deadline %s): no new jobs or executors here; handing over coordinated jobs",
                        rec.get("deadline_ms") or "none")
            self.state = DRAINING
        self.rt.executor.draining = True
        successors = [n for n in self.members.up_names() if n != self.node and n not in self.draining]
        if successors:
            await self._leave_leadership()
            for job_id, c in list(self.rt.coordinators.items()):
                if job_id not in self._handed:
                    self._handed.add(job_id)
                    self._kicked = False
                    c.request_handoff()
        else:
            self._campaign_again()  # every other node is down or draining: someone must lead
        deadline = int(rec.get("deadline_ms") or 0)
        if deadline and not self._stopped_at_deadline and await self.store.server_time_ms() >= deadline:
            self._stopped_at_deadline = True
            n = self.rt.executor.stop_runs("drain deadline reached")
            log.warning("drain deadline reached: stopped %d executor run(s); their coordinators replay them", n)
        if self.rt.executor.draining and self._stopped_at_deadline:
            self.rt.executor.stop_runs("drain deadline reached")  # a run accepted just before the drain
        coordinating, running = len(self.rt.coordinators), len(self.rt.executor.runs)
        state = DRAINED if not coordinating and not running else DRAINING
        if state != self.state or rec.get("state") != state or rec.get("coordinating") != str(coordinating) \
                or rec.get("running") != str(running):
            if state == DRAINED and self.state != DRAINED:
                log.info("drained: nothing coordinated or running here")
            self.state = state
            fields: Fields = {"state": state, "coordinating": coordinating, "running": running}
            if state == DRAINED:
                fields["drained_ms"] = await self.store.server_time_ms()
            pipe = self.store.r.pipeline(transaction=True)
            pipe.exists(drain_key(self.store, self.node))
            pipe.hset(drain_key(self.store, self.node), mapping=fields)
            res = await self.store.guard(pipe.execute())
            if not res[0]:  # undrained meanwhile: do not re-create the record
                await self.store.guard(self.store.r.delete(drain_key(self.store, self.node)))
        if self._handed and not coordinating and not self._kicked:
            self._kicked = True
            self.kick()  # the successors take the released leases now, not at their next pass

    async def _leave_leadership(self) -> None:
        """A draining node does not lead while another node can."""
        if not self._holding_election:
            self._holding_election = True
            if self.election.is_leader:
                log.info("draining: handing leadership over")
            await self.election.step_down()  # also stops contending until undrained


# ---- API ------------------------------------------------------------------------------------------------
def _deadline_s(raw: Any) -> float | None:
    if raw in (None, "", 0):
        return None
    try:
        return parse_duration(str(raw), "deadline")
    except ConfigError as e:
        raise DataError(str(e)) from None


async def _known(request: web.Request, name: str) -> tuple[list[dict[str, Any]], str | None]:
    rows = await request.app[NODE_KEY].node_table()
    for row in rows:
        if row["name"] == name or str(row["name"]).split("@", 1)[0] == name:
            return rows, str(row["name"])
    return rows, None


async def post_drain(request: web.Request) -> web.Response:
    store: Store = request.app[NODE_KEY].store
    body = object_body(await read_json(request) if request.can_read_body else {}, ("deadline", "force"),
                       '{"deadline": "90s", "force": false} or {}')
    deadline_s = _deadline_s(body.get("deadline"))
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise DataError("force must be true or false")
    rows, name = await _known(request, request.match_info["name"])
    if name is None:
        return error(404, f"no node named {request.match_info['name']!r}", "list nodes with `mn nodes`")
    drains = await read_drains(store)
    others = [r["name"] for r in rows if r["name"] != name and r.get("status") == "up" and r["name"] not in drains]
    if not others and not force:
        return error(409, f"refused: {name} is the only node that is up and not draining; draining it leaves no "
                          "node to coordinate jobs or run executors",
                     f"start or undrain another node first, or pass --force (mn drain {name} --force)")
    now = await store.server_time_ms()
    old = drains.get(name, {})
    fields: Fields = {"state": old.get("state") or DRAINING, "since_ms": old.get("since_ms") or now,
              "deadline_ms": int(now + deadline_s * 1000) if deadline_s else "", "by": request.app[NODE_KEY].name,
              "forced": "1" if force else "0"}
    pipe = store.r.pipeline(transaction=True)
    pipe.hset(drain_key(store, name), mapping=fields)
    pipe.sadd(index_key(store), name)
    await store.guard(store.execute_replicated(pipe))
    await store.event("node_drain", request.app[NODE_KEY].name, "", target=name,
                      deadline_ms=fields["deadline_ms"], forced=force)
    log.warning("drain of %s requested (deadline %s)", name, fields["deadline_ms"] or "none")
    request.app[NODE_KEY].kick_placement()
    return json_response({"node": name, **fields})


async def post_undrain(request: web.Request) -> web.Response:
    store: Store = request.app[NODE_KEY].store
    object_body(await read_json(request) if request.can_read_body else {}, (), "no body, or {}")
    _, name = await _known(request, request.match_info["name"])
    drains = await read_drains(store)
    name = name or (request.match_info["name"] if request.match_info["name"] in drains else None)
    if name is None:
        return error(404, f"no node named {request.match_info['name']!r}", "list nodes with `mn nodes`")
    pipe = store.r.pipeline(transaction=True)
    pipe.delete(drain_key(store, name))
    pipe.srem(index_key(store), name)
    await store.guard(store.execute_replicated(pipe))
    previous = drains.get(name, {}).get("state", "")
    if previous:
        await store.event("node_undrain", request.app[NODE_KEY].name, "", target=name, previous=previous)
        log.info("undrain of %s (was %s)", name, previous)
    request.app[NODE_KEY].kick_placement()
    return json_response({"node": name, "state": "", "previous": previous})


async def get_drain(request: web.Request) -> web.Response:
    store: Store = request.app[NODE_KEY].store
    _, name = await _known(request, request.match_info["name"])
    drains = await read_drains(store)
    name = name or (request.match_info["name"] if request.match_info["name"] in drains else None)
    if name is None:
        return error(404, f"no node named {request.match_info['name']!r}", "list nodes with `mn nodes`")
    return json_response({"node": name, "state": "", **drains.get(name, {})})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/nodes/{name}/drain", get_drain)
    app.router.add_post("/api/v1/nodes/{name}/drain", post_drain)
    app.router.add_post("/api/v1/nodes/{name}/undrain", post_undrain)


# ---- CLI --------------------------------------------------------------------------------------------------
def _when(ms: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(ms) / 1000)) if ms else "none"


def cmd_drain(api: Api, args: argparse.Namespace) -> int:
    if args.deadline is not None:
        try:
            parse_duration(args.deadline, "--deadline")
        except ConfigError as e:
            raise UsageError(str(e).replace("--deadline: ", "--deadline ")) from None
    res = api.post(f"/api/v1/nodes/{args.node}/drain", {"deadline": args.deadline, "force": args.force})
    if not args.wait:
        print(json.dumps(res, indent=2) if args.json else
              f"{res['node']}: {res['state']} (deadline {_when(res.get('deadline_ms'))})")
        return EX_OK
    return _wait_drained(api, res, args.json)


def _wait_drained(api: Api, res: dict[str, Any], as_json: bool) -> int:
    name = res["node"]
    give_up = (int(res["deadline_ms"]) / 1000 + 60) if res.get("deadline_ms") else None
    seen = ""
    while True:
        cur = api.get(f"/api/v1/nodes/{name}/drain")
        state = cur.get("state", "")
        line = f"{name}: {state or 'undrained'} ({cur.get('coordinating', '?')} jobs coordinated, " \
               f"{cur.get('running', '?')} executors running)"
        if line != seen and not as_json:
            print(line, flush=True)
            seen = line
        if state == DRAINED:
            if as_json:
                print(json.dumps(cur, indent=2))
            return EX_OK
        if not state:
            raise MirrorNeuronError(f"{name} was undrained while waiting; fix: mn drain {name} again if meant")
        if give_up is not None and time.time() > give_up:
            raise _NotDrained(f"{name} still {state} 60s past its deadline; fix: look at `mn doctor` on {name}")
        time.sleep(WAIT_POLL_S)


class _NotDrained(MirrorNeuronError):
    exit_code = EX_TEMPFAIL


def cmd_undrain(api: Api, args: argparse.Namespace) -> int:
    res = api.post(f"/api/v1/nodes/{args.node}/undrain")
    print(json.dumps(res, indent=2) if args.json else
          f"{res['node']}: undrained" + (f" (was {res['previous']})" if res.get("previous") else " (was not draining)"))
    return EX_OK


def register(sub: Any) -> None:
    """Add ``mn drain`` and ``mn undrain`` to the ``mn`` subcommand table ``sub``."""
    s = sub.add_parser("drain", help="take a node out of service: no new work, its jobs handed over")
    s.add_argument("node", metavar="NODE", help="the node's name (mn nodes lists them)")
    s.add_argument("--deadline", metavar="D",
                   help="stop its executors after D (90s, 15m) and replay them elsewhere (default: wait for them)")
    s.add_argument("--wait", action="store_true", help="return once the node is drained")
    s.add_argument("--force", action="store_true", help="drain even the last node that is up and not draining")
    add_json_flag(s)
    s.set_defaults(handler=cmd_drain)
    s = sub.add_parser("undrain", help="put a drained or draining node back into service")
    s.add_argument("node", metavar="NODE", help="the node's name")
    add_json_flag(s)
    s.set_defaults(handler=cmd_undrain)


__all__ = ["DRAINED", "DRAINING", "DrainControl", "add_routes", "read_drains", "register"]
