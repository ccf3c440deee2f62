"""Lease scripts and LeaseManager against a real Redis server (no mocks)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mn_node.errors import FencedWriteRefused, LeaseLost, RedisUnavailable
from mn_node.leases import Holder, Lease, LeaseManager
from mn_node.store import Store
from tests.support.redis import RedisServer
from tests.support.wait import async_wait_until


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[Callable[[], Store]]:
    made: list[Store] = []
    ns = f"lt{time.monotonic_ns()}"

    def make() -> Store:
        s = Store(redis_server.url, ns)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


async def acquired(m: LeaseManager, name: str) -> Lease:
    res = await m.acquire(name)
    assert isinstance(res, Lease), res
    return res


async def gone(store: Store, key: str) -> None:
    async def check() -> bool:
        return not await store.r.exists(key)

    await async_wait_until(check, 5, f"{key} to expire")


async def test_acquire_grants_increasing_epochs_and_reports_holder(stores: Callable[[], Store]) -> None:
    s = stores()
    a = LeaseManager(s, "a@h", "inc-a", 300, 100)
    b = LeaseManager(s, "b@h", "inc-b", 300, 100)
    la = await acquired(a, "job:1")
    assert la.token == f"a@h|inc-a|{la.epoch}" and la.valid()
    held = await b.acquire("job:1")
    assert isinstance(held, Holder) and held.node == "a@h" and held.epoch == la.epoch
    assert 0 < held.pttl_ms <= 300
    await gone(s, la.key)
    lb = await acquired(b, "job:1")
    assert lb.epoch == la.epoch + 1


async def test_stale_token_renew_and_release_refused(stores: Callable[[], Store]) -> None:
    s = stores()
    a = LeaseManager(s, "a@h", "inc-a", 300, 100)
    b = LeaseManager(s, "b@h", "inc-b", 5000, 1000)
    la = await acquired(a, "cluster:leader")
    await gone(s, la.key)
    lb = await acquired(b, "cluster:leader")
    # the script itself refuses the stale token (no local shortcut involved)
    assert await s.scripts.renew_all([la.key], [60_000, la.token]) == [0]
    assert await s.scripts.release([la.key, s.key("events")], [la.token, "", 100, la.name, "{}"]) == 0
    assert await s.r.get(la.key) == lb.token
    assert 0 < await s.r.pttl(la.key) <= 5000  # and its TTL was not touched
    # through the manager: the stale holder learns it lost the lease
    la.deadline = time.monotonic() + 10  # pretend the local deadline had not passed yet
    lost: list[Lease] = []
    a.lost.connect(lost.append)
    await a.renew_all()
    assert lost == [la] and la.is_lost and "no longer holds our token" in la.lost_reason
    assert not await a.release(la)
    assert await s.r.get(la.key) == lb.token
    # the current holder renews and releases fine
    await b.renew_all()
    assert lb.valid() and b.renewals == 1
    assert await b.release(lb)
    assert await s.r.get(lb.key) is None


async def test_fenced_write_with_old_epoch_refused_after_newer_grant(stores: Callable[[], Store]) -> None:
    s = stores()
    a = LeaseManager(s, "a@h", "inc-a", 10_000, 1000)
    b = LeaseManager(s, "b@h", "inc-b", 10_000, 1000)
    target = s.key("thing")
    la = await acquired(a, "job:7")
    await a.fenced_hset(la, target, {"owner": "a", "n": 1})
    assert a.fenced_ok == 1
    # a's lease disappears while a believes it still holds it (paused past its TTL, say)
    await s.r.delete(la.key)
    lb = await acquired(b, "job:7")
    assert lb.epoch > la.epoch
    await b.fenced_hset(lb, target, {"owner": "b", "n": 2})
    assert la.valid()  # a's local view is still "valid": only Redis can stop it now
    with pytest.raises(FencedWriteRefused, match="token not current"):
        await a.fenced_hset(la, target, {"owner": "a", "n": 3})
    assert a.fenced_refused == 1 and la.is_lost
    with pytest.raises(LeaseLost):
        await a.fenced_hset(la, target, {"owner": "a", "n": 4})  # now refused locally too
    with pytest.raises(FencedWriteRefused):
        await s.scripts.fenced_xadd([la.key, s.key("stream")], [la.token, la.epoch, 100, "k", "v"])
    assert await s.r.hgetall(target) == {"owner": "b", "n": "2", "_fence": str(lb.epoch)}


async def test_fence_refuses_lower_epoch_even_with_a_current_token(stores: Callable[[], Store]) -> None:
    """Objects remember the highest epoch written; a lower one is refused whatever the token."""
    s = stores()
    lease, target, stream = s.key("lease", "x"), s.key("obj"), s.key("stream")
    await s.r.set(lease, "n|i|5")
    assert await s.scripts.fenced_hset([lease, target], ["n|i|5", 5, "f", "v5"]) == 1
    await s.scripts.fenced_xadd([lease, stream], ["n|i|5", 5, 100, "f", "v5"])
    await s.r.set(lease, "n|i|4")
    with pytest.raises(FencedWriteRefused, match="epoch 4 below 5"):
        await s.scripts.fenced_hset([lease, target], ["n|i|4", 4, "f", "v4"])
    with pytest.raises(FencedWriteRefused, match="epoch 4 below 5"):
        await s.scripts.fenced_xadd([lease, stream], ["n|i|4", 4, 100, "f", "v4"])
    assert await s.r.hget(target, "f") == "v5"


async def test_restarted_incarnation_cannot_renew_predecessor_lease(stores: Callable[[], Store]) -> None:
    s = stores()
    old = LeaseManager(s, "a@h", "inc-old", 10_000, 1000)
    lo = await acquired(old, "cluster:leader")
    new = LeaseManager(s, "a@h", "inc-new", 10_000, 1000)
    # same node name, same epoch, new incarnation: not the same owner
    forged = f"a@h|inc-new|{lo.epoch}"
    assert await s.scripts.renew_all([lo.key], [10_000, forged]) == [0]
    assert await s.scripts.release([lo.key, s.key("events")], [forged, "", 100, lo.name, "{}"]) == 0
    with pytest.raises(FencedWriteRefused):
        await s.scripts.fenced_hset([lo.key, s.key("obj")], [forged, lo.epoch, "f", "v"])
    held = await new.acquire("cluster:leader")
    assert isinstance(held, Holder) and held.token == lo.token  # it must wait like anyone else
    assert await s.r.get(lo.key) == lo.token


async def test_local_deadline_stops_holder_without_redis(
    stores: Callable[[], Store], redis_server: RedisServer
) -> None:
    s = stores()
    a = LeaseManager(s, "a@h", "inc-a", 600, 100)
    la = await acquired(a, "job:9")
    lost: list[str] = []
    a.lost.connect(lambda lease: lost.append(lease.lost_reason))
    task = asyncio.get_running_loop().create_task(a.run())
    redis_server.pause()
    try:
        t0 = time.monotonic()
        await async_wait_until(_async(lambda: not la.valid()), 3, "the lease to become invalid")
        # it stops by TTL - margin after the last successful renewal, with Redis frozen
        assert time.monotonic() - t0 <= 0.6
        with pytest.raises(LeaseLost):
            await a.fenced_hset(la, s.key("obj"), {"f": "v"})
        await async_wait_until(_async(lambda: lost), 3, "the lost callback")
    finally:
        redis_server.resume()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _async(fn: Callable[[], Any]) -> Callable[[], Any]:
    async def run() -> Any:
        return fn()

    return run


async def test_ten_thousand_leases_renewed_in_one_round_trip(
    stores: Callable[[], Store], redis_server: RedisServer
) -> None:
    s = stores()
    m = LeaseManager(s, "a@h", "inc-a", 30_000, 5000)
    n = 10_000
    names = [f"job:{k}" for k in range(n)]
    # grant them in a pipeline of script calls (acquire is one script per lease)
    pipe = s.r.pipeline(transaction=False)
    acquire = s.scripts.acquire.redis_script  # the plain redis-py script, queued on the pipeline
    for name in names:
        await acquire(keys=[m.lease_key(name), s.key("epoch", name), s.key("events")],
                      args=[m.owner, m.ttl_ms, "", 100, name], client=pipe)
    res = await pipe.execute()
    for name, r in zip(names, res, strict=True):
        m.held[name] = Lease(name, m.lease_key(name), str(r[1]), int(r[2]), time.monotonic() + 1)
    await s.scripts.renew_all([], [1])  # the script is loaded once per server (by SHA)
    sync = redis_server.client()
    before = _evalsha_calls(sync)
    latencies: list[float] = []
    m.renewed.connect(latencies.append)
    await m.renew_all()
    assert _evalsha_calls(sync) - before == 1  # one script call renewed all 10,000
    assert m.renewals == 1 and len(m.held) == n
    assert all(lease.valid() and lease.remaining() > 20 for lease in m.held.values())
    assert len(latencies) == 1 and latencies[0] > 0
    pttl = await s.r.pttl(m.lease_key(names[-1]))
    assert pttl > 25_000


def _evalsha_calls(client: Any) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_redis_restart_loses_all_leases(stores: Callable[[], Store], redis_server: RedisServer) -> None:
    s = stores()
    m = LeaseManager(s, "a@h", "inc-a", 30_000, 1000)
    la = await acquired(m, "cluster:leader")
    assert await s.check()
    old_run_id = s.run_id
    restarts: list[tuple[str, str | None]] = []
    s.restarted.connect(lambda new, old: restarts.append((new, old)))
    redis_server.restart()  # same port and dir: AOF brings the key back with its old token
    await async_wait_until(s.check, 10, "redis to answer again")
    assert la.is_lost and la.lost_reason == "redis restarted"
    assert m.held == {}
    assert restarts == [(s.run_id, old_run_id)] and s.run_id != old_run_id


async def test_lease_granted_by_a_restarted_redis_is_kept(
    stores: Callable[[], Store], redis_server: RedisServer
) -> None:
    """The first script after a reconnect runs only once the restart has been noticed, so the
    "all leases lost" reaction cannot drop a lease the new server just granted."""
    s = stores()
    m = LeaseManager(s, "a@h", "inc-a", 30_000, 1000)
    old = await acquired(m, "cluster:leader")
    assert await s.check()
    await s.r.connection_pool.disconnect()
    redis_server.stop()
    redis_server.start()  # same port and dir; the AOF holds the old lease
    await s.r.delete(old.key)  # lease expired while the server was down
    s.mark_error(ConnectionError("test: connection dropped"))  # as the renew loop would
    fresh = await acquired(m, "job:1")  # no check() in between
    assert old.is_lost and old.lost_reason == "redis restarted"
    assert not fresh.is_lost and m.held == {"job:1": fresh}
    assert await s.r.get(fresh.key) == fresh.token


async def test_a_refused_command_does_not_mark_redis_down(stores: Callable[[], Store]) -> None:
    s = stores()
    assert await s.check()
    with pytest.raises(RedisUnavailable, match="refused"):
        await s.guard(s.r.xrange(s.key("events"), "not-an-id", "+"))
    assert s.available and s.last_error == ""
