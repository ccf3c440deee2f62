"""The redis role's high-availability topology, without boxes: its preflight refuses 2 or an even
number of hosts (run for real with ansible-playbook on local connections), and its templates
render a primary, replicas and Sentinels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.tools import skip_unless_tools

ROOT = Path(__file__).resolve().parents[2]
jinja2 = pytest.importorskip("jinja2")
PW = "a" * 24
SPW = "b" * 24

PLAY = """
- name: Redis preflight only
  hosts: redis
  gather_facts: true
  gather_subset: [min]
  tasks:
    - name: Preflight of the redis role
      ansible.builtin.include_role:
        name: redis
        tasks_from: preflight
"""


def preflight(tmp_path: Path, hosts: int, **extra: str) -> subprocess.CompletedProcess[str]:
    skip_unless_tools("ansible-playbook")
    inv = "[redis]\n" + "".join(f"r{i} ansible_connection=local ansible_host=127.0.0.{i} "
                                 f"ansible_python_interpreter={sys.executable}\n" for i in range(1, hosts + 1))
    (tmp_path / "inventory").write_text(inv)
    (tmp_path / "play.yml").write_text(PLAY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_ROLES_PATH=str(ROOT / "roles"), ANSIBLE_NOCOLOR="1")
    argv = ["ansible-playbook", "-i", str(tmp_path / "inventory"), str(tmp_path / "play.yml"),
            "-e", f"redis_requirepass={PW}", "-e", f"redis_sentinel_password={SPW}"]
    for k, v in extra.items():
        argv += ["-e", f"{k}={v}"]
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("hosts", [2, 4])
def test_preflight_refuses_an_even_number_of_sentinels(tmp_path: Path, hosts: int) -> None:
    r = preflight(tmp_path, hosts)
    assert r.returncode != 0, r.stdout[-3000:]
    assert f"has {hosts} hosts" in r.stdout and "fix:" in r.stdout, r.stdout[-3000:]


def test_preflight_accepts_one_or_three_hosts_and_wants_a_sentinel_password(tmp_path: Path) -> None:
    for hosts in (1, 3):
        r = preflight(tmp_path, hosts)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    r = preflight(tmp_path, 3, redis_sentinel_password="short")
    assert r.returncode != 0 and "redis_sentinel_password must be set" in r.stdout, r.stdout[-3000:]


def _render(template: str, **variables: object) -> str:
    defaults = yaml.safe_load((ROOT / "roles/redis/defaults/main.yml").read_text())
    env = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["bool"] = bool
    src = (ROOT / "roles/redis/templates" / template).read_text()
    return env.from_string(src).render(**{**defaults, "ansible_managed": "x", "redis_requirepass": PW,
                                          "redis_sentinel_password": SPW, **variables})


@pytest.mark.parametrize("me, replica", [("10.0.0.1", False), ("10.0.0.2", True)])
def test_templates_render_primary_replicas_and_sentinels(me: str, replica: bool) -> None:
    ha = {"redis_ha": True, "redis_bind_address": me, "redis_current_primary": "10.0.0.1",
          "redis_sentinel_effective_quorum": 2}
    conf = _render("mirror-neuron.conf.j2", **ha)
    assert "min-replicas-to-write 1" in conf and "min-replicas-max-lag 3" in conf and "appendonly yes" in conf
    assert f'masterauth "{PW}"' in conf
    assert ("replicaof 10.0.0.1 6379" in conf) is replica
    sentinel = _render("sentinel.conf.j2", **ha)
    assert "sentinel monitor mn-master 10.0.0.1 6379 2" in sentinel
    assert f'requirepass "{SPW}"' in sentinel and f"sentinel auth-pass mn-master {PW}" in sentinel
    single = _render("mirror-neuron.conf.j2", redis_ha=False, redis_bind_address=me)
    assert "replicaof" not in single and "min-replicas" not in single and "masterauth" not in single
