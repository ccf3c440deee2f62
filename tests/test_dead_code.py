"""Dead code in mn_node and mn_tui stays at zero (vulture; false positives in tests/vulture_allowlist.py).

Run by hand: python3 -m vulture mn_node mn_tui tests/vulture_allowlist.py --ignore-decorators @check
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["mn_node", "mn_tui", "tests/vulture_allowlist.py", "--ignore-decorators", "@check"]


@pytest.mark.skipif(importlib.util.find_spec("vulture") is None,
                    reason="vulture is not installed (it is in the dev extras: pip install -e '.[dev]')")
def test_no_dead_code() -> None:
    p = subprocess.run([sys.executable, "-m", "vulture", *ARGS], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    findings = p.stdout.strip()
    assert p.returncode in (0, 3), f"vulture failed (exit {p.returncode}): {p.stderr.strip()}"
    assert not findings, (
        "unused code (delete it; if a framework or the tests use it, add it to tests/vulture_allowlist.py "
        "with who uses it):\n" + findings
    )


@pytest.mark.skipif(importlib.util.find_spec("vulture") is None, reason="vulture is not installed")
def test_the_check_sees_dead_code(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def used() -> int:\n    return 1\n\n\n"
                                   "def never_called() -> int:\n    return used()\n")
    p = subprocess.run([sys.executable, "-m", "vulture", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert "never_called" in p.stdout, p.stdout
