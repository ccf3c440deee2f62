"""``python -m tests.faults``: the fault-injection runner, the offline checker and the fuzzers.

    python -m tests.faults run --seed 7 --minutes 5 [--nodes 3] [--keep] [--json out.json]
    python -m tests.faults check /path/to/history.jsonl
    python -m tests.faults fuzz --inputs 1000000 [--seed 1] [--mutations 15]
    python -m tests.faults fuzz-http [--seed 1]

Exit status: 0 no violation / no crash, 1 violations or crashes, 77 not root.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="a fault-injection run over real mn-node processes in namespaces")
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--minutes", type=float, required=True)
    r.add_argument("--nodes", type=int, default=3)
    r.add_argument("--workdir", type=Path, help="where the history and logs go (default: a new /tmp dir)")
    r.add_argument("--keep", action="store_true", help="keep the run directory even without violations")
    r.add_argument("--json", type=Path, help="also write the summary as JSON here")
    r.add_argument("--appendfsync", default="always", choices=("always", "everysec", "no"),
                   help="Redis AOF fsync policy (default always: see docs/faults.md)")
    r.add_argument("--max-open-jobs", type=int, default=4)
    r.add_argument("--redis", default="single", choices=("single", "sentinel"),
                   help="sentinel: a primary, two replicas and three Sentinels, with the primary faults")
    r.add_argument("--min-acks", type=int, choices=(1, 2),
                   help="--redis sentinel: a fixed number of replicas that must acknowledge every write "
                        "(MIRROR_NEURON_REDIS_MIN_ACKS; the daemon's default, without it, is every replica "
                        "the Sentinels know of; see docs/faults.md)")
    r.add_argument("--faults", help="comma-separated fault kinds instead of the full deck (e.g. primary_cut)")
    r.add_argument("--submit-interval", type=float, default=1.5, help="seconds between submissions")
    r.add_argument("--drain-timeout", type=float, default=240.0, help="seconds to wait for open jobs at the end")
    r.add_argument("--node-module", default="mn_node.daemon",
                   help="tests only: a wrapper started instead of the daemon (tests.faults.broken_ack, ...)")
    c = sub.add_parser("check", help="re-run the checker over a history file")
    c.add_argument("history", type=Path)
    f = sub.add_parser("fuzz", help="fuzz the link frame decoder and handshake (hypothesis)")
    f.add_argument("--inputs", type=int, default=1_000_000)
    f.add_argument("--seed", type=int, default=1)
    f.add_argument("--mutations", type=int, default=15,
                   help="random mutations fed per hypothesis example (0: hypothesis examples only)")
    h = sub.add_parser("fuzz-http", help="malformed requests on every API route of a live node")
    h.add_argument("--seed", type=int, default=1)
    h.add_argument("--per-route", type=int, default=60)
    args = p.parse_args(argv)

    if args.cmd == "run":
        from tests.faults.nemesis import ALL_FAULTS, FAULTS, SENTINEL_RUN_FAULTS
        from tests.faults.runner import Options, main_run, render, run

        if args.faults and (bad := sorted(set(args.faults.split(",")) - set(ALL_FAULTS))):
            print(f"--faults: unknown kind(s) {', '.join(bad)}; fix: choose from {', '.join(ALL_FAULTS)}",
                  file=sys.stderr)
            return 64

        opts = Options(seed=args.seed, minutes=args.minutes, nodes=args.nodes, workdir=args.workdir,
                       keep=args.keep, appendfsync=args.appendfsync, max_open_jobs=args.max_open_jobs,
                       redis=args.redis, submit_interval=args.submit_interval, drain_timeout=args.drain_timeout,
                       node_module=args.node_module,
                       faults=tuple(args.faults.split(",")) if args.faults
                       else SENTINEL_RUN_FAULTS if args.redis == "sentinel" else FAULTS,
                       node_env={"MIRROR_NEURON_REDIS_MIN_ACKS": str(args.min_acks)} if args.min_acks else None)
        if args.json is None:
            return main_run(opts)
        res = run(opts)
        print(render(res.summary))
        args.json.write_text(json.dumps(res.summary, indent=2))
        return 0 if res.ok else 1
    if args.cmd == "check":
        from tests.faults import checker
        from tests.faults.history import read

        rep = checker.check(read(args.history))
        for v in rep.violations:
            print(f"[{v.check}] {v.msg}")
        print(f"{len(rep.violations)} violation(s); faults {dict(rep.faults)}; jobs {dict(rep.jobs)}")
        return 0 if rep.ok else 1
    if args.cmd == "fuzz":
        from tests.faults.fuzz import fuzz_link

        out = fuzz_link(args.inputs, args.seed, mutations=args.mutations)
        print(json.dumps(out, indent=2))
        return 0 if not out["crashes"] else 1
    if args.cmd == "fuzz-http":
        from tests.faults.fuzz_http import fuzz_http_standalone

        out = fuzz_http_standalone(args.seed, args.per_route)
        print(json.dumps({k: v for k, v in out.items() if k != "bad"}, indent=2))
        for b in out["bad"]:
            print("BAD:", b)
        return 0 if not out["bad"] else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
