"""Command executors through the cluster vs ``xargs -P`` on this machine, in the same run.

    python3 -m bench.commands [--executors 600] [--nodes 3] [--slots N] [--json-out FILE]

1. Writes a prime sweep bundle (``examples/prime_sweep/generate.py``): E executors, each
   running ``python3 scripts/check_prime_range.py W START END`` over 100 numbers.
2. Baseline: the same E commands (same program, arguments and working folder) through
   ``xargs -P <nodes x slots> -L 1 python3`` on this machine: wall time, and the wall time of
   one command run alone (sampled, sequentially).
3. Cluster: a real redis-server and ``--nodes`` real mn-node processes on loopback, each with
   ``--slots`` executor slots; ``mn run DIR --wait --json``: wall time from the command to the
   finished job, and the job's ``prime_count`` (must equal the baseline's).
4. Command start overhead per executor, from the attempt records the nodes keep in Redis
   (``{ns}:job:<id>:attempts``): the attempt's wall time (``finished_ms - started_ms``) minus
   the median wall time of the command run alone; and, where a record carries the process's own
   ``duration_ms``, the runner's share (wall - duration). p50/p99 in ms.

Goal: cluster wall <= 1.25 x xargs wall. Table on stderr, JSON on stdout.
``--xargs-only`` runs the baseline alone (no cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import emit, machine, summary, table

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "examples" / "prime_sweep" / "generate.py"
GOAL_RATIO = 1.25
SAMPLE_ALONE = 20


def make_bundle(out: Path, executors: int, start: int, chunk: int) -> list[list[str]]:
    """Write the bundle; return the executors' commands (argv lists, as the manifest has them)."""
    subprocess.run([sys.executable, str(GENERATOR), "--workers", str(executors), "--start", str(start),
                    "--chunk-size", str(chunk), "--wave-size", str(executors), "--out", str(out)],
                   check=True, capture_output=True)
    manifest = json.loads((out / "manifest.json").read_text())
    return [n["config"]["command"] for n in manifest["nodes"]
            if n.get("agent_type") == "executor" and str(n["node_id"]).startswith("prime_worker")]


def xargs_baseline(bundle: Path, commands: list[list[str]], slots: int) -> dict[str, Any]:
    """The commands through ``xargs -P slots`` in the worker's folder; wall time and prime count."""
    workdir = bundle / "payloads" / "prime_worker"
    if any(c[0] != "python3" for c in commands):
        raise SystemExit("bench: every command must start with python3 (the prime worker)")
    lines = "".join(shlex.join(c[1:]) + "\n" for c in commands)
    alone = []
    for c in commands[:SAMPLE_ALONE]:  # one command at a time: what a command costs by itself
        t0 = time.perf_counter()
        subprocess.run(c, cwd=workdir, check=True, capture_output=True)
        alone.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    p = subprocess.run(["xargs", "-P", str(slots), "-L", "1", "python3"], input=lines, cwd=workdir,
                       capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"bench: xargs failed (exit {p.returncode}): {p.stderr[-500:]}")
    outs = json_objects(p.stdout)
    return {"wall_s": wall, "commands": len(outs), "prime_count": sum(o["prime_count"] for o in outs),
            "slots": slots, "command_alone_ms": summary(alone)}


def json_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects of concurrent writers sharing one pipe (a newline may come late)."""
    dec = json.JSONDecoder()
    out, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        obj, i = dec.raw_decode(text, i)
        out.append(obj)


def cluster_run(bundle: Path, nodes: int, slots: int, timeout: float) -> dict[str, Any]:
    """Start Redis and the nodes, ``mn run --wait --json`` the bundle, read the attempt records."""
    from tests.support.cluster import Cluster
    from tests.support.redis import RedisServer

    redis = RedisServer().start()
    c = Cluster(redis_url=redis.url, size=nodes, extra_env={"MIRROR_NEURON_EXECUTOR_CAPACITY": str(slots)})
    try:
        c.start_all()
        c.wait_leader()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")}
        env["MIRROR_NEURON_COOKIE"] = c.cookie
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "mn_node.cli", "--api", c.nodes[0].api, "--timeout", "60",
                            "run", str(bundle), "--wait", "--json", "--timeout", str(timeout)],
                           capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - t0
        if p.returncode != 0 or not p.stdout.strip():
            return {"ok": False, "exit": p.returncode, "why": (p.stderr.strip() or p.stdout.strip())[-800:],
                    "wall_s": wall}
        job = json.loads(p.stdout)
        raw = redis.client().hgetall(f"{c.namespace}:job:{job['job_id']}:attempts")
        records = [json.loads(v) for v in raw.values()]
        return {"ok": job["status"] == "completed", "wall_s": wall, "job_id": job["job_id"], "status": job["status"],
                "prime_count": (job.get("result") or {}).get("prime_count"), "per_node": job.get("nodes"),
                "job_span_s": (job["updated_ms"] - job["submitted_ms"]) / 1000, "records": records}
    finally:
        c.cleanup()
        redis.cleanup()


def overheads(records: list[dict[str, Any]], alone_p50_ms: float) -> dict[str, Any]:
    """Per executor: attempt wall - command alone; and wall - the process's own duration."""
    start, runner = [], []
    for r in records:
        if not str(r.get("agent", "")).startswith("prime_worker"):
            continue
        s, f, d = r.get("started_ms"), r.get("finished_ms"), r.get("duration_ms")
        if isinstance(s, (int, float)) and isinstance(f, (int, float)):
            start.append(f - s - alone_p50_ms)
            if isinstance(d, (int, float)) and d <= f - s:
                runner.append(f - s - d)
    return {"start_overhead_ms": summary(start), "runner_share_ms": summary(runner)}


def fmt(v: Any, unit: str = "") -> str:
    return "-" if v is None or v != v else f"{v:.2f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def report(args: argparse.Namespace, base: dict[str, Any], cl: dict[str, Any] | None) -> None:
    res: dict[str, Any] = {"bench": "commands", "machine": machine(), "executors": args.executors,
                           "nodes": args.nodes, "slots_per_node": args.slots, "xargs": base, "goal_ratio": GOAL_RATIO}
    rows = [(f"xargs -P {base['slots']} ({base['commands']} commands)", fmt(base["wall_s"], " s"), "", ""),
            ("one command alone, p50", fmt(base["command_alone_ms"]["p50"], " ms"), "", "")]
    if cl is not None:
        records = cl.pop("records", [])
        res["cluster"] = cl
        if cl.get("ok"):
            ratio = cl["wall_s"] / base["wall_s"]
            ov = overheads(records, base["command_alone_ms"]["p50"])
            res.update(ratio=ratio, attempt_records=len(records), **ov,
                       exact=cl.get("prime_count") == base["prime_count"])
            so = ov["start_overhead_ms"]
            rows += [(f"mn run, {args.nodes} nodes x {args.slots} slots", fmt(cl["wall_s"], " s"),
                      f"{ratio:.3f}x", f"<= {GOAL_RATIO}x"),
                     ("command start overhead / executor", f"p50 {fmt(so['p50'], ' ms')}",
                      f"p99 {fmt(so['p99'], ' ms')}", f"n={so['n']}"),
                     ("prime_count cluster vs xargs", str(cl.get("prime_count")), str(base["prime_count"]),
                      "equal" if res["exact"] else "DIFFERENT")]
        else:
            rows.append(("mn run", "did not complete", f"exit {cl.get('exit')}", str(cl.get("why", ""))[:80]))
    emit(res, table(rows, ["measure", "value", "result", "goal"]), args.json_out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.commands", description=__doc__.splitlines()[0])
    ap.add_argument("--executors", type=int, default=600, help="command executors (default 600)")
    ap.add_argument("--nodes", type=int, default=3, help="mn-node processes (default 3)")
    ap.add_argument("--slots", type=int, default=os.cpu_count() or 1,
                    help="executor slots per node (default: CPU count); xargs gets nodes x slots")
    ap.add_argument("--start", type=int, default=1_000_003, help="first number (default 1000003)")
    ap.add_argument("--chunk-size", type=int, default=100, help="numbers per executor (default 100)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the cluster's job")
    ap.add_argument("--xargs-only", action="store_true", help="only the xargs baseline (no cluster)")
    ap.add_argument("--json-out", metavar="FILE", help="also write the JSON here")
    args = ap.parse_args(argv)
    if not 1 <= args.executors <= 10_000 or not 1 <= args.nodes <= 9 or args.slots < 1:
        ap.error("--executors 1-10000, --nodes 1-9, --slots >= 1")
    if shutil.which("xargs") is None:
        ap.error("xargs is not installed (findutils)")
    tmp = Path(tempfile.mkdtemp(prefix="mn-bench-commands-"))
    try:
        bundle = tmp / "bundle"
        commands = make_bundle(bundle, args.executors, args.start, args.chunk_size)
        base = xargs_baseline(bundle, commands, args.nodes * args.slots)
        cl = None if args.xargs_only else cluster_run(bundle, args.nodes, args.slots, args.timeout)
        report(args, base, cl)
        return 0 if cl is None or cl.get("ok") else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
