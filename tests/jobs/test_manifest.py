"""Manifest validation names the path of the bad field; blueprints give the known answers."""

from __future__ import annotations

import copy

import pytest

from mn_node.errors import DataError
from mn_node.jobs import blueprints, reducers, tasks
from mn_node.jobs.manifest import ManifestError, parse_text, validate
from mn_node.jobs.reducers import REDUCERS
from tests.support.primes import count_primes

BASE = blueprints.prime_sweep_scale({"workers": 2})
KNOWN = set(tasks.available())
KNOWN_REDUCERS = set(REDUCERS)


def broken(mutate):
    m = copy.deepcopy(BASE)
    mutate(m)
    return m


@pytest.mark.parametrize(
    ("mutate", "path", "words"),
    [
        (lambda m: m["nodes"][1].update(agent_type="blender"), "nodes[1].agent_type", "unknown agent type"),
        (lambda m: m["nodes"][1].update(agent_type="sensor"), "nodes[1].agent_type", "unknown agent type"),
        (lambda m: m["nodes"][1]["config"].update(task="nope"), "nodes[1].config.task", "unknown task 'nope'"),
        (lambda m: m["nodes"][1]["config"].pop("task"), "nodes[1].config.command", "needs a command"),
        (lambda m: m["edges"].append({"from_node": "collector", "to_node": "ghost"}), "edges[5].to_node",
         "dangling edge"),
        (lambda m: m.pop("entrypoints"), "entrypoints", "missing"),
        (lambda m: m.update(entrypoints=["ghost"]), "entrypoints[0]", "no agent 'ghost'"),
        (lambda m: m["policies"].update(recovery_mode="yolo"), "policies.recovery_mode", "unknown mode"),
        (lambda m: m["policies"].update(max_agent_restart_attempts=-1), "policies.max_agent_restart_attempts",
         "not an integer"),
        (lambda m: m["nodes"].append(dict(m["nodes"][1])), "nodes[5].node_id", "used twice"),
        (lambda m: m["edges"].append({"from_node": "summarizer", "to_node": "collector"}), "edges", "cycle"),
        (lambda m: m.update(graph_id="../etc/passwd"), "graph_id", "bad characters"),
        (lambda m: m["nodes"][3]["config"].update(reduce="sum"), "nodes[3].config.reduce", "unknown reducer"),
    ],
)
def test_bad_manifest_names_the_field(mutate, path, words):
    with pytest.raises(ManifestError) as ei:
        validate(broken(mutate), KNOWN, KNOWN_REDUCERS)
    msg = str(ei.value)
    assert msg.startswith(path + ":"), msg
    assert words in msg
    assert "fix:" in msg
    assert "\n" not in msg
    assert ei.value.problems and all("fix:" in p for p in ei.value.problems), ei.value.problems


def test_every_problem_is_reported_at_once():
    def two(m):
        m["nodes"][1]["config"]["task"] = "nope"
        m["policies"]["recovery_mode"] = "yolo"

    with pytest.raises(ManifestError) as ei:
        validate(broken(two), KNOWN, KNOWN_REDUCERS)
    assert [p.split(":")[0] for p in ei.value.problems] == ["nodes[1].config.task", "policies.recovery_mode"]


def test_the_original_format_and_a_bundle_sha_are_accepted():
    import json
    import tempfile
    from pathlib import Path

    from tests.runners.test_examples import generate

    with tempfile.TemporaryDirectory() as d:
        raw = json.loads((generate(Path(d) / "b", 4) / "manifest.json").read_text())
    m = validate(raw, KNOWN, KNOWN_REDUCERS, bundle="ab" * 32)
    assert m.bundle == "ab" * 32 and m.has_commands and m.raw["bundle"] == "ab" * 32
    assert validate(m.raw).raw == m.raw  # the stored spec validates to itself


def test_yaml_and_json_parse_and_syntax_errors():
    assert parse_text('{"a": 1}') == {"a": 1}
    assert parse_text("a: 1\nb: [1, 2]\n") == {"a": 1, "b": [1, 2]}
    with pytest.raises(ManifestError, match="not valid JSON or YAML at line 2"):
        parse_text("a: 1\n  b: [\n")


@pytest.mark.parametrize(("workers", "expected"), [(4, 32), (60, 441)])
def test_prime_sweep_known_answers_without_a_cluster(workers, expected):
    m = validate(blueprints.prime_sweep_scale({"workers": workers}), KNOWN, KNOWN_REDUCERS)
    outs = {aid: tasks.prime_range(a.config, {}) for aid, a in m.agents.items() if a.type == "executor"}
    collected = reducers.prime_collect(outs, {aid: "n1" for aid in outs})
    assert collected["prime_count"] == expected
    assert collected["chunks"] == workers
    assert collected["checked_numbers"] == workers * 100
    assert collected["first_primes"][0] == 1000003


def test_prime_range_matches_an_independent_sieve():
    for lo, hi in [(0, 1000), (1_000_003, 1_000_403), (10**9, 10**9 + 50_000), (2, 3), (97, 98)]:
        assert tasks.prime_range({"start": lo, "end": hi}, {})["count"] == count_primes(lo, hi), (lo, hi)


def test_blueprint_params_are_checked():
    with pytest.raises(DataError, match=r"^params.workers: 0 is not an integer 1-249997"):
        blueprints.generate("prime_sweep_scale", {"workers": 0})
    with pytest.raises(DataError, match=r"^params.workers: 249998 is not an integer 1-249997"):
        blueprints.generate("prime_sweep_scale", {"workers": blueprints.MAX_WORKERS + 1})
    with pytest.raises(DataError, match=r"^params.end: the range needs 1000000 workers .* fix: raise --chunk-size"):
        blueprints.generate("prime_sweep_scale", {"start": 0, "end": 9_999_999, "chunk_size": 10})
    with pytest.raises(DataError, match="unknown parameter"):
        blueprints.generate("prime_sweep_scale", {"wrokers": 3})
    with pytest.raises(DataError, match="unknown blueprint"):
        blueprints.generate("nope", {})
    m = blueprints.generate("prime_sweep_scale", {"start": 10, "end": 1000, "chunk_size": 100})
    assert sum(1 for n in m["nodes"] if n["agent_type"] == "executor") == 10


def test_reducer_keys_by_agent_so_replays_never_double_count():
    out = {"w1": {"start": 0, "end": 10, "count": 4, "checked": 10, "first": [2, 3, 5, 7], "last": [2, 3, 5, 7]}}
    once = reducers.prime_collect(out, {"w1": "a"})
    out["w1"] = dict(out["w1"])  # a replay of w1 overwrites its own entry
    assert reducers.prime_collect(out, {"w1": "b"})["prime_count"] == once["prime_count"] == 4
