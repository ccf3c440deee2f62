"""``python -m tests.faults.broken_node``: the real daemon, deliberately broken inside its own
process for the checker's self-test. Shipped code has no such switch; this wrapper patches
the modules in memory, then runs ``mn_node.daemon.main()``.

Environment (all optional):

``MN_FAULTS_STALL_AT_BEAT=N`` and ``MN_FAULTS_STALL_S=S``
    Once per process, at the leader's N-th heartbeat: the heartbeat's local check
    (``lease.valid()``) passes, then the whole process stalls for S seconds *before the write
    goes out* (``time.sleep`` blocks the event loop, as a GC pause, swap storm or SIGSTOP
    would), then the write is sent as it was prepared. With S > the lease TTL another node has
    been elected meanwhile, so this is a stale leader writing with an old epoch, and only the
    fence inside Redis stands between it and the register. Intact, Redis refuses it
    (``FENCED token not current``) and the checker sees nothing.

``MN_FAULTS_BREAK_FENCING=1``
    Replace the fenced-write Lua (``fenced_hset``, ``fenced_xadd``) by versions without the
    token and epoch checks: the stale write above is accepted, and the checker must report it
    (``fenced_monotonic``: the register's epochs go back).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from mn_node import leader as leader_mod
from mn_node import scripts
from mn_node.errors import FencedWriteRefused, LeaseLost, RedisUnavailable

log = logging.getLogger("mn_node.broken")

UNFENCED_HSET = """
redis.call('HSET', KEYS[2], '_fence', ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
"""

UNFENCED_XADD = """
local args = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'epoch', ARGV[2]}
for i = 4, #ARGV do
  args[#args + 1] = ARGV[i]
end
return redis.call(unpack(args))
"""


def break_fencing() -> None:
    scripts.FENCED_HSET = UNFENCED_HSET
    scripts.FENCED_XADD = UNFENCED_XADD


def install_stall(at_beat: int, seconds: float) -> None:
    orig = leader_mod.LeaderElection._beat
    state = {"done": False}

    async def beat(self: Any) -> None:
        lease = self.lease
        if state["done"] or lease is None or not lease.valid() or self._beat_seq + 1 < at_beat:
            await orig(self)
            return
        state["done"] = True
        # the local check has passed and the write is prepared ...
        self._beat_seq += 1
        seq = self._beat_seq
        fields = {"node": self.node, "epoch": lease.epoch, "seq": seq, "at_ms": int(time.time() * 1000)}
        log.warning("BROKEN: stalling the whole process %.1fs before the fenced write of beat %d (epoch %d)",
                    seconds, seq, lease.epoch)
        time.sleep(seconds)  # ... and the process stops before it goes out
        store = self.store
        try:
            args: list[Any] = [lease.token, lease.epoch]
            for k, v in fields.items():
                args += [k, v]
            await store.scripts.fenced_hset([lease.key, store.key("leader", "beat")], args)
            del fields["epoch"]
            args = [lease.token, lease.epoch, leader_mod.HISTORY_MAXLEN]
            for k, v in fields.items():
                args += [k, v]
            await store.scripts.fenced_xadd([lease.key, store.key("leader", "history")], args)
            log.warning("BROKEN: stale beat %d with epoch %d was ACCEPTED by Redis", seq, lease.epoch)
        except (FencedWriteRefused, LeaseLost, RedisUnavailable) as e:
            log.warning("BROKEN: stale beat %d with epoch %d refused: %s", seq, lease.epoch, e)

    leader_mod.LeaderElection._beat = beat  # type: ignore[method-assign]


def main() -> int:
    if os.environ.get("MN_FAULTS_BREAK_FENCING") == "1":
        break_fencing()
    at = int(os.environ.get("MN_FAULTS_STALL_AT_BEAT", "0") or 0)
    if at > 0:
        install_stall(at, float(os.environ.get("MN_FAULTS_STALL_S", "4")))
    from mn_node.daemon import main as daemon_main

    return daemon_main()


if __name__ == "__main__":
    sys.exit(main())
