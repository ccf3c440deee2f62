"""The coordinator's bookkeeping of one job's graph, O(1) per agent state change.

A job of 100,000 agents must not cost 100,000 steps each time one agent finishes. So instead
of rescanning every agent, :class:`Progress` keeps, per agent, how many upstream agents have
not completed yet (``waiting``); an agent whose count reaches 0 while it is pending (or failed,
to be retried) enters a *ready* heap in topological rank, one heap for executors (dispatched
as node slots allow) and one for routers and aggregators (run inline at once). It also keeps
the set of dispatched agents (the only ones whose state can change behind the coordinator's
back: the executing node stores their results), the executor slots they hold per node, the
terminal agents not completed yet, and every node that ever ran one of the job's agents.

Every change of an agent's state goes through :meth:`Progress.set`; the queues are lazy (an
entry whose agent is no longer runnable is dropped when it reaches the top).
"""

from __future__ import annotations

import heapq
import sys
from collections import deque
from collections.abc import Iterable

from mn_node.jobs.manifest import Manifest
from mn_node.jobs.state import AgentState

RUNNABLE = ("pending", "failed")  # failed: retried (or the job fails, decided by the coordinator)
# the extra fields the engine reads back (graph, inline agents, settling, audits); the others
# (timings, exit code, tries, ...) stay in Redis only: half the memory of a 100k-agent job
KEPT_EXTRA = frozenset({"skipped", "complete_job", "emits", "next_state", "count", "dispatched_ms"})


def slim(st: AgentState) -> AgentState:
    """The state as the coordinator keeps it: only :data:`KEPT_EXTRA`, node names shared."""
    extra = {k: v for k, v in st.extra.items() if k in KEPT_EXTRA} if st.extra else st.extra
    return AgentState(st.status, st.attempt, sys.intern(st.node), st.output, st.error, extra)


def topo_order(m: Manifest) -> list[str]:
    """Agents in a topological order (manifest order among equals), linear in the graph's size."""
    indeg = {a: len(m.upstream(a)) for a in m.agents}
    order: list[str] = []
    ready = deque(a for a in m.agents if indeg[a] == 0)
    while ready:
        a = ready.popleft()
        order.append(a)
        for b in m.downstream(a):
            indeg[b] -= 1
            if indeg[b] == 0:
                ready.append(b)
    return order


class Progress:
    def __init__(self, m: Manifest) -> None:
        self.m = m
        self.rank = {aid: i for i, aid in enumerate(topo_order(m))}
        self.states: dict[str, AgentState] = {}
        self.dispatched: set[str] = set()
        self.inflight: dict[str, int] = {}  # node -> executor slots its dispatched agents hold
        self.terminals_left: set[str] = set(m.terminals)
        self.nodes_used: set[str] = set()
        self.completed = 0
        self._waiting: dict[str, int] = {}
        self._queued: set[str] = set()
        self._executors: list[tuple[int, str]] = []
        self._inline: list[tuple[int, str]] = []

    def load(self, known: dict[str, AgentState]) -> None:
        """Start from the states read from Redis; an agent with none is pending."""
        m = self.m
        self.states = {aid: slim(known[aid]) if aid in known else AgentState() for aid in m.agents}
        for aid in m.agents:
            self._waiting[aid] = sum(1 for u in m.upstream(aid) if self.states[u].status != "completed")
        for aid, st in self.states.items():
            self._count(aid, None, st)
            self._maybe_queue(aid)

    # ---- changes ------------------------------------------------------------------------------
    def set(self, aid: str, st: AgentState) -> None:
        old = self.states.get(aid)
        st = slim(st)
        self.states[aid] = st
        self._count(aid, old, st)
        if st.status == "completed" and (old is None or old.status != "completed"):
            for d in self.m.downstream(aid):
                self._waiting[d] -= 1
                if self._waiting[d] == 0:
                    self._maybe_queue(d)
        elif st.status in RUNNABLE:
            self._maybe_queue(aid)

    def _count(self, aid: str, old: AgentState | None, st: AgentState) -> None:
        slots = self.m.agents[aid].slots if aid in self.m.agents else 1
        if old is not None and old.status == "dispatched":
            self.inflight[old.node] = max(0, self.inflight.get(old.node, 0) - slots)
            self.dispatched.discard(aid)
        if st.status == "dispatched":
            self.inflight[st.node] = self.inflight.get(st.node, 0) + slots
            self.dispatched.add(aid)
        if st.node and st.status != "pending":
            self.nodes_used.add(st.node)
        if st.status == "completed" and (old is None or old.status != "completed"):
            self.completed += 1
            self.terminals_left.discard(aid)

    def _maybe_queue(self, aid: str) -> None:
        if aid in self._queued or not self._runnable(aid):
            return
        self._queued.add(aid)
        heap = self._executors if self.m.agents[aid].type == "executor" else self._inline
        heapq.heappush(heap, (self.rank[aid], aid))

    def _runnable(self, aid: str) -> bool:
        return self._waiting.get(aid, 1) == 0 and self.states[aid].status in RUNNABLE

    # ---- the ready queues ---------------------------------------------------------------------
    def pop_inline(self) -> list[str]:
        """Every ready router and aggregator, in rank order (they run inline at once)."""
        out = []
        while self._inline:
            _, aid = heapq.heappop(self._inline)
            self._queued.discard(aid)
            if self._runnable(aid):
                out.append(aid)
        return out

    def next_executor(self) -> str | None:
        """The ready executor of lowest rank, left in the queue (:meth:`take` removes it)."""
        while self._executors:
            aid = self._executors[0][1]
            if self._runnable(aid):
                return aid
            heapq.heappop(self._executors)
            self._queued.discard(aid)
        return None

    def take(self) -> None:
        _, aid = heapq.heappop(self._executors)
        self._queued.discard(aid)

    def requeue(self, aids: Iterable[str]) -> None:
        for aid in aids:
            self._maybe_queue(aid)

    @property
    def done(self) -> bool:
        """Every terminal agent (one with no downstream agent) has completed."""
        return not self.terminals_left
