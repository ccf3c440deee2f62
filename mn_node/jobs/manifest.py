"""Job manifests (JSON or YAML): a DAG of router / executor / aggregator agents.

Semantics: an agent runs once, when every agent with an edge into it has completed; entry
agents run first with the job's initial inputs. Routers pass their input on (run by the
coordinator), executors run a named task on some node's process pool, aggregators reduce the
outputs of their upstream agents keyed by agent id (so a replayed executor never counts twice).
The job completes when every terminal agent (no outgoing edge) has completed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import yaml

from mn_node.errors import DataError

AGENT_TYPES = ("router", "executor", "aggregator")
RECOVERY_MODES = ("local_restart", "cluster_recover", "manual_recover")
REDUCERS = ("collect", "prime_collect", "prime_summary")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
MAX_AGENTS = 10_000


class ManifestError(DataError):
    """A manifest problem; the message starts with the path of the bad field."""


def _err(path: str, problem: str, fix: str) -> ManifestError:
    return ManifestError(f"{path}: {problem}; fix: {fix}")


@dataclass(frozen=True)
class Agent:
    id: str
    type: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return str(self.config.get("task", ""))


@dataclass(frozen=True)
class Manifest:
    graph_id: str
    job_name: str
    agents: dict[str, Agent]
    edges: tuple[tuple[str, str], ...]
    entrypoints: tuple[str, ...]
    initial_inputs: dict[str, Any]
    policies: dict[str, Any]
    raw: dict[str, Any]

    @cached_property
    def _adjacency(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        up: dict[str, list[str]] = {a: [] for a in self.agents}
        down: dict[str, list[str]] = {a: [] for a in self.agents}
        for a, b in self.edges:
            up[b].append(a)
            down[a].append(b)
        return up, down

    def upstream(self, agent_id: str) -> list[str]:
        return self._adjacency[0][agent_id]

    def downstream(self, agent_id: str) -> list[str]:
        return self._adjacency[1][agent_id]

    @cached_property
    def terminals(self) -> list[str]:
        return [a for a in self.agents if not self.downstream(a)]

    @property
    def max_attempts(self) -> int:
        return int(self.policies.get("max_agent_restart_attempts", 3)) + 1

    def to_json(self) -> str:
        return json.dumps(self.raw, separators=(",", ":"), sort_keys=True)


def parse_text(text: str, source: str = "manifest") -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ManifestError(f"{source}: not valid JSON or YAML{where}; fix: check the syntax") from None
    if not isinstance(data, dict):
        raise _err(source, "is not a mapping", "the manifest must be an object with nodes, edges, entrypoints")
    return data


def _header(data: dict[str, Any]) -> tuple[str, str]:
    """(graph_id, job_name), after checking the manifest version."""
    version = data.get("manifest_version", "1.0")
    if str(version).split(".")[0] != "1":
        raise _err("manifest_version", f"{version!r} is not supported", "use manifest_version: '1.0'")
    graph_id = data.get("graph_id")
    if not isinstance(graph_id, str) or not _ID_RE.match(graph_id):
        raise _err("graph_id", f"{graph_id!r} is missing or has bad characters", "use letters, digits, _ . : -")
    job_name = data.get("job_name", graph_id)
    if not isinstance(job_name, str) or len(job_name) > 200:
        raise _err("job_name", "must be a string of at most 200 characters", "shorten it")
    return graph_id, job_name


def _agent_config(path: str, atype: str, config: dict[str, Any], known_tasks: set[str] | None) -> None:
    """An executor names a (known) task; an aggregator a known reducer."""
    if atype == "executor":
        task = config.get("task")
        if not isinstance(task, str) or not task:
            raise _err(f"{path}.config.task", "missing", "name an executor task, e.g. prime_range")
        if known_tasks is not None and task not in known_tasks:
            raise _err(
                f"{path}.config.task", f"unknown task {task!r}",
                f"use one of {', '.join(sorted(known_tasks)) or '(none installed)'} or install the plugin",
            )
    if atype == "aggregator":
        reduce = config.get("reduce", "collect")
        if reduce not in REDUCERS:
            raise _err(f"{path}.config.reduce", f"unknown reducer {reduce!r}", f"use one of {', '.join(REDUCERS)}")


def _agents(nodes: Any, known_tasks: set[str] | None) -> dict[str, Agent]:
    if not isinstance(nodes, list) or not nodes:
        raise _err("nodes", "missing or empty", "list the agents: nodes: [{node_id, agent_type, config}]")
    if len(nodes) > MAX_AGENTS:
        raise _err("nodes", f"{len(nodes)} agents exceed the limit of {MAX_AGENTS}", "split the job")
    agents: dict[str, Agent] = {}
    for i, n in enumerate(nodes):
        path = f"nodes[{i}]"
        if not isinstance(n, dict):
            raise _err(path, "is not an object", "give node_id, agent_type and config")
        aid = n.get("node_id")
        if not isinstance(aid, str) or not _ID_RE.match(aid):
            raise _err(f"{path}.node_id", f"{aid!r} is missing or has bad characters", "use letters, digits, _ . : -")
        if aid in agents:
            raise _err(f"{path}.node_id", f"{aid!r} is used twice", "give every agent its own node_id")
        atype = n.get("agent_type")
        if atype not in AGENT_TYPES:
            raise _err(f"{path}.agent_type", f"unknown agent type {atype!r}", f"use one of {', '.join(AGENT_TYPES)}")
        config = n.get("config", {})
        if not isinstance(config, dict):
            raise _err(f"{path}.config", "is not an object", "give config as a mapping")
        _agent_config(path, atype, config, known_tasks)
        agents[aid] = Agent(aid, atype, dict(config))
    return agents


def _edges(edges_raw: Any, agents: dict[str, Agent]) -> list[tuple[str, str]]:
    if not isinstance(edges_raw, list):
        raise _err("edges", "is not a list", "give edges: [{from_node, to_node}]")
    edges: list[tuple[str, str]] = []
    for i, e in enumerate(edges_raw):
        path = f"edges[{i}]"
        if not isinstance(e, dict):
            raise _err(path, "is not an object", "give from_node and to_node")
        for end in ("from_node", "to_node"):
            if not isinstance(e.get(end), str) or e[end] not in agents:
                raise _err(f"{path}.{end}", f"dangling edge: no agent {e.get(end)!r}",
                           "point it at a node_id listed in nodes")
        edges.append((str(e["from_node"]), str(e["to_node"])))
    if len(set(edges)) != len(edges):
        raise _err("edges", "an edge is listed twice", "list each edge once")
    return edges


def _graph_shape(entry: Any, agents: dict[str, Agent], edges: list[tuple[str, str]]) -> list[str]:
    """The entrypoints, after checking they are sources that reach every agent of an acyclic graph."""
    if not isinstance(entry, list) or not entry:
        raise _err("entrypoints", "missing or empty", "name the agents that receive the initial inputs")
    for i, aid in enumerate(entry):
        if not isinstance(aid, str) or aid not in agents:
            raise _err(f"entrypoints[{i}]", f"no agent {aid!r}", "name an agent listed in nodes")
        if any(b == aid for _, b in edges):
            raise _err(f"entrypoints[{i}]", f"{aid!r} has incoming edges", "entrypoints must be sources of the graph")
    unreachable = set(agents) - _reachable(entry, edges)
    if unreachable:
        first = sorted(unreachable)[0]
        raise _err("entrypoints", f"agent {first!r} is not reachable from any entrypoint",
                   "add an edge to it or list it as an entrypoint")
    cycle = _find_cycle(list(agents), edges)
    if cycle:
        raise _err("edges", f"cycle {' -> '.join(cycle)}", "jobs must be acyclic graphs")
    return entry


def _initial_inputs(inputs: Any, entry: list[str]) -> dict[str, Any]:
    if not isinstance(inputs, dict):
        raise _err("initial_inputs", "is not an object", "map entrypoint ids to their input")
    for k in inputs:
        if k not in entry:
            raise _err(f"initial_inputs.{k}", "is not an entrypoint", "key inputs by entrypoint node_id")
    return dict(inputs)


def _policies(policies: Any) -> dict[str, Any]:
    """The policies with their defaults filled in."""
    if not isinstance(policies, dict):
        raise _err("policies", "is not an object", "give recovery_mode and max_agent_restart_attempts")
    mode = policies.get("recovery_mode", "cluster_recover")
    if mode not in RECOVERY_MODES:
        raise _err("policies.recovery_mode", f"unknown mode {mode!r}", f"use one of {', '.join(RECOVERY_MODES)}")
    attempts = policies.get("max_agent_restart_attempts", 3)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or not 0 <= attempts <= 100:
        raise _err("policies.max_agent_restart_attempts", f"{attempts!r} is not an integer 0-100", "use e.g. 3")
    timeout = policies.get("task_timeout_s", 3600)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 86400:
        raise _err("policies.task_timeout_s", f"{timeout!r} is not 0-86400 seconds", "use e.g. 600")
    return {"recovery_mode": mode, "max_agent_restart_attempts": attempts, "task_timeout_s": timeout}


def validate(data: Any, known_tasks: set[str] | None = None) -> Manifest:
    """Validate a manifest mapping; raise :class:`ManifestError` naming the bad field's path.

    Checked in this order, first problem wins: header (version, graph_id, job_name), agents,
    edges, graph shape (entrypoints, reachability, cycles), initial inputs, policies."""
    if not isinstance(data, dict):
        raise _err("manifest", "is not an object", "send a JSON object with nodes, edges, entrypoints")
    graph_id, job_name = _header(data)
    agents = _agents(data.get("nodes"), known_tasks)
    edges = _edges(data.get("edges", []), agents)
    entry = _graph_shape(data.get("entrypoints"), agents, edges)
    return Manifest(
        graph_id=graph_id, job_name=job_name, agents=agents, edges=tuple(edges), entrypoints=tuple(entry),
        initial_inputs=_initial_inputs(data.get("initial_inputs", {}), entry),
        policies=_policies(data.get("policies", {})), raw=data,
    )


def _reachable(starts: list[str], edges: list[tuple[str, str]]) -> set[str]:
    seen = set(starts)
    stack = list(starts)
    out: dict[str, list[str]] = {}
    for a, b in edges:
        out.setdefault(a, []).append(b)
    while stack:
        for b in out.get(stack.pop(), []):
            if b not in seen:
                seen.add(b)
                stack.append(b)
    return seen


def _find_cycle(nodes: list[str], edges: list[tuple[str, str]]) -> list[str]:
    out: dict[str, list[str]] = {}
    for a, b in edges:
        out.setdefault(a, []).append(b)
    color: dict[str, int] = {}
    for root in nodes:
        if color.get(root):
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            n, i = stack.pop()
            if i == 0:
                color[n] = 1
                path.append(n)
            succ = out.get(n, [])
            if i < len(succ):
                stack.append((n, i + 1))
                m = succ[i]
                if color.get(m) == 1:
                    return [*path[path.index(m):], m]
                if not color.get(m):
                    stack.append((m, 0))
            else:
                color[n] = 2
                path.pop()
    return []
