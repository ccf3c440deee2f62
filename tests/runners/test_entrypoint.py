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
