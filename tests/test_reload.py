"""Reload (SIGHUP, `systemctl reload`, issue I item 4) on real mn-node processes and a real Redis:
the node stays up and keeps its leases, applies the live settings, names the ones that need a
restart, and refuses a broken configuration without stopping."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.jobs._bundles import one_command_bundle, submit_bundle
from tests.jobs._jobs import rclient
from tests.support.cluster import Cluster, NodeProc
from tests.support.redis import die_with_parent
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


def start_with_env_file(c: Cluster, index: int, env_file: Path, **overrides: str) -> NodeProc:
    """Like ``Cluster.start`` but the daemon also reads ``--env-file`` (its values win)."""
    node = c.nodes[index - 1]
    node.env = c.env_for(node, **overrides)
    with open(node.log, "ab") as logf:
        node.proc = subprocess.Popen([sys.executable, "-m", "mn_node.daemon", "--env-file", str(env_file)],
                                     env=node.env, stdout=logf, stderr=logf, start_new_session=True,
                                     preexec_fn=die_with_parent)
    return node


def wait_log(node: NodeProc, text: str, timeout: float = 15.0, count: int = 1) -> str:
    def seen() -> str:
        log = node.log_text()
        return log if log.count(text) >= count else ""

    try:
        return wait_until(seen, timeout, f"{text!r} in the log of {node.name}")
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- log ---\n{node.log_text()[-3000:]}") from None


def lease_tokens(c: Cluster, job_id: str) -> dict[str, str | None]:
    r = rclient(c)
    return {"leader": r.get(f"{c.namespace}:lease:cluster:leader"), "job": r.get(f"{c.namespace}:lease:job:{job_id}")}


def registration(c: Cluster, node: NodeProc) -> dict[str, str]:
    reg: dict[str, str] = rclient(c).hgetall(f"{c.namespace}:node:{node.name}")
    return reg


def mn_nodes_json(api: str) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")}
    p = subprocess.run([sys.executable, "-m", "mn_node.cli", "--api", api, "nodes", "--json"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    rows: list[dict[str, Any]] = json.loads(p.stdout)
    return rows


def mn_nodes_text(api: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")}
    p = subprocess.run([sys.executable, "-m", "mn_node.cli", "--api", api, "nodes"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_sighup_applies_live_settings_keeps_leases_and_names_restart_ones(make_cluster: Any,
                                                                         tmp_path: Path) -> None:
    c: Cluster = make_cluster(1, start=False)
    env_file = tmp_path / "mn.env"
    env_file.write_text("MIRROR_NEURON_EXECUTOR_CAPACITY=2\nMIRROR_NEURON_LOG_LEVEL=INFO\n")
    node = start_with_env_file(c, 1, env_file)
    c.wait_started()
    c.wait_leader()
    job = submit_bundle(c, one_command_bundle(tmp_path / "b", ["sleep", "60"]))
    before = wait_until(lambda: (t := lease_tokens(c, job))["job"] and t["leader"] and t, 20,
                        "the node to hold the leader and the job lease")
    assert str(before["job"]).startswith(node.name + "|") and str(before["leader"]).startswith(node.name + "|")

    env_file.write_text("MIRROR_NEURON_EXECUTOR_CAPACITY=5\nMIRROR_NEURON_LOG_LEVEL=DEBUG\n"
                        "MIRROR_NEURON_COMMAND_TIMEOUT=15m\nMIRROR_NEURON_LINK_TICK_MS=300ms\n"
                        "MIRROR_NEURON_JOB_RETENTION=2d\n")
    os.kill(node.pid, signal.SIGHUP)
    log = wait_log(node, "need a restart")
    assert "reload: MIRROR_NEURON_EXECUTOR_CAPACITY 2 -> 5" in log
    assert "reload: MIRROR_NEURON_LOG_LEVEL INFO -> DEBUG" in log
    assert "reload: MIRROR_NEURON_COMMAND_TIMEOUT 3600s -> 900s" in log
    assert "reload: MIRROR_NEURON_JOB_RETENTION 604800s -> 172800s" in log
    restart_line = next(ln for ln in log.splitlines() if "need a restart" in ln)
    assert "MIRROR_NEURON_LINK_TICK_MS" in restart_line and "WARNING" in restart_line
    # the capacity reaches the registration on its next refresh, and `mn nodes`
    wait_until(lambda: registration(c, node).get("capacity") == "5", 10, "capacity 5 in the registration")
    def my_row() -> dict[str, Any] | None:
        r = next(r for r in mn_nodes_json(node.api) if r["name"] == node.name)
        return r if r["load"].get("slots_used") == 1 else None

    row = wait_until(my_row, 15, "the running command's slot in the registration")
    facts = row["load"]
    assert row["capacity"] == 5 and facts["slots_total"] == 5, row
    # node facts: the sleeping command holds one slot
    assert facts["slots_used"] == 1 and facts["slots_free"] == 4, facts
    assert facts["cpus"] == os.cpu_count() and facts["mem_total"] >= facts["mem_available"] > 0, facts
    assert facts["commands"] == "on" and row["commands"] == "on" and row["drain"] == "" and row["version"], row
    text = mn_nodes_text(node.api)
    assert "SLOTS USED/FREE" in text and " 1/4 " in text and "MEM FREE/TOTAL" in text, text
    assert c.get(1, "/api/v1/system/summary")["executor_capacity"] == 5
    # still up, same incarnation, same leases (same tokens: same epochs)
    assert node.alive() and c.get_status(1, "/api/v1/health")[0] == 200
    assert lease_tokens(c, job) == before
    assert "stopping" not in node.log_text()


def test_broken_env_file_is_refused_and_the_running_config_kept(make_cluster: Any, tmp_path: Path) -> None:
    c: Cluster = make_cluster(1, start=False)
    env_file = tmp_path / "mn.env"
    env_file.write_text("MIRROR_NEURON_EXECUTOR_CAPACITY=2\n")
    node = start_with_env_file(c, 1, env_file)
    c.wait_started()
    env_file.write_text("MIRROR_NEURON_LOG_LEVEL=ERROR\nMIRROR_NEURON_EXECUTOR_CAPACITY=lots\n")
    os.kill(node.pid, signal.SIGHUP)
    log = wait_log(node, "reload refused")
    line = next(ln for ln in log.splitlines() if "reload refused" in ln)
    assert line.startswith("ERROR") or " ERROR " in line[:40], line
    assert "MIRROR_NEURON_EXECUTOR_CAPACITY: 'lots' is not an integer" in line
    assert "keeping the running configuration" in line
    env_file.write_text("MIRROR_NEURON_LOG_LEVEL=ERROR\nthis is not a setting\n")
    os.kill(node.pid, signal.SIGHUP)
    log = wait_log(node, "reload refused", count=2)
    assert "line 2 is not KEY=VALUE" in log
    # the log level stayed INFO: the second request was still logged at INFO
    assert log.count("reload requested (SIGHUP)") == 2
    assert node.alive() and c.get_status(1, "/api/v1/health")[0] == 200
    assert c.get(1, "/api/v1/system/summary")["executor_capacity"] == 2


def test_mn_node_reload_forwards_the_environment_and_speaks_sd_notify(make_cluster: Any) -> None:
    """The unit's ExecReload: `mn-node reload $MAINPID` with the re-read environment; the daemon
    sends RELOADING=1 + MONOTONIC_USEC, then READY=1; an added node is dialled."""
    c: Cluster = make_cluster(2, start=False)
    sock_dir = Path(tempfile.mkdtemp(prefix="mn-notify-"))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_dir / "notify"))
    notify.settimeout(0.2)
    first, second = c.nodes
    stale = c.workdir / "state-mn1" / "reload-env.json"  # left by an earlier incarnation
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"MIRROR_NEURON_EXECUTOR_CAPACITY": "9"}))
    try:
        node = c.start(1, MIRROR_NEURON_CLUSTER_NODES=first.name, NOTIFY_SOCKET=str(sock_dir / "notify"))
        c.wait_started(nodes=[node])
        assert not stale.exists()
        messages = _drain(notify, until="READY=1", timeout=15)
        assert any(m.startswith("READY=1") for m in messages), messages
        env = dict(node.env, MIRROR_NEURON_CLUSTER_NODES=c.node_list, MIRROR_NEURON_EXECUTOR_CAPACITY="3")
        env.pop("NOTIFY_SOCKET")
        p = subprocess.run([sys.executable, "-m", "mn_node.daemon", "reload", str(node.pid)], env=env,
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        log = wait_log(node, "reload: MIRROR_NEURON_CLUSTER_NODES")
        assert f"{first.name} -> {c.node_list}" in log and "reload: MIRROR_NEURON_EXECUTOR_CAPACITY" in log
        messages = _drain(notify, until="READY=1", timeout=15)
        reloading = [m for m in messages if m.startswith("RELOADING=1")]
        assert reloading and "MONOTONIC_USEC=" in reloading[0], messages
        assert messages.index(reloading[0]) < max(i for i, m in enumerate(messages) if m.startswith("READY=1"))
        snapshot = Path(node.env["MIRROR_NEURON_STATE_DIR"]) / "reload-env.json"
        assert "MIRROR_NEURON_COOKIE" not in json.loads(snapshot.read_text())
        # the added node is expected (dialled) at once, and meshes when it starts
        wait_until(lambda: second.name in {r["name"] for r in c.get(1, "/api/v1/nodes")["nodes"]}, 10,
                   "the added node in the member table")
        c.start(2)
        c.wait_mesh()
        assert node.alive()
    finally:
        notify.close()


def _drain(sock: socket.socket, until: str, timeout: float) -> list[str]:
    """Datagrams received until one starts with ``until`` (or the deadline)."""
    got: list[str] = []

    def received() -> bool:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        return any(m.startswith(until) for m in got)

    wait_until(received, timeout, f"{until} on the notify socket", interval=0)
    return got


# ---- the Reloader's registry, in-process (the API other layers register their settings with) ----
BASE = {"MIRROR_NEURON_COOKIE": "x" * 40, "MIRROR_NEURON_NODE_NAME": "mn1@127.0.0.1",
        "MIRROR_NEURON_REDIS_URL": "redis://127.0.0.1:6379/0"}


def test_reloader_registry_applies_refuses_and_keeps_old_values_on_failure() -> None:
    import asyncio
    import logging

    from mn_node.config import load_config
    from mn_node.logs import current_level, set_level, setup_logging
    from mn_node.reload import Reloader

    env = dict(BASE)
    r = Reloader(load_config(env), lambda: load_config(env))
    seen: list[tuple[str, Any, Any]] = []

    def boom(old: Any, new: Any) -> None:
        raise RuntimeError("pool gone")

    async def timeout(old: float, new: float) -> None:  # async callbacks are awaited
        seen.append(("timeout", old, new))

    r.register("executor_capacity", boom)
    r.register("command_timeout_s", timeout, show=lambda s: f"{s:g}s")
    r.register("log_level", lambda old, new: set_level(new))
    r.register("log_format", lambda old, new: setup_logging("t", current_level(), new))
    r.register("nodes", lambda old, new: seen.append(("nodes", old, new)),
               refuse=lambda old, new: "removed" if set(old) - set(new) else None)
    with pytest.raises(ValueError):
        r.register("no_such_setting", boom)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        env.update({"MIRROR_NEURON_EXECUTOR_CAPACITY": "7", "MIRROR_NEURON_COMMAND_TIMEOUT": "2m",
                    "MIRROR_NEURON_LOG_LEVEL": "DEBUG", "MIRROR_NEURON_LOG_FORMAT": "json",
                    "MIRROR_NEURON_API_PORT": "4100", "MIRROR_NEURON_CLUSTER_NODES": "mn1@127.0.0.1,mn2@127.0.0.2"})
        report = asyncio.run(r.reload())
        assert report.failed == ["MIRROR_NEURON_EXECUTOR_CAPACITY"] and report.refused is None
        assert report.restart == ["MIRROR_NEURON_API_PORT"]
        assert set(report.applied) == {"MIRROR_NEURON_COMMAND_TIMEOUT", "MIRROR_NEURON_LOG_LEVEL",
                                       "MIRROR_NEURON_LOG_FORMAT", "MIRROR_NEURON_CLUSTER_NODES"}
        assert current_level() == "DEBUG"  # the format change kept the new level
        assert r.cfg.command_timeout_s == 120 and r.cfg.api_port == 4000 and r.cfg.executor_capacity != 7
        assert ("timeout", 3600.0, 120.0) in seen and len(r.cfg.nodes) == 2
        env["MIRROR_NEURON_CLUSTER_NODES"] = "mn1@127.0.0.1"  # a removal needs a restart
        env["MIRROR_NEURON_LOG_LEVEL"] = "LOUD"
        assert asyncio.run(r.reload()).refused == ("MIRROR_NEURON_LOG_LEVEL: 'LOUD' is unknown; fix: use DEBUG, "
                                                   "INFO, WARNING or ERROR")
        env["MIRROR_NEURON_LOG_LEVEL"] = "DEBUG"
        report = asyncio.run(r.reload())
        assert report.restart[0].startswith("MIRROR_NEURON_CLUSTER_NODES (removed") and len(r.cfg.nodes) == 2
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
