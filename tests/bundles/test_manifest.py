"""Bundle validation: every problem by path, warnings for what is accepted but not acted on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mn_node.bundles import validate_bundle, validate_manifest
from mn_node.bundles.archive import MiB
from mn_node.bundles.manifest import MAX_AGENTS
from mn_node.jobs import blueprints

ROOT = Path(__file__).resolve().parents[2]


def base() -> dict[str, Any]:
    return {
        "manifest_version": "1.0", "graph_id": "g", "entrypoints": ["in"],
        "initial_inputs": {"in": {"x": 1}},
        "nodes": [
            {"node_id": "in", "agent_type": "router", "config": {"emit_type": "go"}},
            {"node_id": "work", "agent_type": "executor", "type": "map",
             "config": {"upload_path": "tool", "workdir": "/sandbox/job/tool", "command": ["python3", "run.py"]}},
            {"node_id": "sum", "agent_type": "aggregator", "config": {"complete_after": 1}},
        ],
        "edges": [
            {"edge_id": "e1", "from_node": "in", "to_node": "work", "message_type": "go"},
            {"edge_id": "e2", "from_node": "work", "to_node": "sum", "message_type": "executor_result"},
        ],
        "policies": {"recovery_mode": "cluster_recover", "max_agent_restart_attempts": 2},
    }


def write(root: Path, manifest: Any, name: str = "manifest.json") -> Path:
    (root / "payloads" / "tool").mkdir(parents=True, exist_ok=True)
    (root / "payloads" / "tool" / "run.py").write_text("print('{}')\n")
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (root / name).write_text(text)
    return root


def paths(findings: list[Any]) -> list[str]:
    return [f.path for f in findings]


def test_a_good_bundle_is_normalized(tmp_path: Path) -> None:
    v = validate_bundle(write(tmp_path, base()))
    assert v.ok and v.warnings == [], v.to_json()
    m = v.manifest
    assert m is not None and m["job_name"] == "g" and m["initial_inputs"] == {"in": [{"x": 1}]}
    assert [n["runner"] for n in m["nodes"]] == [None, "command", None]
    assert m["nodes"][0]["type"] == "generic"
    assert m["policies"] == {"recovery_mode": "cluster_recover", "max_agent_restart_attempts": 2}


def test_yaml_manifest_and_list_initial_inputs(tmp_path: Path) -> None:
    import yaml

    m = base()
    m["initial_inputs"] = [{"a": 1}, {"a": 2}]
    v = validate_bundle(write(tmp_path, yaml.safe_dump(m), "manifest.yaml"))
    assert v.ok and v.manifest is not None and v.manifest["initial_inputs"] == {"in": [{"a": 1}, {"a": 2}]}


def test_every_problem_is_collected_by_path(tmp_path: Path) -> None:
    m = base()
    del m["graph_id"]
    m["nodes"][1]["config"].update({"upload_path": "../../etc", "workdir": "/etc",
                                    "pass_env": ["PATH", "MIRROR_NEURON_COOKIE"], "max_attempts": 0})
    m["nodes"].append({"node_id": "s", "agent_type": "sensor"})
    m["nodes"].append({"node_id": "mod", "agent_type": "module"})
    m["edges"].append({"edge_id": "bad", "from_node": "sum", "to_node": "nowhere"})
    m["policies"]["recovery_mode"] = "pray"
    v = validate_bundle(write(tmp_path, m))
    assert not v.ok and v.manifest is None
    got = set(paths(v.problems))
    assert {"graph_id", "nodes[1].config.upload_path", "nodes[1].config.workdir",
            "nodes[1].config.pass_env[1]", "nodes[1].config.max_attempts", "nodes[3].agent_type",
            "nodes[4].agent_type", "edges[2].to_node", "policies.recovery_mode"} <= got, \
        [str(p) for p in v.problems]
    # this project's own manifests leave message_type out: such an edge carries every message
    assert "edges[2].message_type" in set(paths(v.warnings))
    text = "\n".join(map(str, v.problems))
    assert "node 's': agent_type 'sensor' is not supported" in text
    assert "router, executor, aggregator" in text
    assert all("\n" not in str(p) for p in v.problems)


def test_cycle_and_daemon_graph_are_refused(tmp_path: Path) -> None:
    m = base()
    m["long_lived"] = True
    m["edges"].append({"edge_id": "back", "from_node": "sum", "to_node": "in", "message_type": "again"})
    v = validate_manifest(m)
    text = "\n".join(map(str, v.problems))
    assert "long_lived" in paths(v.problems)
    assert "cycle in -> work -> sum -> in" in text


def test_accepted_but_not_acted_on_fields_are_warnings(tmp_path: Path) -> None:
    m = base()
    m["metadata"] = {"owner": "me"}
    m["nodes"][1]["config"].update({"name_prefix": "w", "from": "base", "no_keep": True, "tty": False,
                                    "runner_module": "MirrorNeuron.Sandbox.OpenShell", "colour": "blue"})
    m["nodes"][1]["retry_policy"] = {}
    m["edges"][0]["routing_mode"] = "round_robin"
    v = validate_bundle(write(tmp_path, m))
    assert v.ok, v.to_json()
    assert {"metadata", "nodes[1].config.name_prefix", "nodes[1].config.from", "nodes[1].config.no_keep",
            "nodes[1].config.tty", "nodes[1].config.runner_module", "nodes[1].config.colour",
            "nodes[1].retry_policy", "edges[0].routing_mode"} == set(paths(v.warnings))


def test_non_json_manifest_is_one_clear_problem(tmp_path: Path) -> None:
    v = validate_bundle(write(tmp_path, '{"graph_id": "g",\n  "nodes": [}'))
    assert [str(p) for p in v.problems] == [
        "manifest.json: not valid JSON at line 2 column 13: Expecting value; fix: correct the JSON"]


def test_missing_manifest_and_not_a_folder(tmp_path: Path) -> None:
    assert paths(validate_bundle(tmp_path).problems) == ["manifest.json"]
    f = tmp_path / "file"
    f.write_text("x")
    assert "not a folder" in str(validate_bundle(f).problems[0])


def test_symlink_out_of_the_bundle_is_a_problem(tmp_path: Path) -> None:
    root = write(tmp_path / "b", base())
    (tmp_path / "secret").write_text("s")
    (root / "payloads" / "tool" / "leak").symlink_to(tmp_path / "secret")
    (root / "payloads" / "inside").symlink_to(root / "payloads" / "tool" / "run.py")
    v = validate_bundle(root)
    assert paths(v.problems) == ["payloads/tool/leak"] and "symlink" in str(v.problems[0])


def test_bundle_over_the_cap_is_a_problem(tmp_path: Path) -> None:
    root = write(tmp_path, base())
    (root / "payloads" / "big.bin").write_bytes(b"\0" * (2 * MiB))
    v = validate_bundle(root, max_bytes=1 * MiB)
    assert not v.ok and "over the cap of 1.0 MiB" in str(v.problems[0])
    assert validate_bundle(root).ok


def test_missing_upload_and_missing_command(tmp_path: Path) -> None:
    m = base()
    m["nodes"][1]["config"] = {"upload_paths": [{"source": "nope", "target": "/abs"}]}
    v = validate_bundle(write(tmp_path, m))
    assert set(paths(v.problems)) == {"nodes[1].config.upload_paths[0].source",
                                      "nodes[1].config.upload_paths[0].target", "nodes[1].config.command"}


def test_the_examples_validate_clean() -> None:
    v = validate_bundle(ROOT / "examples" / "wordcount")
    assert v.ok and v.warnings == [], v.to_json()


def test_over_the_agent_limit_is_one_problem_not_one_per_edge() -> None:
    """Past MAX_AGENTS the validator stops at one problem (the limit, the count, the fix): it
    does not go on to report every edge as dangling (megabytes of error for a big manifest)."""
    over = MAX_AGENTS + 3
    raw = base()
    raw["nodes"] = [{"node_id": f"w{i}", "agent_type": "router"} for i in range(over)]
    raw["edges"] = [{"from_node": "in", "to_node": f"w{i}"} for i in range(over)]
    v = validate_manifest(raw)
    assert [str(p) for p in v.problems] == [
        f"nodes: {over} agents exceed the limit of {MAX_AGENTS} per job; fix: split the work into several jobs"]
    assert v.manifest is None


def test_a_100k_agent_blueprint_is_valid() -> None:
    raw = blueprints.prime_sweep_scale({"workers": 100_000, "chunk_size": 10})
    v = validate_manifest(raw)
    assert v.ok, v.problems[:3]
    assert v.manifest is not None and len(v.manifest["nodes"]) == 100_003
