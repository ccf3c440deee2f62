"""Who may run commands: the API beyond loopback is HTTPS, or the daemon refuses to start
(exit 78) unless MIRROR_NEURON_API_INSECURE=1. Real mn-node processes, real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mn_node.config import is_loopback_bind, load_config
from mn_node.errors import ConfigError
from tests.support.cluster import wait_gone
from tests.support.redis import free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


def self_signed(tmp: Path, ip: str) -> tuple[Path, Path]:
    cert, key = tmp / "api.crt", tmp / "api.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mirror-neuron-api", "-addext", f"subjectAltName=IP:{ip}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def mn(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "mn_node.cli", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def base_env(**kw: str) -> dict[str, str]:
    env = {"MIRROR_NEURON_COOKIE": "x" * 40, "MIRROR_NEURON_REDIS_URL": "redis://127.0.0.1:1/0",
           "MIRROR_NEURON_NODE_NAME": "mn1@127.0.0.1", "MIRROR_NEURON_CLUSTER_NODES": "mn1@127.0.0.1"}
    env.update(kw)
    return env


def test_loopback_is_recognised() -> None:
    assert is_loopback_bind("127.0.0.1") and is_loopback_bind("127.77.0.3") and is_loopback_bind("::1")
    assert is_loopback_bind("localhost")
    assert not is_loopback_bind("0.0.0.0") and not is_loopback_bind("::") and not is_loopback_bind("192.0.2.10")


def test_config_rules(tmp_path: Path) -> None:
    assert not load_config(base_env()).api_tls.enabled
    with pytest.raises(ConfigError) as e:
        load_config(base_env(MIRROR_NEURON_API_BIND="0.0.0.0"))
    msg = str(e.value)
    assert "MIRROR_NEURON_API_TLS_CERT" in msg and "MIRROR_NEURON_API_INSECURE=1" in msg and "fix:" in msg
    cfg = load_config(base_env(MIRROR_NEURON_API_BIND="0.0.0.0", MIRROR_NEURON_API_INSECURE="1"))
    assert cfg.api_url.startswith("http://") and any("plain HTTP" in w for w in cfg.warnings)
    with pytest.raises(ConfigError, match="MIRROR_NEURON_API_TLS_KEY"):
        load_config(base_env(MIRROR_NEURON_API_TLS_CERT=str(tmp_path / "c.pem")))
    cert, key = self_signed(tmp_path, "127.0.0.1")
    cfg = load_config(base_env(MIRROR_NEURON_API_BIND="0.0.0.0", MIRROR_NEURON_API_TLS_CERT=str(cert),
                               MIRROR_NEURON_API_TLS_KEY=str(key)))
    assert cfg.api_url == "https://0.0.0.0:4000" and not cfg.warnings[1:]
    with pytest.raises(ConfigError, match="unreadable"):
        load_config(base_env(MIRROR_NEURON_API_TLS_CERT=str(tmp_path / "no.crt"), MIRROR_NEURON_API_TLS_KEY=str(key)))


def test_beyond_loopback_without_tls_refuses_to_start(make_cluster: Any) -> None:
    c = make_cluster(1, start=False)
    node = c.start(1, MIRROR_NEURON_API_BIND="0.0.0.0", MIRROR_NEURON_API_PORT=str(free_port()))
    assert node.proc is not None
    assert wait_gone(node.proc, 15) == 78
    lines = [ln for ln in node.log_text().splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "MIRROR_NEURON_API_TLS_CERT" in lines[0] and "MIRROR_NEURON_API_INSECURE=1" in lines[0]


def test_insecure_switch_starts_with_a_warning(make_cluster: Any) -> None:
    c = make_cluster(1, start=False)
    port = free_port()
    node = c.start(1, MIRROR_NEURON_API_BIND="0.0.0.0", MIRROR_NEURON_API_PORT=str(port),
                   MIRROR_NEURON_API_INSECURE="1")
    r = wait_until(lambda: mn("--api", f"http://{node.host}:{port}", "nodes", "--json").returncode == 0, 15,
                   "the node to answer over plain HTTP")
    assert r
    assert "MIRROR_NEURON_API_INSECURE=1" in node.log_text() and "WARNING" in node.log_text()


def test_https_with_a_self_signed_certificate(make_cluster: Any, tmp_path: Path) -> None:
    c = make_cluster(1, start=False)
    host = c.nodes[0].host
    cert, key = self_signed(tmp_path, host)
    port = free_port()
    node = c.start(1, MIRROR_NEURON_API_BIND="0.0.0.0", MIRROR_NEURON_API_PORT=str(port),
                   MIRROR_NEURON_API_TLS_CERT=str(cert), MIRROR_NEURON_API_TLS_KEY=str(key))
    url = f"https://{host}:{port}"
    ca = {"MIRROR_NEURON_API_CA": str(cert)}
    r = wait_until(lambda: (lambda p: p if p.returncode == 0 else None)(mn("--api", url, "nodes", env_extra=ca)),
                   20, f"mn nodes over {url}")
    assert node.name in r.stdout
    r = mn("--api", url, "nodes")  # the certificate is not trusted without the CA
    assert r.returncode == 69 and "CERTIFICATE_VERIFY_FAILED" in r.stderr and "MIRROR_NEURON_API_CA" in r.stderr
    r = mn("--api", f"http://{host}:{port}", "nodes")  # plain HTTP to a TLS port: no answer, exit 69
    assert r.returncode == 69
    r = mn("--api", url, "cancel", "nope-1", env_extra={**ca, "MIRROR_NEURON_COOKIE": c.cookie})
    assert r.returncode == 69 and "no job" in r.stderr  # authenticated POST over TLS reached the route
    # mn doctor trusts the same CA
    r = mn("--api", url, "doctor", "--json", env_extra={**ca, "MIRROR_NEURON_COOKIE": c.cookie})
    checks = {ch["name"]: ch for ch in json.loads(r.stdout)["checks"]}
    assert checks["local-node"]["status"] == "ok", checks["local-node"]
    # the default URL: https when this box's own certificate is configured
    r = mn("nodes", env_extra={"MIRROR_NEURON_API_BIND": host, "MIRROR_NEURON_API_PORT": str(port),
                               "MIRROR_NEURON_API_TLS_CERT": str(cert)})
    assert r.returncode == 0, r.stderr
