"""1. Local config, 2. config agreement across nodes."""

from __future__ import annotations

import os
import pwd
import stat
from collections import Counter
from dataclasses import dataclass, field

from mn_node.config import ENV_PREFIX, Config, parse_node_entry, redact_url
from mn_node.doctor.context import Context
from mn_node.doctor.facts import redis_facts, registrations
from mn_node.doctor.model import Kind, Result, fail, ok, split_fix, warn
from mn_node.doctor.registry import check
from mn_node.errors import ConfigError


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _secret_file_problems(path: str, what: str) -> tuple[list[str], list[str], str]:
    """(problems, fixes, short description) for a file holding the cookie."""
    try:
        st = os.stat(path)
    except OSError as e:
        return [f"cannot stat {what} {path}: {e.strerror}"], [f"check that {path} exists"], path
    mode = stat.S_IMODE(st.st_mode)
    desc = f"{path} {mode:04o} {_owner(st.st_uid)}"
    problems: list[str] = []
    fixes: list[str] = []
    if mode & 0o007:
        problems.append(f"{what} {path} is readable by every user (mode {mode:04o}): anyone on this box can "
                        "read the cookie")
        fixes.append(f"chmod 0640 {path}")
    if mode & 0o022:
        problems.append(f"{what} {path} is writable by group/others (mode {mode:04o})")
        fixes.append(f"chmod go-w {path}")
    if st.st_uid != 0:
        problems.append(f"{what} {path} is owned by {_owner(st.st_uid)}, not root")
        fixes.append(f"chown root: {path}")
    return problems, fixes, desc


@check("config", 10, "local config: shared variables valid, this node in the list, cookie strength, env-file mode")
async def local_config(ctx: Context) -> Result:
    if ctx.cfg is None:
        assert ctx.cfg_error is not None
        what, how = split_fix(str(ctx.cfg_error))
        src = f" (read from the environment and {ctx.env_file})" if ctx.env_file else " (read from the environment)"
        return fail("config", what + src, how or f"edit {ctx.env_file_hint}", Kind.CONFIG)
    cfg = ctx.cfg
    problems: list[str] = []
    fixes: list[str] = []
    if ctx.env_file_error:
        what, how = split_fix(ctx.env_file_error)
        problems.append(what)
        fixes.append(how)
    for w in cfg.warnings:
        what, how = split_fix(w)
        problems.append(what)
        fixes.append(how)
    listed: set[str] = set()
    for entry in ctx.env.get(ENV_PREFIX + "CLUSTER_NODES", "").split(","):
        if entry.strip():
            try:
                listed.add(parse_node_entry(entry, cfg.me.port, ENV_PREFIX + "CLUSTER_NODES").name)
            except ConfigError:
                pass
    if cfg.name not in listed:
        problems.append(f"this node {cfg.name} is not in MIRROR_NEURON_CLUSTER_NODES, so peers never dial it")
        fixes.append(f"add {cfg.name} to MIRROR_NEURON_CLUSTER_NODES on every node")
    files: list[str] = []
    if ctx.env_file:
        p, f, desc = _secret_file_problems(ctx.env_file, "env file")
        problems += p
        fixes += f
        files.append(f"env file {desc}")
    cookie_file = ctx.env.get(ENV_PREFIX + "COOKIE_FILE", "").strip()
    if cookie_file and ENV_PREFIX + "COOKIE" not in ctx.env:
        p, f, desc = _secret_file_problems(cookie_file, "cookie file")
        problems += p
        fixes += f
        files.append(f"cookie file {desc}")
    summary = (f"{cfg.name} in a {len(cfg.nodes)}-node list; Redis {redact_url(cfg.redis_url or '')}; "
               f"cookie hash {cfg.cookie_hash} ({len(cfg.cookie)} bytes)")
    if files:
        summary += "; " + "; ".join(files)
    info = [f"{k}: {v}" for k, v in cfg.effective().items() if k != "warnings"]
    if problems:
        return warn("config", "; ".join(problems), "; ".join(dict.fromkeys(fixes)), info=[summary, *info])
    return ok("config", summary, info=info)


def _node_list(reg: dict[str, str]) -> str:
    return ",".join(sorted(n for n in reg.get("cluster_nodes", "").split(",") if n))


_FIELDS = (
    ("cluster_nodes", "node list", "MIRROR_NEURON_CLUSTER_NODES"),
    ("redis_url", "Redis URL", "MIRROR_NEURON_REDIS_URL"),
    ("cookie_hash", "cookie hash", "MIRROR_NEURON_COOKIE"),
)


@dataclass
class _Findings:
    """What config-agreement found wrong, and whether this box is one of the odd ones out."""

    problems: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    me_differs: bool = False

    def add(self, problem: str, fix: str) -> None:
        self.problems.append(problem)
        self.fixes.append(fix)


def _local_view(cfg: Config) -> dict[str, str]:
    return {"cluster_nodes": ",".join(sorted(n.name for n in cfg.nodes)),
            "redis_url": redact_url(cfg.redis_url or ""), "cookie_hash": cfg.cookie_hash,
            "fingerprint": cfg.fingerprint()}


def _registered_views(regs: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {node: {"cluster_nodes": _node_list(reg), "redis_url": reg.get("redis_url", ""),
                   "cookie_hash": reg.get("cookie_hash", ""), "fingerprint": reg.get("config_fingerprint", "")}
            for node, reg in regs.items()}


def _field_problem(field_: str, label: str, var: str, node: str, theirs: str, majority: str,
                   hint: str) -> tuple[str, str]:
    """(problem, fix) for ``node`` whose ``field_`` is ``theirs`` where most have ``majority``."""
    restart = "then systemctl restart mirror-neuron"
    if field_ == "cluster_nodes":
        mine_set, theirs_set = set(majority.split(",")) - {""}, set(theirs.split(",")) - {""}
        diff = []
        if mine_set - theirs_set:
            diff.append("missing " + ",".join(sorted(mine_set - theirs_set)))
        if theirs_set - mine_set:
            diff.append("extra " + ",".join(sorted(theirs_set - mine_set)))
        return (f"{node} has a different {label} ({'; '.join(diff)})",
                f"on {node}: set {var}={majority} in {hint}, {restart}")
    if field_ == "cookie_hash":
        return (f"{node} has cookie hash {theirs}, the others {majority}",
                f"on {node}: copy {var} from a healthy node into {hint}, {restart}")
    return (f"{node} uses Redis {theirs}, the others {majority}",
            f"on {node}: set {var} to the same URL as the other nodes, {restart}")


def _compare_fields(views: dict[str, dict[str, str]], local: dict[str, str] | None, me: str | None,
                    hint: str) -> _Findings:
    """Each agreed field: the nodes that differ from the majority (from this box on a tie)."""
    out = _Findings()
    for field_, label, var in _FIELDS:
        values = Counter(v[field_] for v in views.values())
        if len(values) < 2:
            continue
        majority, top = values.most_common(1)[0]
        tie = sum(1 for c in values.values() if c == top) > 1
        if tie and local is not None:
            majority = local[field_]  # compare against this box when there is no majority
        for n in sorted(n for n, v in views.items() if v[field_] != majority):
            out.add(*_field_problem(field_, label, var, n, views[n][field_], majority, hint))
            out.me_differs = out.me_differs or n == me
        out.info += [f"{label}: {n} = {v[field_]}" for n, v in sorted(views.items())]
    return out


def _compare_fingerprints(views: dict[str, dict[str, str]], me: str | None, found: _Findings) -> None:
    """Same names, URL and cookie but another fingerprint: the node ports differ."""
    fps = Counter(v["fingerprint"] for v in views.values() if v["fingerprint"])
    if found.problems or len(fps) < 2:
        return
    common = fps.most_common(1)[0][0]
    odd = sorted(n for n, v in views.items() if v["fingerprint"] and v["fingerprint"] != common)
    found.add(f"{', '.join(odd)} {'has' if len(odd) == 1 else 'have'} another config fingerprint "
              "(same names, URL and cookie: the node ports in MIRROR_NEURON_CLUSTER_NODES differ)",
              "make MIRROR_NEURON_CLUSTER_NODES identical, ports included, on every box")
    found.me_differs = me is not None and me in odd


def _membership_warning(views: dict[str, dict[str, str]], regs: dict[str, dict[str, str]],
                        cfg: Config | None, info: list[str]) -> Result:
    """All agree: ok, or a warning when the registered nodes are not exactly this box's list."""
    name = "config-agreement"
    listed = {n.name for n in cfg.nodes} if cfg else set()
    missing = sorted(listed - set(regs))
    extra = sorted(set(regs) - listed) if cfg else []
    detail = f"{len(views)} node(s) agree (fingerprint {next(iter(views.values()))['fingerprint']})"
    if not missing and not extra:
        return ok(name, detail, info=info)
    notes = []
    if missing:
        notes.append(f"not registered in Redis: {', '.join(missing)} (down, or using another Redis URL or "
                     "namespace)")
    if extra:
        notes.append(f"registered but not in this node's list: {', '.join(extra)}")
    return warn(name, detail + "; " + "; ".join(notes),
                "start the missing nodes, or make MIRROR_NEURON_CLUSTER_NODES list exactly the cluster's "
                "nodes on every box", info=info)


@check("config-agreement", 20, "config agreement: every node has the same node list, Redis URL and cookie hash")
async def config_agreement(ctx: Context) -> Result:
    name = "config-agreement"
    regs = await registrations(ctx)
    if regs is None:
        r = await redis_facts(ctx)
        return warn(name, f"not checked: it compares the nodes' registrations in Redis, which is unreachable "
                          f"({r.error})", "fix the redis check first")
    views = _registered_views(regs)
    cfg = ctx.cfg
    local = _local_view(cfg) if cfg is not None else None
    if cfg is not None and local is not None:
        views.setdefault(cfg.name, local)
    if not regs:
        return warn(name, f"no node is registered in Redis namespace {ctx.namespace!r}: nothing to compare",
                    "start the nodes (systemctl start mirror-neuron on each box)")
    me = cfg.name if cfg is not None else None
    found = _compare_fields(views, local, me, ctx.env_file_hint)
    _compare_fingerprints(views, me, found)
    # the running daemon's registration vs this box's config now (edited but not restarted?)
    if cfg is not None and local is not None and cfg.name in regs and not found.problems:
        running = views[cfg.name]["fingerprint"]
        if running and running != local["fingerprint"]:
            found.add(f"the running {cfg.name} was started with another config than {ctx.env_file_hint} has now",
                      "systemctl restart mirror-neuron (to load the current config)")
    if found.problems:
        return fail(name, "; ".join(found.problems), "; ".join(dict.fromkeys(found.fixes)),
                    Kind.CONFIG if found.me_differs else Kind.UNAVAILABLE, info=found.info)
    return _membership_warning(views, regs, cfg, found.info)
