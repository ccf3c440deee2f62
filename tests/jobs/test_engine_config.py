"""The engine's command settings: MIRROR_NEURON_COMMANDS, _COMMAND_TIMEOUT (durations) and _STATE_DIR."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from mn_node.config import DEFAULT_COMMAND_TIMEOUT_S, load_config, parse_duration
from mn_node.errors import ConfigError

BASE = {"MIRROR_NEURON_COOKIE": base64.b64encode(os.urandom(32)).decode(),
        "MIRROR_NEURON_CLUSTER_NODES": "mn1@127.0.0.1", "MIRROR_NEURON_NODE_NAME": "mn1@127.0.0.1",
        "MIRROR_NEURON_REDIS_URL": "redis://127.0.0.1:6379/0"}


@pytest.mark.parametrize(("raw", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("500ms", 0.5),
                                              ("30", 30), (" 1.5s ", 1.5)])
def test_durations(raw, seconds):
    assert parse_duration(raw, "X") == seconds


@pytest.mark.parametrize("raw", ["", "0s", "-5s", "fast", "10 days", "1w"])
def test_bad_durations_name_the_variable_and_the_fix(raw):
    with pytest.raises(ConfigError, match=r"^X: .* is not a positive duration; fix: write it like 90s, 15m or 2h"):
        parse_duration(raw, "X")


def test_defaults_and_settings(tmp_path: Path):
    cfg = load_config({**BASE, "MIRROR_NEURON_STATE_DIR": str(tmp_path)})
    assert cfg.commands and cfg.command_timeout_s == DEFAULT_COMMAND_TIMEOUT_S == 3600
    assert cfg.state_dir == tmp_path and cfg.effective()["commands"] == "on"
    cfg = load_config({**BASE, "MIRROR_NEURON_COMMANDS": "off", "MIRROR_NEURON_COMMAND_TIMEOUT": "15m",
                       "STATE_DIRECTORY": "/var/lib/mirror-neuron"})
    assert not cfg.commands and cfg.command_timeout_s == 900 and cfg.state_dir == Path("/var/lib/mirror-neuron")


@pytest.mark.parametrize(("env", "words"), [
    ({"MIRROR_NEURON_COMMANDS": "maybe"}, "MIRROR_NEURON_COMMANDS: 'maybe' is not on or off; fix:"),
    ({"MIRROR_NEURON_COMMAND_TIMEOUT": "soon"}, "MIRROR_NEURON_COMMAND_TIMEOUT: 'soon' is not a positive duration"),
    ({"MIRROR_NEURON_STATE_DIR": "relative/dir"}, "MIRROR_NEURON_STATE_DIR: 'relative/dir' is not absolute; fix:"),
])
def test_bad_settings_are_config_errors(env, words):
    with pytest.raises(ConfigError) as ei:
        load_config({**BASE, **env})
    assert str(ei.value).startswith(words), str(ei.value)
