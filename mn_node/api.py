"""HTTP API (aiohttp) on MIRROR_NEURON_API_BIND:MIRROR_NEURON_API_PORT.

HTTPS when MIRROR_NEURON_API_TLS_CERT / _KEY are set (:func:`server_ssl_context`); beyond
loopback the configuration refuses plain HTTP unless MIRROR_NEURON_API_INSECURE=1
(:func:`mn_node.config.load_config`).

Routes see a node only through :class:`NodeAPI` (implemented by :class:`mn_node.views.NodeView`),
never the daemon itself.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from mn_node.config import API_TLS_CERT_VAR, API_TLS_KEY_VAR, ApiTls
from mn_node.errors import (
    EX_DATAERR,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    ConfigError,
    DataError,
    MirrorNeuronError,
    RedisUnavailable,
)
from mn_node.metrics import CONTENT_TYPE
from mn_node.store import Store


class NodeAPI(Protocol):
    """Exactly what the routes use of a node."""

    @property
    def name(self) -> str: ...
    @property
    def incarnation(self) -> str: ...
    @property
    def store(self) -> Store: ...  # job state lives in Redis; the job routes read and write it
    @property
    def api_token(self) -> str: ...  # the bearer token state-changing calls must present

    def health(self) -> dict[str, Any]: ...  # "reasons" empty = healthy
    async def summary(self) -> dict[str, Any]: ...
    async def node_table(self) -> list[dict[str, Any]]: ...
    async def leader(self) -> dict[str, Any] | None: ...
    async def cluster_events(self, count: int) -> list[dict[str, Any]]: ...
    def metrics(self) -> bytes: ...
    def kick_placement(self) -> None: ...
    def tell_owner_cancel(self, owner: str, job_id: str) -> None: ...
    def job_retention_ms(self) -> int: ...  # terminal jobs' keys expire after it (cancel, prune)
    # the live output of a running command attempt, asked of the node that runs it
    async def exec_logs(self, node: str, job_id: str, agent_id: str, attempt: int,
                        offsets: dict[str, int]) -> dict[str, Any] | None: ...


log = logging.getLogger("mn_node.api")

# a MirrorNeuronError's exit code -> the HTTP status of the answer (anything else: 500)
_HTTP_STATUS = {EX_USAGE: 400, EX_DATAERR: 400, EX_UNAVAILABLE: 503, EX_TEMPFAIL: 503}

NODE_KEY: web.AppKey[NodeAPI] = web.AppKey("node")
# a JSON body's cap: a manifest of 100k agents posted as JSON is ~40 MB (bodies are read only
# after the bearer token is checked); past it the answer is 413 naming the cap
MAX_BODY = 64 * 1024 * 1024
BIG_BODY = 1 << 20  # bodies past this are parsed off the event loop
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
        expected = node.api_token
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
        return error(_HTTP_STATUS.get(e.exit_code, 500), str(e))
    except Exception:
        log.exception("API handler failed on %s %s", request.method, request.path)
        return error(500, "internal error (see the node's log)")


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; raises :class:`web.HTTPException` (answered as a JSON 4xx by
    the middleware) for a body that is not JSON, not in its declared charset, or too deep."""
    try:
        raw = await request.read()
        text = raw.decode(request.charset or "utf-8")
        return await asyncio.to_thread(json.loads, text) if len(raw) > BIG_BODY else json.loads(text)
    except web.HTTPRequestEntityTooLarge:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_BODY, actual_size=request.content_length or MAX_BODY + 1,
            reason=f"body over the cap of {MAX_BODY // (1024 * 1024)} MiB") from None
    except LookupError:
        raise web.HTTPUnsupportedMediaType(reason=f"unknown charset {ascii(request.charset)[:60]}") from None
    except UnicodeDecodeError as e:
        raise web.HTTPBadRequest(reason=f"body is not valid {e.encoding}") from None
    except RecursionError:
        raise web.HTTPBadRequest(reason="body is nested too deeply") from None
    except ValueError as e:
        raise web.HTTPBadRequest(reason=f"body is not valid JSON ({str(e)[:80]})") from None


def object_body(body: Any, allowed: tuple[str, ...], example: str) -> dict[str, Any]:
    """``body`` as a JSON object that holds only ``allowed`` fields; anything else is a
    :class:`DataError` (400) naming the problem and showing ``example``."""
    if not isinstance(body, dict):
        raise DataError(f"body: is not a JSON object; fix: send {example}")
    unknown = sorted(str(k) for k in body if k not in allowed)
    if unknown:
        raise DataError(f"body.{unknown[0][:40]}: unknown field; fix: send {example}")
    return body


async def health(request: web.Request) -> web.Response:
    body = request.app[NODE_KEY].health()
    return json_response(body, 503 if body["reasons"] else 200)


async def summary(request: web.Request) -> web.Response:
    return json_response(await request.app[NODE_KEY].summary())


async def nodes(request: web.Request) -> web.Response:
    return json_response({"nodes": await request.app[NODE_KEY].node_table()})


async def node_one(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    for row in await request.app[NODE_KEY].node_table():
        if row["name"] == name or row["name"].split("@", 1)[0] == name:
            return json_response(row)
    return error(404, f"no node named {name!r}", "list nodes with `mn nodes`")


async def leader(request: web.Request) -> web.Response:
    cur = await request.app[NODE_KEY].leader()
    if cur is None:
        return json_response({"node": None, "epoch": None, "ttl_ms": None, "reason": "no leader right now"})
    return json_response(cur)


async def cluster_events(request: web.Request) -> web.Response:
    """Recent cluster events (leader changes, node up/down, orphan sweeps), oldest first."""
    try:
        count = min(1000, max(1, int(request.query.get("count", "100"))))
    except ValueError:
        return error(400, "count must be an integer", "use ?count=1..1000")
    return json_response({"events": await request.app[NODE_KEY].cluster_events(count)})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[NODE_KEY].metrics(), headers={"Content-Type": CONTENT_TYPE})


def server_ssl_context(tls: ApiTls) -> ssl.SSLContext | None:
    """The API's TLS context (TLS 1.2+), or None for plain HTTP; a bad certificate or key is a
    :class:`ConfigError` (exit 78) naming the variables."""
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"{API_TLS_CERT_VAR} / {API_TLS_KEY_VAR}: cannot load {tls.cert} with {tls.key} ({e}); "
                          "fix: give a PEM certificate and its matching unencrypted private key") from None
    return ctx


def build_app(node: NodeAPI, extra: Callable[[web.Application], None] | None = None) -> web.Application:
    # bodies past MAX_BODY are refused (413), except a bundle upload, which reads its stream with its own cap
    app = web.Application(middlewares=[errors_and_auth], client_max_size=MAX_BODY)
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

