"""The README's first command runs end to end and cleans up after itself."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_through_a_node_kill_and_leaves_nothing_behind():
    before = {p.pid for p in psutil.process_iter()}
    r = subprocess.run([sys.executable, "-m", "mn_node.demo", "--workers", "24", "--chunk-size", "100000"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: exact count after a node kill" in r.stdout
    assert "new leader" in r.stdout and "took the job over" in r.stdout
    assert "job_recovery_started" in r.stdout and "job_recovered" in r.stdout
    leftovers = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.pid not in before and _is_demo_proc(p)]
    assert not leftovers, [p.info for p in leftovers]


def _is_demo_proc(p: psutil.Process) -> bool:
    """A daemon or Valkey server the demo started (others' concurrent tests are not ours)."""
    cmd = " ".join(p.info["cmdline"] or [])
    if "valkey-server" in cmd:
        return "mn-demo-" in cmd
    if "mn_node.daemon" in cmd:
        try:
            return p.environ().get("MIRROR_NEURON_REDIS_NAMESPACE", "").startswith("mn_demo_")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False
    return False
