"""HTTP API (aiohttp) on MIRROR_NEURON_API_BIND:MIRROR_NEURON_API_PORT (DESIGN §8)."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from mn_node import __version__
from mn_node.config import api_token
from mn_node.errors import MirrorNeuronError, RedisUnavailable
from mn_node.store import decode_event

if TYPE_CHECKING:
    from mn_node.daemon import Node

log = logging.getLogger("mn_node.api")

NODE_KEY: web.AppKey[Node] = web.AppKey("node")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def error(status: int, reason: str, fix: str = "") -> web.Response:
    body = {"error": reason}
    if fix:
        body["fix"] = fix
    return json_response(body, status)


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        expected = api_token(node.cfg.cookie)
        got = request.headers.get("Authorization", "")
        scheme, _, token = got.partition(" ")
        # header values may carry any bytes (surrogate-escaped): "replace" can never make a match
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8", "replace"),
                                                                 expected.encode()):
            return error(401, "missing or wrong bearer token",
                         "send Authorization: Bearer <token>; `mn` derives it from MIRROR_NEURON_COOKIE")
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        fix = "see the routes under /api/v1 (README)" if e.status in (404, 405) else ""
        return error(e.status, f"{e.reason}: {request.method} {request.path[:200]}", fix)
    except (ConnectionResetError, BadHttpMessage) as e:
        # the body ended early or was framed wrongly (the client is usually gone): its fault, not ours
        log.debug("API request %s %s: bad or incomplete body: %s", request.method, request.path, e)
        return error(400, f"request body incomplete or malformed: {e}"[:300], "send the whole body it announces")
    except RedisUnavailable as e:
        return error(503, str(e), "check that Redis is running and reachable from this node (mn doctor)")
    except MirrorNeuronError as e:
        code = 400 if e.exit_code in (64, 65) else 503 if e.exit_code in (69, 75) else 500
        return error(code, str(e))
    except Exception:
        log.exception("API handler failed on %s %s", request.method, request.path)
        return error(500, "internal error (see the node's log)")


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; raises :class:`web.HTTPException` (answered as a JSON 4xx by
    the middleware) for a body that is not JSON, not in its declared charset, or too deep."""
    try:
        return await request.json(loads=json.loads)
    except LookupError:
        raise web.HTTPUnsupportedMediaType(reason=f"unknown charset {ascii(request.charset)[:60]}") from None
    except UnicodeDecodeError as e:
        raise web.HTTPBadRequest(reason=f"body is not valid {e.encoding}") from None
    except RecursionError:
        raise web.HTTPBadRequest(reason="body is nested too deeply") from None
    except ValueError as e:
        raise web.HTTPBadRequest(reason=f"body is not valid JSON ({str(e)[:80]})") from None


async def health(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    reasons = node.health_reasons()
    body = {
        "status": "ok" if not reasons else "unhealthy",
        "node": node.cfg.name,
        "incarnation": node.incarnation,
        "version": __version__,
        "redis": "ok" if node.store.available else "unreachable",
        "leader": node.election.is_leader,
        "members_up": len(node.members.up_names()),
        "reasons": reasons,
    }
    return json_response(body, 200 if not reasons else 503)


async def summary(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    return json_response(await node.summary())


async def nodes(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    return json_response({"nodes": await node.node_table()})


async def node_one(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    name = request.match_info["name"]
    for row in await node.node_table():
        if row["name"] == name or row["name"].split("@", 1)[0] == name:
            return json_response(row)
    return error(404, f"no node named {name!r}", "list nodes with `mn nodes`")


async def leader(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    cur = await node.election.current()
    if cur is None:
        return json_response({"node": None, "epoch": None, "ttl_ms": None, "reason": "no leader right now"})
    cur["self"] = cur["node"] == node.cfg.name
    return json_response(cur)


async def cluster_events(request: web.Request) -> web.Response:
    """Recent cluster events (leader changes, node up/down, orphan sweeps), oldest first."""
    node = request.app[NODE_KEY]
    try:
        count = min(1000, max(1, int(request.query.get("count", "100"))))
    except ValueError:
        return error(400, "count must be an integer", "use ?count=1..1000")
    raw = await node.store.guard(node.store.r.xrevrange(node.store.key("events"), count=count))
    events = [decode_event(eid, fields) for eid, fields in reversed(raw)]
    return json_response({"events": events})


async def metrics(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    return web.Response(text=node.metrics_text(), content_type="text/plain", charset="utf-8")


def build_app(node: Node, extra: Callable[[web.Application], None] | None = None) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=8 * 1024 * 1024)
    app[NODE_KEY] = node
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/system/summary", summary)
    app.router.add_get("/api/v1/nodes", nodes)
    app.router.add_get("/api/v1/nodes/{name}", node_one)
    app.router.add_get("/api/v1/leader", leader)
    app.router.add_get("/api/v1/events", cluster_events)
    app.router.add_get("/metrics", metrics)
    if extra is not None:
        extra(app)
    return app


def uptime(started: float) -> float:
    return round(time.time() - started, 3)
