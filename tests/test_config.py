"""Configuration: every bad input of issue A item 2 stops with exit 78 and one line naming the
variable, the bad value (never the cookie) and the fix; warnings; check-config output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mn_node.config import cookie_hash, load_config, parse_env_file
from mn_node.errors import EX_CONFIG, ConfigError

COOKIE = "Zq7s-very-secret-cookie-value-0123456789abcdef"  # 45 bytes: no weak-cookie warning
REDIS = "redis://127.0.0.1:6379/0"


def base_env(**over: str | None) -> dict[str, str]:
    env = {
        "MIRROR_NEURON_COOKIE": COOKIE,
        "MIRROR_NEURON_CLUSTER_NODES": "mn1@127.0.0.1,mn2@127.0.0.2",
        "MIRROR_NEURON_NODE_NAME": "mn1@127.0.0.1",
        "MIRROR_NEURON_REDIS_URL": REDIS,
    }
    for k, v in over.items():
        key = "MIRROR_NEURON_" + k
        if v is None:
            env.pop(key, None)
        else:
            env[key] = v
    return env


def run_check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")}
    clean.pop("CREDENTIALS_DIRECTORY", None)
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "mn_node.daemon", "check-config", *args],
        env=clean, capture_output=True, text=True, timeout=60,
    )


# (case id, env overrides, variable named in the message, bad value shown in the message)
BAD: list[tuple[str, dict[str, str | None], str, str]] = [
    ("cookie-missing", {"COOKIE": None}, "MIRROR_NEURON_COOKIE", "not set"),
    ("cookie-empty", {"COOKIE": ""}, "MIRROR_NEURON_COOKIE", "empty"),
    ("cookie-blank", {"COOKIE": "   "}, "MIRROR_NEURON_COOKIE", "empty"),
    ("cookie-file-missing", {"COOKIE": None, "COOKIE_FILE": "/nonexistent/mn-cookie"},
     "MIRROR_NEURON_COOKIE_FILE", "/nonexistent/mn-cookie"),
    ("nodes-no-at", {"CLUSTER_NODES": "mn1@127.0.0.1,mn2"}, "MIRROR_NEURON_CLUSTER_NODES", "'mn2'"),
    ("nodes-empty-host", {"CLUSTER_NODES": "mn1@127.0.0.1,mn2@"}, "MIRROR_NEURON_CLUSTER_NODES", "'mn2@'"),
    ("nodes-empty-name", {"CLUSTER_NODES": "mn1@127.0.0.1,@10.0.0.2"}, "MIRROR_NEURON_CLUSTER_NODES",
     "'@10.0.0.2'"),
    ("nodes-bad-port", {"CLUSTER_NODES": "mn1@127.0.0.1,mn2@10.0.0.2:http"},
     "MIRROR_NEURON_CLUSTER_NODES", "mn2@10.0.0.2:http"),
    ("nodes-port-range", {"CLUSTER_NODES": "mn1@127.0.0.1,mn2@10.0.0.2:70000"},
     "MIRROR_NEURON_CLUSTER_NODES", "70000"),
    ("nodes-bad-host", {"CLUSTER_NODES": "mn1@127.0.0.1,mn2@ho st"}, "MIRROR_NEURON_CLUSTER_NODES",
     "ho st"),
    ("nodes-bad-v6", {"CLUSTER_NODES": "mn1@127.0.0.1,mn2@[::1"}, "MIRROR_NEURON_CLUSTER_NODES",
     "mn2@[::1"),
    ("nodes-duplicate", {"CLUSTER_NODES": "mn1@127.0.0.1,mn1@127.0.0.1"}, "MIRROR_NEURON_CLUSTER_NODES",
     "mn1@127.0.0.1"),
    ("nodes-same-hostport", {"CLUSTER_NODES": "mn1@127.0.0.1,mn2@127.0.0.1"},
     "MIRROR_NEURON_CLUSTER_NODES", "127.0.0.1:4370"),
    ("name-malformed", {"NODE_NAME": "mn1-at-nowhere"}, "MIRROR_NEURON_NODE_NAME", "mn1-at-nowhere"),
    ("name-not-local", {"NODE_NAME": None, "CLUSTER_NODES": "mn1@192.0.2.77,mn2@192.0.2.78"},
     "MIRROR_NEURON_NODE_NAME", "mn1@192.0.2.77"),
    ("name-none-at-all", {"NODE_NAME": None, "CLUSTER_NODES": None}, "MIRROR_NEURON_NODE_NAME", "(empty)"),
    ("dist-port-zero", {"DIST_PORT": "0"}, "MIRROR_NEURON_DIST_PORT", "0"),
    ("dist-port-high", {"DIST_PORT": "65536"}, "MIRROR_NEURON_DIST_PORT", "65536"),
    ("dist-port-text", {"DIST_PORT": "fortythree"}, "MIRROR_NEURON_DIST_PORT", "fortythree"),
    ("api-port-high", {"API_PORT": "99999"}, "MIRROR_NEURON_API_PORT", "99999"),
    ("api-port-negative", {"API_PORT": "-1"}, "MIRROR_NEURON_API_PORT", "-1"),
    ("ports-collide", {"API_PORT": "4370"}, "MIRROR_NEURON_API_PORT", "4370"),
    ("ports-collide-named", {"API_PORT": "5000", "NODE_NAME": "mn1@127.0.0.1:5000",
                             "CLUSTER_NODES": "mn1@127.0.0.1:5000,mn2@127.0.0.2"},
     "MIRROR_NEURON_API_PORT", "5000"),
    ("redis-missing", {"REDIS_URL": None}, "MIRROR_NEURON_REDIS_URL", "not set"),
    ("redis-scheme", {"REDIS_URL": "http://127.0.0.1:6379"}, "MIRROR_NEURON_REDIS_URL",
     "http://127.0.0.1:6379"),
    ("redis-no-host", {"REDIS_URL": "redis://"}, "MIRROR_NEURON_REDIS_URL", "redis://"),
    ("redis-port", {"REDIS_URL": "redis://127.0.0.1:99999/0"}, "MIRROR_NEURON_REDIS_URL", "99999"),
    ("redis-db", {"REDIS_URL": "redis://127.0.0.1:6379/zero"}, "MIRROR_NEURON_REDIS_URL", "zero"),
    ("redis-garbage", {"REDIS_URL": "not a url"}, "MIRROR_NEURON_REDIS_URL", "not a url"),
]


def _check_line(text: str, var: str, shown: str, *, forbidden: tuple[str, ...] = ()) -> None:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got {lines!r}"
    line = lines[0]
    assert var in line, line
    assert shown in line, f"bad value {shown!r} not shown in {line!r}"
    assert "fix" in line.lower(), line
    assert COOKIE not in line
    for f in forbidden:
        assert f not in line, line


@pytest.mark.parametrize(("case", "over", "var", "shown"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_load_config(case: str, over: dict[str, str | None], var: str, shown: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(base_env(**over))
    assert ei.value.exit_code == EX_CONFIG
    _check_line(str(ei.value), var, shown)


@pytest.mark.parametrize(("case", "over", "var", "shown"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_check_config_exit_78(case: str, over: dict[str, str | None], var: str, shown: str) -> None:
    p = run_check(base_env(**over))
    assert p.returncode == 78, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == ""
    _check_line(p.stderr, var, shown)


def test_daemon_run_exits_78_without_starting() -> None:
    env = base_env(DIST_PORT="70000")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")}
    clean.update(env)
    p = subprocess.run([sys.executable, "-m", "mn_node.daemon"], env=clean, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 78
    _check_line(p.stderr, "MIRROR_NEURON_DIST_PORT", "70000")


def test_cookie_file_empty(tmp_path: Path) -> None:
    f = tmp_path / "cookie"
    f.write_text("\n")
    with pytest.raises(ConfigError) as ei:
        load_config(base_env(COOKIE=None, COOKIE_FILE=str(f)))
    _check_line(str(ei.value), "MIRROR_NEURON_COOKIE_FILE", str(f))


def test_redis_password_never_shown() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(base_env(REDIS_URL="redis://:hunter2pw@127.0.0.1:99999/0"))
    _check_line(str(ei.value), "MIRROR_NEURON_REDIS_URL", "127.0.0.1", forbidden=("hunter2pw",))
    with pytest.raises(ConfigError) as ei:
        load_config(base_env(REDIS_URL="redis://:hunter2pw@127.0.0.1:6379/db"))
    _check_line(str(ei.value), "MIRROR_NEURON_REDIS_URL", "db", forbidden=("hunter2pw",))


def test_cookie_value_never_in_any_error() -> None:
    # the cookie is set in every case of BAD (except where removed): no message may contain it
    for _case, over, _var, _shown in BAD:
        try:
            load_config(base_env(**over))
        except ConfigError as e:
            assert COOKIE not in str(e)


@pytest.mark.parametrize(
    ("cookie", "fragment"),
    [("mirrorneuron", "original's public default"), ("short-cookie", "12 bytes, under 32")],
)
def test_weak_cookie_warns(cookie: str, fragment: str) -> None:
    cfg = load_config(base_env(COOKIE=cookie))
    assert len(cfg.warnings) == 1 and fragment in cfg.warnings[0]
    assert cookie not in cfg.warnings[0].replace("'mirrorneuron'", "")
    p = run_check(base_env(COOKIE=cookie))
    assert p.returncode == 0, p.stderr
    assert "warning: MIRROR_NEURON_COOKIE" in p.stderr and fragment in p.stderr


def test_strong_cookie_no_warning() -> None:
    assert load_config(base_env()).warnings == ()


def test_check_config_json_shows_cookie_only_as_hash() -> None:
    p = run_check(base_env(), "--json")
    assert p.returncode == 0, p.stderr
    assert COOKIE not in p.stdout and COOKIE not in p.stderr
    eff = json.loads(p.stdout)
    assert eff["cookie_hash"] == cookie_hash(COOKIE.encode())
    assert eff["node_name"] == "mn1@127.0.0.1"
    assert eff["cluster_nodes"] == ["mn1@127.0.0.1:4370", "mn2@127.0.0.2:4370"]
    assert eff["dist_port"] == 4370 and eff["api_port"] == 4000 and eff["api_bind"] == "127.0.0.1"
    assert eff["redis_url"] == REDIS
    assert "cookie" not in eff


def test_check_config_text_hides_cookie_and_redis_password() -> None:
    env = base_env(REDIS_URL="redis://:hunter2pw@127.0.0.1:6379/0")
    p = run_check(env)
    assert p.returncode == 0, p.stderr
    assert COOKIE not in p.stdout and "hunter2pw" not in p.stdout
    assert cookie_hash(COOKIE.encode()) in p.stdout
    assert "redis://:***@127.0.0.1:6379/0" in p.stdout


def test_env_file_parsing(tmp_path: Path) -> None:
    f = tmp_path / "mirror-neuron.env"
    f.write_text(
        "# systemd EnvironmentFile\n"
        "\n"
        f"MIRROR_NEURON_COOKIE='{COOKIE}'\n"
        'export MIRROR_NEURON_CLUSTER_NODES="mn1@127.0.0.1,mn2@127.0.0.2:4371"\n'
        "MIRROR_NEURON_NODE_NAME = mn2@127.0.0.2\n"
        "; another comment style\n"
        "MIRROR_NEURON_REDIS_URL=redis://127.0.0.1:6390/2\n"
        "MIRROR_NEURON_API_PORT=4100\n"
    )
    vals = parse_env_file(f)
    assert vals["MIRROR_NEURON_COOKIE"] == COOKIE
    assert vals["MIRROR_NEURON_CLUSTER_NODES"] == "mn1@127.0.0.1,mn2@127.0.0.2:4371"
    cfg = load_config({"MIRROR_NEURON_API_PORT": "4000"}, env_file=str(f))
    assert cfg.name == "mn2@127.0.0.2" and cfg.me.port == 4371
    assert cfg.api_port == 4100  # the file overrides the environment
    assert cfg.redis_url == "redis://127.0.0.1:6390/2"
    assert cfg.cookie == COOKIE.encode()
    # and through the daemon's --env-file
    p = subprocess.run(
        [sys.executable, "-m", "mn_node.daemon", "--env-file", str(f), "check-config", "--json"],
        env={k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")},
        capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 0, p.stderr
    eff = json.loads(p.stdout)
    assert eff["node_name"] == "mn2@127.0.0.2" and eff["env_file"] == str(f)
    assert COOKIE not in p.stdout


def test_env_file_bad_line_and_missing(tmp_path: Path) -> None:
    f = tmp_path / "bad.env"
    f.write_text(f"MIRROR_NEURON_COOKIE={COOKIE}\nthis line is wrong\n")
    with pytest.raises(ConfigError) as ei:
        load_config({}, env_file=str(f))
    _check_line(str(ei.value), "--env-file", "line 2")
    p = subprocess.run(
        [sys.executable, "-m", "mn_node.daemon", "--env-file", str(tmp_path / "nope.env"), "check-config"],
        env={k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")},
        capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 78
    _check_line(p.stderr, "--env-file", "nope.env")


def test_own_name_found_among_local_addresses() -> None:
    cfg = load_config(base_env(NODE_NAME=None, CLUSTER_NODES="mn1@127.0.0.1,mn2@192.0.2.10"))
    assert cfg.name == "mn1@127.0.0.1"
    assert [p.name for p in cfg.peers] == ["mn2@192.0.2.10"]


def test_defaults() -> None:
    cfg = load_config(base_env())
    assert cfg.me.port == 4370 and cfg.api_port == 4000 and cfg.api_bind == "127.0.0.1"
    assert cfg.namespace == "mirror_neuron"
    assert cfg.discovery == frozenset({"static", "mdns"})
    assert cfg.renew_interval_ms * 2 < cfg.lease_ttl_ms
