"""``python -m tests.faults.broken_ack``: the real daemon with the replica acknowledgement
patched out, inside its own process (tests only; the shipped code has no such switch), for
the checker's self-test in Sentinel mode.

In replicated mode every script runs as ``EVALSHA …; WAIT n timeout`` (n: every replica in
sync, at least MIN_ACKS) and every transaction as ``MULTI … EXEC; WAIT …`` (:meth:`Store._replicated_call`,
:meth:`Store.execute_replicated`), and a write fewer replicas acknowledged counts as not done.
This wrapper sends the write alone and takes the primary's answer as done: what any plain
Redis client does. The primary's own refusal (``min-replicas-to-write``: ``NOREPLICAS`` once
no replica has answered for ``min-replicas-max-lag`` seconds) is left as it is.

What it breaks: a primary cut off from its replicas and Sentinels (the nemesis'
``primary_cut``: one node stays on its side) keeps answering the node that is with it for up
to ``min-replicas-max-lag`` seconds. That node acts on those writes (a job submission answered
201, a lease renewed, a result stored); Sentinel then promotes a replica that never had them.
The checker must say so: ``lost_job`` (an acknowledged submission gone) and, when the cut node
led, ``stale_leader`` / ``leader_per_epoch``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from mn_node.store import Script, Store


async def _unacknowledged_call(self: Store, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
    return await script.redis_script(keys=list(keys), args=list(args))  # no WAIT: the primary's word is taken


async def _unacknowledged_transaction(self: Store, pipe: Any) -> list[Any]:
    return list(await pipe.execute())  # MULTI … EXEC, no WAIT


def main() -> int:
    Store._replicated_call = _unacknowledged_call  # type: ignore[method-assign]
    Store.execute_replicated = _unacknowledged_transaction  # type: ignore[method-assign]
    from mn_node.daemon import main as daemon_main

    return daemon_main()


if __name__ == "__main__":
    sys.exit(main())
