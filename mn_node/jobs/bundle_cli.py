"""``mn validate DIR`` and ``mn run DIR``: job bundles (a folder with manifest.json and payloads/).

``run`` validates the bundle here, packs it into its canonical archive (content-addressed by
sha256), uploads it unless the cluster already has it, and asks the node to run it; the node
validates the manifest of the archive it stored, never one sent alongside.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mn_node.bundles import archive
from mn_node.bundles.manifest import Validation, validate_bundle
from mn_node.cli_base import Api, CliError
from mn_node.errors import EX_DATAERR, EX_FAILED, EX_OK

UPLOAD_TIMEOUT_S = 120.0


def _shape(v: Validation) -> str:
    m = v.manifest or {}
    kinds = Counter(str(n.get("agent_type")) for n in m.get("nodes", []))
    agents = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    return f"graph {m.get('graph_id')}, {sum(kinds.values())} agents ({agents})"


def report(v: Validation, folder: str) -> None:
    """Warnings (always) and problems (every one, by path) on stderr."""
    for w in v.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for p in v.problems:
        print(f"problem: {p}", file=sys.stderr)
    if v.problems:
        print(f"mn: {folder}: {len(v.problems)} problem(s); fix: correct each one above, then run "
              "mn validate again", file=sys.stderr)


def cmd_validate(api: Api | None, args: argparse.Namespace) -> int:
    v = validate_bundle(Path(args.dir))
    if args.json:
        out: dict[str, Any] = v.to_json()
        if v.manifest is not None:
            out["graph_id"] = v.manifest.get("graph_id")
            out["agents"] = len(v.manifest.get("nodes", []))
        print(json.dumps(out, indent=2))
        for w in v.warnings:  # never silent, even in JSON mode (stderr)
            print(f"warning: {w}", file=sys.stderr)
        return EX_OK if v.ok else EX_DATAERR
    report(v, args.dir)
    if not v.ok:
        return EX_DATAERR
    print(f"{args.dir}: valid: {_shape(v)}" + (f"; {len(v.warnings)} warning(s) above" if v.warnings else ""))
    return EX_OK


def upload(api: Api, data: bytes, sha: str) -> None:
    """Send the archive unless the cluster has it; over the node's cap is exit 65 here."""
    info = api.get(f"/api/v1/bundles/{sha}")
    if info.get("stored"):
        return
    cap = info.get("max_bytes")
    if isinstance(cap, int) and len(data) > cap:
        raise CliError(f"bundle archive is {len(data) / archive.MiB:.1f} MiB, over the node's cap of "
                       f"{cap / archive.MiB:.1f} MiB; fix: leave large data out of the bundle, or raise "
                       f"{archive.MAX_BYTES_ENV} on every node", EX_DATAERR)
    api.request("PUT", f"/api/v1/bundles/{sha}", raw=data, timeout=max(api.timeout, UPLOAD_TIMEOUT_S))


def cmd_run(api: Api, args: argparse.Namespace) -> int:
    from mn_node.jobs.cli import follow  # the same follower as mn submit --wait

    v = validate_bundle(Path(args.dir))
    report(v, args.dir)
    if not v.ok:
        return EX_DATAERR
    data, sha = archive.pack(Path(args.dir))
    upload(api, data, sha)
    job = api.request("POST", f"/api/v1/bundles/{sha}/jobs", {}, timeout=max(api.timeout, UPLOAD_TIMEOUT_S))
    jid = job["job_id"]
    if not args.wait:
        if args.json:
            print(json.dumps(job, indent=2))
        else:
            print(f"submitted {jid} ({job['progress']['total']} agents) from bundle {sha[:12]}; "
                  f"follow it with: mn job {jid}")
        return EX_OK
    deadline = None if args.wait_timeout is None else time.monotonic() + args.wait_timeout
    job = follow(api, jid, show=not args.json, deadline=deadline)
    if args.json:
        print(json.dumps(job, indent=2))
    return EX_OK if job["status"] == "completed" else EX_FAILED


def register(sub: Any) -> None:
    s = sub.add_parser("validate", help="check a job bundle (folder with manifest.json): every problem, by path")
    s.add_argument("dir", metavar="DIR", help="the bundle folder (manifest.json or .yaml, payloads/)")
    s.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    s.set_defaults(handler=cmd_validate, local=True)
    s = sub.add_parser("run", help="run a job bundle on the cluster: validate, upload, submit (--wait to follow)")
    s.add_argument("dir", metavar="DIR", help="the bundle folder (manifest.json or .yaml, payloads/)")
    s.add_argument("--wait", action="store_true", help="wait until the job ends; exit 0 only if it completed")
    s.add_argument("--timeout", dest="wait_timeout", type=float, metavar="SECONDS",
                   help="with --wait: give up waiting after this long (exit 75; the job goes on)")
    s.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    s.set_defaults(handler=cmd_run)
