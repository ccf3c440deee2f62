"""The executor-side job scripts on a real Redis: a start is counted only for the current
attempt of a running job, and a result only for that attempt."""

from __future__ import annotations

import json

from mn_node.store import Store
from tests.support.redis import RedisServer

KEYS = ["ns:job:j1", "ns:job:j1:agents", "ns:job:j1:runs"]


async def _store(redis_server: RedisServer) -> Store:
    s = Store(redis_server.url, "ns")
    await s.r.hset(KEYS[0], mapping={"status": "running"})
    await s.r.hset(KEYS[1], "prime_1", json.dumps({"status": "dispatched", "attempt": 2}))
    return s


async def test_claim_start_counts_only_the_current_attempt(redis_server: RedisServer) -> None:
    s = await _store(redis_server)
    try:
        assert list(await s.call("claim_start", KEYS, ["prime_1", 2])) == [1, 1]
        stale = await s.call("claim_start", KEYS, ["prime_1", 1])
        assert stale[0] == 0 and "not current" in stale[1]
        assert (await s.call("claim_start", KEYS, ["nobody", 2]))[0] == 0
        assert await s.r.hget(KEYS[2], "prime_1") == "1"
    finally:
        await s.close()


async def test_late_start_after_completion_is_refused(redis_server: RedisServer) -> None:
    """The fault checker's case: exec.run queued on a paused node arrives after the agent
    completed elsewhere; it must not run (runs stays 1) and its result is refused."""
    s = await _store(redis_server)
    try:
        assert (await s.call("claim_start", KEYS, ["prime_1", 2]))[0] == 1
        done = await s.call("store_result", KEYS, ["prime_1", 2, "n2", "[3]", "completed", ""])
        assert done[0] == 1
        late = await s.call("claim_start", KEYS, ["prime_1", 2])
        assert late[0] == 0 and "completed" in late[1]
        again = await s.call("store_result", KEYS, ["prime_1", 2, "n1", "[3]", "completed", ""])
        assert again[0] == 0
        assert await s.r.hget(KEYS[2], "prime_1") == "1"
        assert await s.r.hget(KEYS[0], "agents_done") == "1"
    finally:
        await s.close()


async def test_no_start_once_the_job_is_cancelled(redis_server: RedisServer) -> None:
    s = await _store(redis_server)
    try:
        await s.r.hset(KEYS[0], "status", "cancelled")
        res = await s.call("claim_start", KEYS, ["prime_1", 2])
        assert res[0] == 0 and "cancelled" in res[1]
        assert await s.r.hget(KEYS[2], "prime_1") is None
    finally:
        await s.close()
