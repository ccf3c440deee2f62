"""``mn``: the operator CLI. Talks to a node's HTTP API.

Exit codes: 0 ok, 64 usage, 65 bad input data (manifest), 69 no node answers / not found /
unavailable, 75 temporary failure (timeout), 78 bad local configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any, NoReturn

from mn_node import __version__
from mn_node.config import DEFAULT_ENV_FILE, api_token, parse_env_file
from mn_node.errors import EX_DATAERR, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE, MirrorNeuronError


class CliError(MirrorNeuronError):
    def __init__(self, msg: str, code: int) -> None:
        super().__init__(msg)
        self.exit_code = code


def default_api() -> str:
    env = os.environ.get("MIRROR_NEURON_API_URL")
    if env:
        return env
    host = os.environ.get("MIRROR_NEURON_API_BIND", "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{os.environ.get('MIRROR_NEURON_API_PORT', '4000')}"


def _token(args: argparse.Namespace) -> str | None:
    """Bearer token: --token, MIRROR_NEURON_API_TOKEN, or derived from the cookie we can read."""
    if getattr(args, "token", None):
        return str(args.token)
    if os.environ.get("MIRROR_NEURON_API_TOKEN"):
        return os.environ["MIRROR_NEURON_API_TOKEN"]
    cookie = os.environ.get("MIRROR_NEURON_COOKIE")
    path = os.environ.get("MIRROR_NEURON_COOKIE_FILE")
    env_file = getattr(args, "env_file", None) or (DEFAULT_ENV_FILE if os.path.exists(DEFAULT_ENV_FILE) else None)
    if not cookie and env_file:
        try:
            vals = parse_env_file(__import__("pathlib").Path(env_file))
            cookie = vals.get("MIRROR_NEURON_COOKIE") or cookie
            path = path or vals.get("MIRROR_NEURON_COOKIE_FILE")
        except MirrorNeuronError:
            pass
    if not cookie and path:
        try:
            with open(path, "rb") as f:
                return api_token(f.read().strip())
        except OSError:
            return None
    return api_token(cookie.strip().encode()) if cookie else None


class Api:
    def __init__(self, base: str, token: str | None, timeout: float = 5.0) -> None:
        if not base.startswith(("http://", "https://")):
            raise CliError(f"--api {base!r} is not an http(s) URL; fix: pass --api http://HOST:4000", EX_USAGE)
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310 (scheme checked)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token and method != "GET":
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:  # noqa: S310
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                payload = json.loads(e.read() or b"{}")
            except ValueError:
                payload = {}
            reason = payload.get("error") or e.reason
            fix = payload.get("fix")
            msg = f"{method} {path}: {e.code} {reason}" + (f"; fix: {fix}" if fix else "")
            codes = {400: EX_DATAERR, 401: EX_USAGE, 404: EX_UNAVAILABLE, 503: EX_UNAVAILABLE}
            code = codes.get(e.code, EX_UNAVAILABLE)
            raise CliError(msg, code) from None
        except urllib.error.URLError as e:
            raise CliError(
                f"no mirror-neuron node answers at {self.base} ({getattr(e, 'reason', e)}); "
                "fix: start it (systemctl start mirror-neuron) or pass --api http://HOST:4000",
                EX_UNAVAILABLE,
            ) from None
        except TimeoutError:
            raise CliError(f"{self.base} did not answer within {timeout or self.timeout:g}s", EX_TEMPFAIL) from None

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


def cmd_nodes(api: Api, args: argparse.Namespace) -> int:
    data = api.get("/api/v1/nodes")
    nodes = data["nodes"]
    if args.json:
        print(json.dumps(nodes, indent=2))
        return 0
    rows = []
    for n in nodes:
        rtt = "-" if n.get("rtt_ms") is None or n.get("is_self") else f"{n['rtt_ms']:.2f}ms"
        load = n.get("load") or {}
        rows.append([
            n["name"] + (" *" if n.get("is_self") else ""), n["status"], n.get("address", ""),
            (n.get("incarnation") or "-")[:16], rtt, ago(n.get("last_seen")),
            n.get("version") or "-", str(load.get("loadavg1", "-")),
            n.get("reason", "") if n["status"] != "up" else "",
        ])
    print(table(rows, ["NAME", "STATUS", "ADDRESS", "INCARNATION", "RTT", "LAST SEEN", "VERSION", "LOAD", "REASON"]))
    up = sum(n["status"] == "up" for n in nodes)
    print(f"\n{up} up, {len(nodes) - up} down (* = the node answering)")
    return 0


def cmd_leader(api: Api, args: argparse.Namespace) -> int:
    cur = api.get("/api/v1/leader")
    if args.json:
        print(json.dumps({k: cur.get(k) for k in ("node", "epoch", "ttl_ms", "incarnation")}, indent=2))
        return 0 if cur.get("node") else EX_UNAVAILABLE
    if not cur.get("node"):
        print("no leader right now (an election is in progress, or no node reaches Redis)")
        return EX_UNAVAILABLE
    print(f"leader   {cur['node']}\nepoch    {cur['epoch']}\nttl left {cur['ttl_ms']} ms")
    return 0


def cmd_doctor(argv: list[str]) -> int:
    from mn_node.doctor.cli import main as doctor_main

    return doctor_main(argv)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"mn: {message}; fix: see mn --help", file=sys.stderr)
        sys.exit(EX_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mn", description="mirror-neuron operator CLI")
    p.add_argument("--api", default=None, help="node API base URL (default: the local node, http://127.0.0.1:4000)")
    p.add_argument("--token", help="API bearer token (default: derived from MIRROR_NEURON_COOKIE / the env file)")
    p.add_argument("--env-file", help=f"read the cookie from this env file (default {DEFAULT_ENV_FILE} if readable)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the node (default 5)")
    p.add_argument("--version", action="version", version=f"mn {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    s = sub.add_parser("nodes", help="cluster members as this node sees them")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("leader", help="the current leader, its epoch and lease TTL")
    s.add_argument("--json", action="store_true")
    sub.add_parser("doctor", help="diagnose this node and the cluster (mn doctor --help)", add_help=False)
    register_job_commands(sub)
    return p


def register_job_commands(sub: Any) -> None:
    """Job commands live in mn_node.jobs.cli."""
    try:
        from mn_node.jobs.cli import register
    except ImportError:
        return
    register(sub)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `mn [global opts] doctor ...` hands everything after "doctor" to the doctor's own parser
    if "doctor" in argv:
        i = argv.index("doctor")
        passed: list[str] = []
        head = argv[:i]
        for j, a in enumerate(head):  # `mn --api X doctor`: the doctor honours the global options
            for opt in ("--api", "--env-file", "--timeout"):
                if a == opt and j + 1 < len(head):
                    passed += [opt, head[j + 1]]
                elif a.startswith(opt + "="):
                    passed.append(a)
        try:
            return cmd_doctor(passed + argv[i + 1:])
        except MirrorNeuronError as e:
            print(f"mn doctor: {e}", file=sys.stderr)
            return e.exit_code
    p = build_parser()
    args = p.parse_args(argv)
    if not args.cmd:
        p.print_help()
        return EX_USAGE
    api = Api(args.api or default_api(), _token(args), timeout=args.timeout)
    try:
        handler = args.handler if hasattr(args, "handler") else {"nodes": cmd_nodes, "leader": cmd_leader}[args.cmd]
        return int(handler(api, args))
    except MirrorNeuronError as e:
        print(f"mn: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
