"""Drain: nodes taken out of service with ``mn drain`` (their record ``{ns}:drain:<name>``)."""

from __future__ import annotations

import time

from mn_node.doctor.context import Context
from mn_node.doctor.facts import redis_facts
from mn_node.doctor.model import Result, ok, warn
from mn_node.doctor.registry import check


def _when(ms: str | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(ms) / 1000)) if ms else "none"


@check("drain", 85, "drain: nodes taken out of service (mn drain) and what they still hold")
async def drain(ctx: Context) -> list[Result]:
    name = "drain"
    r = await redis_facts(ctx)
    if not r.ok:
        return [warn(name, "not checked: needs Redis (see redis)", "fix the redis check first")]
    try:
        nodes = sorted(await r.client.smembers(ctx.key("drains")))
        recs = [await r.client.hgetall(ctx.key("drain", n)) for n in nodes]
    except Exception as e:  # Redis went away between the probe and now
        return [warn(name, f"not checked: Redis stopped answering ({e})", "fix the redis check first")]
    out = []
    for node, rec in zip(nodes, recs, strict=True):
        if not rec:
            continue
        state = rec.get("state") or "draining"
        held = f"{rec.get('coordinating', '?')} jobs coordinated, {rec.get('running', '?')} executors running"
        detail = f"node {node} is {state} since {_when(rec.get('since_ms'))}, deadline " \
                 f"{_when(rec.get('deadline_ms'))}" + ("" if state == "drained" else f" ({held})")
        out.append(warn(name, detail, f"when its maintenance is done: mn undrain {node}"))
    return out or [ok(name, "no node is draining")]
