"""``python -m tests.faults.replicated_submit``: the real daemon with every *transaction*
pipeline run through :meth:`Store.execute_replicated` (MULTI/EXEC + WAIT on one connection).

Job submission (``jobs/state.create_job``) is a MULTI pipeline awaited through
``Store.guard(pipe.execute())``; in replicated mode it is acknowledged to the client before any
replica has it, and a Sentinel fault run shows acknowledged submits lost in a failover
(``lost_job``). The fix in the shipped code is one line in ``create_job``:
``await store.guard(store.execute_replicated(pipe))``. This wrapper applies the same effect in
memory, so the runner can show the fix closes the gap before it lands.
"""

from __future__ import annotations

import sys
from typing import Any

from redis.asyncio.client import Pipeline

from mn_node.store import Store

_guard = Store.guard


async def _replicated_guard(self: Store, coro: Any) -> Any:
    frame = getattr(coro, "cr_frame", None)
    pipe = frame.f_locals.get("self") if frame is not None else None
    if (self.replicated and isinstance(pipe, Pipeline) and pipe.is_transaction
            and getattr(coro, "__qualname__", "").endswith("Pipeline.execute")):
        coro.close()
        coro = self.execute_replicated(pipe)
    return await _guard(self, coro)


def main() -> int:
    Store.guard = _replicated_guard  # type: ignore[method-assign]
    from mn_node.daemon import main as daemon_main

    return daemon_main()


if __name__ == "__main__":
    sys.exit(main())
