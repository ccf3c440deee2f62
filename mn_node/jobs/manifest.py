"""The engine's view of a job manifest, built from the one validator's normalized form.

Validation itself lives in :mod:`mn_node.bundles.manifest` (every problem, by JSON path,
for the original's format and this project's ``config.task`` / ``reduce`` form alike);
:func:`validate` raises :class:`ManifestError` carrying every problem, or returns a
:class:`Manifest`: agents, typed edges, entrypoints, initial inputs and policies with their
defaults. The graph semantics the coordinator applies are in docs/architecture.md ("Jobs").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import yaml

from mn_node.bundles.manifest import Known, validate_manifest
from mn_node.errors import DataError

DEFAULT_TASK_TIMEOUT_S = 3600


class ManifestError(DataError):
    """A manifest's problems; the message starts with the path of the first bad field and
    lists every problem (``problems``), each ``<path>: <what>; fix: <how>``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(" | ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Agent:
    id: str
    type: str  # router | executor | aggregator
    config: dict[str, Any] = field(default_factory=dict)
    runner: str | None = None  # executors: "command" | "entrypoint"
    template: str = "generic"

    @property
    def task(self) -> str:
        return str(self.config.get("task", ""))

    @property
    def is_command(self) -> bool:
        return self.type == "executor" and self.runner == "command"

    @property
    def slots(self) -> int:
        """Executor slots one run of this agent takes on its node (``pool_slots``, default 1)."""
        n = self.config.get("pool_slots", 1)
        return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    message_type: str | None


@dataclass(frozen=True)
class Manifest:
    graph_id: str
    job_name: str
    agents: dict[str, Agent]
    edges: tuple[Edge, ...]
    entrypoints: tuple[str, ...]
    initial_inputs: dict[str, list[Any]]
    policies: dict[str, Any]
    raw: dict[str, Any]  # the normalized manifest (what is stored as the job's spec)

    @cached_property
    def _adjacency(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        # dicts as ordered sets: an aggregator with 100k upstream agents must not be a list searched per edge
        up: dict[str, dict[str, None]] = {a: {} for a in self.agents}
        down: dict[str, dict[str, None]] = {a: {} for a in self.agents}
        for e in self.edges:
            up[e.dst][e.src] = None
            down[e.src][e.dst] = None
        return {a: list(v) for a, v in up.items()}, {a: list(v) for a, v in down.items()}

    def upstream(self, agent_id: str) -> list[str]:
        return self._adjacency[0][agent_id]

    def downstream(self, agent_id: str) -> list[str]:
        return self._adjacency[1][agent_id]

    @cached_property
    def _edge_index(self) -> dict[tuple[str, str], list[Edge]]:
        index: dict[tuple[str, str], list[Edge]] = {}
        for e in self.edges:
            index.setdefault((e.src, e.dst), []).append(e)
        return index

    def edges_between(self, src: str, dst: str) -> list[Edge]:
        return self._edge_index.get((src, dst), [])

    @cached_property
    def terminals(self) -> list[str]:
        return [a for a in self.agents if not self.downstream(a)]

    @property
    def max_attempts(self) -> int:
        return int(self.policies.get("max_agent_restart_attempts", 3)) + 1

    @property
    def bundle(self) -> str | None:
        sha = self.raw.get("bundle")
        return sha if isinstance(sha, str) and sha else None

    @cached_property
    def has_commands(self) -> bool:
        return any(a.is_command for a in self.agents.values())

    def to_json(self) -> str:
        return json.dumps(self.raw, separators=(",", ":"), sort_keys=True)


def parse_text(text: str, source: str = "manifest") -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ManifestError([f"{source}: not valid JSON or YAML{where}; fix: check the syntax"]) from None
    if not isinstance(data, dict):
        raise ManifestError([f"{source}: is not a mapping; fix: the manifest must be an object with nodes, edges, "
                             "entrypoints"])
    return data


def validate(data: Any, known_tasks: set[str] | None = None, known_reducers: set[str] | None = None,
             bundle: str | None = None) -> Manifest:
    """Validate a manifest mapping (either format); raise :class:`ManifestError` with every
    problem. ``bundle`` (a sha256) is recorded in the normalized form as ``"bundle"``."""
    if not isinstance(data, dict):
        raise ManifestError(["manifest: is not an object; fix: send a JSON object with nodes, edges, entrypoints"])
    v = validate_manifest(data, known=Known(known_tasks, known_reducers))
    if v.manifest is None or v.problems:
        raise ManifestError([str(p) for p in v.problems] or ["manifest: invalid; fix: check it with mn validate"])
    norm = dict(v.manifest)
    sha = bundle or data.get("bundle")
    if sha:
        norm["bundle"] = sha
    return from_normalized(norm)


def from_normalized(norm: dict[str, Any]) -> Manifest:
    agents = {
        n["node_id"]: Agent(n["node_id"], n["agent_type"], dict(n.get("config") or {}), n.get("runner"),
                            str(n.get("type") or "generic"))
        for n in norm["nodes"]
    }
    edges = tuple(Edge(e["from_node"], e["to_node"], e.get("message_type")) for e in norm["edges"])
    policies = dict(norm["policies"])
    policies.setdefault("task_timeout_s", DEFAULT_TASK_TIMEOUT_S)
    return Manifest(
        graph_id=norm["graph_id"], job_name=norm["job_name"], agents=agents, edges=edges,
        entrypoints=tuple(norm["entrypoints"]), initial_inputs={k: list(v) for k, v in norm["initial_inputs"].items()},
        policies=policies, raw=norm,
    )
