"""The coordinator's graph bookkeeping (pure): ready queues in rank order, counts of what each
agent still waits for, in-flight slots per node, all kept per change instead of by rescans."""

from __future__ import annotations

from mn_node.jobs.blueprints import prime_sweep_scale
from mn_node.jobs.manifest import validate
from mn_node.jobs.progress import Progress, topo_order
from mn_node.jobs.state import AgentState


def done(node: str = "n1") -> AgentState:
    return AgentState("completed", 1, node, {"count": 1})


def sweep(workers: int) -> Progress:
    p = Progress(validate(prime_sweep_scale({"workers": workers, "chunk_size": 10})))
    p.load({})
    return p


def drain_executors(p: Progress) -> list[str]:
    out = []
    while (aid := p.next_executor()) is not None:
        p.take()
        out.append(aid)
    return out


def test_only_the_entrypoint_is_ready_then_every_worker_in_rank_order():
    p = sweep(5)
    assert p.pop_inline() == ["dispatcher"]
    assert p.next_executor() is None  # the workers wait for the dispatcher
    p.set("dispatcher", done())
    workers = drain_executors(p)
    assert workers == [f"prime_worker_{k:04d}" for k in range(1, 6)]
    assert p.pop_inline() == []  # the collector waits for all five


def test_the_collector_is_ready_exactly_when_its_last_upstream_completes():
    p = sweep(3)
    p.set("dispatcher", done())
    workers = drain_executors(p)
    for w in workers[:-1]:
        p.set(w, done())
        assert p.pop_inline() == []
    p.set(workers[-1], done())
    assert p.pop_inline() == ["collector"]
    p.set("collector", done())
    assert not p.done
    assert p.pop_inline() == ["summarizer"]
    p.set("summarizer", done())
    assert p.done and p.completed == 6


def test_dispatched_agents_hold_slots_on_their_node_until_they_end_or_move():
    p = sweep(3)
    p.set("dispatcher", done())
    a, b, c = drain_executors(p)
    p.set(a, AgentState("dispatched", 1, "n1"))
    p.set(b, AgentState("dispatched", 1, "n1"))
    p.set(c, AgentState("dispatched", 1, "n2"))
    assert p.inflight == {"n1": 2, "n2": 1} and p.dispatched == {a, b, c}
    p.set(a, AgentState("dispatched", 2, "n2"))  # a replay elsewhere moves the slot
    assert p.inflight == {"n1": 1, "n2": 2}
    p.set(b, done("n1"))
    p.set(c, AgentState("failed", 1, "n2", None, "boom"))  # a failed task is ready for its retry
    assert p.inflight == {"n1": 0, "n2": 1} and p.dispatched == {a}
    assert drain_executors(p) == [c]
    assert p.nodes_used == {"n1", "n2"}


def test_a_requeued_agent_comes_back_once_and_a_stale_entry_is_dropped():
    p = sweep(2)
    p.set("dispatcher", done())
    first = p.next_executor()
    assert first is not None
    p.take()
    p.requeue([first, first])  # e.g. a write refused because the job was paused meanwhile
    assert drain_executors(p) == [first, "prime_worker_0002"]
    p.requeue(["prime_worker_0002"])
    p.set("prime_worker_0002", AgentState("dispatched", 1, "n1"))  # no longer runnable
    assert p.next_executor() is None


def test_loading_a_recovered_job_counts_what_is_done_and_in_flight():
    m = validate(prime_sweep_scale({"workers": 3, "chunk_size": 10}))
    p = Progress(m)
    p.load({"dispatcher": done(), "prime_worker_0001": done("n2"),
            "prime_worker_0002": AgentState("dispatched", 1, "n3")})
    assert p.completed == 2 and p.dispatched == {"prime_worker_0002"} and p.inflight == {"n3": 1}
    assert drain_executors(p) == ["prime_worker_0003"]
    assert p.pop_inline() == []


def test_topological_order_of_a_wide_graph_keeps_manifest_order():
    m = validate(prime_sweep_scale({"workers": 5000, "chunk_size": 10}))
    order = topo_order(m)
    assert order[0] == "dispatcher" and order[-2:] == ["collector", "summarizer"] and len(order) == 5003
    assert order[1:-2] == [f"prime_worker_{k:04d}" for k in range(1, 5001)]
