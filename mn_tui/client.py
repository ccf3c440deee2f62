"""A small JSON client for the node's HTTP API (aiohttp, on the app's event loop).

Network waits are awaits, never blocking calls, so a blackholed node costs the UI nothing; a
poll in flight is cancelled cleanly when the app quits or a newer poll replaces it.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp

from mn_node.cli_base import client_ssl_context


class ApiError(Exception):
    """Root of the client's errors; ``str()`` is the one line shown on screen."""


class Unreachable(ApiError):
    """No TCP connection (refused, no route, DNS)."""


class Timeout(ApiError):
    """Connected (or connecting) but no answer within the timeout: a hung or blackholed node."""


class HttpError(ApiError):
    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ApiClient:
    def __init__(self, base: str, timeout: float = 3.0) -> None:
        self.base = base.rstrip("/")
        self.timeout = timeout
        # https:// URLs: the system's CAs plus MIRROR_NEURON_API_CA (as for mn)
        self.ssl: ssl.SSLContext | bool = client_ssl_context() if self.base.startswith("https://") else True
        self._session: aiohttp.ClientSession | None = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Accept": "application/json", "User-Agent": "mn-tui"},
            )
        return self._session

    async def get(self, path: str, ok: tuple[int, ...] = (200,)) -> Any:
        """GET ``path``; the decoded JSON body when the status is in ``ok``, else HttpError."""
        url = self.base + path
        try:
            async with self._sess().get(url, ssl=self.ssl) as r:
                raw = await r.read()
                body: Any
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")[:200]
                if r.status not in ok:
                    why = body.get("error") if isinstance(body, dict) else None
                    raise HttpError(r.status, f"HTTP {r.status} from {path}: {why or str(body)[:120]}", body)
                return body
        except TimeoutError:
            raise Timeout(f"no answer from {self.base} within {self.timeout:g}s") from None
        except aiohttp.ClientConnectorError as e:
            raise Unreachable(f"cannot connect to {self.base}: {e.os_error.strerror or e}") from None
        except (aiohttp.ClientError, OSError) as e:
            raise Unreachable(f"{self.base}: {type(e).__name__}: {e}") from None

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
