"""Bundle jobs with command executors on a real cluster: exact answers, retries, timeouts,
cancel and node loss (every process of the groups gone, checked in the process table),
owner failover without re-running completed executors, and MIRROR_NEURON_COMMANDS=off."""

from __future__ import annotations

import itertools
import json
import time
import uuid

import pytest

from tests.jobs._bundles import (
    attempts,
    fan_out_bundle,
    one_command_bundle,
    prime_bundle,
    procs_under,
    procs_with,
    submit_bundle,
)
from tests.jobs._jobs import agent_states, events, job, rclient, runs, wait_done
from tests.support.wait import wait_until

CAP2 = {"MIRROR_NEURON_EXECUTOR_CAPACITY": "2"}
# a command that starts a grandchild and both sleep; MARK makes both findable in the process table
SLEEPER = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', "
           "sys.argv[1]]); time.sleep(60)")


def types(evs):
    return [e["type"] for e in evs]


def gone_within(marker: str, seconds: float) -> None:
    wait_until(lambda: not procs_with(marker), seconds, f"every process marked {marker} to be gone")


@pytest.mark.parametrize(("workers", "expected"), [(4, 32), (60, 441)])
def test_prime_bundle_known_answers(make_cluster, tmp_path, workers, expected):
    c = make_cluster(3, extra_env=CAP2)
    c.wait_leader()
    job_id = submit_bundle(c, prime_bundle(tmp_path / "b", workers))
    done = wait_done(c, job_id, timeout=180)
    assert done["status"] == "completed", done
    assert done["result"]["prime_count"] == expected and done["result"]["worker_count"] == workers
    assert done["result"]["checked_numbers"] == 100 * workers
    assert all(v == 1 for v in runs(c, job_id).values()), runs(c, job_id)
    states = agent_states(c, job_id)
    for aid in [a for a in states if a.startswith("prime_worker_")] + ["summarizer"]:
        st = states[aid]
        assert st["status"] == "completed" and st["exit_code"] == 0, (aid, st)
        assert st["started_ms"] <= st["finished_ms"], st
    recs = attempts(c, job_id)
    assert len(recs) == workers + 1 and all(r["ok"] and r["exit_code"] == 0 for r in recs.values())
    assert json.loads(recs["summarizer:1"]["stdout"])["complete_job"]["prime_count"] == expected
    evs = types(events(c, job_id))
    assert evs[-1] == "job_completed", evs
    if workers == 60:
        assert len({st["node"] for a, st in states.items() if a.startswith("prime_worker_")}) == 3


def test_exit_3_is_retried_with_backoff_then_fails_the_job(make_cluster, tmp_path):
    c = make_cluster(1)
    cmd = "echo starting >&2; echo disk on fire >&2; exit 3"
    job_id = submit_bundle(c, one_command_bundle(tmp_path / "b", cmd, max_attempts=3, retry_backoff_ms=200))
    done = wait_done(c, job_id, timeout=60)
    assert done["status"] == "failed", done
    assert "agent work try 3/3: exit code 3" in done["error"] and "disk on fire" in done["error"], done["error"]
    rec = attempts(c, job_id)["work:1"]
    assert rec["tries"] == 3 and rec["exit_code"] == 3 and not rec["ok"], rec
    assert rec["duration_ms"] is not None
    assert rec["finished_ms"] - rec["started_ms"] >= 200 + 400, rec  # two backoffs: 200 ms, 400 ms
    assert runs(c, job_id) == {"work": 1}  # the runner's tries are inside one counted start
    assert agent_states(c, job_id)["work"]["exit_code"] == 3


def test_a_command_past_its_timeout_has_its_group_killed(make_cluster, tmp_path):
    c = make_cluster(1)
    mark = f"mn-timeout-{uuid.uuid4().hex}"
    job_id = submit_bundle(c, one_command_bundle(tmp_path / "b", ["python3", "-c", SLEEPER, mark],
                                                 timeout_seconds=1.5))
    wait_until(lambda: len(procs_with(mark)) >= 2, 20, "the command and its grandchild to run")
    done = wait_done(c, job_id, timeout=30)
    assert done["status"] == "failed" and "timed out after 1.5s" in done["error"], done
    gone_within(mark, 2.0)


def test_cancel_while_4_commands_run_kills_every_group(make_cluster, tmp_path):
    c = make_cluster(1, extra_env={"MIRROR_NEURON_EXECUTOR_CAPACITY": "4"})
    mark = f"mn-cancel-{uuid.uuid4().hex}"
    job_id = submit_bundle(c, fan_out_bundle(tmp_path / "b", 4, ["python3", "-c", SLEEPER, mark]))
    wait_until(lambda: len(procs_with(mark)) >= 8, 30, "4 commands and their grandchildren to run")
    c.post(1, f"/api/v1/jobs/{job_id}/cancel")
    t0 = time.monotonic()
    gone_within(mark, 2.0)
    assert time.monotonic() - t0 < 2.0
    assert job(c, job_id)["status"] == "cancelled"


def test_a_sigkilled_node_loses_its_groups_and_its_attempts_are_replayed(make_cluster, tmp_path):
    c = make_cluster(3, extra_env=CAP2)
    c.wait_leader()
    job_id = submit_bundle(c, prime_bundle(tmp_path / "b", 6, slow_s=4))
    owner = wait_until(lambda: (job(c, job_id).get("lease") or {}).get("node"), 15, "an owner")

    def victim_running():
        states = agent_states(c, job_id)
        for n in c.nodes:
            if n.name != owner and any(st["status"] == "dispatched" and st["node"] == n.name
                                       for st in states.values()) and procs_under(c.workdir / f"state-mn{n.index}"):
                return n
        return None

    victim = wait_until(victim_running, 30, "a node other than the owner running commands")
    on_victim = {a for a, st in agent_states(c, job_id).items() if st["status"] == "dispatched"
                 and st["node"] == victim.name}
    c.kill9(victim.index)
    wait_until(lambda: not procs_under(c.workdir / f"state-mn{victim.index}"), 2.0,
               f"every command process of {victim.name} to be gone")
    done = wait_done(c, job_id, timeout=120)
    assert done["status"] == "completed", done
    assert done["result"]["prime_count"] == _expected_primes(6) and done["result"]["worker_count"] == 6, done
    r = runs(c, job_id)
    for aid in on_victim:
        assert r[aid] == 2 and agent_states(c, job_id)[aid]["node"] != victim.name, (aid, r)
    assert "agent_recovery_started" in types(events(c, job_id))


def test_owner_sigkill_mid_run_exact_and_no_completed_executor_runs_again(make_cluster, tmp_path):
    c = make_cluster(3, extra_env=CAP2)
    c.wait_leader()
    job_id = submit_bundle(c, prime_bundle(tmp_path / "b", 12, slow_s=1.0))
    owner = wait_until(lambda: (job(c, job_id).get("lease") or {}).get("node"), 15, "an owner")

    def some_done():
        done = {a for a, st in agent_states(c, job_id).items() if st["status"] == "completed"
                and a.startswith("prime_worker_")}
        return done if len(done) >= 3 else None

    done_before = wait_until(some_done, 60, "3 workers to complete")
    c.kill9(c.node_named(owner).index)
    done = wait_done(c, job_id, timeout=120)
    assert done["status"] == "completed", done
    assert done["result"]["worker_count"] == 12 and done["result"]["checked_numbers"] == 1200
    assert done["result"]["prime_count"] == _expected_primes(12)
    r = runs(c, job_id)
    assert all(r[a] == 1 for a in done_before), (done_before, r)
    assert r["summarizer"] == 1


def _expected_primes(workers: int) -> int:
    from tests.support.primes import count_primes

    return count_primes(1000003, 1000003 + 100 * workers)


def test_a_node_with_commands_off_never_runs_a_command_agent(make_cluster, tmp_path):
    c = make_cluster(3, start=False, extra_env=CAP2)
    c.start(1)
    c.start(2)
    c.start(3, MIRROR_NEURON_COMMANDS="off")
    c.wait_mesh()
    c.wait_leader()
    regs = rclient(c).hgetall(f"{c.namespace}:node:{c.nodes[2].name}")
    assert regs["commands"] == "off"
    job_id = submit_bundle(c, prime_bundle(tmp_path / "b", 12))
    done = wait_done(c, job_id, timeout=120)
    assert done["status"] == "completed" and done["result"]["prime_count"] == _expected_primes(12), done
    states = agent_states(c, job_id)
    ran = {st["node"] for a, st in states.items() if a.startswith("prime_worker_") or a == "summarizer"}
    assert c.nodes[2].name not in ran and ran, ran
    assert all(r["node"] != c.nodes[2].name for r in attempts(c, job_id).values())


def test_no_node_allows_commands_fails_the_job_with_the_reason(make_cluster, tmp_path):
    c = make_cluster(1, start=False)
    c.start(1, MIRROR_NEURON_COMMANDS="off")
    c.wait_mesh()
    t0 = time.monotonic()
    job_id = submit_bundle(c, one_command_bundle(tmp_path / "b", ["true"]))
    done = wait_done(c, job_id, timeout=30)
    assert done["status"] == "failed", done
    assert "no node allows commands (MIRROR_NEURON_COMMANDS=off on every node); fix:" in done["error"]
    assert time.monotonic() - t0 >= 4.0  # after the grace period, not at once
    assert runs(c, job_id) == {}


def _write_graph(folder, nodes, edges):
    folder.mkdir(parents=True)
    (folder / "payloads").mkdir()
    (folder / "manifest.json").write_text(json.dumps({
        "manifest_version": "1.0", "graph_id": folder.name, "entrypoints": ["dispatcher"],
        "initial_inputs": {"dispatcher": [{"start": 1}]},
        "nodes": [{"node_id": "dispatcher", "agent_type": "router", "config": {"emit_type": "go"}}, *nodes],
        "edges": edges}))
    return folder


def _py(code: str) -> list[str]:
    return ["python3", "-c", code]


def test_structured_stdout_complete_job_events_and_emit_messages(make_cluster, tmp_path):
    c = make_cluster(1, extra_env={"MIRROR_NEURON_EXECUTOR_CAPACITY": "4"})
    mark = f"mn-rest-{uuid.uuid4().hex}"
    done_out = {"complete_job": {"answer": 42}, "events": [{"type": "note", "payload": {"k": 1}}],
                "next_state": {"seen": 1}}
    first = _write_graph(tmp_path / "complete", [
        {"node_id": "fast", "agent_type": "executor",
         "config": {"command": _py(f"import time; time.sleep(1); print({json.dumps(json.dumps(done_out))})")}},
        {"node_id": "slow", "agent_type": "executor", "config": {"command": ["python3", "-c", SLEEPER, mark]}},
    ], [{"edge_id": "e1", "from_node": "dispatcher", "to_node": "fast", "message_type": "go"},
        {"edge_id": "e2", "from_node": "dispatcher", "to_node": "slow", "message_type": "go"}])
    job_id = submit_bundle(c, first)
    done = wait_done(c, job_id, timeout=30)
    assert done["status"] == "completed" and done["result"] == {"answer": 42}, done
    gone_within(mark, 2.0)  # the rest of the job's work is cancelled
    evs = events(c, job_id)
    assert any(e["type"] == "agent_event" and e["data"] == {"agent": "fast", "event_type": "note",
                                                           "payload": {"k": 1}} for e in evs), evs
    assert json.loads(agent_states(c, job_id)["fast"]["next_state"]) == {"seen": 1}

    emit = {"emit_messages": [{"type": "custom", "body": {"n": 7}}, {"type": "other", "body": {"n": 8}},
                              {"type": "custom", "to": "nowhere", "body": {}}]}
    second = _write_graph(tmp_path / "emit", [
        {"node_id": "a", "agent_type": "executor",
         "config": {"command": _py(f"print({json.dumps(json.dumps(emit))})")}},
        {"node_id": "b", "agent_type": "executor", "config": {"command": "cat {input_file}"}},
    ], [{"edge_id": "e1", "from_node": "dispatcher", "to_node": "a", "message_type": "go"},
        {"edge_id": "e2", "from_node": "a", "to_node": "b", "message_type": "custom"}])
    job_id = submit_bundle(c, second)
    done = wait_done(c, job_id, timeout=30)
    assert done["status"] == "completed", done
    assert done["result"]["agent_id"] == "b" and done["result"]["input"] == {"n": 7}, done["result"]
    assert json.loads(done["result"]["sandbox"]["stdout"]) == {"n": 7}
    dropped = [e["data"] for e in events(c, job_id) if e["type"] == "message_dropped"]
    assert dropped and dropped[0]["to"] == "nowhere", dropped


def test_exec_logs_follow_a_running_attempt(make_cluster, tmp_path):
    """The link call behind `mn logs --follow`: the output of a running attempt, from offsets."""
    import asyncio

    from mn_node.jobs.executor import ExecutorService
    from mn_node.jobs.runtime import JobRuntime

    c = make_cluster(1)
    code = "import sys, time\nfor i in range(40):\n    print('line', i, flush=True)\n    time.sleep(0.1)\n"
    job_id = submit_bundle(c, one_command_bundle(tmp_path / "b", _py(code)))
    wait_until(lambda: agent_states(c, job_id).get("work", {}).get("status") == "dispatched", 20, "work to run")
    # the node's executor answers exec.logs from the attempt's files; read them the same way here
    scratch = c.workdir / "state-mn1" / "scratch"
    svc = ExecutorService.__new__(ExecutorService)
    svc.node, svc.runs = "probe", {}
    svc.commands = type("C", (), {"scratch_root": scratch})()  # only the scratch root is read
    seen: dict[str, object] = {}

    def tail_has(n: int):
        got = ExecutorService.on_logs(svc, "t", {"job": job_id, "agent": "work", "attempt": 1,
                                                 "offsets": seen.get("offsets") or {}})
        seen["text"] = str(seen.get("text", "")) + got["stdout"]
        seen["offsets"] = got["offsets"]
        return f"line {n}\n" in str(seen["text"])

    wait_until(lambda: tail_has(3), 20, "the first lines")
    first = dict(seen["offsets"])  # type: ignore[arg-type]
    wait_until(lambda: tail_has(10), 20, "more lines, read from the offsets")
    assert seen["offsets"]["stdout"] > first["stdout"]  # type: ignore[index]
    assert str(seen["text"]).count("line 3\n") == 1  # nothing read twice
    done = wait_done(c, job_id, timeout=30)
    assert done["status"] == "completed"
    rec = attempts(c, job_id)["work:1"]
    assert rec["stdout"].startswith("line 0\n") and rec["node"] == c.nodes[0].name and rec["exit_code"] == 0
    assert asyncio.iscoroutinefunction(JobRuntime.exec_logs)  # the link call routes to on_logs on the node


def test_pool_slots_count_against_the_node_capacity(make_cluster, tmp_path):
    c = make_cluster(1, extra_env=CAP2)
    job_id = submit_bundle(c, fan_out_bundle(tmp_path / "b", 3, _py("import time; time.sleep(0.6)"), pool_slots=2))
    done = wait_done(c, job_id, timeout=60)
    assert done["status"] == "completed" and done["result"]["count"] == 3, done
    spans = sorted((r["started_ms"], r["started_ms"] + r["duration_ms"]) for r in attempts(c, job_id).values())
    assert len(spans) == 3
    # each run takes both slots of the node: they ran one after the other
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
