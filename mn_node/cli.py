"""``mn``: the operator CLI. Talks to a node's HTTP API.

The parser is built here from the command modules (:mod:`mn_node.jobs.cli` for jobs,
:mod:`mn_node.doctor.cli` for ``mn doctor``); they share :mod:`mn_node.cli_base` and never
import this module, so there is no import cycle. Exit codes: see :data:`EPILOG`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mn_node import __version__
from mn_node.cli_base import (
    DEFAULT_TIMEOUT,
    ENVIRONMENT,
    Api,
    Parser,
    add_json_flag,
    ago,
    default_api,
    table,
    token_for,
)
from mn_node.completion import script as completion_script
from mn_node.config import DEFAULT_ENV_FILE
from mn_node.drain import register as register_drain_commands
from mn_node.errors import EX_INTERRUPTED, EX_OK, EX_UNAVAILABLE, EX_USAGE, MirrorNeuronError
from mn_node.jobs.cli import register as register_job_commands

__all__ = ["build_parser", "default_api", "main"]

EPILOG = "environment:\n" + "".join(f"  {name:36} {what}\n" for name, what in ENVIRONMENT) + """
exit status (sysexits):
  0   ok                                 1   a job waited for (--wait, mn job) did not complete
  64  usage                              65  bad manifest or request data
  69  no node answers, unknown job, unavailable
  75  temporary failure (timeout)        78  bad local configuration
  130 interrupted (Ctrl-C)

Errors are one line on stderr: what is wrong; fix: how. Shell completion: mn completion bash|zsh."""


def cmd_nodes(api: Api, args: argparse.Namespace) -> int:
    nodes = api.get("/api/v1/nodes")["nodes"]
    if args.json:
        print(json.dumps(nodes, indent=2))
        return EX_OK
    rows = [_node_row(n) for n in nodes]
    print(table(rows, ["NAME", "STATUS", "ADDRESS", "RTT", "LAST SEEN", "VERSION", "CPUS", "LOAD", "MEM FREE/TOTAL",
                       "SLOTS USED/FREE", "DRAIN", "CMDS", "REASON"]))
    up = sum(n["status"] == "up" for n in nodes)
    print(f"\n{up} up, {len(nodes) - up} down (* = the node answering; - = not reported)")
    return EX_OK


def _node_row(n: dict[str, Any]) -> list[str]:
    """One line of `mn nodes`: link view, then the facts the node writes into its registration."""
    rtt = "-" if n.get("rtt_ms") is None or n.get("is_self") else f"{n['rtt_ms']:.2f}ms"
    load = n.get("load") or {}
    la = load.get("loadavg1")
    mem = "-"
    if load.get("mem_total"):
        mem = f"{_gib(load.get('mem_available'))}/{_gib(load['mem_total'])}"
    slots = "-"
    if "slots_used" in load:
        slots = f"{load['slots_used']}/{load.get('slots_free', '-')}"
    return [
        n["name"] + (" *" if n.get("is_self") else ""), n["status"], n.get("address", ""), rtt,
        ago(n.get("last_seen")), n.get("version") or "-", str(load.get("cpus") or "-"),
        "-" if la is None else f"{la:.2f}", mem, slots, n.get("drain") or "-",
        str(n.get("commands") or load.get("commands") or "-"),
        n.get("reason", "") if n["status"] != "up" else "",
    ]


def _gib(n: Any) -> str:
    return "-" if not isinstance(n, int | float) else f"{n / 2**30:.1f}G"


def cmd_leader(api: Api, args: argparse.Namespace) -> int:
    cur = api.get("/api/v1/leader")
    if args.json:
        print(json.dumps({k: cur.get(k) for k in ("node", "epoch", "ttl_ms", "incarnation")}, indent=2))
        return EX_OK if cur.get("node") else EX_UNAVAILABLE
    if not cur.get("node"):
        print("no leader right now (an election is in progress, or no node reaches Redis)")
        return EX_UNAVAILABLE
    print(f"leader   {cur['node']}\nepoch    {cur['epoch']}\nttl left {cur['ttl_ms']} ms")
    return EX_OK


def _doctor_parser() -> argparse.ArgumentParser:
    from mn_node.doctor.cli import build_parser as doctor_parser

    return doctor_parser()


def cmd_completion(args: argparse.Namespace) -> int:
    print(completion_script(args.shell, build_parser(), {"doctor": _doctor_parser()}), end="")
    return EX_OK


def cmd_doctor(args: argparse.Namespace, rest: list[str]) -> int:
    """``mn [global options] doctor ...``: the doctor's own parser gets the global options the
    doctor honours (--api, --env-file, --timeout, --json) followed by everything after ``doctor``."""
    from mn_node.doctor.cli import main as doctor_main

    passed: list[str] = []
    for opt, value in (("--api", args.api), ("--env-file", args.env_file), ("--timeout", args.timeout)):
        if value is not None:
            passed += [opt, str(value)]
    if args.json:
        passed.append("--json")
    try:
        return doctor_main(passed + rest)
    except MirrorNeuronError as e:
        print(f"mn doctor: {e}", file=sys.stderr)
        return e.exit_code


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="mn", description="mirror-neuron operator CLI: talks to a node's HTTP API.",
               epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", metavar="URL",
                   help="node API base URL (default: $MIRROR_NEURON_API_URL, else the local node, "
                        "http://127.0.0.1:4000)")
    p.add_argument("--token", help="API bearer token (default: $MIRROR_NEURON_API_TOKEN, else derived from the cookie)")
    p.add_argument("--env-file", metavar="FILE",
                   help=f"read the cookie from this env file (default {DEFAULT_ENV_FILE} if readable)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help=f"seconds to wait for the node (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--json", action="store_true", help="machine-readable output (also accepted after the command)")
    p.add_argument("--version", action="version", version=f"mn {__version__}", help="print the version and exit")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    s = sub.add_parser("nodes", help="cluster members as this node sees them")
    add_json_flag(s)
    s.set_defaults(handler=cmd_nodes)
    s = sub.add_parser("leader", help="the current leader, its epoch and lease TTL")
    add_json_flag(s)
    s.set_defaults(handler=cmd_leader)
    # options after `doctor` are the doctor's own: main() hands them to its parser
    sub.add_parser("doctor", help="diagnose this node and the cluster (mn doctor --help)", add_help=False)
    register_job_commands(sub)
    register_drain_commands(sub)
    s = sub.add_parser("completion", help="print a shell completion script: source <(mn completion bash)")
    s.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete for")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.cmd == "doctor":
        return cmd_doctor(args, rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if not args.cmd:
        p.print_help()
        return EX_USAGE
    if args.cmd == "completion":
        return cmd_completion(args)
    try:
        if getattr(args, "local", False):  # works on this machine only (mn validate)
            return int(args.handler(None, args))
        api = Api(args.api or default_api(), token_for(args.token, args.env_file), args.timeout or DEFAULT_TIMEOUT)
        return int(args.handler(api, args))
    except MirrorNeuronError as e:
        print(f"mn: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EX_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
