"""Packaging: one version, the declared license, and mn-tui's one-line fix without Textual."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import mn_node
import mn_tui
from mn_node.errors import EX_UNAVAILABLE

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_has_one_source() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mn_node.__version__"}
    assert mn_tui.__version__ is mn_node.__version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{mn_node.__version__}]" in changelog


def test_license_is_apache_2_with_its_text() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_mn_tui_without_textual_prints_one_line_fix() -> None:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    script = "import sys; sys.modules['textual'] = None; from mn_tui.__main__ import main; sys.exit(main([]))"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == EX_UNAVAILABLE, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot import textual" in lines[0] and "fix: " in lines[0], r.stderr


def test_missing_tools_are_named() -> None:
    from tests.support.tools import missing_tools

    assert missing_tools("sh", "mn-no-such-tool", "/no/such/path") == ["mn-no-such-tool", "/no/such/path"]


def test_requires_tool_marker_skips_instead_of_running(tmp_path: Path) -> None:
    """A test marked with a missing tool is reported as skipped, naming the tool (run in a child
    pytest so this test itself passes or fails)."""
    probe = ROOT / "tests" / f"test_zz_marker_probe_{os.getpid()}.py"
    probe.write_text(
        "import pytest\n\n"
        "@pytest.mark.requires_tool('mn-no-such-tool')\n"
        "def test_probe() -> None:\n"
        "    raise AssertionError('ran although its tool is missing')\n"
    )
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(probe)],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    finally:
        probe.unlink()
    assert r.returncode == 0 and "1 skipped" in r.stdout and "needs mn-no-such-tool" in r.stdout, r.stdout
