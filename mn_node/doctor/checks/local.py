"""The local node: its API, 4. port conflicts, 5. node name already in use."""

from __future__ import annotations

import asyncio

from mn_node.doctor.context import Context
from mn_node.doctor.facts import (
    ProcInfo,
    local_api,
    port_holders,
    processes,
    redis_facts,
    redis_now_ms,
    registrations,
)
from mn_node.doctor.model import Kind, Result, fail, ok, warn
from mn_node.doctor.registry import check
from mn_node.ports import PortHolder
from mn_node.registration import host_identity


def _holder_text(h: PortHolder) -> str:
    if h.pid is None:
        return f"an unknown process on {h.address} (run doctor as root to see its pid)"
    return f"pid {h.pid} ({h.command or '?'}) on {h.address}"


@check("local-node", 25, "the local node's API answers and reports healthy")
async def local_node(ctx: Context) -> Result:
    name = "local-node"
    api = await local_api(ctx)
    base = api.base
    if api.error is not None:
        e = api.error
        if e.how == "refused":
            return warn(name, f"no mn-node answers at {base} (connection refused): not running on this box; "
                        "doctor checks config, Redis and peers directly",
                        "systemctl start mirror-neuron (journalctl -u mirror-neuron -n 50 shows why it stopped), "
                        "or pass --api http://HOST:PORT")
        if e.how == "timeout":
            return fail(name, f"{base} accepts connections but did not answer within {ctx.stage:.1f}s: the local "
                        "mn-node is hung (stopped with SIGSTOP?) or overloaded", "systemctl restart mirror-neuron "
                        "(see the node-name check for the pid)", Kind.TIMEOUT)
        return fail(name, f"{base}: {e}", "check --api / MIRROR_NEURON_API_BIND and MIRROR_NEURON_API_PORT")
    assert api.reply is not None
    if not api.is_mn:
        holders = await port_holders(ctx, ctx.api.port, ctx.api.host) if ctx.api else []
        who = "; ".join(_holder_text(h) for h in holders) or "an unknown process"
        return fail(name, f"{base} answers HTTP {api.reply.status} but is not mn-node: it is {who}",
                    "stop that program (see the ports check) or give mn-node another MIRROR_NEURON_API_PORT "
                    f"in {ctx.env_file_hint}")
    h = api.health
    node = str(h.get("node"))
    if ctx.cfg is not None and node != ctx.cfg.name:
        return fail(name, f"{base} is node {node}, but this box's config says {ctx.cfg.name}",
                    "pass --api for the node you mean, or fix MIRROR_NEURON_API_PORT so each node has its own",
                    Kind.CONFIG)
    detail = (f"{node} running (incarnation {h.get('incarnation')}, version {h.get('version')}, "
              f"{h.get('members_up')} member(s) up, redis {h.get('redis')}"
              f"{', leader' if h.get('leader') else ''})")
    if h.get("status") != "ok":
        reasons = "; ".join(str(r) for r in h.get("reasons") or []) or "unhealthy"
        return fail(name, f"{node} is running but unhealthy: {reasons}", "see the redis and split-brain checks")
    return ok(name, detail)


def _is_this_node(ctx: Context, h: PortHolder, procs: list[ProcInfo]) -> tuple[bool, ProcInfo | None]:
    proc = next((p for p in procs if p.pid == h.pid), None)
    if proc is None:
        return False, None
    return (not proc.node or proc.node == ctx.node_name), proc


@check("ports", 40, "port conflicts: who holds the dist and API ports; two nodes on one box")
async def ports(ctx: Context) -> Result:
    name = "ports"
    cfg = ctx.cfg
    if cfg is None:
        return warn(name, "not checked: needs a valid local config (see config)", "fix the config check first")
    wanted = [("dist", cfg.bind_host, cfg.me.port, "MIRROR_NEURON_DIST_PORT"),
              ("API", cfg.api_bind, cfg.api_port, "MIRROR_NEURON_API_PORT")]
    procs = await processes(ctx)
    held = await asyncio.gather(*(port_holders(ctx, port, host) for _, host, port, _ in wanted))
    problems: list[str] = []
    fixes: list[str] = []
    seen: list[str] = []
    ours: set[int] = set()
    for (label, host, port, var), holders in zip(wanted, held, strict=True):
        if not holders:
            seen.append(f"{label} {host}:{port} free")
            continue
        for h in holders:
            mine, proc = _is_this_node(ctx, h, procs)
            if mine and h.pid is not None:
                ours.add(h.pid)
                seen.append(f"{label} {host}:{port} held by this node's mn-node, pid {h.pid}")
            elif proc is not None:
                problems.append(f"{label} port {host}:{port} is held by another mn-node, {proc.node} (pid {proc.pid}): "
                                "two nodes on one box want the same port")
                fixes.append(f"give each node on this box its own {var} (or bind address), e.g. {var}={port + 1} "
                             f"in {ctx.env_file_hint}")
            elif h.pid is None:
                problems.append(f"{label} port {host}:{port} is held by {_holder_text(h)}")
                fixes.append("rerun as root: sudo mn doctor --check ports")
            else:
                problems.append(f"{label} port {host}:{port} is held by pid {h.pid} ({h.command or '?'}), not mn-node")
                fixes.append(f"stop it (kill {h.pid}) or move this node: set {var} to a free port in "
                             f"{ctx.env_file_hint}")
    if len(ours) > 1:
        problems.append(f"this node's ports are held by several mn-node processes: pids {sorted(ours)}")
        fixes.append("keep one: kill the stale pid (see the node-name check)")
    others = [p for p in procs if p.node and p.node != ctx.node_name]
    info = [f"other mn-node on this box: {p.node} {p.describe()}" for p in others]
    if problems:
        return fail(name, "; ".join(problems), "; ".join(dict.fromkeys(fixes)), info=seen + info)
    note = f"; {len(others)} other mn-node(s) on this box, no overlap" if others else ""
    return ok(name, "; ".join(seen) + note, info=info)


def _stale_reason(proc: ProcInfo) -> str:
    if proc.status == "stopped":
        return "it is stopped (SIGSTOP/ctrl-Z): it holds the name and ports but does nothing"
    if proc.status == "tracing-stop":
        return "it is stopped under a debugger"
    return ""


@check("node-name", 50, "node name in use: a live registration of another incarnation, or a stale mn-node process")
async def node_name(ctx: Context) -> Result:
    name = "node-name"
    me = ctx.node_name
    if not me:
        return warn(name, "not checked: this node's name is unknown (see config)", "fix the config check first")
    procs, regs, api = await asyncio.gather(processes(ctx), registrations(ctx), local_api(ctx))
    mine = [p for p in procs if p.node == me]
    reg = (regs or {}).get(me)
    ident = host_identity()
    running_inc = str(api.health.get("incarnation")) if api.is_mn and api.health.get("node") == me else ""
    info = [f"mn-node with this name: {p.describe()}" for p in mine]
    problems: list[str] = []
    fixes: list[str] = []
    culprits: set[int] = set()

    for p in mine:
        why = _stale_reason(p)
        if why:
            problems.append(f"{me} is held by a stale mn-node, {p.describe()}: {why}")
            fixes.append(f"kill -9 {p.pid}, then systemctl restart mirror-neuron")
            culprits.add(p.pid)

    if reg is not None:
        pid = int(reg.get("pid", "0") or 0)
        same_host = reg.get("boot_id") == ident["boot_id"] and reg.get("pidns") == ident["pidns"]
        inc = reg.get("incarnation", "")
        now = await redis_now_ms(ctx)
        age_s = (now - float(reg.get("refreshed_ms", "0") or 0)) / 1000
        limit_s = (3 * (ctx.cfg.renew_interval_ms if ctx.cfg else 500) + 1000) / 1000
        info.append(f"registration: pid {pid} on {reg.get('hostname')} incarnation {inc}, refreshed {age_s:.1f}s ago")
        if not same_host:
            if age_s < limit_s and inc != running_inc:
                problems.append(f"{me} is in use by pid {pid} on another host, {reg.get('hostname')} (incarnation "
                                f"{inc}, refreshed {age_s:.1f}s ago): two boxes use one name")
                fixes.append(f"on {reg.get('hostname')}: systemctl stop mirror-neuron (or kill {pid}); or give this "
                             f"box its own MIRROR_NEURON_NODE_NAME in {ctx.env_file_hint}")
        elif pid not in culprits:
            proc = next((p for p in procs if p.pid == pid), None)
            if proc is None:
                if age_s < limit_s:
                    problems.append(f"{me} is registered by pid {pid} (incarnation {inc}), which doctor cannot see "
                                    "as an mn-node process here")
                    fixes.append(f"ps -p {pid} -o pid,stat,cmd; stop it if it is a leftover: kill {pid}")
            elif running_inc and inc != running_inc:
                problems.append(f"{me} is registered by {proc.describe()} (incarnation {inc}) but the node answering "
                                f"at {api.base} is incarnation {running_inc}")
                fixes.append(f"kill {pid}")
            elif age_s > limit_s:
                problems.append(f"{me} is held by {proc.describe()}, which stopped refreshing its registration "
                                f"{age_s:.1f}s ago (hung)")
                fixes.append(f"kill -9 {pid}, then systemctl restart mirror-neuron")
                culprits.add(pid)
            elif not running_inc and api.error is not None and api.error.how == "timeout":
                problems.append(f"{me} is held by {proc.describe()}, whose API does not answer (hung)")
                fixes.append(f"kill -9 {pid}, then systemctl restart mirror-neuron")
                culprits.add(pid)
    # extra daemons with our name: the one registered (or answering) is legitimate, the rest are not
    legit = int(reg.get("pid", "0") or 0) if reg else 0
    extras = [p for p in mine if p.pid not in culprits and legit and p.pid != legit]
    for p in extras:
        problems.append(f"a second mn-node for {me} runs here: {p.describe()}")
        fixes.append(f"kill {p.pid}")
    if problems:
        return fail(name, "; ".join(problems), "; ".join(dict.fromkeys(fixes)), info=info)
    if reg is not None:
        age = (await redis_now_ms(ctx) - float(reg.get("refreshed_ms", "0") or 0)) / 1000
        return ok(name, f"{me} held by its running node (pid {reg.get('pid')}, incarnation "
                        f"{reg.get('incarnation')}, refreshed {age:.1f}s ago)", info=info)
    if mine:
        return ok(name, f"{me}: mn-node {', '.join(str(p.pid) for p in mine)} runs here (not registered: Redis "
                        f"{'unreachable' if regs is None else 'has no registration yet'})", info=info)
    r = await redis_facts(ctx)
    regs_note = "no registration in Redis" if r.ok else "registrations not checked (Redis unreachable)"
    return ok(name, f"{me} is free: no mn-node process here holds it; {regs_note}", info=info)
