"""`systemctl reload mirror-neuron` and journald priorities on a deployed box (issue I items 4, 5).

One box (Redis and the node), deployed with site.yml: a reload applies a changed capacity
without a restart (same main pid, same leader epoch, no restart counted), a broken env file is
refused with the daemon still running, and `journalctl -p warning` shows the warnings and errors
of the node and none of its info lines. Needs root, ansible-core, openssh-server, redis-server.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.boxes import Fleet
from tests.cluster.conftest import close_masters, missing_box_tools
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.boxes, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
ENV = "/etc/mirror-neuron/mirror-neuron.env"

if missing := missing_box_tools():
    pytest.skip(f"needs {', '.join(missing)} (tests/cluster/ci-deps.sh)", allow_module_level=True)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Iterator[Fleet]:
    keydir = tmp_path_factory.mktemp("ssh")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keydir / "id")], check=True)
    f = Fleet(prefix="mnr" + secrets.token_hex(2), ssh_pubkey=str(keydir / "id.pub"))
    cp_dir = Path(tmp_path_factory.mktemp("cp"))
    try:
        f.net_up()
        f.start(1)
        inv = tmp_path_factory.mktemp("inv") / "inventory"
        host = f"box-1 ansible_host={f.address(1)}"
        inv.write_text("\n".join([
            "[redis]", host, "", "[mirror_neuron]", host, "", "[all:vars]", "ansible_user=root",
            "ansible_become=false", f"ansible_ssh_private_key_file={keydir / 'id'}",
            "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
            "redis_requirepass=test-redis-password-" + secrets.token_hex(8), "redis_apt_update_cache=false",
            "mirror_neuron_apt_update_cache=false", f"mirror_neuron_wheelhouse={wheelhouse}", ""]))
        wait_until(lambda: f.sh(1, "ss -Hltn 'sport = :22' | grep -q .").returncode == 0, 60, "sshd on the box",
                   interval=0.2)
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_HOST_KEY_CHECKING="False",
                   ANSIBLE_NOCOLOR="1", ANSIBLE_SSH_CONTROL_PATH_DIR=str(cp_dir))
        r = subprocess.run(f.ctl_argv(["ansible-playbook", "-i", str(inv), "site.yml"]), cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        yield f
    finally:
        close_masters(cp_dir)
        f.stop_all(power_cut=True)


def show(f: Fleet) -> dict[str, str]:
    out = f.exec(1, ["systemctl", "show", "mirror-neuron", "-p", "MainPID", "-p", "ActiveState",
                     "-p", "NRestarts"]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def mn(f: Fleet, *args: str) -> object:
    r = f.exec(1, ["mn", *args, "--json"], timeout=60)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return json.loads(r.stdout)


def journal(f: Fleet, *args: str) -> str:
    return f.exec(1, ["journalctl", "-u", "mirror-neuron", "--no-pager", "-o", "cat", *args]).stdout


def test_systemctl_reload_applies_refuses_and_journal_priorities(box: Fleet) -> None:
    f = box
    leader = wait_until(lambda: (lambda ld: ld if isinstance(ld, dict) and ld.get("node") else None)(
        mn(f, "leader")), 60, "a leader on the box", interval=0.5)
    before = show(f)
    assert before["ActiveState"] == "active", before
    f.sh(1, f"echo MIRROR_NEURON_EXECUTOR_CAPACITY=3 >> {ENV}; echo MIRROR_NEURON_LINK_TICK_MS=300ms >> {ENV}",
         check=True)
    r = f.exec(1, ["systemctl", "reload", "mirror-neuron"], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: "reload: MIRROR_NEURON_EXECUTOR_CAPACITY" in journal(f), 30, "the reload in the journal")

    def capacity3() -> bool:
        nodes = mn(f, "nodes")
        return isinstance(nodes, list) and nodes[0].get("capacity") == 3

    wait_until(capacity3, 30, "capacity 3 in mn nodes", interval=0.5)
    after = show(f)
    assert (after["MainPID"], after["NRestarts"], after["ActiveState"]) == \
        (before["MainPID"], before["NRestarts"], "active"), (before, after)
    now = mn(f, "leader")
    assert isinstance(now, dict) and now["epoch"] == leader["epoch"], (leader, now)
    # a broken env file: refused, still running, same process
    f.sh(1, f"echo MIRROR_NEURON_EXECUTOR_CAPACITY=lots >> {ENV}", check=True)
    f.exec(1, ["systemctl", "reload", "mirror-neuron"], timeout=60)
    wait_until(lambda: "reload refused" in journal(f), 30, "the refusal in the journal")
    assert show(f)["MainPID"] == before["MainPID"] and show(f)["ActiveState"] == "active"
    # journald priorities: -p warning has the warning and the error, and no info line
    warn = journal(f, "-p", "warning")
    assert "need a restart" in warn and "reload refused" in warn and "MIRROR_NEURON_LINK_TICK_MS" in warn, warn
    assert " up as " not in warn and "reload requested" not in warn, warn
    assert " up as " in journal(f)
    print("journalctl -p warning:\n" + warn)
