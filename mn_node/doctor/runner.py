"""Run checks concurrently, each under its own timeout, and return results in fixed order.

A check that raises becomes a failed result naming the exception; a check that overruns its
timeout becomes a failed result of kind ``timeout``. Nothing a check does can make the
whole run exceed the global deadline.
"""

from __future__ import annotations

import asyncio
import time
import traceback

from mn_node.doctor.context import Context
from mn_node.doctor.model import Kind, Result, Status, fail
from mn_node.doctor.registry import CheckSpec


async def _run_one(ctx: Context, spec: CheckSpec, budget: float) -> list[Result]:
    t0 = time.monotonic()
    try:
        out = await asyncio.wait_for(spec.fn(ctx), budget)
        results = out if isinstance(out, list) else [out]
    except TimeoutError:
        results = [fail(spec.name, f"check did not finish within {budget:.1f}s",
                        "rerun with a larger --timeout, or run it alone with -v: "
                        f"mn doctor --check {spec.name} -v", Kind.TIMEOUT)]
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        loc = f" at {where.filename.rsplit('/', 1)[-1]}:{where.lineno}" if where else ""
        results = [fail(spec.name, f"check crashed: {type(e).__name__}: {e}{loc}",
                        "report this as a bug in mn doctor (rerun with -v for details)")]
    dt = (time.monotonic() - t0) * 1000
    for r in results:
        r.duration_ms = dt
    return results


async def run_checks(ctx: Context, specs: list[CheckSpec]) -> list[Result]:
    """Run ``specs`` concurrently; results come back in the specs' order."""
    budget_left = max(0.1, ctx.deadline - time.monotonic())
    tasks = [
        asyncio.create_task(_run_one(ctx, s, min(s.timeout * ctx.scale, budget_left)), name=f"check:{s.name}")
        for s in specs
    ]
    grouped = await asyncio.gather(*tasks)
    return [r for group in grouped for r in group]


def count(results: list[Result]) -> dict[str, int]:
    return {s.value: sum(r.status is s for r in results) for s in Status}
