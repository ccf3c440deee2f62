"""The store through Sentinel, against real processes: 1 primary, 2 replicas, 3 Sentinels.

Acknowledged means replicated: every script call is followed by ``WAIT n`` on the same
connection (n: MIN_ACKS, or by default every replica the Sentinels know of); a write fewer
replicas acknowledge counts as not done."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest

from mn_node.config import ACKS_ALL, load_config, parse_sentinel_url, redact_url, validate_redis_url
from mn_node.errors import ConfigError, RedisUnavailable
from mn_node.leases import Holder, Lease, LeaseManager
from mn_node.store import Store, WriteNotReplicated
from tests.support.redis import MASTER, RedisServer, SentinelCluster
from tests.support.wait import async_wait_until

TTL_MS = 2000


@pytest.fixture
async def stores(sentinel_cluster: SentinelCluster) -> AsyncIterator[Callable[..., Store]]:
    made: list[Store] = []
    ns = f"ha{time.monotonic_ns()}"

    def make(url: str | None = None, **kw: object) -> Store:
        kw.setdefault("sentinel_password", sentinel_cluster.sentinel_password)
        kw.setdefault("min_acks", 1)
        s = Store(url or sentinel_cluster.url, ns, **kw)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


async def granted(m: LeaseManager, name: str, timeout: float = 30) -> Lease:
    """Try to acquire ``name`` until granted, through outages and failovers."""

    async def once() -> Lease | None:
        try:
            res = await m.acquire(name)
        except RedisUnavailable:
            return None
        return res if isinstance(res, Lease) else None

    return await async_wait_until(once, timeout, f"{name} to be granted to {m.node}", interval=0.1)


# ---- the URL --------------------------------------------------------------------------------
def test_sentinel_url_parses_and_redacts() -> None:
    url = "redis+sentinel://:s3cr%40t@h1:26379,h2:26380,h3/mn-master/2"
    su = parse_sentinel_url(url)
    assert su.sentinels == (("h1", 26379), ("h2", 26380), ("h3", 26379))
    assert (su.master, su.db, su.password) == ("mn-master", 2, "s3cr@t")
    assert "s3cr" not in redact_url(url) and "***" in redact_url(url)
    assert "s3cr" not in repr(su)


@pytest.mark.parametrize("url, words", [
    ("redis+sentinel://h1:26379", "names no master"),
    ("redis+sentinel://:pw@/m/0", "empty Sentinel host"),
    ("redis+sentinel://h1:70000/m/0", "out of range"),
    ("redis+sentinel://h1/m/zero", "not a number"),
    ("redis+sentinel://h1/m!x/0", "bad characters"),
])
def test_bad_sentinel_url_is_one_line_config_error(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate_redis_url(url.replace("pw", "hunter2"))
    msg = str(e.value)
    assert words in msg and "fix:" in msg and "\n" not in msg and "hunter2" not in msg
    assert e.value.exit_code == 78


def test_config_replicated_mode_settings() -> None:
    base = {"MIRROR_NEURON_COOKIE": "c" * 40, "MIRROR_NEURON_CLUSTER_NODES": "a@127.0.0.1",
            "MIRROR_NEURON_NODE_NAME": "a@127.0.0.1"}
    plain = load_config({**base, "MIRROR_NEURON_REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert plain.redis_min_acks == 0  # single Redis: today's behaviour and cost
    ha = load_config({**base, "MIRROR_NEURON_REDIS_URL": "redis+sentinel://:pw@h1,h2,h3/m/0",
                      "MIRROR_NEURON_REDIS_SENTINEL_PASSWORD": "spw"})
    assert (ha.redis_min_acks, ha.redis_ack_timeout_ms, ha.redis_sentinel_password) == (ACKS_ALL, 250, "spw")
    assert ha.effective()["redis_min_acks"] == "all"
    sen = {**base, "MIRROR_NEURON_REDIS_URL": "redis+sentinel://h1/m/0"}
    one = load_config({**sen, "MIRROR_NEURON_REDIS_MIN_ACKS": "1"})
    assert one.redis_min_acks == 1
    with pytest.raises(ConfigError, match="'all' needs a Sentinel URL"):
        load_config({**base, "MIRROR_NEURON_REDIS_URL": "redis://h1/0", "MIRROR_NEURON_REDIS_MIN_ACKS": "all"})
    with pytest.raises(ConfigError, match="MIN_ACKS: 'some' is not an integer"):
        load_config({**sen, "MIRROR_NEURON_REDIS_MIN_ACKS": "some"})
    eff = str(ha.effective())
    assert "spw" not in eff and ":pw@" not in eff and "(set)" in eff
    with pytest.raises(ConfigError, match="ACK_TIMEOUT_MS"):
        load_config({**base, "MIRROR_NEURON_REDIS_URL": "redis+sentinel://h1/m/0",
                     "MIRROR_NEURON_REDIS_ACK_TIMEOUT_MS": "1500"})


# ---- real processes ------------------------------------------------------------------------
async def test_lease_acquire_and_renew_through_sentinel(stores: Callable[..., Store],
                                                        sentinel_cluster: SentinelCluster) -> None:
    s = stores()
    assert await s.check() and s.primary == ("127.0.0.1", sentinel_cluster.servers[0].port)
    latencies: list[float] = []
    s.acked.connect(latencies.append)
    m = LeaseManager(s, "a@h", "inc-a", TTL_MS, 400)
    lease = await granted(m, "leader")
    await m.renew_all()
    assert lease.valid() and m.renewals == 1 and len(latencies) == 2 and s.acks_waiting == 0
    # the grant is on every replica: it was acknowledged before acquire returned
    for srv in sentinel_cluster.servers[1:]:
        assert srv.client().get(lease.key) == lease.token


async def test_primary_sigkill_node_follows_and_epochs_grow(stores: Callable[..., Store],
                                                            sentinel_cluster: SentinelCluster) -> None:
    s1, s2 = stores(), stores()
    m1 = LeaseManager(s1, "a@h", "inc-a", TTL_MS, 400)
    m2 = LeaseManager(s2, "b@h", "inc-b", TTL_MS, 400)
    acked = [(await granted(m1, f"job:{i}")).epoch for i in range(5)]
    lease = await granted(m1, "leader")
    assert await s2.check()
    old = sentinel_cluster.primary()
    old.kill9()
    lost: list[str] = []
    m1.lost.connect(lambda lease: lost.append(lease.lost_reason))
    fresh = await granted(m2, "leader", timeout=40)
    assert fresh.epoch > lease.epoch and fresh.epoch > max(acked)
    assert sentinel_cluster.primary() is not old
    assert s2.failovers == 1 and s2.last_failover is not None and s2.primary != (old.host, old.port)
    await m1.renew_all()  # the old holder learns it lost everything before acting again
    assert not lease.valid() and lost


async def test_by_default_every_known_replica_acknowledges_until_a_lost_host_is_reset(
        stores: Callable[..., Store], sentinel_cluster: SentinelCluster) -> None:
    """The default (MIN_ACKS all): each granted lease is on both replicas the moment acquire
    returns. With one replica gone, every write is refused (not acted on) and says how to go on;
    once the Sentinels are told to forget it (SENTINEL RESET, the runbook for a host gone for
    good), writes wait for the replica left and go through."""
    s = stores(min_acks=ACKS_ALL)
    m = LeaseManager(s, "a@h", "inc-a", 60_000, 10_000)
    replicas = sentinel_cluster.servers[1:]
    for i in range(20):
        lease = await granted(m, f"both:{i}")
        on = [srv.client().get(lease.key) for srv in replicas]
        assert on == [lease.token, lease.token], (i, on)
    assert await s.acks.needed() == 2
    gone, left = replicas
    gone.kill9()
    refused: list[str] = []
    for i in range(3):  # a fresh name each try: a refused grant's key stays until its TTL
        with pytest.raises(WriteNotReplicated) as e:
            await m.acquire(f"one-replica:{i}")
        refused.append(str(e.value))
    assert "of the 2 replica(s) it waits for (every replica the Sentinels know of)" in refused[-1], refused
    assert "SENTINEL RESET" in refused[-1] and await s.acks.needed() == 2
    for sen in sentinel_cluster.sentinels:
        sen.client().execute_command("SENTINEL", "RESET", MASTER)
    await async_wait_until(lambda: _needs(s, 1), 30, "the Sentinels to know one replica (after RESET)")
    lease = await granted(m, "after-reset")
    assert left.client().get(lease.key) == lease.token


async def _needs(s: Store, n: int) -> bool:
    return await s.acks.needed() == n


async def test_no_replicas_means_writes_refused_with_reason(stores: Callable[..., Store],
                                                            sentinel_cluster: SentinelCluster) -> None:
    s = stores()
    m = LeaseManager(s, "a@h", "inc-a", TTL_MS, 400)
    await granted(m, "before")
    for srv in sentinel_cluster.servers[1:]:
        srv.kill9()
    with pytest.raises(WriteNotReplicated) as e:
        await m.acquire("after")
    assert ("replica" in str(e.value) and "not done" in str(e.value)) or "NOREPLICAS" in str(e.value)
    assert s.write_refused and "after" not in m.held
    # the primary itself refuses once its replicas are past min-replicas-max-lag
    primary = sentinel_cluster.servers[0].client()
    await async_wait_until(lambda: _norepl(primary), 10, "the primary to refuse writes (NOREPLICAS)")


async def _norepl(client: object) -> bool:
    try:
        client.set("probe", "1")  # type: ignore[attr-defined]
    except Exception as e:
        return "NOREPLICAS" in str(e)
    return False


async def test_unknown_master_name_is_a_config_error(stores: Callable[..., Store],
                                                     sentinel_cluster: SentinelCluster) -> None:
    s = stores(sentinel_cluster.url.replace(f"/{MASTER}/", "/no-such-master/"))
    with pytest.raises(ConfigError, match="no-such-master") as e:
        await s.check()
    assert sentinel_cluster.password not in str(e.value)


async def test_replica_as_plain_url_is_a_config_error(sentinel_cluster: SentinelCluster) -> None:
    s = Store(sentinel_cluster.servers[1].url, "ns")
    try:
        with pytest.raises(ConfigError, match="replica") as e:
            await s.check()
        assert e.value.exit_code == 78 and sentinel_cluster.password not in str(e.value)
    finally:
        await s.close()


async def test_no_reachable_sentinel_is_an_outage_not_a_crash(sentinel_cluster: SentinelCluster) -> None:
    s = Store("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/m/0", "ns", min_acks=1)
    try:
        assert not await s.check()
        assert "No master found" in s.last_error and "pw@" not in s.last_error
        with pytest.raises(RedisUnavailable):
            await s.scripts.renew_all([], [1000])
    finally:
        await s.close()


# ---- why the acknowledgement matters: an acked grant lost in a failover ----------------------
async def _lost_grant_scenario(min_acks: int, primary: RedisServer, replica: RedisServer) -> tuple[list[int], int]:
    """Grant leases on ``primary`` while ``replica`` is cut off from it (REPLICAOF NO ONE), then
    lose the primary and fail over to the replica. Returns (epochs the writer saw acknowledged,
    the epoch the new primary grants next)."""
    s = Store(primary.url, "lost", min_acks=min_acks, ack_timeout_ms=200)
    m = LeaseManager(s, "a@h", "inc-a", 60_000, 10_000)
    acked: list[int] = []
    try:
        res = await m.acquire("leader")
        assert isinstance(res, Lease)
        acked.append(res.epoch)
        await m.release(res)
        await async_wait_until(lambda: _synced(primary, replica), 10, "the replica to catch up")
        replica.client().replicaof("NO", "ONE")  # the replica is cut off (and will be promoted)
        try:
            res = await m.acquire("leader")
            if isinstance(res, Lease):
                acked.append(res.epoch)
        except WriteNotReplicated:
            pass  # not acknowledged: not acted on
    finally:
        await s.close()
    primary.kill9()  # the old primary is gone; the cut-off replica is the new primary
    s2 = Store(replica.url, "lost")
    try:
        m2 = LeaseManager(s2, "b@h", "inc-b", 60_000, 10_000)
        await s2.r.delete(m2.lease_key("leader"))  # its TTL ran out in the meantime
        res = await m2.acquire("leader")
        assert isinstance(res, Lease) and not isinstance(res, Holder)
        return acked, res.epoch
    finally:
        await s2.close()


async def _synced(primary: RedisServer, replica: RedisServer) -> bool:
    p = primary.client().info("replication")
    r = replica.client().info("replication")
    return bool(p.get("connected_slaves") == 1 and r.get("master_link_status") == "up"
                and r.get("master_repl_offset") == p["master_repl_offset"])


@pytest.mark.parametrize("min_acks", [0, 1], ids=["wait-patched-out", "intact"])
async def test_acknowledged_grant_survives_failover_only_with_wait(min_acks: int) -> None:
    primary = RedisServer().start()
    replica = RedisServer()
    replica.extra += ["--replicaof", primary.host, str(primary.port)]
    replica.start()
    try:
        await async_wait_until(lambda: _synced(primary, replica), 10, "the replica to sync")
        acked, next_epoch = await _lost_grant_scenario(min_acks, primary, replica)
    finally:
        primary.cleanup()
        replica.cleanup()
    if min_acks == 0:
        # the broken variant acted on epoch 2, the new primary never saw it and grants epoch 2 again
        assert acked == [1, 2] and next_epoch == 2, (acked, next_epoch)
    else:
        assert acked == [1] and next_epoch > max(acked), (acked, next_epoch)


async def test_execute_replicated_waits_on_the_transactions_connection(stores: Callable[..., Store],
                                                                      sentinel_cluster: SentinelCluster) -> None:
    s = stores()
    pipe = s.r.pipeline(transaction=True)
    pipe.hset(s.key("job", "j1"), mapping={"status": "pending"})
    pipe.sadd(s.key("jobs", "active"), "j1")
    assert await s.guard(s.execute_replicated(pipe)) == [1, 1]
    for srv in sentinel_cluster.servers[1:]:  # acknowledged: on every replica already
        assert srv.client().hget(s.key("job", "j1"), "status") == "pending"
    single = Store(sentinel_cluster.servers[0].url, "plain")
    try:  # single-Redis mode: a plain execute
        p2 = single.r.pipeline(transaction=True)
        p2.set("plain:x", "1")
        assert await single.execute_replicated(p2) == [True]
    finally:
        await single.close()
    for srv in sentinel_cluster.servers[1:]:
        srv.kill9()
    pipe = s.r.pipeline(transaction=True)
    pipe.hset(s.key("job", "j2"), mapping={"status": "pending"})
    with pytest.raises(WriteNotReplicated):
        await s.guard(s.execute_replicated(pipe))
