"""Job commands of ``mn``: submit, jobs (and ``jobs prune``), job, events, cancel, pause, resume; validate and run
(:mod:`mn_node.jobs.bundle_cli`), agents and logs (:mod:`mn_node.jobs.agents_cli`)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mn_node.cli_base import Api, CliError, add_json_flag, http_error, table
from mn_node.errors import EX_DATAERR, EX_FAILED, EX_OK, EX_TEMPFAIL, EX_USAGE, MirrorNeuronError
from mn_node.jobs.manifest import parse_text

TERMINAL = ("completed", "failed", "cancelled")


JOB_STATUSES = ("pending", "running", "paused", "completed", "failed", "cancelled")
_JOB_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")  # what the API accepts (mn_node/jobs/api.py)


def _job_id_type(commands: Mapping[str, Any]) -> Callable[[str], str]:
    """argparse type for JOB_ID: a command name is never a job id (ids are GRAPH-MILLIS-HEX)."""

    def job_id(value: str) -> str:
        if value in commands:
            raise argparse.ArgumentTypeError(
                f"{value!r} is a command, not a job id; fix: run `mn {value}` on its own, or `mn jobs` to list job ids"
            )
        if not _JOB_ID.match(value):
            raise argparse.ArgumentTypeError(f"{value[:80]!r} is not a job id; fix: `mn jobs` lists job ids")
        return value

    return job_id


def register(sub: Any) -> None:
    """Add the job commands to the ``mn`` subcommand table ``sub``."""
    from mn_node.jobs import agents_cli, bundle_cli

    job_id = _job_id_type(sub.choices)
    bundle_cli.register(sub)
    s = sub.add_parser("submit", help="submit a job: a blueprint (prime_sweep_scale) or -f manifest.yaml")
    s.add_argument("blueprint", nargs="?", help="blueprint name, e.g. prime_sweep_scale")
    s.add_argument("-f", "--file", metavar="FILE", help="a manifest file (JSON or YAML) instead of a blueprint")
    s.add_argument("--workers", type=int, metavar="N", help="blueprint parameter: number of worker agents")
    s.add_argument("--start", type=int, metavar="N", help="blueprint parameter: first number of the range")
    s.add_argument("--chunk-size", type=int, metavar="N", help="blueprint parameter: numbers per worker")
    s.add_argument("--end", type=int, metavar="N", help="blueprint parameter: last number of the range (inclusive)")
    s.add_argument("--wait", action="store_true", help="wait until the job ends; exit 0 only if it completed")
    add_json_flag(s)
    s.set_defaults(handler=cmd_submit)
    s = sub.add_parser("jobs", help="recent jobs")
    s.add_argument("--status", choices=JOB_STATUSES, help="only jobs in this status")
    s.add_argument("--limit", type=int, default=20, metavar="N", help="at most N jobs, newest first (default 20)")
    add_json_flag(s)
    s.set_defaults(handler=cmd_jobs)
    _register_prune(s)
    s = sub.add_parser("job", help="one job, with a live progress bar until it ends")
    s.add_argument("job_id", type=job_id, metavar="JOB_ID", help="the job's id (mn jobs lists them)")
    s.add_argument("--no-follow", action="store_true", help="print once and exit")
    add_json_flag(s)
    s.set_defaults(handler=cmd_job)
    s = sub.add_parser("events", help="a job's events (--follow to tail them live)")
    s.add_argument("job_id", type=job_id, metavar="JOB_ID", help="the job's id (mn jobs lists them)")
    s.add_argument("--follow", "-f", action="store_true", help="keep printing new events until the job ends")
    add_json_flag(s)
    s.set_defaults(handler=cmd_events)
    s = sub.add_parser("cancel", help="cancel a pending, running or paused job")
    s.add_argument("job_id", type=job_id, metavar="JOB_ID", help="the job's id (mn jobs lists them)")
    add_json_flag(s)
    s.set_defaults(handler=cmd_cancel)
    for name, text in (("pause", "pause a running job: nothing new starts, running executors finish"),
                       ("resume", "resume a paused job")):
        s = sub.add_parser(name, help=text)
        s.add_argument("job_id", type=job_id, metavar="JOB_ID", help="the job's id (mn jobs lists them)")
        add_json_flag(s)
        s.set_defaults(handler=cmd_pause, action=name)
    agents_cli.register(sub, job_id)


def cmd_submit(api: Api, args: argparse.Namespace) -> int:
    if args.file:
        if args.blueprint:
            raise CliError("give a blueprint or -f FILE, not both; fix: drop one", EX_USAGE)
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except OSError as e:
            raise CliError(f"cannot read {args.file}: {e.strerror}; fix: check the path", EX_DATAERR) from None
        body: dict[str, Any] = {"manifest": parse_text(text, args.file)}
    elif args.blueprint:
        names = ("workers", "start", "chunk_size", "end")
        params = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
        body = {"blueprint": args.blueprint, "params": params}
    else:
        raise CliError("nothing to submit; fix: mn submit prime_sweep_scale --workers 4, or mn submit -f FILE",
                       EX_USAGE)
    job = api.post("/api/v1/jobs", body)
    if not args.wait:
        if args.json:
            print(json.dumps(job, indent=2))
        else:
            jid = job["job_id"]
            print(f"submitted {jid} ({job['progress']['total']} agents); follow it with: mn job {jid}")
        return EX_OK
    job = follow(api, job["job_id"], show=not args.json)
    if args.json:
        print(json.dumps(job, indent=2))
    return EX_OK if job["status"] == "completed" else EX_FAILED


def _bar(done: int, total: int, width: int = 30) -> str:
    frac = done / total if total else 0.0
    fill = int(frac * width)
    return "[" + "#" * fill + "-" * (width - fill) + f"] {done}/{total}"


def follow(api: Api, job_id: str, show: bool, deadline: float | None = None) -> dict[str, Any]:
    """Poll the job until it ends (a progress line when ``show``); past ``deadline``
    (monotonic) a :class:`CliError` exit 75 (the job goes on)."""
    tty = show and sys.stdout.isatty()
    last_line = ""
    misses = 0
    while True:
        if deadline is not None and time.monotonic() > deadline:
            if tty:
                print()
            raise CliError(f"job {job_id} has not ended in the time given; fix: follow it with mn job {job_id}, "
                           "or wait longer (--timeout)", EX_TEMPFAIL)
        try:
            job: dict[str, Any] = api.get(f"/api/v1/jobs/{job_id}")
            misses = 0
        except MirrorNeuronError:
            misses += 1
            if misses > 20:
                raise
            time.sleep(0.25)
            continue
        p = job["progress"]
        line = f"{job['status']:<9} {_bar(p['done'], p['total'])} owner {job.get('owner') or '-'}"
        if show and line != last_line:
            if tty:
                print("\r" + line.ljust(len(last_line)), end="", flush=True)
            else:
                print(line, flush=True)
            last_line = line
        if job["status"] in TERMINAL:
            if tty:
                print()
            if show:
                _print_result(job)
            return job
        time.sleep(0.2)


def _print_result(job: dict[str, Any]) -> None:
    res = job.get("result")
    if job["status"] == "completed" and res is not None:
        print("  result:")
        for line in format_result(res).splitlines():
            print(f"    {line}")
    if job.get("error"):
        print(f"  error: {job['error']}")


RESULT_MAX_LINES = 40
RESULT_MAX_CHARS = 4000


def format_result(res: Any) -> str:
    """Any job result as pretty JSON; a large one summarized (long lists cut to their ends,
    long strings cut, deep objects folded) so it fits a screen. ``--json`` prints it whole."""
    text = json.dumps(res, indent=2, default=str)
    if len(text) <= RESULT_MAX_CHARS and text.count("\n") < RESULT_MAX_LINES:
        return text
    text = json.dumps(_summarize(res, 0), indent=2, default=str)
    lines = text.splitlines()
    if len(lines) > RESULT_MAX_LINES:
        lines = [*lines[:RESULT_MAX_LINES], f"... ({len(lines) - RESULT_MAX_LINES} more lines; --json prints it all)"]
    return "\n".join(lines)


def _summarize(v: Any, depth: int) -> Any:
    if isinstance(v, str) and len(v) > 200:
        return v[:120] + f"... ({len(v)} chars)"
    if isinstance(v, list):
        if depth >= 2:
            return f"[{len(v)} items]"
        if len(v) > 6:
            return [*(_summarize(x, depth + 1) for x in v[:3]), f"... {len(v) - 6} more ...",
                    *(_summarize(x, depth + 1) for x in v[-3:])]
        return [_summarize(x, depth + 1) for x in v]
    if isinstance(v, dict):
        if depth >= 2:
            return f"{{{len(v)} keys}}"
        items = list(v.items())
        out = {str(k): _summarize(x, depth + 1) for k, x in items[:20]}
        if len(items) > 20:
            out["..."] = f"{len(items) - 20} more keys"
        return out
    return v


def cmd_jobs(api: Api, args: argparse.Namespace) -> int:
    q = f"?limit={args.limit}" + (f"&status={args.status}" if args.status else "")
    jobs = api.get("/api/v1/jobs" + q)["jobs"]
    if args.json:
        print(json.dumps(jobs, indent=2))
        return EX_OK
    rows = []
    for j in jobs:
        p = j["progress"]
        rows.append([j["job_id"], j["status"], f"{p['done']}/{p['total']}", j.get("owner") or "-",
                     time.strftime("%H:%M:%S", time.localtime(j["submitted_ms"] / 1000)),
                     ",".join(f"{n.split('@')[0]}:{c}" for n, c in sorted(j["nodes"].items())) or "-"])
    print(table(rows, ["JOB", "STATUS", "PROGRESS", "OWNER", "SUBMITTED", "EXECUTORS PER NODE"]) if rows else "no jobs")
    return EX_OK


def cmd_job(api: Api, args: argparse.Namespace) -> int:
    if args.no_follow or args.json:
        job = api.get(f"/api/v1/jobs/{args.job_id}")
        if args.json:
            print(json.dumps(job, indent=2))
        else:
            p = job["progress"]
            print(f"{job['job_id']}  {job['status']}  {_bar(p['done'], p['total'])}  owner {job.get('owner') or '-'}")
            _print_result(job)
        return EX_OK
    job = follow(api, args.job_id, show=True)
    return EX_OK if job["status"] == "completed" else EX_FAILED


def _fmt_event(ev: dict[str, Any]) -> str:
    t = time.strftime("%H:%M:%S", time.localtime(ev["ts_ms"] / 1000)) + f".{ev['ts_ms'] % 1000:03d}"
    data = " ".join(f"{k}={v}" for k, v in (ev.get("data") or {}).items() if not isinstance(v, (dict, list)))
    epoch = f"epoch {ev['epoch']}" if ev.get("epoch") is not None else ""
    return f"{t}  {ev['type']:<24} {ev.get('node', ''):<22} {epoch:<9} {data}".rstrip()


def cmd_events(api: Api, args: argparse.Namespace) -> int:
    if not args.follow:
        evs = api.get(f"/api/v1/jobs/{args.job_id}/events")["events"]
        if args.json:
            print(json.dumps(evs, indent=2))
        else:
            for ev in evs:
                print(_fmt_event(ev))
        return EX_OK
    path = f"/api/v1/jobs/{args.job_id}/events?follow=1"
    req = urllib.request.Request(api.base + path)  # noqa: S310 (scheme checked by Api)
    try:
        with api.open(req, 3600) as r:
            for line in r:
                ev = json.loads(line)
                print(json.dumps(ev) if args.json else _fmt_event(ev), flush=True)
    except urllib.error.HTTPError as e:
        raise http_error("GET", path, e) from None
    except urllib.error.URLError as e:
        raise api.unreachable(e.reason) from None
    return EX_OK


def _duration(value: str) -> str:
    """argparse type for --older-than: a duration (7d, 12h, 90s), passed on to the API as written."""
    from mn_node.config import parse_span_ms
    from mn_node.errors import ConfigError

    try:
        parse_span_ms(value, "--older-than")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--older-than: ")) from None
    return value


def _register_prune(jobs: Any) -> None:
    sub = jobs.add_subparsers(dest="jobs_command", metavar="{prune}")
    s = sub.add_parser("prune", help="delete terminal jobs now (never pending, running or paused ones)")
    s.add_argument("--older-than", type=_duration, metavar="D",
                   help="only jobs that ended more than D ago (7d, 12h, 90s); default: any age")
    s.add_argument("--status", dest="prune_status", choices=TERMINAL, help="only jobs in this terminal status")
    s.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    add_json_flag(s)
    s.set_defaults(handler=cmd_prune)


def cmd_prune(api: Api, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"dry_run": bool(args.dry_run)}
    if args.older_than:
        body["older_than"] = args.older_than
    if args.prune_status:
        body["status"] = args.prune_status
    res = api.post("/api/v1/jobs/prune", body)
    if args.json:
        print(json.dumps(res, indent=2))
        return EX_OK
    for j in res["jobs"]:
        print(f"{j['job_id']}  {j['status']}")
    print(f"{'would delete' if res['dry_run'] else 'deleted'} {res['pruned']} job(s)")
    return EX_OK


def cmd_pause(api: Api, args: argparse.Namespace) -> int:
    res = api.post(f"/api/v1/jobs/{args.job_id}/{args.action}")
    print(json.dumps(res, indent=2) if args.json else f"{args.job_id}: {res['status']} (was {res['previous']})")
    return EX_OK


def cmd_cancel(api: Api, args: argparse.Namespace) -> int:
    res = api.post(f"/api/v1/jobs/{args.job_id}/cancel")
    print(json.dumps(res, indent=2) if args.json else f"{args.job_id}: cancelled (was {res['previous']})")
    return EX_OK
