"""Job records at scale on a real Redis: the spec is stored compressed and read by one reader
(old jobs' plain ``spec`` included), and views read only the view fields, never the spec."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mn_node.jobs import blueprints
from mn_node.jobs.state import JobKeys, decode_spec, get_job, job_view, list_jobs, read_spec
from mn_node.jobs.submit import submit_job
from mn_node.store import Store
from tests.support.redis import RedisServer


@pytest.fixture
async def store(redis_server: RedisServer) -> Any:
    s = Store(redis_server.url, "jr")
    await s.r.flushdb()
    yield s
    await s.close()


async def test_a_100k_agent_spec_is_stored_compressed_and_read_back(store: Store) -> None:
    raw = blueprints.generate("prime_sweep_scale", {"workers": 100_000, "chunk_size": 10})
    job_id = (await submit_job(store, raw, bundle_sha=None, node="t"))["job_id"]
    stored = await store.r.hget(JobKeys(store, job_id).job, "spec_z")
    assert stored is not None and len(stored) < 5_000_000, len(stored or "")  # ~38 MB as JSON
    assert await store.r.hexists(JobKeys(store, job_id).job, "spec") == 0
    spec = await read_spec(store, job_id)
    assert spec is not None and len(spec["nodes"]) == 100_003 and spec["graph_id"] == "prime_sweep_scale"


async def test_views_read_no_spec_and_count_executors_per_node(store: Store) -> None:
    job_id = (await submit_job(store, blueprints.generate("prime_sweep_scale", {"workers": 3}), bundle_sha=None,
                              node="t"))["job_id"]
    key = JobKeys(store, job_id).job
    await store.r.hset(key, mapping={"node:mn1@a": 2, "node:mn2@b": 1, "agents_done": 3})
    h = await get_job(store, job_id)
    assert "spec_z" not in h and "spec" not in h and "request" not in h
    view = job_view(h)
    assert view["nodes"] == {"mn1@a": 2, "mn2@b": 1} and view["progress"] == {"done": 3, "total": 6}
    listed = await list_jobs(store)
    assert [j["job_id"] for j in listed] == [job_id] and listed[0]["nodes"] == view["nodes"]
    assert await get_job(store, "no-such-job") == {}
    assert await read_spec(store, "no-such-job") is None


async def test_a_job_stored_before_compression_is_read_the_same(store: Store) -> None:
    """Rolling upgrade: a job written by an older node holds its spec as plain JSON in ``spec``."""
    job_id = (await submit_job(store, blueprints.generate("prime_sweep_scale", {"workers": 2}), bundle_sha=None,
                              node="t"))["job_id"]
    key = JobKeys(store, job_id).job
    spec = await read_spec(store, job_id)
    await store.r.hdel(key, "spec_z")
    await store.r.hset(key, "spec", json.dumps(spec))
    assert await read_spec(store, job_id) == spec
    assert decode_spec({"spec_z": "not base64!"}) is None and decode_spec({"spec": "[1]"}) is None
