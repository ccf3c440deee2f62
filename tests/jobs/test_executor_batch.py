"""The executing node's batching on a real Redis and a real process pool: many runs of one job
cost a few script calls, one notification per flush, and queued runs stay cancellable."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mn_node.jobs.executor import ExecutorService
from mn_node.jobs.state import JobKeys
from mn_node.store import Store
from tests.support.redis import RedisServer


async def wait_until_async(fn: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``fn`` on the running loop (the executor works on it meanwhile) until true."""
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class LocalOwner:
    """The link side of a node whose runs all come from its own coordinator: handlers are only
    registered (results go through ``local_done``), and nothing is ever sent."""

    def register(self, name: str, handler: Any) -> None:
        pass

    def send(self, node: str, name: str, msg: Any) -> None:
        raise AssertionError(f"nothing is sent to other nodes here ({name} to {node})")


def _req(j: int, task: str = "prime_range") -> dict[str, Any]:
    return {"agent": f"w{j}", "attempt": 1, "runner": "entrypoint", "task": task, "slots": 1, "inputs": {},
            "config": {"task": task, "start": 1_000_003 + 10 * j, "end": 1_000_013 + 10 * j}, "timeout": 60}


async def _service(redis_server: RedisServer, tmp_path: Path, n: int) -> tuple[Store, ExecutorService, JobKeys]:
    s = Store(redis_server.url, "ns")
    k = JobKeys(s, "j1")
    await s.r.hset(k.job, mapping={"status": "running"})
    await s.r.hset(k.agents, mapping={f"w{j}": json.dumps({"status": "dispatched", "attempt": 1}) for j in range(n)})
    ex = ExecutorService("n1", s, LocalOwner(), 2, state_dir=tmp_path)  # type: ignore[arg-type]
    ex.start()
    return s, ex, k


async def test_a_burst_of_runs_is_stored_in_few_calls_and_told_in_few_messages(redis_server: RedisServer,
                                                                               tmp_path: Path) -> None:
    s, ex, k = await _service(redis_server, tmp_path, 60)
    told: list[dict[str, Any]] = []
    ex.local_done.connect(told.append)
    try:
        ex.on_run("n1", {"job": "j1", "epoch": 1, "owner": "n1", "runs": [_req(j) for j in range(4)]})
        await wait_until_async(lambda: ex.completed == 4, 30, "the first 4 results")  # the task's time is known
        await s.r.config_resetstat()
        ex.on_run("n1", {"job": "j1", "epoch": 1, "owner": "n1", "runs": [_req(j) for j in range(4, 60)]})
        assert ex.on_status("n1", {"job": "j1", "agents": [["w59", 1], ["w59", 2]]}) == [True, False]
        await wait_until_async(lambda: ex.completed == 60 and not ex.runs, 30, "60 results stored")
        calls = (await s.r.info("commandstats"))["cmdstat_evalsha"]["calls"]
        assert calls <= 28, f"{calls} script calls for 56 runs (claims and stores are batched)"
        agents = [a for m in told for a in m["agents"]]
        assert sorted(agents) == sorted(f"w{j}" for j in range(60)) and len(told) < 40
        assert set(await s.r.hvals(k.runs)) == {"1"} and await s.r.hget(k.job, "agents_done") == "60"
        assert not await s.r.exists(k.attempts)  # a successful entry-point run needs no record
        st = json.loads(await s.r.hget(k.agents, "w7"))
        assert st["status"] == "completed" and st["node"] == "n1" and st["exit_code"] == 0
    finally:
        await ex.stop()
        await s.close()


async def test_cancel_drops_queued_runs_and_a_failure_keeps_its_record(redis_server: RedisServer,
                                                                       tmp_path: Path) -> None:
    s, ex, k = await _service(redis_server, tmp_path, 200)
    try:
        bad = _req(0)
        bad["config"] = {**bad["config"], "start": "x"}
        ex.on_run("n1", {"job": "j1", "epoch": 1, "owner": "n1", "runs": [bad]})
        await wait_until_async(lambda: not ex.runs, 30, "the failed run")
        assert json.loads(await s.r.hget(k.agents, "w0"))["status"] == "failed"
        rec = json.loads(await s.r.hget(k.attempts, "w0:1"))
        assert not rec["ok"] and "ValueError" in rec["reason"]
        ex.on_run("n1", {"job": "j1", "epoch": 1, "owner": "n1", "runs": [_req(j) for j in range(1, 200)]})
        assert ex.on_status("n1", {"job": "j1", "agents": [["w199", 1]]}) == [True]  # queued runs are known
        dropped = ex.on_cancel("n1", {"job": "j1"})
        assert dropped > 0
        await wait_until_async(lambda: not ex.runs, 30, "every run to end or be dropped")
        starts = sum(int(v) for v in await s.r.hvals(k.runs))
        assert ex.completed == starts and starts <= 200 - dropped, (ex.completed, starts, dropped)
        assert ex.on_status("n1", {"job": "j1", "agents": [["w199", 1]]}) == [False]
    finally:
        await ex.stop()
        await s.close()
