from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "boxes: boots Debian namespace boxes with PID-1 systemd (root, ansible, sshd)"
    )
