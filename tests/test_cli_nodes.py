"""`mn nodes` / `mn leader` against a real cluster (issue B item 7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.redis import free_port

pytestmark = pytest.mark.slow


def mn(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")}
    return subprocess.run([sys.executable, "-m", "mn_node.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_mn_nodes_and_leader_json_and_tables(make_cluster: Any) -> None:
    c: Cluster = make_cluster(3)
    lead = c.wait_leader()
    api = c.nodes[0].api
    p = mn("--api", api, "nodes", "--json")
    assert p.returncode == 0, p.stderr
    nodes = json.loads(p.stdout)
    assert sorted((n["name"], n["status"]) for n in nodes) == sorted((n.name, "up") for n in c.nodes)
    p = mn("--api", api, "leader", "--json")
    assert p.returncode == 0, p.stderr
    ld = json.loads(p.stdout)
    assert ld["node"] == lead["node"] and isinstance(ld["epoch"], int) and isinstance(ld["ttl_ms"], int)
    assert 0 < ld["ttl_ms"] <= 2500
    p = mn("--api", api, "nodes")
    assert p.returncode == 0 and "STATUS" in p.stdout and "3 up, 0 down" in p.stdout
    p = mn("--api", api, "leader")
    assert p.returncode == 0 and lead["node"] in p.stdout
    # a node that goes down shows as down
    c.kill9(3)
    from tests.support.wait import wait_until

    def down() -> bool:
        q = mn("--api", api, "nodes", "--json")
        return any(n["name"] == c.nodes[2].name and n["status"] == "down" for n in json.loads(q.stdout))

    wait_until(down, 10, "mn nodes to show the killed node down")


def test_mn_exit_69_when_no_node_answers() -> None:
    api = f"http://127.0.0.1:{free_port()}"
    for cmd in (["nodes", "--json"], ["leader", "--json"], ["nodes"]):
        p = mn("--api", api, *cmd)
        assert p.returncode == 69, (cmd, p.returncode, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "no mirror-neuron node answers" in lines[0] and "fix:" in lines[0]
        assert p.stdout == ""
