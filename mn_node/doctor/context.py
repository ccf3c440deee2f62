"""What the checks share: the local config, and facts gathered once per run (Redis, the
registrations, the local node's API, peer probes, local processes), each computed on first
use and awaited by every check that needs it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from mn_node.config import (
    DEFAULT_API_PORT,
    DEFAULT_ENV_FILE,
    Config,
    NodeAddr,
    is_sentinel_url,
    load_config,
    parse_env_file,
)
from mn_node.errors import ConfigError

T = TypeVar("T")


@dataclass
class ApiTarget:
    base: str
    host: str
    port: int
    ssl: bool


def parse_api(url: str) -> ApiTarget:
    """``http(s)://host:port``; raises ValueError with a one-line reason."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"--api {url!r} is not a URL; fix: pass --api http://HOST:4000") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--api {url!r} is not an http(s)://HOST[:PORT] URL; fix: pass --api http://HOST:4000")
    return ApiTarget(url.rstrip("/"), parts.hostname, port or (443 if parts.scheme == "https" else 80),
                     parts.scheme == "https")


@dataclass
class Context:
    env: dict[str, str]
    """The environment the config was read from (process env overlaid with the env file)."""
    env_file: str | None
    env_file_error: str | None
    cfg: Config | None
    cfg_error: ConfigError | None
    api: ApiTarget | None
    timeout: float
    verbose: bool = False
    started: float = field(default_factory=time.monotonic)
    _memo: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def deadline(self) -> float:
        return self.started + self.timeout

    @property
    def scale(self) -> float:
        """Check timeouts are written for the default --timeout 5 and scale with it."""
        return self.timeout / 5.0

    @property
    def stage(self) -> float:
        """Timeout of one network step (connect, handshake, request): 1 s by default."""
        return min(2.0, max(0.2, self.timeout / 5.0))

    @property
    def redis_url(self) -> str | None:
        if self.cfg is not None:
            return self.cfg.redis_url
        return self.env.get("MIRROR_NEURON_REDIS_URL", "").strip() or None

    @property
    def redis_sentinel_password(self) -> str | None:
        if self.cfg is not None:
            return self.cfg.redis_sentinel_password
        return self.env.get("MIRROR_NEURON_REDIS_SENTINEL_PASSWORD", "").strip() or None

    @property
    def redis_min_acks(self) -> int:
        if self.cfg is not None:
            return self.cfg.redis_min_acks
        return 1 if is_sentinel_url(self.redis_url) else 0

    @property
    def namespace(self) -> str:
        if self.cfg is not None:
            return self.cfg.namespace
        return self.env.get("MIRROR_NEURON_REDIS_NAMESPACE", "").strip() or "mirror_neuron"

    @property
    def env_file_hint(self) -> str:
        return self.env_file or DEFAULT_ENV_FILE

    @property
    def me(self) -> NodeAddr | None:
        return self.cfg.me if self.cfg else None

    @property
    def node_name(self) -> str:
        if self.cfg is not None:
            return self.cfg.name
        return self.env.get("MIRROR_NEURON_NODE_NAME", "").strip()

    def key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    async def once(self, key: str, factory: Callable[[], Awaitable[T]]) -> T:
        """Compute a shared fact once; a check that times out never cancels it for others."""
        task = self._memo.get(key)
        if task is None:
            async def run() -> T:
                return await factory()

            task = asyncio.get_running_loop().create_task(run(), name=f"fact:{key}")
            self._memo[key] = task
        return await asyncio.shield(task)

    def on_close(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._closers.append(fn)

    async def close(self) -> None:
        for task in self._memo.values():
            task.cancel()
        await asyncio.gather(*self._memo.values(), return_exceptions=True)
        for fn in self._closers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(fn(), 0.5)


def build_context(
    environ: Mapping[str, str] | None,
    env_file: str | None,
    api: str | None,
    timeout: float,
    verbose: bool = False,
) -> Context:
    """Read the config the way the daemon does. An explicitly given env file that cannot be
    read raises ConfigError (bad input); the default one only when it exists."""
    env = dict(os.environ if environ is None else environ)
    file_error = None
    used_file = env_file
    if env_file is not None:
        env.update(parse_env_file(Path(env_file)))  # ConfigError: the caller prints it, exit 78
    elif os.path.exists(DEFAULT_ENV_FILE):
        try:
            env.update(parse_env_file(Path(DEFAULT_ENV_FILE)))
            used_file = DEFAULT_ENV_FILE
        except ConfigError as e:
            file_error = str(e)
    cfg: Config | None = None
    cfg_error: ConfigError | None = None
    try:
        cfg = load_config(env, None, require_redis=True)
    except ConfigError as e:
        cfg_error = e
    target: ApiTarget | None
    if api:
        target = parse_api(api)
    else:
        url = env.get("MIRROR_NEURON_API_URL", "").strip()
        if url:
            target = parse_api(url)
        else:
            host = cfg.api_bind if cfg else env.get("MIRROR_NEURON_API_BIND", "").strip() or "127.0.0.1"
            if host in ("", "0.0.0.0"):
                host = "127.0.0.1"
            elif host == "::":
                host = "::1"
            raw_port = env.get("MIRROR_NEURON_API_PORT", "").strip()
            port = cfg.api_port if cfg else int(raw_port) if raw_port.isdigit() else DEFAULT_API_PORT
            shown = f"[{host}]" if ":" in host else host
            tls = bool(cfg and cfg.api_tls.enabled)  # the node serves HTTPS (MIRROR_NEURON_API_TLS_CERT)
            target = ApiTarget(f"{'https' if tls else 'http'}://{shown}:{port}", host, port, tls)
    return Context(env=env, env_file=used_file, env_file_error=file_error, cfg=cfg, cfg_error=cfg_error,
                   api=target, timeout=timeout, verbose=verbose)
