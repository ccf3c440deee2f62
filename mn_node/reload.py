"""Reload (SIGHUP, ``systemctl reload``): re-read the configuration and apply what can change live.

:class:`Reloader` holds the running :class:`~mn_node.config.Config` and a table of
*live fields*: a ``Config`` attribute, the variable an operator edits, and an ``apply(old, new)``
callback (sync or async) run when the value changed. Any other changed attribute is reported as
needing a restart and keeps its running value. A configuration that does not load (bad value,
unreadable env file) changes nothing: one ERROR line ``reload refused: ...; keeping the running
configuration``. The daemon never stops on a reload.

A layer that owns a live setting registers it in ``Node._register_live_fields`` (daemon.py)::

    self.reloader.register("job_retention_s", lambda old, new: retention.set(new),
                           var="MIRROR_NEURON_JOB_RETENTION", show=lambda s: f"{s:g}s")

``register(attr, apply, *, var=None, show=str, refuse=None)``: ``attr`` must be a ``Config``
field; ``var`` (default ``MIRROR_NEURON_<ATTR>``) names it in the log; ``show`` renders a value
(never register a secret: values are logged); ``refuse(old, new)`` may return why this change
needs a restart after all.

Under systemd the service's environment comes from ``EnvironmentFile=``, which the service
user cannot read; ``ExecReload=mn-node reload $MAINPID`` runs with the re-read file and hands
its ``MIRROR_NEURON_*`` variables (never the cookie) to the daemon in ``reload-env.json`` of
the state directory, then sends SIGHUP (:func:`forward_reload`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mn_node.config import ENV_PREFIX, Config
from mn_node.errors import ConfigError, MirrorNeuronError

log = logging.getLogger("mn_node.daemon")  # the daemon reloads: its lines read "daemon: reload ..."

ApplyFn = Callable[[Any, Any], Awaitable[None] | None]
SNAPSHOT_NAME = "reload-env.json"
# Config attributes that are not settings (or are shown through another one)
_NOT_SETTINGS = frozenset({"warnings", "env_file"})
# the variable an operator edits, where it is not MIRROR_NEURON_<ATTRIBUTE>
_VARS = {
    "cookie": "MIRROR_NEURON_COOKIE",
    "nodes": "MIRROR_NEURON_CLUSTER_NODES",
    "me": "MIRROR_NEURON_NODE_NAME/_DIST_PORT",
    "namespace": "MIRROR_NEURON_REDIS_NAMESPACE",
    "api_tls": "MIRROR_NEURON_API_TLS_*",
    "command_timeout_s": "MIRROR_NEURON_COMMAND_TIMEOUT",
}


def var_of(attr: str) -> str:
    return _VARS.get(attr, ENV_PREFIX + attr.upper())


@dataclass(frozen=True)
class LiveField:
    """A setting applied while running: ``apply(old, new)``; ``refuse(old, new)`` may return
    why this particular change needs a restart after all (e.g. a node removed from the list)."""

    attr: str
    var: str
    apply: ApplyFn
    show: Callable[[Any], str] = str
    refuse: Callable[[Any, Any], str | None] | None = None


@dataclass
class ReloadReport:
    applied: list[str] = field(default_factory=list)  # variables whose new value is in force
    restart: list[str] = field(default_factory=list)  # changed, kept at the running value
    failed: list[str] = field(default_factory=list)  # a live apply raised; old value kept
    refused: str | None = None  # the configuration did not load: nothing changed


class Reloader:
    def __init__(self, cfg: Config, load: Callable[[], Config]) -> None:
        self.cfg = cfg
        self._load = load
        self._live: dict[str, LiveField] = {}
        self._lock = asyncio.Lock()

    def register(self, attr: str, apply: ApplyFn, *, var: str | None = None, show: Callable[[Any], str] = str,
                 refuse: Callable[[Any, Any], str | None] | None = None) -> None:
        """Make ``Config.<attr>`` live: ``apply(old, new)`` runs on a reload that changes it."""
        if attr not in {f.name for f in dataclasses.fields(Config)}:
            raise ValueError(f"Config has no attribute {attr!r}")
        self._live[attr] = LiveField(attr, var or var_of(attr), apply, show, refuse)

    async def reload(self) -> ReloadReport:
        """Load the configuration again and apply the live changes; never raises."""
        async with self._lock:
            try:
                new = await asyncio.to_thread(self._load)
            except (MirrorNeuronError, OSError) as e:
                log.error("reload refused: %s; keeping the running configuration", e)
                return ReloadReport(refused=str(e))
            except Exception as e:  # whatever happens, a reload never stops the daemon
                log.error("reload refused: %s: %s; keeping the running configuration", type(e).__name__, e)
                return ReloadReport(refused=f"{type(e).__name__}: {e}")
            report = ReloadReport()
            applied: dict[str, Any] = {}
            for f in dataclasses.fields(Config):
                old, value = getattr(self.cfg, f.name), getattr(new, f.name)
                if f.name in _NOT_SETTINGS or old == value:
                    continue
                if await self._apply_one(f.name, old, value, report):
                    applied[f.name] = value
            self.cfg = dataclasses.replace(self.cfg, **applied)
            if report.restart:
                log.warning("reload: changed but need a restart (running values kept): %s", ", ".join(report.restart))
            if not (report.applied or report.restart or report.failed):
                log.info("reload: configuration unchanged")
            return report

    async def _apply_one(self, attr: str, old: Any, new: Any, report: ReloadReport) -> bool:
        live = self._live.get(attr)
        why = live.refuse(old, new) if live is not None and live.refuse is not None else None
        if live is None or why:
            report.restart.append((live.var if live else var_of(attr)) + (f" ({why})" if why else ""))
            return False
        try:
            res = live.apply(old, new)
            if inspect.isawaitable(res):
                await res
        except Exception as e:  # a failing apply must not stop the daemon nor the other fields
            log.error("reload: %s could not be applied (%s: %s); keeping %s", live.var, type(e).__name__, e,
                      live.show(old))
            report.failed.append(live.var)
            return False
        log.info("reload: %s %s -> %s", live.var, live.show(old), live.show(new))
        report.applied.append(live.var)
        return True


# ---- the environment a reload reads -----------------------------------------------------------
def snapshot_path(environ: Mapping[str, str], fallback: Path) -> Path:
    """Where ``mn-node reload`` leaves the re-read variables: systemd's $STATE_DIRECTORY (the
    same for both processes), else ``fallback`` (the daemon's state directory)."""
    state = environ.get("STATE_DIRECTORY", "").split(":")[0].strip()
    return (Path(state) if state else fallback) / SNAPSHOT_NAME


def reload_environ(start_environ: Mapping[str, str], snapshot: Path) -> dict[str, str]:
    """The environment to load on a reload: the daemon's own, with its ``MIRROR_NEURON_*``
    variables replaced by the snapshot's when ``mn-node reload`` left one (a variable removed
    from the env file is then removed here too); the cookie always stays the running one."""
    env = dict(start_environ)
    try:
        data = json.loads(snapshot.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return env
    except (OSError, ValueError) as e:
        raise ConfigError(f"reload: {snapshot} is unreadable ({e}); fix: run systemctl reload mirror-neuron "
                          "again (mn-node reload writes it)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"reload: {snapshot} is not a JSON object; fix: run systemctl reload again")
    for key in [k for k in env if k.startswith(ENV_PREFIX) and k != ENV_PREFIX + "COOKIE"]:
        del env[key]
    env.update({str(k): str(v) for k, v in data.items() if str(k) != ENV_PREFIX + "COOKIE"})
    return env


def forward_reload(pid: int, environ: Mapping[str, str], fallback: Path) -> Path:
    """``mn-node reload PID`` (the unit's ExecReload): write this process's ``MIRROR_NEURON_*``
    variables (not the cookie) where the daemon reads them, then SIGHUP it."""
    path = snapshot_path(environ, fallback)
    data = {k: v for k, v in environ.items() if k.startswith(ENV_PREFIX) and k != ENV_PREFIX + "COOKIE"}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)
    os.kill(pid, signal.SIGHUP)
    return path
