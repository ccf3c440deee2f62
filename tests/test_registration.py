"""Node registration guard, restart after a crash, and port conflicts (issue B)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.redis import RedisServer
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if " ERROR " in ln or ln.startswith("mn-node:")]


def test_same_name_second_daemon_refused_exit_69(make_cluster: Any, redis_server: RedisServer) -> None:
    c: Cluster = make_cluster(1)
    first = c.nodes[0]
    host = first.host
    env = c.env_for(first, MIRROR_NEURON_CLUSTER_NODES=f"mn1@{host}:4371",
                    MIRROR_NEURON_NODE_NAME=f"mn1@{host}:4371", MIRROR_NEURON_API_PORT="4001")
    p = subprocess.run([sys.executable, "-m", "mn_node.daemon"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 69, p.stderr
    lines = error_lines(p.stderr)
    assert len(lines) == 1, p.stderr
    line = lines[0]
    assert f"node name {first.name} is already in use by pid {first.pid}" in line
    assert "since" in line and "fix:" in line and f"kill {first.pid}" in line
    assert c.cookie not in p.stderr
    # the first daemon is untouched and still registered
    assert c.get(1, "/api/v1/health")["status"] == "ok"
    reg = redis_server.client().hgetall(f"{c.namespace}:node:{first.name}")
    assert reg["pid"] == str(first.pid)


def test_restart_after_kill9_starts_at_once_with_new_incarnation(make_cluster: Any, redis_server: RedisServer) -> None:
    c: Cluster = make_cluster(2)
    key = f"{c.namespace}:node:{c.nodes[1].name}"
    r = redis_server.client()
    inc1 = r.hget(key, "incarnation")
    assert inc1
    c.kill9(2)
    assert r.exists(key)  # the dead incarnation's registration is still there (TTL)
    t0 = time.monotonic()
    c.start(2)
    wait_until(lambda: c.get_status(2, "/api/v1/health")[0] == 200, 10, "the restarted node to be healthy")
    took = time.monotonic() - t0
    inc2 = r.hget(key, "incarnation")
    assert inc2 and inc2 != inc1
    assert r.hget(key, "pid") == str(c.nodes[1].pid)
    assert "taking over registration" in c.nodes[1].log_text()
    assert took < 8, f"restart took {took:.1f}s: it waited for the old registration to expire"
    c.wait_mesh()


def test_api_port_held_by_foreign_process_exit_69_names_pid(make_cluster: Any) -> None:
    c: Cluster = make_cluster(1, start=False)
    node = c.nodes[0]
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import socket,sys,time\n"
         "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         f"s.bind(('{node.host}', 4000)); s.listen(); print('ok', flush=True); time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        env = c.env_for(node)
        p = subprocess.run([sys.executable, "-m", "mn_node.daemon"], env=env, capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 69, p.stderr
        lines = error_lines(p.stderr)
        assert len(lines) == 1, p.stderr
        assert "MIRROR_NEURON_API_PORT" in lines[0] and f"{node.host}:4000" in lines[0]
        assert f"pid {holder.pid}" in lines[0] and "fix:" in lines[0]
    finally:
        holder.kill()
        holder.wait(10)


def test_dist_port_held_exit_69(make_cluster: Any) -> None:
    c: Cluster = make_cluster(1, start=False)
    node = c.nodes[0]
    s = socket.socket()
    s.bind((node.host, 4370))
    s.listen()
    try:
        p = subprocess.run([sys.executable, "-m", "mn_node.daemon"], env=c.env_for(node), capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 69, p.stderr
        lines = error_lines(p.stderr)
        assert len(lines) == 1 and "MIRROR_NEURON_DIST_PORT" in lines[0] and "in use" in lines[0], p.stderr
    finally:
        s.close()


def test_health_says_starting_until_start_has_finished(make_cluster: Any) -> None:
    """The API binds first (so a port conflict is reported before anything else), but it must
    not call the node healthy before the node has claimed its name: a restart check that reads
    the registration after health turns 200 would otherwise see the previous incarnation.
    A listener that accepts and never answers holds the node inside its first Redis call."""
    import threading

    held: list[socket.socket] = []
    accepted = threading.Event()
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def hold() -> None:
        with srv:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                held.append(conn)
                accepted.set()

    threading.Thread(target=hold, daemon=True).start()
    c: Cluster = make_cluster(1, start=False)
    try:
        c.start(1, MIRROR_NEURON_REDIS_URL=f"redis://127.0.0.1:{port}/0")
        assert accepted.wait(30), "the node never contacted its Redis"
        code, body = wait_until(lambda: c.get_status(1, "/api/v1/health", timeout=0.5), 5, "the API to answer")
        assert code == 503 and "starting" in body["reasons"], body
        # the silent Redis times out; start() finishes without a registration and says why
        code, body = wait_until(
            lambda: (s := c.get_status(1, "/api/v1/health")) and "starting" not in s[1]["reasons"] and s,
            15, "start() to finish")
        assert code == 503 and any(r.startswith("redis unreachable") for r in body["reasons"]), body
    finally:
        srv.close()
        for conn in held:
            conn.close()
