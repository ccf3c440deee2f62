"""The entry-point runner behind the same Runner interface, on a real process pool."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from mn_node.runners.base import Runner
from mn_node.runners.entrypoint import EntryPointRunner
from tests.runners.support import request


def run_task(name: str, config: dict[str, Any], inputs: dict[str, Any]) -> Any:
    if name == "double":
        return {"doubled": inputs["n"] * 2}
    if name == "sleep":
        import time

        time.sleep(float(config["seconds"]))
        return None
    raise LookupError(f"no executor task {name!r} installed")


@pytest.fixture
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as p:
        yield p


async def test_runs_a_task_and_reports_like_a_command(pool: ProcessPoolExecutor) -> None:
    runner = EntryPointRunner(pool, run_task)
    assert isinstance(runner, Runner)
    res = await runner.run(request({"task": "double"}, body={"n": 21}))
    assert res.ok and res.output == {"doubled": 42}
    assert res.sandbox["exit_code"] == 0 and res.sandbox["stdout"] == '{"doubled": 42}'


async def test_failure_and_timeout_are_one_line(pool: ProcessPoolExecutor) -> None:
    runner = EntryPointRunner(pool, run_task)
    res = await runner.run(request({"task": "nope"}, agent="w1"))
    assert not res.ok and res.exit_code == 1 and "agent w1: task 'nope' failed: LookupError" in res.reason
    slow = await runner.run(request({"task": "sleep", "seconds": 2, "timeout_seconds": 0.2}))
    assert not slow.ok and "timed out after 0.2s" in slow.reason


def worker_pid(name: str, config: dict[str, Any], inputs: dict[str, Any]) -> Any:
    import os
    import time

    if name == "sleep":
        time.sleep(float(config["seconds"]))
    if name == "nope":
        raise ValueError("no such thing")
    return os.getpid()


async def test_a_chunk_is_one_submission_with_a_result_per_task(pool: ProcessPoolExecutor) -> None:
    """Three tasks in one chunk run in one worker, one after the other; one failing or
    overrunning its own timeout does not fail the others."""
    runner = EntryPointRunner(pool, worker_pid)
    reqs = [request({"task": "pid"}, agent="a"), request({"task": "nope"}, agent="b"),
            request({"task": "sleep", "seconds": 0.3, "timeout_seconds": 0.2}, agent="c"),
            request({"task": "pid"}, agent="d")]
    a, b, c, d = await runner.run_many(reqs)
    assert a.ok and d.ok and a.output == d.output  # the same worker process
    assert not b.ok and "agent b: task 'nope' failed: ValueError: no such thing" in b.reason
    assert not c.ok and "agent c: task 'sleep' timed out after 0.2s" in c.reason
    assert c.sandbox["duration_ms"] >= 300 and a.sandbox["duration_ms"] < 300


async def test_a_chunk_not_back_in_time_reports_every_task_timed_out(pool: ProcessPoolExecutor) -> None:
    runner = EntryPointRunner(pool, worker_pid)
    reqs = [request({"task": "pid", "timeout_seconds": 0.3}, agent="a"),
            request({"task": "sleep", "seconds": 2, "timeout_seconds": 0.3}, agent="b")]
    res = await runner.run_many(reqs)
    assert [r.ok for r in res] == [False, False]
    assert all("timed out after 0.3s" in r.reason and not r.cancelled for r in res)


async def test_cancelling_a_queued_chunk_drops_it(pool: ProcessPoolExecutor) -> None:
    """The pool's one worker is busy: a chunk queued behind it is cancelled before it starts
    (runner.cancel) and reports every task cancelled; the busy one finishes."""
    import asyncio

    runner = EntryPointRunner(pool, worker_pid)
    busy = asyncio.ensure_future(runner.run(request({"task": "sleep", "seconds": 0.5}, job="j0")))
    await asyncio.sleep(0.1)
    queued = asyncio.ensure_future(runner.run_many([request({"task": "pid"}, job="j1", agent="a"),
                                                    request({"task": "pid"}, job="j1", agent="b")]))
    await asyncio.sleep(0.05)
    assert await runner.cancel("j1") == 2  # the one chunk future, registered under both agents
    res = await queued
    assert [r.cancelled for r in res] == [True, True] and "agent a: cancelled" in res[0].reason
    assert (await busy).ok
