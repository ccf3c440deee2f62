"""Doctor without a cluster: usage, bad input, local config, and Redis faults on a real Redis."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

from tests.doctor._doctor import run_doctor, write_env_file
from tests.support.redis import RedisServer
from tests.support.wait import wait_until

COOKIE = base64.b64encode(os.urandom(32)).decode()


def base_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {
        "MIRROR_NEURON_COOKIE": COOKIE,
        "MIRROR_NEURON_CLUSTER_NODES": "mn1@127.0.0.1",
        "MIRROR_NEURON_NODE_NAME": "mn1@127.0.0.1",
        "MIRROR_NEURON_REDIS_URL": redis_url,
        "MIRROR_NEURON_REDIS_NAMESPACE": f"mndoc{os.getpid()}",
        "MIRROR_NEURON_API_PORT": "1",  # nothing listens there: no local node
        "MIRROR_NEURON_DIST_PORT": "2",
        "MIRROR_NEURON_DISCOVERY": "static",
    }
    env.update(extra)
    return env


def assert_no_cookie(run_out: str) -> None:
    assert COOKIE not in run_out
    assert COOKIE[:16] not in run_out


def test_list_checks_in_fixed_order() -> None:
    d = run_doctor(None, "--list-checks", json_out=False)
    assert d.code == 0
    names = [line.split()[0] for line in d.out.splitlines()]
    assert names == ["config", "config-agreement", "local-node", "peers", "ports", "node-name", "redis",
                     "redis-eviction", "redis-persistence", "clock-skew", "redis-sentinel", "redis-replication",
                     "redis-clock", "split-brain", "leadership", "drain", "systemd",
                     "mdns"]


def test_bad_input_is_one_line_with_a_fix(tmp_path: Path) -> None:
    for args, code, needle in [
        (["--check", "nope"], 64, "unknown check 'nope'"),
        (["--timeout", "0"], 64, "--timeout 0 is out of range"),
        (["--api", "ftp://x"], 64, "not an http(s)"),
        (["--env-file", str(tmp_path / "missing.env")], 78, "does not exist"),
        (["--bogus"], 64, "unrecognized arguments"),
    ]:
        d = run_doctor(None, *args, json_out=False)
        assert d.code == code, (args, d.code, d.err)
        lines = [ln for ln in d.err.splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0] and "fix:" in lines[0], (args, d.err)


def test_no_config_is_exit_78_and_json_shape() -> None:
    d = run_doctor(None)
    assert d.code == 78, d.out + d.err
    assert d.doc is not None
    c = d.doc["checks"][0]
    assert c["name"] == "config" and c["status"] == "fail" and c["kind"] == "config"
    assert "MIRROR_NEURON_COOKIE is not set" in c["detail"] and "head -c 32 /dev/urandom" in c["fix"]
    for chk in d.doc["checks"]:
        assert set(chk) >= {"name", "status", "detail", "fix"} and chk["status"] in ("ok", "warn", "fail")
    s = d.doc["summary"]
    assert s["exit_code"] == 78 and s["fail"] >= 1 and s["ok"] + s["warn"] + s["fail"] == s["total"]


def test_weak_cookie_and_world_readable_env_file_warn(redis_server: RedisServer, tmp_path: Path) -> None:
    f = write_env_file(tmp_path / "mn.env", base_env(redis_server.url, MIRROR_NEURON_COOKIE="mirrorneuron"))
    f.chmod(0o644)
    d = run_doctor(f, "--check", "config")
    c = d.check("config")
    assert c["status"] == "warn", c
    assert "public default" in c["detail"] and "readable by every user" in c["detail"]
    assert f"chmod 0640 {f}" in c["fix"]
    assert d.code == 0  # warnings never fail the run
    # the only mention is the warning naming the original's *public* default
    assert d.out.count("mirrorneuron") == d.out.count("public default 'mirrorneuron'")


def test_healthy_redis_checks_and_cookie_never_printed(redis_server: RedisServer, tmp_path: Path) -> None:
    f = write_env_file(tmp_path / "mn.env", base_env(redis_server.url))
    d = run_doctor(f, "--check", "redis", "--check", "redis-eviction", "--check", "redis-persistence",
                   "--check", "clock-skew", "--check", "config")
    assert d.statuses() == {"config": "ok", "redis": "ok", "redis-eviction": "ok", "redis-persistence": "ok",
                            "clock-skew": "ok"}, d.out
    assert d.code == 0
    assert_no_cookie(d.out)
    text = run_doctor(f, "-v", json_out=False)
    assert_no_cookie(text.out)


def test_redis_with_password_never_printed(tmp_path: Path) -> None:
    srv = RedisServer(password="s3cret-pw-xyz").start()
    try:
        f = write_env_file(tmp_path / "mn.env", base_env(srv.url))
        d = run_doctor(f, "--check", "redis", "--check", "redis-eviction")
        assert d.check("redis")["status"] == "ok"
        srv.client().config_set("maxmemory-policy", "volatile-lru")
        ev = run_doctor(f, "--check", "redis-eviction").check("redis-eviction")
        assert ev["status"] == "fail" and f"redis-cli -h 127.0.0.1 -p {srv.port} --askpass CONFIG SET" in ev["fix"]
        assert "s3cret-pw-xyz" not in str(ev)
        assert "s3cret-pw-xyz" not in d.out
        bad = srv.url.replace("s3cret-pw-xyz", "wrong")
        f2 = write_env_file(tmp_path / "bad.env", base_env(bad))
        d2 = run_doctor(f2, "--check", "redis")
        c = d2.check("redis")
        assert c["status"] == "fail" and c["kind"] == "config" and "authentication failed" in c["detail"]
        assert "password" in c["fix"] and d2.code == 78
        assert "wrong" not in d2.out.replace("wrong or missing", "")
    finally:
        srv.cleanup()


def test_maxmemory_policy_allkeys_lru_fails(redis_server: RedisServer, tmp_path: Path) -> None:
    redis_server.client().config_set("maxmemory-policy", "allkeys-lru")
    f = write_env_file(tmp_path / "mn.env", base_env(redis_server.url))
    d = run_doctor(f, "--check", "redis-eviction", "--check", "redis")
    c = d.check("redis-eviction")
    assert c["status"] == "fail" and "allkeys-lru" in c["detail"], c
    assert f"redis-cli -h 127.0.0.1 -p {redis_server.port} CONFIG SET maxmemory-policy noeviction" in c["fix"]
    assert d.check("redis")["status"] == "ok"
    assert d.code == 69


def test_aof_off_warns(tmp_path: Path) -> None:
    srv = RedisServer(appendonly=False).start()
    try:
        f = write_env_file(tmp_path / "mn.env", base_env(srv.url))
        d = run_doctor(f, "--check", "redis-persistence")
        c = d.check("redis-persistence")
        assert c["status"] == "warn" and "AOF is off" in c["detail"] and "appendonly yes" in c["fix"]
        assert d.code == 0
    finally:
        srv.cleanup()


def test_redis_down_is_named_with_the_fix(redis_server: RedisServer, tmp_path: Path) -> None:
    f = write_env_file(tmp_path / "mn.env", base_env(redis_server.url))
    redis_server.kill9()
    d = run_doctor(f)
    c = d.check("redis")
    assert c["status"] == "fail" and c["kind"] == "unavailable", c
    assert f"nothing listens at 127.0.0.1:{redis_server.port}" in c["detail"] and "Redis is down" in c["detail"]
    assert "systemctl start redis-server" in c["fix"]
    for dep in ("redis-eviction", "redis-persistence", "clock-skew", "leadership"):
        assert d.check(dep)["status"] == "warn" and "Redis unreachable" in d.check(dep)["detail"]
    assert d.code == 69


def test_paused_redis_is_a_timeout(redis_server: RedisServer, tmp_path: Path) -> None:
    f = write_env_file(tmp_path / "mn.env", base_env(redis_server.url))
    redis_server.pause()
    try:
        d = run_doctor(f, "--check", "redis", "--timeout", "2")
    finally:
        redis_server.resume()
    c = d.check("redis")
    assert c["status"] == "fail" and c["kind"] == "timeout" and "did not answer" in c["detail"], c
    assert d.code == 75
    assert d.doc is not None and d.doc["summary"]["elapsed_s"] <= 2.0
    wait_until(lambda: redis_server.client().ping(), 5, "redis to answer again")


def test_text_output_marks_and_summary(redis_server: RedisServer, tmp_path: Path) -> None:
    redis_server.client().config_set("maxmemory-policy", "allkeys-lru")
    f = write_env_file(tmp_path / "mn.env", base_env(redis_server.url))
    d = run_doctor(f, json_out=False)
    lines = d.out.splitlines()
    assert lines[0].startswith("mn doctor: mn1@127.0.0.1")
    assert any(re.match(r"^\[✗\] redis-eviction: maxmemory-policy is allkeys-lru", ln) for ln in lines)
    i = next(i for i, ln in enumerate(lines) if ln.startswith("[✗] redis-eviction"))
    assert lines[i + 1].startswith("    fix: redis-cli ")
    assert any(ln.startswith("[✓] redis:") for ln in lines)
    assert re.match(r"^Doctor summary: \d+ ok, \d+ warnings?, \d+ failures? in [\d.]+s: problems found \(exit 69\)$",
                    lines[-1]), lines[-1]
