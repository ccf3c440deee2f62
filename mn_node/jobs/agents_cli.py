"""``mn agents JOB`` and ``mn logs JOB [AGENT]``: what each agent of a job did.

Both page through the API (``/api/v1/jobs/<id>/agents`` and ``/logs``), so a job with a
100k agents is printed as it arrives, never loaded at once. A field the node does not report
is printed as ``-``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from mn_node.cli_base import Api, CliError
from mn_node.errors import EX_OK, EX_USAGE

TERMINAL = ("completed", "failed", "cancelled")
AGENT_COLUMNS = ("AGENT", "TYPE", "STATUS", "ATTEMPT", "NODE", "EXIT", "DURATION")
POLL_S = 0.5


def _dash(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


def duration(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return "-"
    return f"{ms:.0f}ms" if ms < 10_000 else f"{ms / 1000:.1f}s"


def agent_cells(a: dict[str, Any]) -> list[str]:
    node = a.get("node")
    return [_dash(a.get("agent")), _dash(a.get("type")), _dash(a.get("status")), _dash(a.get("attempt")),
            node.split("@", 1)[0] if isinstance(node, str) and node else "-",
            _dash(a.get("exit_code")), duration(a.get("duration_ms"))]


def agent_pages(api: Api, job_id: str, page_size: int) -> Iterator[dict[str, Any]]:
    """Every page of a job's agents, as the API hands them out."""
    cursor = "0"
    while True:
        page: dict[str, Any] = api.get(f"/api/v1/jobs/{quote(job_id)}/agents?cursor={cursor}&limit={page_size}")
        yield page
        cursor = str(page.get("cursor", "0"))
        if cursor == "0":
            return


def cmd_agents(api: Api, args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    widths: list[int] | None = None
    shown = 0
    status = ""
    for page in agent_pages(api, args.job_id, args.page_size):
        status = str(page.get("status") or "")
        batch = sorted((a for a in page.get("agents", []) if not args.status or a.get("status") == args.status),
                       key=lambda a: str(a.get("agent")))
        for a in batch:
            counts[str(a.get("status"))] = counts.get(str(a.get("status")), 0) + 1
        if args.json:
            rows += batch
            continue
        cells = [agent_cells(a) for a in batch]
        if widths is None and cells:
            widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(AGENT_COLUMNS)]
            print("  ".join(h.ljust(w) for h, w in zip(AGENT_COLUMNS, widths, strict=True)).rstrip())
        for c in cells:
            assert widths is not None
            print("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip(), flush=False)
        shown += len(cells)
        sys.stdout.flush()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EX_OK
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    if shown:
        print(f"\n{shown} agents: {summary}")
    elif args.status:
        print(f"no agent is {args.status}")
    else:
        print(f"no agent has a state yet (the job is {status or 'unknown'}: its coordinator records them "
              "when it starts)")
    return EX_OK


def _header(rec: dict[str, Any]) -> str:
    bits = [f"exit {_dash(rec.get('exit_code'))}", duration(rec.get("duration_ms"))]
    tries = rec.get("tries")
    if isinstance(tries, int) and tries > 1:
        bits.append(f"{tries} tries")
    if rec.get("reason"):
        bits.append(str(rec["reason"]))
    where = f"attempt {_dash(rec.get('attempt'))} on {_dash(rec.get('node'))}"
    return f"== {rec.get('agent')} {where}: {', '.join(bits)} =="


def print_attempt(rec: dict[str, Any], with_output: bool = True) -> None:
    print(_header(rec))
    if not with_output:
        return
    for stream in ("stdout", "stderr"):  # the tails the attempt record keeps
        text = rec.get(stream)
        if text:
            print(f"--- {stream} (tail) ---")
            print(str(text).rstrip("\n"))
    if not rec.get("stdout") and not rec.get("stderr"):
        print("(no output)")


def _logs_path(job_id: str, **q: Any) -> str:
    query = urlencode({k: v for k, v in q.items() if v is not None and v != ""})
    return f"/api/v1/jobs/{quote(job_id)}/logs" + (f"?{query}" if query else "")


def all_attempts(api: Api, job_id: str) -> tuple[list[dict[str, Any]], str]:
    """Every finished attempt of the job (paged), and the job's status."""
    out: list[dict[str, Any]] = []
    cursor = "0"
    status = ""
    while True:
        page = api.get(_logs_path(job_id, cursor=cursor, limit=500))
        out += page.get("attempts", [])
        status = str(page.get("status") or "")
        cursor = str(page.get("cursor", "0"))
        if cursor == "0":
            return out, status


def _key(rec: dict[str, Any]) -> str:
    return f"{rec.get('agent')}:{rec.get('attempt')}"


def cmd_logs(api: Api, args: argparse.Namespace) -> int:
    if args.attempt is not None and not args.agent:
        raise CliError("--attempt needs an AGENT; fix: mn logs JOB AGENT --attempt N", EX_USAGE)
    if args.agent:
        return _agent_logs(api, args)
    seen: set[str] = set()
    while True:
        recs, status = all_attempts(api, args.job_id)
        for rec in sorted(recs, key=lambda r: (str(r.get("agent")), str(r.get("attempt")))):
            if _key(rec) not in seen:
                seen.add(_key(rec))
                if args.json:
                    print(json.dumps(rec))
                else:
                    print_attempt(rec)
        sys.stdout.flush()
        if not args.follow or status in TERMINAL:
            if not seen and not args.json:
                print("no finished attempts yet" + ("" if args.follow else "; fix: mn logs JOB AGENT --follow "
                                                                           "streams a running one"))
            return EX_OK
        time.sleep(POLL_S)


@dataclass
class _Live:
    """What ``mn logs AGENT --follow`` has streamed: the attempt and runner try followed, the
    bytes of each stream already printed, and the attempts whose output was printed live."""

    attempt: int | None = None
    try_: int | None = None
    offsets: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    streamed: set[int] = field(default_factory=set)


def _agent_logs(api: Api, args: argparse.Namespace) -> int:
    seen: set[str] = set()
    live = _Live()
    while True:
        r = api.get(_logs_path(args.job_id, agent=args.agent, attempt=args.attempt,
                               stdout_offset=live.offsets["stdout"], stderr_offset=live.offsets["stderr"]))
        for rec in r.get("attempts", []):
            if _key(rec) in seen:
                continue
            seen.add(_key(rec))
            if args.json:
                print(json.dumps(rec), flush=True)
            elif rec.get("attempt") in live.streamed:
                # streamed live already: what it wrote after the last poll, then its outcome
                if rec.get("attempt") == live.attempt:
                    _print_rest(rec, live.offsets)
                print_attempt(rec, with_output=False)
            else:
                print_attempt(rec)
        running = r.get("running") if args.follow else None
        if isinstance(running, dict):
            _print_live(running, live, args.json)
        sys.stdout.flush()
        done = r.get("job_status") in TERMINAL or (r.get("status") in ("completed", "failed") and not running)
        if not args.follow or done:
            if not seen and not args.json and not args.follow:
                state = r.get("status") or "-"
                print(f"no finished attempt of {args.agent} (it is {state})"
                      + ("; fix: add --follow to stream it" if state == "dispatched" else ""))
            return EX_OK
        time.sleep(POLL_S)


def _print_rest(rec: dict[str, Any], offsets: dict[str, int]) -> None:
    """The end of a finished attempt's output that the live stream had not shown yet (from its
    record's tail and total byte counts)."""
    for stream, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        total = rec.get(f"{stream}_bytes")
        tail = str(rec.get(stream) or "").encode()
        if not isinstance(total, int) or total <= offsets[stream]:
            continue
        missing = total - offsets[stream]
        if missing > len(tail):
            out.write(f"... ({missing - len(tail)} bytes of {stream} not kept) ...\n")
        out.write(tail[-missing:].decode(errors="replace"))
        out.flush()
        offsets[stream] = total


def _print_live(running: dict[str, Any], live: _Live, as_json: bool) -> None:
    """Print what a running attempt wrote since ``live.offsets`` (a new attempt, or a new try
    of the runner inside it, starts its streams again from 0)."""
    attempt = running.get("attempt")
    if not isinstance(attempt, int):
        return
    got = running.get("live")
    info = got if isinstance(got, dict) else {}
    try_ = info.get("try") if isinstance(info.get("try"), int) else None
    if attempt != live.attempt:
        live.offsets.update(stdout=0, stderr=0)
        live.attempt, live.try_ = attempt, None
        if not as_json:
            print(f"== attempt {attempt} running on {_dash(running.get('node'))} ==", flush=True)
    if try_ is not None and try_ != live.try_:
        retried, live.try_ = live.try_ is not None, try_
        if retried:  # the runner retried: the new try's files start at 0
            live.offsets.update(stdout=0, stderr=0)
            if not as_json:
                print(f"-- try {try_} --", flush=True)
            return  # this answer was read from the old offsets; ask again from 0
    new_offsets = info.get("offsets") if isinstance(info.get("offsets"), dict) else {}
    for stream, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        text = info.get(stream)
        if isinstance(text, str) and text:
            live.streamed.add(attempt)
            if as_json:
                print(json.dumps({"attempt": attempt, "stream": stream, "text": text}), flush=True)
            else:
                out.write(text)
                out.flush()
        pos = new_offsets.get(stream) if isinstance(new_offsets, dict) else None
        live.offsets[stream] = pos if isinstance(pos, int) else live.offsets[stream] + len(
            text.encode() if isinstance(text, str) else b"")


def register(sub: Any, job_id: Any) -> None:
    """Add ``agents`` and ``logs`` to the ``mn`` subcommand table."""
    s = sub.add_parser("agents", help="a job's agents: type, status, attempt, node, exit code, duration")
    s.add_argument("job_id", type=job_id, metavar="JOB_ID", help="the job's id (mn jobs lists them)")
    s.add_argument("--status", choices=("pending", "dispatched", "completed", "failed"),
                   help="only agents in this status")
    s.add_argument("--page-size", type=int, default=500, metavar="N",
                   help="agents asked of the node per request (default 500, at most 1000)")
    s.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    s.set_defaults(handler=cmd_agents)
    s = sub.add_parser("logs", help="stdout/stderr of each attempt of a job's agents (--follow: live)")
    s.add_argument("job_id", type=job_id, metavar="JOB_ID", help="the job's id (mn jobs lists them)")
    s.add_argument("agent", nargs="?", metavar="AGENT", help="only this agent (mn agents JOB lists them)")
    s.add_argument("--attempt", type=int, metavar="N", help="only this attempt of AGENT")
    s.add_argument("--follow", "-f", action="store_true",
                   help="keep printing: new attempts, and the live output of a running one (with AGENT)")
    s.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output (one JSON object a line)")
    s.set_defaults(handler=cmd_logs)
