"""Every failure the seed names, produced for real on a cluster of mn-node processes, and what
doctor says about it (status, culprit, fix)."""

from __future__ import annotations

import base64
import os
import signal
import sys

import pytest

from tests.doctor._doctor import env_file_for, run_doctor
from tests.doctor.conftest import proxy_argv
from tests.support.cluster import Cluster, wait_gone
from tests.support.redis import RedisServer, free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


def healthy(c: Cluster) -> None:
    c.wait_leader()
    wait_until(lambda: all(len(c.get(n.index, "/api/v1/health")["reasons"]) == 0 for n in c.live()), 10,
               "every node healthy")
    wait_until(lambda: all(c.get(n.index, "/api/v1/nodes")["nodes"][0].get("registered") for n in c.live()), 10,
               "registrations")


def test_healthy_three_nodes_all_ok_fast(make_cluster) -> None:
    c = make_cluster(3)
    healthy(c)
    f = env_file_for(c, c.nodes[0])
    runs = [run_doctor(f) for _ in range(3)]
    for d in runs:
        bad = {n: s for n, s in d.statuses().items() if s != "ok"}
        assert not bad, d.out
        assert d.code == 0
        names = [ch["name"] for ch in d.doc["checks"]]  # type: ignore[index]
        assert names[:5] == ["config", "config-agreement", "local-node", f"peer {c.nodes[1].name}",
                             f"peer {c.nodes[2].name}"]
        assert c.cookie not in d.out
    text = run_doctor(f, json_out=False)
    assert text.code == 0 and "[!]" not in text.out and "[✗]" not in text.out
    assert text.out.count("[✓]") == len(runs[0].doc["checks"])  # type: ignore[index]
    walls = sorted(d.seconds for d in [*runs, text])
    inner = sorted(d.doc["summary"]["elapsed_s"] for d in runs)  # type: ignore[index]
    print(f"\nhealthy 3-node doctor: wall {', '.join(f'{w:.2f}' for w in walls)} s; "
          f"checks {', '.join(f'{x:.2f}' for x in inner)} s")
    assert walls[len(walls) // 2] <= 6.0  # goal 3 s; generous bound for a loaded CI box


def test_nothing_listening_on_a_peers_dist_port(make_cluster) -> None:
    c = make_cluster(3)
    healthy(c)
    assert c.stop(2) == 0
    d = run_doctor(env_file_for(c, c.nodes[0]))
    p = d.check(f"peer {c.nodes[1].name}")
    assert p["status"] == "fail" and p["kind"] == "unavailable", p
    assert f"TCP {c.nodes[1].host}:4370: connection refused: nothing listens on the dist port" in p["detail"]
    assert f"on {c.nodes[1].host}: systemctl start mirror-neuron" in p["fix"]
    assert d.check(f"peer {c.nodes[2].name}")["status"] == "ok"
    assert d.code == 69


def test_filtered_dist_port_is_named_and_doctor_ends_within_its_timeout(make_cluster, nft_drop) -> None:
    c = make_cluster(3)
    healthy(c)
    nft_drop(c.nodes[1].host)  # mn2 silently drops everything (a firewall DROP, not REJECT)
    f = env_file_for(c, c.nodes[0])
    d = run_doctor(f, "--timeout", "2")
    p = d.check(f"peer {c.nodes[1].name}")
    assert p["status"] == "fail" and p["kind"] == "timeout", p
    assert "packets are silently dropped, most likely a firewall filtering the dist port" in p["detail"]
    assert "tcp dport 4370 accept" in p["fix"]
    assert d.check(f"peer {c.nodes[2].name}")["status"] == "ok"
    assert d.code == 75  # only timeouts
    assert d.doc["summary"]["elapsed_s"] <= 2.0  # type: ignore[index]
    print(f"\nfiltered peer, --timeout 2: checks {d.doc['summary']['elapsed_s']:.2f}s, wall {d.seconds:.2f}s")  # type: ignore[index]


def test_hung_peer_that_never_answers_the_handshake(make_cluster) -> None:
    c = make_cluster(3)
    healthy(c)
    c.signal(2, signal.SIGSTOP)  # its kernel still accepts TCP; the process never answers
    try:
        d = run_doctor(env_file_for(c, c.nodes[0]), "--timeout", "2")
    finally:
        c.signal(2, signal.SIGCONT)
    p = d.check(f"peer {c.nodes[1].name}")
    assert p["status"] == "fail" and p["kind"] == "timeout" and "handshake got no reply" in p["detail"], p
    assert "hung" in p["detail"]
    assert d.doc["summary"]["elapsed_s"] <= 2.0  # type: ignore[index]


def test_cookie_mismatch_names_the_node_and_both_hashes(make_cluster) -> None:
    from mn_node.config import cookie_hash

    c = make_cluster(3, start=False)
    other = base64.b64encode(os.urandom(32)).decode()
    c.start(1)
    c.start(2, MIRROR_NEURON_COOKIE=other)
    c.start(3)
    c.wait_mesh(nodes=[c.nodes[0], c.nodes[2]])
    c.wait_leader()
    mine, theirs = cookie_hash(c.cookie.encode()), cookie_hash(other.encode())
    wait_until(lambda: c.get(2, "/api/v1/nodes")["nodes"], 10, "mn2 to answer")
    d = run_doctor(env_file_for(c, c.nodes[0]))
    p = d.check(f"peer {c.nodes[1].name}")
    assert p["status"] == "fail", p
    assert f"cookie mismatch (invalid challenge reply): {c.nodes[1].name} has cookie hash {theirs}, this node {mine}" \
        in p["detail"]
    assert "set the same MIRROR_NEURON_COOKIE on every node" in p["fix"]
    agree = wait_until(lambda: (r := run_doctor(env_file_for(c, c.nodes[0]), "--check", "config-agreement")
                                .check("config-agreement"))["status"] == "fail" and r, 15, "mn2 registered")
    assert f"{c.nodes[1].name} has cookie hash {theirs}, the others {mine}" in agree["detail"]
    assert agree["kind"] == "unavailable"  # not this box's fault
    for text in (d.out, str(agree)):
        assert c.cookie not in text and other not in text
    # seen from the odd node itself: its own config is the bad one
    d2 = run_doctor(env_file_for(c, c.nodes[1]), "--check", "config-agreement")
    assert d2.check("config-agreement")["kind"] == "config" and d2.code == 78


def test_api_port_taken_by_an_unrelated_process(make_cluster, spawn) -> None:
    c = make_cluster(3, start=False)
    host = c.nodes[0].host
    blocker = spawn([sys.executable, "-m", "http.server", "4000", "--bind", host], wait_port=(host, 4000))
    c.start(2)
    c.start(3)
    node1 = c.start(1)
    assert node1.proc is not None and wait_gone(node1.proc, 20) == 69
    d = run_doctor(env_file_for(c, c.nodes[0]))
    p = d.check("ports")
    assert p["status"] == "fail", p
    assert f"API port {host}:4000 is held by pid {blocker.pid} (" in p["detail"] and "http.server" in p["detail"]
    assert f"kill {blocker.pid}" in p["fix"] and "MIRROR_NEURON_API_PORT" in p["fix"]
    ln = d.check("local-node")
    assert ln["status"] == "fail" and f"pid {blocker.pid}" in ln["detail"] and "not mn-node" in ln["detail"]
    assert d.code == 69


def test_two_nodes_on_one_box_want_the_same_api_port(make_cluster) -> None:
    c = make_cluster(2, start=False)
    # both nodes bind their API on the same address: the second cannot start
    c.start(1, MIRROR_NEURON_API_BIND="127.0.0.1", MIRROR_NEURON_API_PORT=str(free_port()))
    port = c.nodes[0].env["MIRROR_NEURON_API_PORT"]
    wait_until(lambda: c.get(1, "/api/v1/health", 1) if False else _api_up("127.0.0.1", int(port)), 15, "mn1 API")
    n2 = c.start(2, MIRROR_NEURON_API_BIND="127.0.0.1", MIRROR_NEURON_API_PORT=port)
    assert n2.proc is not None and wait_gone(n2.proc, 20) == 69
    d = run_doctor(env_file_for(c, c.nodes[1]), "--check", "ports")
    p = d.check("ports")
    assert p["status"] == "fail", p
    assert (f"API port 127.0.0.1:{port} is held by another mn-node, {c.nodes[0].name} (pid {c.nodes[0].pid})"
            in p["detail"]) and "two nodes on one box" in p["detail"]


def _api_up(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def test_stale_process_holding_the_node_name(make_cluster, spawn) -> None:
    c = make_cluster(3)
    healthy(c)
    stale = c.nodes[0]
    c.signal(1, signal.SIGSTOP)  # the old instance hangs (an unclean, half-dead daemon)
    try:
        # the operator starts mn1 again: refused, the name is in use
        again = spawn([sys.executable, "-m", "mn_node.daemon"], env=stale.env)
        assert wait_gone(again, 30) == 69
        d = run_doctor(env_file_for(c, stale), "--timeout", "3")
    finally:
        c.signal(1, signal.SIGCONT)
    p = d.check("node-name")
    assert p["status"] == "fail", p
    assert f"{stale.name} is held by a stale mn-node, pid {stale.pid} (" in p["detail"] and "stopped" in p["detail"]
    assert f"kill -9 {stale.pid}" in p["fix"]
    assert d.code in (69, 75)


def test_redis_down_seen_from_a_running_cluster(make_cluster, redis_server: RedisServer) -> None:
    c = make_cluster(3)
    healthy(c)
    redis_server.kill9()
    wait_until(lambda: c.get_status(1, "/api/v1/health")[1]["redis"] == "unreachable", 10, "mn1 to notice")
    d = run_doctor(env_file_for(c, c.nodes[0]))
    r = d.check("redis")
    assert r["status"] == "fail" and "Redis is down" in r["detail"], r
    s = d.check("split-brain")
    assert s["status"] == "fail" and "isolated side" in s["detail"] and "will not lead or own jobs" in s["detail"]
    assert d.check("local-node")["status"] == "fail"
    assert d.code == 69


def test_node_cut_off_from_redis_while_seeing_peers(make_cluster, redis_server: RedisServer, spawn) -> None:
    c = make_cluster(3, start=False)
    n3 = c.nodes[2]
    proxy_port = free_port(n3.host)
    proxy = spawn(proxy_argv((n3.host, proxy_port), ("127.0.0.1", redis_server.port)), wait_port=(n3.host, proxy_port))
    c.start(1)
    c.start(2)
    c.start(3, MIRROR_NEURON_REDIS_URL=f"redis://{n3.host}:{proxy_port}/0")
    c.wait_mesh()
    healthy(c)
    os.kill(proxy.pid, signal.SIGKILL)  # mn3's only path to Redis is gone; the links stay up
    proxy.wait(10)
    wait_until(lambda: c.get_status(3, "/api/v1/health")[1]["redis"] == "unreachable", 10, "mn3 to lose Redis")
    d = run_doctor(env_file_for(c, n3))
    s = d.check("split-brain")
    assert s["status"] == "fail", s
    assert "this node is on the isolated side: it reaches peers" in s["detail"]
    assert c.nodes[0].name in s["detail"] and c.nodes[1].name in s["detail"]
    assert "will not lead or own jobs" in s["detail"] and "reach Redis" in s["detail"]
    assert "MIRROR_NEURON_REDIS_URL" in s["fix"]
    # and from a healthy node: mn3 is the culprit
    d1 = run_doctor(env_file_for(c, c.nodes[0]))
    p = d1.check(f"peer {n3.name}")
    assert p["status"] == "fail" and "unhealthy" in p["detail"] and "redis unreachable" in p["detail"], p
    assert d1.check("split-brain")["status"] == "ok"


def test_node_list_differs_on_one_node(make_cluster) -> None:
    c = make_cluster(3, start=False)
    n1, n2, n3 = c.nodes
    c.start(1)
    c.start(2)
    c.start(3, MIRROR_NEURON_CLUSTER_NODES=f"{n1.name},{n3.name}")  # mn2 forgotten on mn3
    c.wait_mesh()
    healthy(c)
    d = run_doctor(env_file_for(c, n1))
    a = d.check("config-agreement")
    assert a["status"] == "fail" and a["kind"] == "unavailable", a
    assert f"{n3.name} has a different node list (missing {n2.name})" in a["detail"]
    assert f"on {n3.name}: set MIRROR_NEURON_CLUSTER_NODES={','.join(sorted([n1.name, n2.name, n3.name]))}" \
        in a["fix"]
    assert d.code == 69
    d3 = run_doctor(env_file_for(c, n3))
    assert d3.check("config-agreement")["kind"] == "config" and d3.code == 78
