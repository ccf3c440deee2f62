"""The Molecule scenario (molecule/default) from pytest, so CI's `python3 -m pytest` runs it:
tests/cluster/run-molecule.sh = syntax, create (3 namespace boxes), check (site.yml --check on
the fresh boxes), converge (site.yml), idempotence (0 changed), verify, destroy; every box and
namespace removed afterwards."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import missing_box_tools

pytestmark = [pytest.mark.slow, pytest.mark.boxes, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]


def test_molecule_scenario(wheelhouse: Path) -> None:
    missing = missing_box_tools() + [t for t in ("molecule",) if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (tests/cluster/ci-deps.sh)")
    prefix = "mnm" + secrets.token_hex(2)
    env = dict(os.environ, MN_BOXES_PREFIX=prefix, MN_WHEELHOUSE=str(wheelhouse), MN_SKIP_WHEELHOUSE="1")
    t0 = time.monotonic()
    r = subprocess.run(["bash", "tests/cluster/run-molecule.sh"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1150)
    secs = time.monotonic() - t0
    out = r.stdout + r.stderr
    left = [ns for ns in os.listdir("/run/netns") if ns.startswith(prefix + "-")] \
        if os.path.isdir("/run/netns") else []
    steps = re.findall(r"^default > (\w+): Executed: (\w+)", out, re.M)
    timing = re.findall(r"^run-molecule: .*$", out, re.M)
    print(f"molecule test: {secs:.1f}s; {timing}; steps {steps}")
    assert r.returncode == 0, out[-8000:]
    assert [s for s, _ in steps] == ["syntax", "create", "check", "converge", "idempotence", "verify",
                                   "destroy"], steps
    assert all(res == "Successful" for _, res in steps), steps
    assert not left, f"namespaces left behind: {left}"
