"""A tiny in-process graph driver for tests: runs a validated bundle on this machine with the
command runner and the pure agent semantics, wave by wave. Not the engine: no Redis, no
placement, no recovery; it exists to check bundles and runners end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mn_node.bundles.agents import AggregatorState, receive, route
from mn_node.bundles.manifest import validate_bundle
from mn_node.runners.base import RunRequest, envelope, output_payload
from mn_node.runners.command import CommandRunner

MISSING = object()


async def run_bundle(bundle: Path, runner: CommandRunner, job_id: str = "job", parallel: int = 4) -> dict[str, Any]:
    v = validate_bundle(bundle)
    assert v.ok and v.manifest is not None, [str(p) for p in v.problems]
    m = v.manifest
    nodes = {n["node_id"]: n for n in m["nodes"]}
    aggs: dict[str, AggregatorState] = {}
    result: Any = MISSING
    starts: dict[str, int] = {}
    sem = asyncio.Semaphore(parallel)

    def send(frm: str, mtype: str | None, body: Any) -> list[tuple[str, dict[str, Any]]]:
        if mtype is None:
            return []
        return [(e["to_node"], envelope(job_id, e["to_node"], mtype, body, sender=frm))
                for e in m["edges"] if e["from_node"] == frm and e["message_type"] == mtype]

    async def execute(node_id: str, msg: dict[str, Any]) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
        node = nodes[node_id]
        starts[node_id] = starts.get(node_id, 0) + 1
        async with sem:
            res = await runner.run(RunRequest(job_id, node_id, node["config"], msg, bundle_dir=bundle,
                                              template_type=node["type"]))
        assert res.ok, res.reason
        out_type = node["config"].get("output_message_type", "executor_result")
        done = res.structured.complete_job if res.structured and res.structured.completes else MISSING
        return done, send(node_id, out_type, output_payload(node_id, res, msg["body"]))

    queue = [(ep, envelope(job_id, ep, "initial_input", body)) for ep, bodies in m["initial_inputs"].items()
             for body in bodies]
    while queue and result is MISSING:
        wave, queue, jobs = queue, [], []
        for node_id, msg in wave:
            node = nodes[node_id]
            if node["agent_type"] == "router":
                queue += send(node_id, route(node["config"], msg["type"]), msg["body"])
            elif node["agent_type"] == "aggregator":
                out = receive(node["config"], aggs.get(node_id, AggregatorState()), msg["body"])
                aggs[node_id] = out.state
                if out.result is not None:
                    queue += send(node_id, out.emit_type, out.result)
                    if out.complete_job:
                        result = out.result
            else:
                jobs.append(execute(node_id, msg))
        for done, more in await asyncio.gather(*jobs):
            queue += more
            if done is not MISSING:
                result = done
    return {"result": None if result is MISSING else result, "starts": starts}
