"""Durations (issue I item 6): 500ms, 90s, 15m, 2h, 7d everywhere; existing *_MS variables keep
their bare-number meaning (milliseconds) and accept durations too."""

from __future__ import annotations

import pytest

from mn_node.config import load_config, parse_duration
from mn_node.errors import ConfigError

BASE = {"MIRROR_NEURON_COOKIE": "x" * 40, "MIRROR_NEURON_NODE_NAME": "mn1@127.0.0.1",
        "MIRROR_NEURON_REDIS_URL": "redis://127.0.0.1:6379/0"}


@pytest.mark.parametrize(("raw", "seconds"), [("500ms", 0.5), ("90s", 90), ("15m", 900), ("2h", 7200),
                                               ("7d", 604800), ("1.5d", 129600), ("30", 30)])
def test_units(raw: str, seconds: float) -> None:
    assert parse_duration(raw, "X") == seconds


def test_bare_number_unit_is_the_callers() -> None:
    assert parse_duration("250", "X", bare_unit="ms") == 0.25


@pytest.mark.parametrize("raw", ["", "0s", "-5s", "fast", "10 days", "3w"])
def test_bad(raw: str) -> None:
    fix = r"fix: write it like 90s, 15m or 2h \(units ms, s, m, h, d\)$"
    with pytest.raises(ConfigError, match=r"^X: .* is not a positive duration; " + fix):
        parse_duration(raw, "X")


def test_ms_variables_take_bare_milliseconds_and_durations() -> None:
    old = load_config({**BASE, "MIRROR_NEURON_LEASE_TTL_MS": "3000", "MIRROR_NEURON_LINK_TICK_MS": "400"})
    new = load_config({**BASE, "MIRROR_NEURON_LEASE_TTL_MS": "3s", "MIRROR_NEURON_LINK_TICK_MS": "400ms",
                       "MIRROR_NEURON_RENEW_INTERVAL_MS": "0.5s", "MIRROR_NEURON_LINK_TIMEOUT_MS": "2s"})
    assert (old.lease_ttl_ms, old.link_tick_ms) == (3000, 400)
    assert (new.lease_ttl_ms, new.renew_interval_ms, new.link_tick_ms, new.link_timeout_ms) == (3000, 500, 400, 2000)


def test_ms_variable_out_of_range_names_it() -> None:
    with pytest.raises(ConfigError, match=r"^MIRROR_NEURON_LEASE_TTL_MS: 1h \(3600000 ms\) is out of range; fix:"):
        load_config({**BASE, "MIRROR_NEURON_LEASE_TTL_MS": "1h"})
    with pytest.raises(ConfigError, match=r"^MIRROR_NEURON_LINK_TICK_MS: 'soon' is not a positive duration"):
        load_config({**BASE, "MIRROR_NEURON_LINK_TICK_MS": "soon"})


def test_command_timeout_takes_days() -> None:
    assert load_config({**BASE, "MIRROR_NEURON_COMMAND_TIMEOUT": "1d"}).command_timeout_s == 86400
