"""``mn doctor``: diagnose this node and the cluster.

Exit codes: 0 nothing fails (warnings allowed), 69 something is unavailable or broken,
75 something only timed out, 78 this box's configuration is bad; 64 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Mapping

from mn_node.cli_base import Parser
from mn_node.config import DEFAULT_ENV_FILE
from mn_node.doctor.context import Context, build_context
from mn_node.doctor.model import Result, exit_code
from mn_node.doctor.registry import UnknownCheck, all_checks, select
from mn_node.doctor.render import render_json, render_text, summary
from mn_node.doctor.runner import run_checks
from mn_node.errors import EX_INTERRUPTED, EX_OK, EX_USAGE, ConfigError

DEFAULT_TIMEOUT = 5.0

EPILOG = """\
exit status: 0 nothing fails (warnings allowed), 69 something is unavailable or broken,
75 something only timed out (filtered port, hung process), 78 this box's config is bad, 64 usage.
Every check runs concurrently under its own timeout; the whole run ends within --timeout.
The cookie is never printed, only its hash."""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="mn doctor", description="Diagnose this node and the cluster: one line per check with the fix.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--list-checks", action="store_true", help="list the checks and exit")
    p.add_argument("--check", action="append", metavar="NAME", help="run only this check (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="per-check timings and supporting facts")
    p.add_argument("--env-file", metavar="FILE",
                   help=f"read MIRROR_NEURON_* from this file (default {DEFAULT_ENV_FILE} if present)")
    p.add_argument("--api", metavar="URL", help="the local node's API (default from MIRROR_NEURON_API_BIND/_PORT: "
                                 "http://127.0.0.1:4000)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds the whole run may take (default {DEFAULT_TIMEOUT:g})")
    return p


async def _run(ctx: Context, names: list[str] | None) -> list[Result]:
    specs = select(names)
    try:
        return await run_checks(ctx, specs)
    finally:
        await ctx.close()


def main(argv: list[str], environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_checks:
        for spec in all_checks():
            print(f"{spec.name:18} {spec.title}")
        return EX_OK
    if not 0.5 <= args.timeout <= 300:
        print(f"mn doctor: --timeout {args.timeout:g} is out of range; fix: use 0.5 to 300 seconds", file=sys.stderr)
        return EX_USAGE
    if args.check:
        try:
            select(args.check)
        except UnknownCheck as e:
            print(f"mn doctor: unknown check {e.args[0]!r}; fix: pick one of mn doctor --list-checks", file=sys.stderr)
            return EX_USAGE
    t0 = time.monotonic()
    try:
        ctx = build_context(environ, args.env_file, args.api, args.timeout, args.verbose)
    except ConfigError as e:
        print(f"mn doctor: {e}", file=sys.stderr)
        return e.exit_code
    except ValueError as e:
        print(f"mn doctor: {e}", file=sys.stderr)
        return EX_USAGE
    try:
        results = asyncio.run(_run(ctx, args.check))
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    code = exit_code(results)
    summ = summary(results, code, time.monotonic() - t0)
    node = ctx.cfg.name if ctx.cfg else (ctx.node_name or "?")
    if args.json:
        render_json(results, summ, {"node": node, "cluster": ctx.cfg.cookie_hash if ctx.cfg else None,
                                    "env_file": ctx.env_file, "timeout_s": args.timeout})
    else:
        cluster = f"cluster {ctx.cfg.cookie_hash}, {len(ctx.cfg.nodes)} nodes" if ctx.cfg else "config invalid"
        src = ctx.env_file or "environment only"
        render_text(results, f"mn doctor: {node} ({cluster}; config from {src})", summ, args.verbose)
    sys.stdout.flush()
    return code
