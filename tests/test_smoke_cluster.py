from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_three_nodes_mesh_and_elect(make_cluster):
    c = make_cluster(3)
    lead = c.wait_leader()
    assert lead["node"] in {n.name for n in c.nodes}
    assert lead["epoch"] >= 1
