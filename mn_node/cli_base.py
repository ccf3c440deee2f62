"""What every ``mn`` command module shares: the node API client, its error, table formatting.

:mod:`mn_node.cli` builds the parser from the command modules (this one's users); nothing
here imports back from them, so there is no import cycle.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NoReturn

from mn_node.config import (
    API_CA_VAR,
    API_TLS_CERT_VAR,
    DEFAULT_API_PORT,
    DEFAULT_ENV_FILE,
    api_token,
    parse_env_file,
)
from mn_node.errors import EX_CONFIG, EX_DATAERR, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE, MirrorNeuronError

DEFAULT_TIMEOUT = 5.0

# what `mn` reads from the environment (listed in `mn --help`)
ENVIRONMENT = (
    ("MIRROR_NEURON_API_URL", "node API base URL when --api is not given"),
    ("MIRROR_NEURON_API_BIND / _API_PORT", f"else the API is http://BIND:PORT (default 127.0.0.1:{DEFAULT_API_PORT})"),
    ("MIRROR_NEURON_API_TLS_CERT", "set: that default URL is https:// and this certificate is trusted"),
    ("MIRROR_NEURON_API_CA", "a CA (PEM) to trust for https:// API URLs, besides the system's"),
    ("MIRROR_NEURON_API_TOKEN", "bearer token when --token is not given"),
    ("MIRROR_NEURON_COOKIE / _COOKIE_FILE", "else the token is derived from the cluster cookie"),
)


class CliError(MirrorNeuronError):
    """A CLI failure with the exit code it maps to (the message says what and the fix)."""

    def __init__(self, msg: str, code: int) -> None:
        super().__init__(msg)
        self.exit_code = code


class Parser(argparse.ArgumentParser):
    """Usage errors are one line with a fix, exit 64 (subcommand parsers inherit this)."""

    def error(self, message: str) -> NoReturn:
        fix = "" if "fix:" in message else f"; fix: see {self.prog} --help"
        print(f"{self.prog}: {message}{fix}", file=sys.stderr)
        sys.exit(EX_USAGE)


def default_api() -> str:
    env = os.environ.get("MIRROR_NEURON_API_URL")
    if env:
        return env
    host = os.environ.get("MIRROR_NEURON_API_BIND", "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if os.environ.get(API_TLS_CERT_VAR, "").strip() else "http"
    return f"{scheme}://{host}:{os.environ.get('MIRROR_NEURON_API_PORT', str(DEFAULT_API_PORT))}"


def client_ssl_context() -> ssl.SSLContext:
    """What ``mn`` and ``mn-tui`` trust for https:// API URLs: the system's CAs, plus
    MIRROR_NEURON_API_CA (a private CA) and the node's own certificate when
    MIRROR_NEURON_API_TLS_CERT is readable here (a self-signed one on the same box)."""
    ctx = ssl.create_default_context()
    for var in (API_CA_VAR, API_TLS_CERT_VAR):
        path = os.environ.get(var, "").strip()
        if not path:
            continue
        try:
            ctx.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as e:
            if var == API_CA_VAR:
                raise CliError(f"{var}: cannot load {path} ({e}); fix: point it at a PEM CA certificate",
                               EX_CONFIG) from None
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a trusted leaf (self-signed) is enough
    return ctx


def _cookie_from_env_file(env_file: str | None) -> tuple[str | None, str | None]:
    """(cookie, cookie file) named by the env file, if one is given or the default is there."""
    path = env_file or (DEFAULT_ENV_FILE if os.path.exists(DEFAULT_ENV_FILE) else None)
    if not path:
        return None, None
    try:
        vals = parse_env_file(Path(path))
    except MirrorNeuronError:
        return None, None
    return vals.get("MIRROR_NEURON_COOKIE"), vals.get("MIRROR_NEURON_COOKIE_FILE")


def token_for(token: str | None, env_file: str | None) -> str | None:
    """Bearer token: ``token``, MIRROR_NEURON_API_TOKEN, or derived from the cookie we can read."""
    if token:
        return token
    if os.environ.get("MIRROR_NEURON_API_TOKEN"):
        return os.environ["MIRROR_NEURON_API_TOKEN"]
    cookie = os.environ.get("MIRROR_NEURON_COOKIE")
    path = os.environ.get("MIRROR_NEURON_COOKIE_FILE")
    if not cookie:
        file_cookie, file_path = _cookie_from_env_file(env_file)
        cookie, path = file_cookie, path or file_path
    if not cookie and path:
        try:
            with open(path, "rb") as f:
                return api_token(f.read().strip())
        except OSError:
            return None
    return api_token(cookie.strip().encode()) if cookie else None


def http_error(method: str, path: str, e: urllib.error.HTTPError) -> CliError:
    """The one-line error (and exit code) for an HTTP error answer of the API."""
    try:
        payload = json.loads(e.read() or b"{}")
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    reason = payload.get("error") or e.reason
    fix = payload.get("fix")
    msg = f"{method} {path}: {e.code} {reason}" + (f"; fix: {fix}" if fix else "")
    problems = payload.get("problems")
    if isinstance(problems, list) and len(problems) > 1:  # every problem, one per line
        msg += "".join(f"\n  {p}" for p in problems)
    codes = {400: EX_DATAERR, 401: EX_USAGE, 404: EX_UNAVAILABLE, 413: EX_DATAERR, 503: EX_UNAVAILABLE}
    return CliError(msg, codes.get(e.code, EX_UNAVAILABLE))


class Api:
    """Blocking JSON client of one node's HTTP API; every failure is a :class:`CliError`."""

    def __init__(self, base: str, token: str | None, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not base.startswith(("http://", "https://")):
            raise CliError(f"--api {base!r} is not an http(s) URL; fix: pass --api http://HOST:4000", EX_USAGE)
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.ssl = client_ssl_context() if self.base.startswith("https://") else None

    def open(self, req: urllib.request.Request, timeout: float) -> Any:
        """``urlopen`` with this API's TLS trust (the caller closes the answer)."""
        return urllib.request.urlopen(req, timeout=timeout, context=self.ssl)  # noqa: S310 (scheme checked)

    def unreachable(self, why: object) -> CliError:
        return CliError(
            f"no mirror-neuron node answers at {self.base} ({why}); "
            "fix: start it (systemctl start mirror-neuron) or pass --api http(s)://HOST:4000 "
            "(https: trust its CA with MIRROR_NEURON_API_CA)",
            EX_UNAVAILABLE,
        )

    def request(self, method: str, path: str, body: Any = None, timeout: float | None = None,
                raw: bytes | None = None) -> Any:
        """One call; ``body`` is sent as JSON, or ``raw`` as bytes (application/octet-stream)."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310 (scheme checked)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
        if self.token and method != "GET":
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self.open(req, timeout or self.timeout) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raise http_error(method, path, e) from None
        except urllib.error.URLError as e:
            raise self.unreachable(getattr(e, "reason", e)) from None
        except (ConnectionError, ssl.SSLError) as e:
            raise self.unreachable(e) from None
        except TimeoutError:
            raise CliError(
                f"{self.base} did not answer within {timeout or self.timeout:g}s; fix: retry, or pass a larger "
                "--timeout", EX_TEMPFAIL,
            ) from None

    def get(self, path: str, timeout: float | None = None) -> Any:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=False)).rstrip()]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
    return "\n".join(lines)


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    d = max(0.0, time.time() - ts)
    if d < 120:
        return f"{d:.1f}s ago"
    if d < 7200:
        return f"{d / 60:.0f}m ago"
    return f"{d / 3600:.1f}h ago"


def add_json_flag(p: argparse.ArgumentParser) -> None:
    """``--json`` on a subcommand; SUPPRESS keeps ``mn --json CMD`` from being reset to False."""
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
