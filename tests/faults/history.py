"""The history: every operation and observation, one JSON object per line.

Every record has ``t`` (monotonic seconds of the runner, the clock the checker orders by) and
``k`` (its kind). Observations that take time carry their window ``t0``..``t1`` (request sent,
answer received): the thing observed happened somewhere inside it, which is what the
real-time checks rely on. Kinds:

``run``            start parameters (seed, minutes, nodes, namespace, ...)
``fault``          ``phase`` start | heal, ``type``, ``target``, details
``op``             client operations: ``op`` submit, ``phase`` ok | fail | info, job id, params
``metrics``        one node's /metrics: leader flag, epoch, fenced counters (t0, t1)
``beat``           the fenced leader heartbeat hash read from Redis (t0, t1)
``jobobs``         one job's hash + agent states + runs read in one MULTI (t0, t1), on change
``heal_check``     after a heal: coordinators per job on every node, settled or not
``node_exit``      a daemon exited without us killing it
``final``          end-of-run dump of Redis (leader history stream, leader events, jobs)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class History:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self.count = 0

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        rec = {"t": round(time.monotonic(), 6), "k": kind, **fields}
        line = json.dumps(rec, separators=(",", ":"), default=str)
        with self._lock:
            self._f.write(line + "\n")
            self.count += 1
        return rec

    def flush(self) -> None:
        with self._lock:
            self._f.flush()

    def close(self) -> None:
        with self._lock:
            self._f.close()


def read(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                yield json.loads(line)
