"""The executor-side job scripts on a real Redis: a start is counted only for the current
attempt of a running job, and a result only for that attempt."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from mn_node.errors import FencedWriteRefused, LeaseLost, RedisUnavailable
from mn_node.leases import Lease, LeaseManager
from mn_node.store import EVENTS_MAXLEN, Store
from tests.support.redis import RedisServer

KEYS = ["ns:job:j1", "ns:job:j1:agents", "ns:job:j1:runs"]
STORE_KEYS = [*KEYS, "ns:job:j1:events", "ns:job:j1:attempts"]


async def _store(redis_server: RedisServer) -> Store:
    s = Store(redis_server.url, "ns")
    await s.r.hset(KEYS[0], mapping={"status": "running"})
    await s.r.hset(KEYS[1], "prime_1", json.dumps({"status": "dispatched", "attempt": 2}))
    return s


def _item(agent: str, attempt: Any, status: str = "completed", output: str = "[3]", extra: str = "{}",
          events: str = "[]", record: str = "") -> list[Any]:
    return [agent, attempt, status, output, "" if status == "completed" else "boom", extra, events, record]


async def _store_results(s: Store, *items: list[Any], node: str = "n2", maxlen: Any = EVENTS_MAXLEN) -> Any:
    return await s.scripts.store_results(STORE_KEYS, [node, maxlen, *[x for it in items for x in it]])


async def _snapshot(s: Store) -> list[Any]:
    return [await s.r.hgetall(k) for k in (*KEYS, STORE_KEYS[4])] + [await s.r.xrange(STORE_KEYS[3])]


async def test_claim_starts_counts_only_the_current_attempts(redis_server: RedisServer) -> None:
    s = await _store(redis_server)
    try:
        await s.r.hset(KEYS[1], "prime_2", json.dumps({"status": "dispatched", "attempt": 1}))
        res = await s.scripts.claim_starts(KEYS, ["prime_1", 2, "prime_1", 1, "nobody", 2, "prime_2", 1])
        assert res[0] == 1 and "not current" in res[1] and res[2] == "unknown agent" and res[3] == 1
        assert await s.r.hgetall(KEYS[2]) == {"prime_1": "1", "prime_2": "1"}
    finally:
        await s.close()


async def test_late_start_after_completion_is_refused(redis_server: RedisServer) -> None:
    """The fault checker's case: exec.run queued on a paused node arrives after the agent
    completed elsewhere; it must not run (runs stays 1) and its result is refused."""
    s = await _store(redis_server)
    try:
        assert await s.scripts.claim_starts(KEYS, ["prime_1", 2]) == [1]
        assert await _store_results(s, _item("prime_1", 2)) == [1]
        late = await s.scripts.claim_starts(KEYS, ["prime_1", 2])
        assert "completed" in late[0]
        again = await _store_results(s, _item("prime_1", 2), node="n1")
        assert "not current" in again[0]
        assert await s.r.hget(KEYS[2], "prime_1") == "1"
        assert await s.r.hget(KEYS[0], "agents_done") == "1"
        assert await s.r.hget(KEYS[0], "node:n2") == "1" and await s.r.hget(KEYS[0], "node:n1") is None
    finally:
        await s.close()


async def test_no_start_once_the_job_is_cancelled(redis_server: RedisServer) -> None:
    s = await _store(redis_server)
    try:
        await s.r.hset(KEYS[0], "status", "cancelled")
        res = await s.scripts.claim_starts(KEYS, ["prime_1", 2])
        assert "cancelled" in res[0]
        assert await s.r.hget(KEYS[2], "prime_1") is None
    finally:
        await s.close()


async def test_store_results_checks_each_item_on_its_own(redis_server: RedisServer) -> None:
    """One call: a stored result, a stale attempt (refused, its record kept), a failure with
    an event, and a record alone; the counters count only the completed one."""
    s = await _store(redis_server)
    try:
        await s.r.hset(KEYS[1], "c", json.dumps({"status": "dispatched", "attempt": 1}))
        res = await _store_results(
            s, _item("prime_1", 2, extra='{"exit_code":0}'), _item("prime_1", 1, record='{"r":1}'),
            _item("c", 1, "failed", events='[["agent_event","{}"]]', record='{"r":2}'),
            _item("d", 4, "none", record='{"r":3}'))
        assert res[0] == 1 and "not current" in res[1] and res[2:] == [1, 0]
        a = json.loads(await s.r.hget(KEYS[1], "prime_1"))
        assert a["status"] == "completed" and a["output"] == "[3]" and a["exit_code"] == 0 and a["node"] == "n2"
        assert json.loads(await s.r.hget(KEYS[1], "c"))["error"] == "boom"
        assert await s.r.hgetall(STORE_KEYS[4]) == {"prime_1:1": '{"r":1}', "c:1": '{"r":2}', "d:4": '{"r":3}'}
        assert await s.r.hget(KEYS[0], "agents_done") == "1"
        assert [f["type"] for _, f in await s.r.xrange(STORE_KEYS[3])] == ["agent_event"]
    finally:
        await s.close()


@pytest.mark.parametrize("case", ["odd pairs", "bad attempt"])
async def test_claim_starts_refusal_writes_nothing(redis_server: RedisServer, case: str) -> None:
    s = await _store(redis_server)
    try:
        args: list[Any] = ["prime_1", 2, "prime_1"] if case == "odd pairs" else ["prime_1", 2, "prime_1", "x"]
        with pytest.raises(RedisUnavailable):
            await s.scripts.claim_starts(KEYS, args)
        assert await s.r.hgetall(KEYS[2]) == {}
    finally:
        await s.close()


@pytest.mark.parametrize("case", ["bad extra", "bad events", "bad status", "bad attempt", "bad maxlen", "short item"])
async def test_store_results_refusal_writes_nothing(redis_server: RedisServer, case: str) -> None:
    """A malformed item anywhere in the call refuses the whole call before the first write:
    the good item before it is not stored, its record not written, no counter moves."""
    s = await _store(redis_server)
    try:
        await s.r.hset(KEYS[1], "c", json.dumps({"status": "dispatched", "attempt": 1}))
        before = await _snapshot(s)
        bad = {"bad extra": _item("c", 1, extra="[nope"), "bad events": _item("c", 1, events='[[1, 2]]'),
               "bad status": _item("c", 1, "done"), "bad attempt": _item("c", "one"),
               "bad maxlen": _item("c", 1), "short item": _item("c", 1)[:5]}[case]
        maxlen: Any = "lots" if case == "bad maxlen" else EVENTS_MAXLEN
        with pytest.raises(RedisUnavailable):
            await _store_results(s, _item("prime_1", 2, record='{"r":1}'), bad, maxlen=maxlen)
        assert await _snapshot(s) == before
    finally:
        await s.close()


async def test_a_record_is_not_written_for_a_job_that_is_gone(redis_server: RedisServer) -> None:
    s = await _store(redis_server)
    try:
        await s.r.pexpire(KEYS[0], 60_000)
        assert await _store_results(s, _item("prime_1", 1, "failed", record='{"r":1}')) == ["attempt 1 is not "
                                                                                           "current (agent is "
                                                                                           "dispatched attempt 2)"]
        assert 0 < await s.r.pttl(STORE_KEYS[4]) <= 60_000  # the record takes the terminal job's TTL
        await s.r.delete(KEYS[0], STORE_KEYS[4])
        assert await _store_results(s, _item("prime_1", 2, "none", record='{"r":1}')) == [0]
        assert not await s.r.exists(STORE_KEYS[4])
    finally:
        await s.close()


async def _job_write_snapshot(s: Store, job: str) -> tuple[dict[str, str], dict[str, str], list[Any], bool]:
    return (await s.r.hgetall(f"ns:job:{job}"), await s.r.hgetall(f"ns:job:{job}:agents"),
            await s.r.xrange(f"ns:job:{job}:events"), bool(await s.r.sismember("ns:jobs:active", job)))


async def _running_job(s: Store, leases: LeaseManager, job: str) -> Lease:
    """A running job j with agent b completed, coordinated by ``leases``' node."""
    lease = await leases.acquire(f"job:{job}")
    assert isinstance(lease, Lease)
    await s.r.hset(f"ns:job:{job}", mapping={"status": "running", "agents_done": "1", "_fence": lease.epoch})
    await s.r.hset(f"ns:job:{job}:agents", "b", json.dumps({"status": "completed", "attempt": 1}))
    await s.r.xadd(f"ns:job:{job}:events", {"type": "job_running"})
    await s.r.sadd("ns:jobs:active", job)
    return lease


def _job_write_args(lease: Lease, job: str, agents: dict[str, str] | Any, maxlen: Any = EVENTS_MAXLEN) \
        -> tuple[list[str], list[Any]]:
    keys = [lease.key, f"ns:job:{job}", f"ns:job:{job}:agents", f"ns:job:{job}:events", "ns:jobs:active",
            f"ns:job:{job}:runs", f"ns:job:{job}:attempts", f"ns:epoch:job:{job}", "ns:jobs", "ns:jobs:expiry"]
    args = [lease.token, lease.epoch, json.dumps({"status": "completed", "result": "x"}), json.dumps(agents),
            json.dumps([["agent_completed", "{}"], ["job_completed", "{}"]]), "n1", "1", maxlen, 60_000]
    return keys, args


A_DONE = json.dumps({"status": "completed", "attempt": 1})


async def test_job_write_refusal_writes_nothing(redis_server: RedisServer) -> None:
    """JOB_WRITE is all-or-nothing: job fields + agent A (new) + agent B (already completed)
    is refused, and the job hash, agent A, the events stream and the active set are left as
    they were (Redis does not roll back a script's earlier writes, so the script checks first)."""
    s = Store(redis_server.url, "ns")
    leases = LeaseManager(s, "n1", "inc", 10_000, 1000)
    try:
        lease = await _running_job(s, leases, "j2")
        before = await _job_write_snapshot(s, "j2")
        b_again = json.dumps({"status": "dispatched", "attempt": 2})
        keys, args = _job_write_args(lease, "j2", {"a": A_DONE, "b": b_again})
        with pytest.raises(FencedWriteRefused, match="agent b already completed"):
            await s.scripts.job_write(keys, args)
        assert await _job_write_snapshot(s, "j2") == before
        # the same write without agent b goes through, whole
        keys, args = _job_write_args(lease, "j2", {"a": A_DONE})
        assert await s.scripts.job_write(keys, args) == 1
        h, agents, events, active = await _job_write_snapshot(s, "j2")
        assert h["status"] == "completed" and h["agents_done"] == "2" and h["owner"] == "n1"
        assert json.loads(agents["a"])["status"] == "completed" and len(events) == 3 and not active
    finally:
        await s.close()


@pytest.mark.parametrize("case", ["bad agent json", "bad maxlen", "stale token", "terminal job"])
async def test_job_write_refused_for_any_reason_writes_nothing(redis_server: RedisServer, case: str) -> None:
    s = Store(redis_server.url, "ns")
    leases = LeaseManager(s, "n1", "inc", 10_000, 1000)
    try:
        lease = await _running_job(s, leases, "j3")
        agents: dict[str, str] = {"a": A_DONE}
        maxlen: Any = EVENTS_MAXLEN
        if case == "bad agent json":
            agents["c"] = "{not json"
        elif case == "bad maxlen":
            maxlen = "lots"
        elif case == "stale token":
            lease = dataclasses.replace(lease, token=lease.token + "0")
        else:
            await s.r.hset("ns:job:j3", "status", "cancelled")
        before = await _job_write_snapshot(s, "j3")
        keys, args = _job_write_args(lease, "j3", agents, maxlen)
        with pytest.raises((FencedWriteRefused, RedisUnavailable)):
            await s.scripts.job_write(keys, args)
        assert await _job_write_snapshot(s, "j3") == before
    finally:
        await s.close()


async def test_malformed_field_lists_write_nothing(redis_server: RedisServer) -> None:
    """An odd field/value list is refused before the first write (no half-written _fence,
    no deleted registration)."""
    s = Store(redis_server.url, "ns")
    leases = LeaseManager(s, "n1", "inc", 10_000, 1000)
    try:
        lease = await leases.acquire("obj")
        assert isinstance(lease, Lease)
        with pytest.raises(RedisUnavailable, match="odd number"):
            await s.scripts.fenced_hset([lease.key, "ns:obj"], [lease.token, lease.epoch, "f"])
        with pytest.raises(RedisUnavailable, match="odd number"):
            await s.scripts.fenced_xadd([lease.key, "ns:stream"], [lease.token, lease.epoch, 100, "f"])
        assert not await s.r.exists("ns:obj", "ns:stream")
        assert await s.scripts.register(["ns:node:n1"], ["inc-1", 10_000, "name", "n1"]) == [1, "inc-1"]
        with pytest.raises(RedisUnavailable, match="odd number"):
            await s.scripts.register(["ns:node:n1"], ["inc-2", 10_000, "force", "name"])
        assert await s.r.hget("ns:node:n1", "incarnation") == "inc-1"
    finally:
        await s.close()


async def test_fenced_refusal_loses_the_lease_only_for_token_or_epoch(redis_server: RedisServer) -> None:
    """``LeaseManager.fenced``: a job that is already terminal refuses the write but the lease
    stays its holder's; a token that is not current loses it."""
    s = Store(redis_server.url, "ns")
    leases = LeaseManager(s, "n1", "inc", 10_000, 1000)
    try:
        lease = await _running_job(s, leases, "j4")
        await s.r.hset("ns:job:j4", "status", "cancelled")
        keys, args = _job_write_args(lease, "j4", {"a": A_DONE})
        with pytest.raises(FencedWriteRefused, match="already cancelled"):
            await leases.fenced(lease, s.scripts.job_write, keys, args)
        assert lease.valid() and leases.fenced_refused == 1
        await s.r.set(lease.key, "someone|else|99")
        await s.r.hset("ns:job:j4", "status", "running")
        with pytest.raises(FencedWriteRefused, match="token not current"):
            await leases.fenced(lease, s.scripts.job_write, keys, args)
        assert not lease.valid() and leases.fenced_refused == 2
        with pytest.raises(LeaseLost):
            await leases.fenced(lease, s.scripts.job_write, keys, args)
    finally:
        await s.close()
