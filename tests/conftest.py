from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster
from tests.support.redis import RedisServer
from tests.support.tools import missing_tools, redis_server_missing


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_tool(*tools, root=False): skip, naming them, unless these commands exist "
        "(tests/support/tools.py)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires_tool"):
        if missing := missing_tools(*mark.args, root=bool(mark.kwargs.get("root", False))):
            pytest.skip(f"needs {', '.join(missing)} (`sudo bash .ci/run` installs every tool the tests use)")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if why := redis_server_missing():
        pytest.skip(why)
    srv = RedisServer()
    try:
        srv.start()
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture
def make_cluster(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[object]:
    """Factory: ``make_cluster(size=3, **opts)``; every process is ended afterwards, logs
    printed when the test failed."""
    made: list[Cluster] = []

    def factory(size: int = 3, start: bool = True, **kw: object) -> Cluster:
        c = Cluster(redis_url=redis_server.url, size=size, **kw)  # type: ignore[arg-type]
        made.append(c)
        if start:
            c.start_all()
        return c

    yield factory
    failed = getattr(request.node, "rep_call", None)
    for c in made:
        if failed is not None and failed.failed:
            print(c.dump_logs())
        c.cleanup()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
