"""Static checks of the deployment code, run by CI through pytest: `ansible-lint --profile
production` (the profile is also pinned in .ansible-lint) and `yamllint .` must be clean."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_tool(argv: list[str]) -> None:
    if not shutil.which(argv[0]):
        pytest.skip(f"{argv[0]} is not installed (tests/cluster/ci-deps.sh installs it)")
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(argv)} exit {r.returncode}:\n{r.stdout[-6000:]}\n{r.stderr[-4000:]}"


def test_yamllint_is_clean() -> None:
    run_tool(["yamllint", "--strict", "."])


@pytest.mark.slow
def test_ansible_lint_production_profile_is_clean() -> None:
    run_tool(["ansible-lint", "--profile", "production", "--offline", "--nocolor"])
