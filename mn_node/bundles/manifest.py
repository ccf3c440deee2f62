"""Validation of a bundle's manifest in the original's format, collecting every problem.

``validate_bundle(path)`` returns a :class:`Validation`: the normalized manifest (None when
there are problems), ``warnings`` (fields accepted but not acted on, never silently dropped)
and ``problems`` (what makes the bundle unrunnable), each as ``<json path>: <what>; fix: <how>``.

Supported: ``router``, ``executor`` (``command``: run by the command runner; ``task``: a
Python entry point) and ``aggregator`` agents (the original's ``complete_after`` /
``complete_on_message``, or this project's ``reduce``: a named reducer) in an acyclic graph run
once per job. Refused: ``sensor`` and ``module`` agents, cycles, ``long_lived`` (daemon) graphs.
This is the one validator: job submissions (``mn submit``, the API, bundles) all go through it.

Normalized form::

    {manifest_version, graph_id, job_name, entrypoints: [node_id],
     initial_inputs: {node_id: [payload, ...]},
     nodes: [{node_id, agent_type, type, role, config, runner}],   # runner: command|entrypoint|None
     edges: [{edge_id, from_node, to_node, message_type}],
     policies: {recovery_mode, max_agent_restart_attempts, task_timeout_s?}}
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from mn_node.bundles import archive

MANIFEST_NAMES = ("manifest.json", "manifest.yaml", "manifest.yml")
SUPPORTED_AGENTS = ("router", "executor", "aggregator")
UNSUPPORTED_AGENTS = {
    "sensor": "sensors run forever, and only graphs that finish are supported",
    "module": "module agents run code inside the original's runtime",
}
TEMPLATES = ("generic", "map", "reduce", "batch", "accumulator", "stream")
RECOVERY_MODES = ("local_restart", "cluster_recover", "manual_recover")
SANDBOX_ROOT = "/sandbox/job"
SECRET_ENV = ("MIRROR_NEURON_COOKIE", "MIRROR_NEURON_COOKIE_FILE", "MIRROR_NEURON_API_TOKEN",
              "MIRROR_NEURON_REDIS_URL", "REDISCLI_AUTH")

# config keys acted on, per agent type; IGNORED_* are accepted and reported as warnings
EXECUTOR_KEYS = frozenset({
    "command", "task", "upload_path", "upload_as", "upload_paths", "workdir", "sandbox_upload_path",
    "environment", "pass_env", "max_attempts", "retry_backoff_ms", "startup_delay_ms", "pool",
    "pool_slots", "timeout_seconds", "output_message_type", "complete_job", "content_type",
    "content_encoding", "runner_module",
})
IGNORED_EXECUTOR_KEYS = {
    "name_prefix": "sandbox naming of the original",
    "from": "OpenShell base image",
    "no_keep": "OpenShell option", "no_auto_providers": "OpenShell option", "tty": "OpenShell option",
    "gpu": "OpenShell option", "remote": "OpenShell option", "ssh_key": "OpenShell option",
    "policy": "OpenShell option", "providers": "OpenShell option", "lease_manager": "original's runtime",
    "reuse_shared_sandbox": "OpenShell option", "persistent_workspace": "OpenShell option",
    "cleanup_remote_dir": "OpenShell option",
}
ROUTER_KEYS = frozenset({"emit_type"})
AGGREGATOR_KEYS = frozenset({"complete_after", "complete_on_message", "output_message_type", "complete_job",
                             "reducer", "reduce"})
IGNORED_NODE_KEYS = ("tool_bindings", "retry_policy", "checkpoint_policy", "spawn_policy")
IGNORED_EDGE_KEYS = ("conditions",)
IGNORED_TOP_KEYS = ("metadata", "reload")
HOST_LOCAL = "MirrorNeuron.Runner.HostLocal"
# ids end up in job ids, Redis keys and file names
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
# agents in one job: a 100k-agent job is supported (its spec is stored compressed, its agents are
# read in pages); past this a manifest is refused with one problem before anything else is checked
MAX_AGENTS = 250_000
MAX_RESTARTS = 100
MAX_FINDINGS = 100  # problems (and warnings) listed one by one; past it one line counts the rest
MAX_TASK_TIMEOUT_S = 86_400


@dataclass(frozen=True)
class Known:
    """What this cluster can run beyond commands: installed task entry points and reducers
    (None: not checked, e.g. ``mn validate`` away from a node)."""

    tasks: Collection[str] | None = None
    reducers: Collection[str] | None = None


@dataclass(frozen=True)
class Finding:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass
class Validation:
    manifest: dict[str, Any] | None
    warnings: list[Finding] = field(default_factory=list)
    problems: list[Finding] = field(default_factory=list)
    manifest_file: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def __iter__(self) -> Iterator[Any]:
        """``manifest, warnings, problems = validate_bundle(path)``"""
        return iter((self.manifest, self.warnings, self.problems))

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": [str(p) for p in self.problems],
                "warnings": [str(w) for w in self.warnings]}


class _Check:
    """Collects findings: at most MAX_FINDINGS of each kind are listed (a manifest of 100k bad
    agents gives a readable answer, not megabytes); a warning many fields repeat word for word
    (:meth:`warn_each`) is listed once with its count. :meth:`finish` adds those lines."""

    def __init__(self, known: Known | None = None) -> None:
        self.warnings: list[Finding] = []
        self.problems: list[Finding] = []
        self.known = known or Known()
        self._unlisted = {"problems": 0, "warnings": 0}
        self._repeated: dict[str, list[Any]] = {}  # message -> [first path, count]

    def bad(self, path: str, message: str) -> None:
        if len(self.problems) < MAX_FINDINGS:
            self.problems.append(Finding(path, message))
        else:
            self._unlisted["problems"] += 1

    def warn(self, path: str, message: str) -> None:
        if len(self.warnings) < MAX_FINDINGS:
            self.warnings.append(Finding(path, message))
        else:
            self._unlisted["warnings"] += 1

    def warn_each(self, path: str, message: str) -> None:
        seen = self._repeated.get(message)
        if seen is None:
            self._repeated[message] = [path, 1]
        else:
            seen[1] += 1

    def finish(self) -> None:
        for message, (path, n) in self._repeated.items():
            self.warn(path if n == 1 else f"{path} and {n - 1} more like it", message)
        self._repeated.clear()
        if self._unlisted["problems"]:
            self.problems.append(Finding("", f"{self._unlisted['problems']} more problems not listed; "
                                             "fix: correct those above and validate again"))
        if self._unlisted["warnings"]:
            self.warnings.append(Finding("", f"{self._unlisted['warnings']} more warnings not listed"))
        self._unlisted = {"problems": 0, "warnings": 0}


def find_manifest(bundle: Path) -> Path | None:
    for name in MANIFEST_NAMES:
        if (bundle / name).is_file():
            return bundle / name
    return None


def parse_manifest(path: Path, check: _Check) -> Any:
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        check.bad(name, f"cannot be read ({e}); fix: save it as UTF-8 text")
        return None
    if name.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            check.bad(name, f"not valid JSON at line {e.lineno} column {e.colno}: {e.msg}; fix: correct the JSON")
            return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where is not None else ""
        check.bad(name, f"not valid YAML{at}: {getattr(e, 'problem', e)}; fix: correct the YAML")
        return None


def validate_bundle(path: Path, *, max_bytes: int | None = None) -> Validation:
    """Validate the bundle folder ``path``: manifest, files, paths and size. Never raises for
    bad content; every problem is in the returned ``Validation``."""
    check = _Check()
    if not path.is_dir():
        check.bad("", f"{path} is not a folder; fix: give the bundle folder (with manifest.json and payloads/)")
        return Validation(None, check.warnings, check.problems)
    manifest_file = find_manifest(path)
    raw: Any = None
    parsed = False
    if manifest_file is None:
        check.bad("manifest.json", f"missing in {path}; fix: add manifest.json (or manifest.yaml)")
    else:
        before = len(check.problems)
        raw = parse_manifest(manifest_file, check)
        parsed = len(check.problems) == before
    _check_files(path, check, archive.max_bytes() if max_bytes is None else max_bytes)
    normalized = None
    if parsed:
        normalized = normalize(raw, check, payloads=path / "payloads")
    check.finish()
    return Validation(normalized if not check.problems else None, check.warnings, check.problems, manifest_file)


def validate_manifest(raw: Any, payloads: Path | None = None, known: Known | None = None) -> Validation:
    """Validate an already decoded manifest (no files checked unless ``payloads`` is given)."""
    check = _Check(known)
    normalized = normalize(raw, check, payloads=payloads)
    check.finish()
    return Validation(normalized if not check.problems else None, check.warnings, check.problems)


def _check_files(path: Path, check: _Check, cap: int) -> None:
    total = 0
    root = path.resolve()
    stack = [root]
    while stack:
        folder = stack.pop()
        for child in sorted(folder.iterdir()):
            if child.name in archive.SKIPPED_DIRS or child.name.endswith(archive.SKIPPED_SUFFIXES):
                continue
            rel = child.relative_to(root).as_posix()
            try:
                entry = archive.entry_of(child, root, rel)
            except archive.BundleError as e:
                check.bad(rel, str(e).split(": ", 1)[1])
                continue
            except OSError as e:
                check.bad(rel, f"cannot be read ({e.strerror}); fix: check its permissions")
                continue
            total += entry.size + archive.TAR_OVERHEAD
            if entry.source is None:
                stack.append(child)
    if total > cap:
        check.bad("", f"the bundle is about {total / archive.MiB:.1f} MiB, over the cap of "
                      f"{cap / archive.MiB:.1f} MiB; fix: leave large data out or raise {archive.MAX_BYTES_ENV}")


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def normalize(raw: Any, check: _Check, payloads: Path | None = None) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        check.bad("", f"the manifest must be an object, not {type(raw).__name__}; fix: start it with '{{'")
        return None
    for key in IGNORED_TOP_KEYS:
        if key in raw:
            check.warn(key, "accepted but not acted on")
    if raw.get("long_lived") not in (None, False):
        check.bad("long_lived", "long-lived (daemon) graphs are not supported; fix: make a graph that finishes "
                                "(router, executor and aggregator agents)")
    version = raw.get("manifest_version")
    if version is None:
        check.warn("manifest_version", "missing; read as 1.0 (write \"manifest_version\": \"1.0\")")
    elif str(version) not in ("1", "1.0"):
        check.warn("manifest_version", f"{version!r} is not 1.0; read as 1.0")
    graph_id = raw.get("graph_id")
    if not _is_str(graph_id):
        check.bad("graph_id", "missing or empty; fix: name the graph, e.g. \"prime_sweep\"")
    elif not ID_RE.match(str(graph_id)):
        check.bad("graph_id", f"{str(graph_id)[:80]!r} has bad characters; fix: use letters, digits, _ . : - "
                              "(at most 128)")
    if isinstance(raw.get("nodes"), list) and len(raw["nodes"]) > MAX_AGENTS:
        # one problem and stop: checking the edges of nodes left unread would report each as dangling
        check.bad("nodes", f"{len(raw['nodes'])} agents exceed the limit of {MAX_AGENTS} per job; "
                           "fix: split the work into several jobs")
        return None
    job_name = raw.get("job_name", graph_id)
    if job_name is not None and (not isinstance(job_name, str) or len(job_name) > 200):
        check.bad("job_name", "must be a string of at most 200 characters")
    nodes = _nodes(raw.get("nodes"), check, payloads)
    ids = [n["node_id"] for n in nodes if n is not None]
    edges = _edges(raw.get("edges", []), check, set(ids))
    entrypoints = _entrypoints(raw, check, nodes, set(ids))
    initial = _initial_inputs(raw.get("initial_inputs", {}), check, entrypoints, set(ids))
    policies = _policies(raw.get("policies", {}), check)
    _check_graph(check, ids, edges, entrypoints)
    if check.problems:
        return None
    return {"manifest_version": "1.0", "graph_id": graph_id, "job_name": job_name or graph_id,
            "entrypoints": entrypoints, "initial_inputs": initial,
            "nodes": [n for n in nodes if n is not None], "edges": edges, "policies": policies}


def _nodes(raw: Any, check: _Check, payloads: Path | None) -> list[dict[str, Any] | None]:
    if not isinstance(raw, list) or not raw:
        check.bad("nodes", "missing or empty; fix: list the agents, e.g. [{\"node_id\": \"a\", "
                           "\"agent_type\": \"executor\", ...}]")
        return []
    out: list[dict[str, Any] | None] = []
    seen: set[str] = set()
    for i, node in enumerate(raw):
        out.append(_node(f"nodes[{i}]", node, check, seen, payloads))
    return out


def _node(path: str, node: Any, check: _Check, seen: set[str], payloads: Path | None) -> dict[str, Any] | None:
    if not isinstance(node, dict):
        check.bad(path, "must be an object")
        return None
    if not _is_str(node.get("node_id")):
        check.bad(f"{path}.node_id", "missing or empty; fix: give every node a unique id")
        return None
    node_id = str(node["node_id"])
    if not ID_RE.match(node_id):
        check.bad(f"{path}.node_id", f"{node_id[:80]!r} has bad characters; fix: use letters, digits, _ . : -")
    if node_id in seen:
        check.bad(f"{path}.node_id", f"duplicate node_id {node_id!r} (used twice); fix: make ids unique")
    seen.add(node_id)
    agent = node.get("agent_type")
    if agent in UNSUPPORTED_AGENTS:
        check.bad(f"{path}.agent_type", f"node {node_id!r}: agent_type {agent!r} is not supported "
                  f"({UNSUPPORTED_AGENTS[agent]}): an unknown agent type on this cluster; "
                  f"fix: use one of {', '.join(SUPPORTED_AGENTS)}")
    elif agent not in SUPPORTED_AGENTS:
        check.bad(f"{path}.agent_type", f"node {node_id!r}: unknown agent type {agent!r}; "
                  f"fix: use one of {', '.join(SUPPORTED_AGENTS)}")
    template = node.get("type", "generic")
    if template is None:
        template = "generic"
    if template not in TEMPLATES:
        check.bad(f"{path}.type", f"node {node_id!r}: unknown template type {template!r}; "
                  f"fix: use one of {', '.join(TEMPLATES)}")
    role = node.get("role")
    if role is not None and not isinstance(role, str):
        check.bad(f"{path}.role", "must be a string")
    for key in IGNORED_NODE_KEYS:
        if key in node:
            check.warn(f"{path}.{key}", "accepted but not acted on")
    config = node.get("config", {})
    if config is None:
        config = {}
    if not isinstance(config, dict):
        check.bad(f"{path}.config", "must be an object")
        config = {}
    runner = None
    if agent == "executor":
        runner = _executor(f"{path}.config", node_id, config, check, payloads)
    elif agent == "router":
        _known(f"{path}.config", config, ROUTER_KEYS, {}, check)
    elif agent == "aggregator":
        _aggregator(f"{path}.config", config, check)
    return {"node_id": node_id, "agent_type": agent, "type": template, "role": role,
            "config": config, "runner": runner}


def _known(path: str, config: Mapping[str, Any], known: frozenset[str], ignored: Mapping[str, str],
           check: _Check) -> None:
    for key in config:
        if key in ignored:
            check.warn(f"{path}.{key}", f"accepted but not acted on ({ignored[key]})")
        elif key not in known:
            check.warn(f"{path}.{key}", "unknown key, ignored")


def _aggregator(path: str, config: Mapping[str, Any], check: _Check) -> None:
    _known(path, config, AGGREGATOR_KEYS, {}, check)
    if "reduce" in config:
        reduce, known = config["reduce"], check.known.reducers
        if not _is_str(reduce) or (known is not None and reduce not in known):
            check.bad(f"{path}.reduce", f"unknown reducer {reduce!r}; fix: use one of "
                                        f"{', '.join(sorted(known or ())) or 'the installed reducers'}")
    after = config.get("complete_after")
    if after is not None and (not isinstance(after, int) or isinstance(after, bool) or after < 1):
        check.bad(f"{path}.complete_after", f"{after!r} is not a positive integer; fix: the number of messages "
                                            "to collect")
    on_msg = config.get("complete_on_message", False)
    if not isinstance(on_msg, bool):
        check.bad(f"{path}.complete_on_message", "must be true or false")


def _nonneg_int(path: str, config: Mapping[str, Any], key: str, check: _Check, low: int = 0) -> None:
    v = config.get(key)
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
        check.bad(f"{path}.{key}", f"{v!r} is not an integer >= {low}")


def _executor(path: str, node_id: str, config: Mapping[str, Any], check: _Check,
              payloads: Path | None) -> str | None:
    command, task = config.get("command"), config.get("task")
    if task is None:  # a task's config is its own: only a command's keys are checked
        _known(path, config, EXECUTOR_KEYS, IGNORED_EXECUTOR_KEYS, check)
    runner: str | None = None
    if command is not None and task is not None:
        check.bad(path, f"node {node_id!r} has both 'command' and 'task'; fix: keep one")
    elif command is not None:
        runner = "command"
        ok_list = isinstance(command, list) and command and all(isinstance(p, (str, int, float)) for p in command)
        if not ok_list and not _is_str(command):
            check.bad(f"{path}.command", "must be a non-empty list of strings or a string; "
                      "fix: e.g. [\"python3\", \"scripts/run.py\"]")
    elif task is not None:
        runner = "entrypoint"
        known = check.known.tasks
        if not _is_str(task):
            check.bad(f"{path}.task", "must be the name of an installed task")
        elif known is not None and task not in known:
            check.bad(f"{path}.task", f"unknown task {task!r}; fix: use one of "
                                      f"{', '.join(sorted(known)) or '(none installed)'} or install the plugin")
    else:
        check.bad(f"{path}.command", f"node {node_id!r}: an executor needs a command; "
                  "fix: e.g. \"command\": [\"python3\", \"scripts/run.py\"]")
    module = config.get("runner_module")
    if module is not None and module != HOST_LOCAL:
        check.warn(f"{path}.runner_module", f"{module!r}: commands run on the node itself (host-local)")
    for key, low in (("max_attempts", 1), ("retry_backoff_ms", 0), ("startup_delay_ms", 0), ("pool_slots", 1)):
        if key in config:
            _nonneg_int(path, config, key, check, low)
    t = config.get("timeout_seconds")
    if t is not None and (not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0):
        check.bad(f"{path}.timeout_seconds", f"{t!r} is not a positive number of seconds")
    _paths(path, config, check, payloads)
    _env(path, config, check)
    return runner


def _rel_problem(raw: Any) -> str | None:
    if not _is_str(raw):
        return "must be a non-empty relative path"
    p = PurePosixPath(raw)
    if p.is_absolute():
        return f"{raw!r} is absolute; fix: use a path relative to payloads/"
    if ".." in p.parts:
        return f"{raw!r} leads out with '..'; fix: use a path inside payloads/"
    return None


def _upload_list(path: str, config: Mapping[str, Any], check: _Check) -> list[tuple[str, Any, Any]]:
    entries = config.get("upload_paths")
    if entries is not None and not isinstance(entries, list):
        check.bad(f"{path}.upload_paths", "must be a list of {source, target}")
        return []
    if entries:
        out = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict):
                check.bad(f"{path}.upload_paths[{i}]", "must be an object {source, target}")
                continue
            out.append((f"{path}.upload_paths[{i}]", e.get("source"), e.get("target", "")))
        return out
    if "upload_path" in config:
        return [(f"{path}.upload_path", config["upload_path"], config.get("upload_as", ""))]
    return []


def _paths(path: str, config: Mapping[str, Any], check: _Check, payloads: Path | None) -> None:
    for where, source, target in _upload_list(path, config, check):
        src_path = where if where.endswith("upload_path") else f"{where}.source"
        problem = _rel_problem(source)
        if problem:
            check.bad(src_path, problem)
        elif payloads is not None and not (payloads / source).exists():
            check.bad(src_path, f"payloads/{source} does not exist; fix: add it to the bundle")
        tgt_path = f"{path}.upload_as" if where.endswith("upload_path") else f"{where}.target"
        if target not in ("", None):
            problem = _rel_problem(target)
            if problem:
                check.bad(tgt_path, problem.replace("payloads/", "the scratch directory"))
    workdir = config.get("workdir")
    root = str(config.get("sandbox_upload_path") or SANDBOX_ROOT).rstrip("/")
    if workdir is not None:
        if not isinstance(workdir, str):
            check.bad(f"{path}.workdir", "must be a string")
        elif workdir.startswith("/") and workdir.rstrip("/") != root and not workdir.startswith(root + "/"):
            check.bad(f"{path}.workdir", f"{workdir!r} is outside {root}; fix: use a path under {root}")
        elif ".." in PurePosixPath(workdir).parts:
            check.bad(f"{path}.workdir", f"{workdir!r} leads out with '..'; fix: use a path under {root}")


def _env(path: str, config: Mapping[str, Any], check: _Check) -> None:
    env = config.get("environment")
    if env is not None and not isinstance(env, dict):
        check.bad(f"{path}.environment", "must be an object of NAME: value")
    names = config.get("pass_env")
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        check.bad(f"{path}.pass_env", "must be a list of variable names")
        return
    for i, name in enumerate(names):
        if name in SECRET_ENV:
            check.bad(f"{path}.pass_env[{i}]", f"{name} is a secret of the cluster and never passes to "
                                               "commands; fix: remove it")


def _edges(raw: Any, check: _Check, ids: set[str]) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        check.bad("edges", "must be a list")
        return []
    out = []
    for i, edge in enumerate(raw):
        if not isinstance(edge, dict):
            check.bad(f"edges[{i}]", "must be an object {edge_id, from_node, to_node, message_type}")
            continue
        ends = {"from_node": edge.get("from_node"), "to_node": edge.get("to_node")}
        for end, v in ends.items():
            if not isinstance(v, str) or v not in ids:
                check.bad(f"edges[{i}].{end}", f"dangling edge: {v!r} is not a node of this graph; "
                                               "fix: point it at a node_id listed in nodes")
                ends[end] = v if isinstance(v, str) else None
        message_type = edge.get("message_type")
        if not _is_str(message_type):
            check.warn_each(f"edges[{i}].message_type", "missing: this edge carries every message its source sends")
        mode = edge.get("routing_mode", "broadcast")
        if mode != "broadcast":
            check.warn_each(f"edges[{i}].routing_mode",
                            f"{mode!r} not acted on: messages go to every edge of their type")
        for key in IGNORED_EDGE_KEYS:
            if key in edge:
                check.warn_each(f"edges[{i}].{key}", "accepted but not acted on")
        out.append({"edge_id": edge.get("edge_id") or f"edge_{i}", **ends, "message_type": message_type})
    return out


def _entrypoints(raw: Mapping[str, Any], check: _Check, nodes: list[dict[str, Any] | None],
                 ids: set[str]) -> list[str]:
    eps = raw.get("entrypoints")
    if eps is None:
        found = [n["node_id"] for n in nodes if n is not None and n["role"] in ("root", "root_coordinator")]
        if not found and nodes:
            check.bad("entrypoints", "missing and no node has role root/root_coordinator; "
                                     "fix: \"entrypoints\": [\"<first node>\"]")
        return found
    if isinstance(eps, str):
        eps = [eps]
    if not isinstance(eps, list) or not eps:
        check.bad("entrypoints", "must be a non-empty list of node ids")
        return []
    for i, ep in enumerate(eps):
        if not isinstance(ep, str) or ep not in ids:
            check.bad(f"entrypoints[{i}]",
                      f"no agent {ep!r}: not a node of this graph; fix: name a node_id listed in nodes")
    return [str(e) for e in eps]


def _initial_inputs(raw: Any, check: _Check, entrypoints: list[str], ids: set[str]) -> dict[str, list[Any]]:
    if raw is None:
        return {}
    if isinstance(raw, list):  # a list: every entrypoint gets all of it
        return {ep: list(raw) for ep in entrypoints}
    if not isinstance(raw, dict):
        check.bad("initial_inputs", "must be an object {node_id: [payload, ...]} or a list of payloads")
        return {}
    out: dict[str, list[Any]] = {}
    for node_id, payload in raw.items():
        if node_id not in ids:
            check.bad(f"initial_inputs.{node_id}", f"{node_id!r} is not a node of this graph")
            continue
        if node_id not in entrypoints:
            check.warn(f"initial_inputs.{node_id}", "not an entrypoint: its inputs are delivered all the same")
        out[node_id] = list(payload) if isinstance(payload, list) else [payload]
    return out


def _policies(raw: Any, check: _Check) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        check.bad("policies", "must be an object")
        return {}
    mode = raw.get("recovery_mode", "local_restart")
    if mode not in RECOVERY_MODES:
        check.bad("policies.recovery_mode", f"unknown mode {mode!r}; fix: use one of {', '.join(RECOVERY_MODES)}")
    attempts = raw.get("max_agent_restart_attempts", 3)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or not 0 <= attempts <= MAX_RESTARTS:
        check.bad("policies.max_agent_restart_attempts",
                  f"{attempts!r} is not an integer 0-{MAX_RESTARTS}; fix: e.g. 3")
    out: dict[str, Any] = {"recovery_mode": mode, "max_agent_restart_attempts": attempts}
    if "task_timeout_s" in raw:
        timeout = raw["task_timeout_s"]
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= MAX_TASK_TIMEOUT_S:
            check.bad("policies.task_timeout_s", f"{timeout!r} is not 0-{MAX_TASK_TIMEOUT_S} seconds; fix: e.g. 600")
        out["task_timeout_s"] = timeout
    for key in raw:
        if key not in ("recovery_mode", "max_agent_restart_attempts", "task_timeout_s"):
            check.warn(f"policies.{key}", "unknown policy, ignored")
    return out


def _check_graph(check: _Check, ids: list[str], edges: list[dict[str, Any]], entrypoints: list[str]) -> None:
    """Cycles are refused (naming the nodes on one); nodes no edge from an entrypoint reaches
    are reported as warnings."""
    graph: dict[str, list[str]] = {i: [] for i in ids}
    for e in edges:
        if e["from_node"] in graph and e["to_node"] in graph:
            graph[e["from_node"]].append(e["to_node"])
    cycle = _find_cycle(graph)
    if cycle:
        check.bad("edges", f"the graph has a cycle {' -> '.join([*cycle, cycle[0]])}; only acyclic graphs are "
                           "supported; fix: remove an edge of the cycle")
        return
    reach = set(entrypoints)
    stack = list(entrypoints)
    while stack:
        for nxt in graph.get(stack.pop(), []):
            if nxt not in reach:
                reach.add(nxt)
                stack.append(nxt)
    if entrypoints:
        for node_id in ids:
            if node_id not in reach:
                check.warn("nodes", f"node {node_id!r} is reached from no entrypoint by an edge: it runs only if "
                                    "a message is sent to it by name (emit_messages with 'to')")


def _find_cycle(graph: Mapping[str, list[str]]) -> list[str]:
    color: dict[str, int] = dict.fromkeys(graph, 0)
    for start in graph:
        if color[start]:
            continue
        path: list[str] = []
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                color[node] = 1
                path.append(node)
            succ = graph[node]
            if i < len(succ):
                stack.append((node, i + 1))
                nxt = succ[i]
                if color[nxt] == 1:
                    return path[path.index(nxt):]
                if color[nxt] == 0:
                    stack.append((nxt, 0))
            else:
                color[node] = 2
                path.pop()
    return []
