from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.tools import missing_tools

ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "boxes: boots Debian namespace boxes with PID-1 systemd (root, ansible, sshd)"
    )


def missing_box_tools() -> list[str]:
    """What this machine lacks to boot boxes and deploy to them (empty: all there)."""
    return missing_tools("ansible-playbook", "nsenter", "unshare", "ssh", "ssh-keygen", "ip",
                         "/usr/sbin/sshd", "/usr/bin/redis-server", "/lib/systemd/systemd", root=True)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheelhouse (mirror_neuron + dependencies, built with the boxes' /usr/bin/python3),
    built once per session and shared by the Molecule run and test_deploy."""
    if missing := missing_box_tools():
        pytest.skip(f"needs {', '.join(missing)} (tests/cluster/ci-deps.sh installs them)")
    out = tmp_path_factory.mktemp("wheelhouse")
    t0 = time.monotonic()
    r = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", "playbooks/wheelhouse.yml",
                        "-e", f"mirror_neuron_wheelhouse={out}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    print(f"wheelhouse built in {time.monotonic() - t0:.1f}s: {sorted(p.name for p in out.iterdir())}")
    return out


@pytest.fixture
def ssh_control_dir() -> Iterator[Path]:
    """A private directory for Ansible's ssh ControlMaster sockets: other fleets on this machine
    use the same box addresses, and a shared ~/.ansible/cp would route this test's ssh through
    another fleet's master (or one whose box is gone). Masters are told to exit afterwards."""
    d = Path(tempfile.mkdtemp(prefix="mn-cp."))
    try:
        yield d
    finally:
        close_masters(d)


def close_masters(d: Path) -> None:
    for sock in d.iterdir() if d.is_dir() else ():
        if sock.is_socket():
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "mnbox"],
                           capture_output=True, timeout=30, check=False)
    shutil.rmtree(d, ignore_errors=True)
