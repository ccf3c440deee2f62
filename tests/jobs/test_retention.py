"""Retention on a real Redis: the script that makes a job terminal gives every key the job owns
a TTL (one script: no crash can fall between the two), prune deletes exactly what it selects,
a bundle a live job uses never expires, and pause/resume is one atomic status change."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from mn_node.bundles.store import bundle_key, bundle_refs_key, put_bundle
from mn_node.errors import FencedWriteRefused, RedisUnavailable
from mn_node.jobs import blueprints
from mn_node.jobs.state import JobKeys, cancel_job, list_jobs, pause_job, prune_jobs
from mn_node.jobs.submit import submit_job
from mn_node.leases import Lease, LeaseManager
from mn_node.scripts import CANCEL_JOB, JOB_WRITE
from mn_node.store import EVENTS_MAXLEN, Store
from tests.support.redis import RedisServer
from tests.support.wait import async_wait_until

RETENTION_MS = 60_000
SMALL = blueprints.generate("prime_sweep_scale", {"workers": 2, "start": 1000, "chunk_size": 10})


async def _job(s: Store, bundle: str | None = None) -> str:
    """A submitted job (for ``bundle``: one that refers to that stored bundle)."""
    return (await submit_job(s, SMALL, bundle_sha=bundle, node="t"))["job_id"]


async def _terminal_write(s: Store, leases: LeaseManager, job_id: str, status: str = "completed",
                          retention_ms: int = RETENTION_MS) -> None:
    """What Coordinator.write(terminal=True) sends: the same keys (JobKeys), one job_write."""
    lease = await leases.acquire(f"job:{job_id}")
    assert isinstance(lease, Lease)
    k = JobKeys(s, job_id)
    sha = await s.r.hget(k.job, "bundle")
    keys = [lease.key, k.job, k.agents, k.events, k.active, k.runs, k.attempts, k.epoch, k.history, k.expiry,
            *k.bundle(sha)]
    await s.r.hset(k.runs, "prime_worker_0001", 1)
    await s.r.hset(k.attempts, "prime_worker_0001:1", "{}")
    args = [lease.token, lease.epoch, json.dumps({"status": status}), json.dumps({"w": json.dumps({"status": "x"})}),
            json.dumps([["job_" + status, "{}"]]), "n1", "1", EVENTS_MAXLEN, retention_ms]
    assert await leases.fenced(lease, s.scripts.job_write, keys, args) == 1
    await leases.release(lease)


async def _keys_of(s: Store, job_id: str) -> dict[str, int]:
    """Every key in the namespace that names the job, with its PTTL."""
    out = {}
    async for key in s.r.scan_iter(match=f"{s.ns}:*{job_id}*", count=1000):
        out[key] = await s.r.pttl(key)
    return out


@pytest.fixture
async def store(redis_server: RedisServer) -> Any:
    s = Store(redis_server.url, "rt")
    await s.r.flushdb()
    yield s
    await s.close()


async def test_terminal_write_gives_every_key_of_the_job_a_ttl(store: Store) -> None:
    leases = LeaseManager(store, "n1", "inc", 10_000, 1000)
    job_id = await _job(store)
    await _terminal_write(store, leases, job_id)
    keys = await _keys_of(store, job_id)
    k = JobKeys(store, job_id)
    assert set(keys) >= set(k.owned()), keys  # job, agents, events, runs, attempts, epoch counter
    assert all(0 < ttl <= RETENTION_MS for ttl in keys.values()), keys
    assert await store.r.zscore(k.expiry, job_id) is not None
    assert not await store.r.sismember(k.active, job_id)


def test_the_ttl_is_set_by_the_terminal_script_itself() -> None:
    """No second step a crash could skip: the scripts that make a job terminal set the TTLs."""
    assert "retain(id, ARGV[9]" in JOB_WRITE and "ARGV[7] == '1'" in JOB_WRITE
    assert "retain(ARGV[1], ARGV[5]" in CANCEL_JOB
    assert "PEXPIRE" in JOB_WRITE and "PEXPIRE" in CANCEL_JOB


async def test_cancel_gives_every_key_a_ttl_and_a_refused_write_sets_none(store: Store) -> None:
    leases = LeaseManager(store, "n1", "inc", 10_000, 1000)
    job_id = await _job(store)
    await store.r.hset(JobKeys(store, job_id).runs, "a", 1)
    assert await cancel_job(store, job_id, "n1", "test", RETENTION_MS) == (True, "pending")
    keys = await _keys_of(store, job_id)
    assert keys and all(0 < ttl <= RETENTION_MS for ttl in keys.values()), keys
    other = await _job(store)
    await store.r.hset(JobKeys(store, other).job, "status", "cancelled")  # terminal: job_write refuses
    with pytest.raises(FencedWriteRefused, match="already cancelled"):
        await _terminal_write(store, leases, other)
    assert all(ttl == -1 for key, ttl in (await _keys_of(store, other)).items() if ":lease:" not in key)


async def test_prune_removes_exactly_the_selected(store: Store) -> None:
    leases = LeaseManager(store, "n1", "inc", 10_000, 1000)
    done = await _job(store)
    failed = await _job(store)
    running = await _job(store)
    paused = await _job(store)
    await _terminal_write(store, leases, done, "completed")
    await _terminal_write(store, leases, failed, "failed")
    for jid, status in ((running, "running"), (paused, "paused")):
        await store.r.hset(JobKeys(store, jid).job, "status", status)
    dry = await prune_jobs(store, older_than_ms=None, status="failed", dry_run=True, retention_ms=RETENTION_MS)
    assert [j["job_id"] for j in dry.jobs] == [failed] and await _keys_of(store, failed)
    young = await prune_jobs(store, older_than_ms=3_600_000, status=None, dry_run=False, retention_ms=RETENTION_MS)
    assert young.jobs == []
    res = await prune_jobs(store, older_than_ms=None, status="failed", dry_run=False, retention_ms=RETENTION_MS)
    assert [j["job_id"] for j in res.jobs] == [failed]
    assert not await _keys_of(store, failed)
    assert await store.r.zscore(store.key("jobs"), failed) is None
    res = await prune_jobs(store, older_than_ms=None, status=None, dry_run=False, retention_ms=RETENTION_MS)
    assert [j["job_id"] for j in res.jobs] == [done]  # never the running or the paused one
    listed = {j["job_id"] for j in await list_jobs(store, 100)}
    assert listed == {running, paused}


async def test_a_bundle_used_by_a_live_job_survives_pruning_another(store: Store) -> None:
    leases = LeaseManager(store, "n1", "inc", 10_000, 1000)
    data = b"archive bytes"
    sha = hashlib.sha256(data).hexdigest()
    assert await put_bundle(store, data, sha)
    assert 0 < await store.r.pttl(bundle_key(store, sha)) <= 3_600_000  # an upload no job uses yet expires
    live = await _job(store, sha)
    ended = await _job(store, sha)
    assert await store.r.pttl(bundle_key(store, sha)) == -1
    await _terminal_write(store, leases, ended)
    assert await prune_jobs(store, older_than_ms=None, status=None, dry_run=False, retention_ms=RETENTION_MS)
    assert await store.r.pttl(bundle_key(store, sha)) == -1  # the live job still uses it
    assert await store.r.smembers(bundle_refs_key(store, sha)) == {live}
    await _terminal_write(store, leases, live, "failed")
    assert 0 < await store.r.pttl(bundle_key(store, sha)) <= RETENTION_MS  # expires with its last job
    assert not await store.r.exists(bundle_refs_key(store, sha))


async def test_after_the_retention_no_key_of_the_job_remains(store: Store) -> None:
    leases = LeaseManager(store, "n1", "inc", 10_000, 1000)
    data = b"another archive"
    sha = hashlib.sha256(data).hexdigest()
    await put_bundle(store, data, sha)
    job_id = await _job(store, sha)
    await _terminal_write(store, leases, job_id, retention_ms=1000)

    async def gone() -> bool:
        return not await _keys_of(store, job_id) and not await store.r.exists(bundle_key(store, sha))

    await async_wait_until(gone, 10, "every key of the job and its bundle to expire")
    # the history drops the id: lazily on listing, and by the next terminal write's trim
    assert await list_jobs(store, 100) == []
    assert await store.r.zscore(store.key("jobs"), job_id) is None
    later = await _job(store)
    await _terminal_write(store, leases, later)
    assert await store.r.zscore(store.key("jobs", "expiry"), job_id) is None


async def test_pause_and_resume_are_atomic_status_changes(store: Store) -> None:
    job_id = await _job(store)
    k = JobKeys(store, job_id)
    assert await pause_job(store, job_id, "n1", "pause", "t") == (False, "pending")
    await store.r.hset(k.job, "status", "running")
    assert await pause_job(store, job_id, "n1", "resume", "t") == (False, "running")
    assert await pause_job(store, job_id, "n1", "pause", "t") == (True, "running")
    assert await store.r.hget(k.job, "status") == "paused"
    assert await pause_job(store, job_id, "n1", "pause", "t") == (False, "paused")
    # while paused: no new start, but a run already going stores its result
    await store.r.hset(k.agents, "a", json.dumps({"status": "dispatched", "attempt": 1}))
    await store.r.hset(k.agents, "b", json.dumps({"status": "dispatched", "attempt": 1}))
    refused = await store.scripts.claim_starts([k.job, k.agents, k.runs], ["a", 1])
    assert "paused" in refused[0]
    stored = await store.scripts.store_results([k.job, k.agents, k.runs, k.events, k.attempts],
                                               ["n1", 100, "b", 1, "completed", "[1]", "", "{}", "[]", ""])
    assert stored == [1]
    assert await pause_job(store, job_id, "n1", "resume", "t") == (True, "paused")
    types = [f["type"] for _, f in await store.r.xrange(k.events)]
    assert types[-2:] == ["job_paused", "job_resumed"]
    assert await pause_job(store, "nope", "n1", "pause", "t") == (False, "unknown")


async def test_a_paused_job_refuses_a_dispatch_and_stays_paused(store: Store) -> None:
    leases = LeaseManager(store, "n1", "inc", 10_000, 1000)
    job_id = await _job(store)
    k = JobKeys(store, job_id)
    await store.r.hset(k.job, "status", "paused")
    lease = await leases.acquire(f"job:{job_id}")
    assert isinstance(lease, Lease)
    keys = [lease.key, k.job, k.agents, k.events, k.active, k.runs, k.attempts, k.epoch, k.history, k.expiry]
    dispatch = json.dumps({"w": json.dumps({"status": "dispatched", "attempt": 1})})
    before = await store.r.xlen(k.events)
    args = [lease.token, lease.epoch, json.dumps({"status": "running"}), dispatch, "[]", "n1", "0", EVENTS_MAXLEN,
            RETENTION_MS]
    assert await store.scripts.job_write(keys, args) == 0
    assert await store.r.hget(k.agents, "w") is None and await store.r.xlen(k.events) == before
    args[3] = "{}"
    args[4] = json.dumps([["job_recovery_started", "{}"]])
    assert await store.scripts.job_write(keys, args) == 1
    assert await store.r.hget(k.job, "status") == "paused"  # a 'running' in the fields does not unpause
    assert await cancel_job(store, job_id, "n1", "t", RETENTION_MS) == (True, "paused")


async def test_the_index_trim_drops_only_expired_ids_from_both_indexes(store: Store) -> None:
    """trim_job_index (the leader's sweep): ids whose expiry passed leave {ns}:jobs and
    {ns}:jobs:expiry; ids still retained, and history entries of live jobs, stay."""
    hist, exp = store.key("jobs"), store.key("jobs", "expiry")
    now_ms = int((await store.r.time())[0]) * 1000
    await store.r.zadd(hist, {"old1": 1, "old2": 2, "kept": 3, "live": 4})
    await store.r.zadd(exp, {"old1": now_ms - 5000, "old2": now_ms - 1, "kept": now_ms + 60_000})
    assert int(await store.scripts.trim_job_index([hist, exp], [1])) == 1  # the batch limit holds
    assert int(await store.scripts.trim_job_index([hist, exp], [100])) == 1
    assert await store.r.zrange(hist, 0, -1) == ["kept", "live"]
    assert await store.r.zrange(exp, 0, -1) == ["kept"]
    assert int(await store.scripts.trim_job_index([hist, exp], [100])) == 0
    with pytest.raises(RedisUnavailable, match="must be a number"):
        await store.scripts.trim_job_index([hist, exp], ["x"])
