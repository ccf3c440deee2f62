"""mn validate / run / agents / logs and the routes behind them, against real nodes and Redis.

The jobs run for real (the engine's command executors): these tests check what the operator
surfaces send, store, refuse and print, against what the engine did and recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from mn_node.bundles import archive
from mn_node.config import api_token
from mn_node.jobs.cli import format_result
from tests.jobs._bundles import one_command_bundle, prime_bundle
from tests.jobs._jobs import rclient, wait_done
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
WORDCOUNT = ROOT / "examples" / "wordcount"


def mn(*args: str, api: str | None = None, cookie: str | None = None,
       env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")}
    if cookie:
        env["MIRROR_NEURON_COOKIE"] = cookie
    env.update(env_extra or {})
    argv = [sys.executable, "-m", "mn_node.cli", *(["--api", api] if api else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def bad_bundle(tmp: Path) -> Path:
    b = tmp / "bad"
    (b / "payloads").mkdir(parents=True)
    (b / "manifest.json").write_text(json.dumps({
        "manifest_version": "1.0", "graph_id": "bad", "metadata": {"owner": "x"},
        "entrypoints": ["s"],
        "nodes": [
            {"node_id": "s", "agent_type": "sensor"},
            {"node_id": "w", "agent_type": "executor",
             "config": {"command": ["true"], "upload_path": "../../etc", "tty": True}},
        ],
        "edges": [{"edge_id": "e", "from_node": "s", "to_node": "w", "message_type": "m"}],
    }))
    return b


def put(api: str, path: str, data: bytes, cookie: str) -> tuple[int, Any]:
    req = urllib.request.Request(api + path, data=data, method="PUT")
    req.add_header("Authorization", f"Bearer {api_token(cookie.encode())}")
    req.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_validate_ok_and_every_problem_by_path(tmp_path: Path) -> None:
    r = mn("validate", str(WORDCOUNT))
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout and "wordcount" in r.stdout
    r = mn("validate", str(bad_bundle(tmp_path)))
    assert r.returncode == 65, (r.returncode, r.stdout, r.stderr)
    problems = [ln for ln in r.stderr.splitlines() if ln.startswith("problem: ")]
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
    assert any("nodes[0].agent_type" in p and "sensor" in p for p in problems), r.stderr
    assert any("nodes[1].config.upload_path" in p for p in problems), r.stderr
    assert any(w.startswith("warning: metadata") for w in warnings), r.stderr
    assert any("tty" in w for w in warnings), r.stderr
    r = mn("--json", "validate", str(bad_bundle(tmp_path / "j")))
    assert r.returncode == 65
    out = json.loads(r.stdout)
    assert out["ok"] is False and len(out["problems"]) >= 2 and out["warnings"]
    assert "warning: metadata" in r.stderr  # never silent, even with --json
    r = mn("validate", str(tmp_path / "nowhere"))
    assert r.returncode == 65 and "not a folder" in r.stderr


def test_run_uploads_once_and_the_node_validates_the_stored_bundle(make_cluster: Any, tmp_path: Path) -> None:
    c = make_cluster(2)
    c.wait_leader()
    api = c.nodes[0].api
    r = mn("run", str(WORDCOUNT), "--json", api=api, cookie=c.cookie)
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    data, sha = archive.pack(WORDCOUNT)
    assert job["bundle"] == sha and job["progress"]["total"] == 6
    assert redis.Redis.from_url(c.redis_url).get(f"{c.namespace}:bundle:{sha}") == data
    assert wait_done(c, job["job_id"])["status"] == "completed"
    r = mn("agents", job["job_id"], api=api)
    assert r.returncode == 0 and "6 agents: 6 completed" in r.stdout, (r.stdout, r.stderr)
    # a bad bundle: every problem, nothing uploaded
    r = mn("run", str(bad_bundle(tmp_path / "local")), api=api, cookie=c.cookie)
    assert r.returncode == 65 and r.stderr.count("problem: ") >= 2, r.stderr
    assert len([k for k in rclient(c).keys(f"{c.namespace}:bundle:*") if not k.endswith(":jobs")]) == 1
    # the second run finds the bundle stored: the node answers, the job is new, and runs to its result
    r2 = mn("run", str(WORDCOUNT), "--wait", "--json", api=c.nodes[1].api, cookie=c.cookie)
    assert r2.returncode == 0, r2.stderr
    done = json.loads(r2.stdout)
    assert done["job_id"] != job["job_id"] and done["status"] == "completed", done
    result = done["result"]
    assert result["mode"] == "wordcount" and len(result["files"]) == 3, result
    assert result["total_words"] == sum(result["files"].values()) > 100 and result["top_10"][0][0] == "the"
    info = c.get(2, f"/api/v1/bundles/{sha}")
    assert info["stored"] is True and info["max_bytes"] == archive.DEFAULT_MAX_BYTES
    # an archive whose manifest is bad, uploaded directly: the node validates what it stored
    bad = bad_bundle(tmp_path)
    bad_data, bad_sha = archive.pack(bad)
    status, body = put(api, f"/api/v1/bundles/{bad_sha}", bad_data, c.cookie)
    assert status == 201 and body["created"] is True, body
    status, body = c.post_status(1, f"/api/v1/bundles/{bad_sha}/jobs", {})
    assert status == 400 and len(body["problems"]) >= 2, body
    assert any("upload_path" in p for p in body["problems"])
    # a body that is not what its address says: refused, nothing stored
    status, body = put(api, f"/api/v1/bundles/{'0' * 64}", b"not this", c.cookie)
    assert status == 400 and "hashes to" in body["error"], body
    assert not rclient(c).exists(f"{c.namespace}:bundle:{'0' * 64}")
    status, body = c.post_status(1, f"/api/v1/bundles/{'1' * 64}/jobs", {})
    assert status == 404 and "no bundle" in body["error"] and "PUT" in body["fix"], body
    # past the API's 8 MiB body limit for JSON, within the bundle cap: stored whole
    big = tmp_path / "big"
    shutil.copytree(WORDCOUNT, big)
    (big / "payloads" / "blob.bin").write_bytes(os.urandom(12 * 1024 * 1024))
    r = mn("run", str(big), "--json", api=api, cookie=c.cookie)
    assert r.returncode == 0, r.stderr
    big_sha = json.loads(r.stdout)["bundle"]
    assert len(redis.Redis.from_url(c.redis_url).get(f"{c.namespace}:bundle:{big_sha}") or b"") > 12 * 1024 * 1024
    # without the token: 401
    req = urllib.request.Request(api + f"/api/v1/bundles/{sha}", data=data, method="PUT")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 401


def test_bundle_over_the_nodes_cap_is_413_and_exit_65(make_cluster: Any, tmp_path: Path) -> None:
    c = make_cluster(1, extra_env={"MIRROR_NEURON_BUNDLE_MAX_BYTES": "30000"})
    c.wait_leader()
    big = tmp_path / "big"
    shutil.copytree(WORDCOUNT, big)
    (big / "payloads" / "blob.bin").write_bytes(os.urandom(40_000))
    data, sha = archive.pack(big)
    status, body = put(c.nodes[0].api, f"/api/v1/bundles/{sha}", data, c.cookie)
    assert status == 413 and "over this node's cap" in body["error"] and "MIRROR_NEURON_BUNDLE_MAX_BYTES" in body["fix"]
    assert not rclient(c).exists(f"{c.namespace}:bundle:{sha}")
    r = mn("run", str(big), api=c.nodes[0].api, cookie=c.cookie)
    assert r.returncode == 65, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "cap" in r.stderr and "fix:" in r.stderr
    assert hashlib.sha256(data).hexdigest() == sha


def test_agents_and_logs_show_what_the_engine_ran(make_cluster: Any, tmp_path: Path) -> None:
    c = make_cluster(2)
    c.wait_leader()
    bundle = prime_bundle(tmp_path / "primes", 4)
    r = mn("run", str(bundle), "--wait", "--json", api=c.nodes[0].api, cookie=c.cookie)
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["status"] == "completed" and done["result"]["prime_count"] == 32, done  # 1000003.. 400 numbers
    jid = done["job_id"]
    total = done["progress"]["total"]
    r = mn("agents", jid, api=c.nodes[1].api)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["AGENT", "TYPE", "STATUS", "ATTEMPT", "NODE", "EXIT", "DURATION"]
    assert f"{total} agents: {total} completed" in r.stdout, r.stdout
    row = next(ln.split() for ln in lines if ln.startswith("prime_worker_0001 "))
    assert row[:4] == ["prime_worker_0001", "executor", "completed", "1"] and row[5] == "0", r.stdout
    assert row[6].endswith("ms") or row[6].endswith("s"), r.stdout
    # paged: every agent exactly once, whatever the page size; the commands' exit codes and durations
    r = mn("agents", jid, "--page-size", "2", "--json", api=c.nodes[0].api)
    rows = json.loads(r.stdout)
    assert len(rows) == total and len({a["agent"] for a in rows}) == total
    workers = [a for a in rows if a["agent"].startswith("prime_worker_")]
    assert len(workers) == 4 and all(a["exit_code"] == 0 and a["duration_ms"] > 0 for a in workers), workers
    assert all(a["node"] in {n.name for n in c.nodes} for a in workers), workers
    # logs: the attempt record the executor wrote, its stdout as the command printed it
    recs = {k: json.loads(v) for k, v in rclient(c).hgetall(f"{c.namespace}:job:{jid}:attempts").items()}
    rec = recs["prime_worker_0002:1"]
    assert rec["exit_code"] == 0 and rec["stdout"].strip(), rec
    r = mn("logs", jid, "prime_worker_0002", api=c.nodes[1].api)
    assert r.returncode == 0, r.stderr
    assert f"== prime_worker_0002 attempt 1 on {rec['node']}: exit 0" in r.stdout, r.stdout
    assert rec["stdout"].strip().splitlines()[-1] in r.stdout
    r = mn("logs", jid, "prime_worker_0002", "--attempt", "1", "--json", api=c.nodes[1].api)
    assert [json.loads(ln)["attempt"] for ln in r.stdout.splitlines()] == [1]
    r = mn("logs", jid, "prime_worker_0002", "--attempt", "2", "--json", api=c.nodes[1].api)
    assert r.returncode == 0 and r.stdout == "", r.stdout
    r = mn("logs", jid, api=c.nodes[0].api)  # every finished attempt, each once
    assert r.returncode == 0, r.stderr
    assert all(r.stdout.count(f"== prime_worker_000{i} attempt 1") == 1 for i in range(1, 5)), r.stdout
    r = mn("logs", jid, "nope", api=c.nodes[0].api)
    assert r.returncode == 69 and "no agent 'nope'" in r.stderr
    r = mn("logs", jid, "--attempt", "1", api=c.nodes[0].api)
    assert r.returncode == 64
    status, body = c.get_status(1, f"/api/v1/jobs/{jid}/agents?limit=0")
    assert status == 400 and "limit" in body["error"]


def test_a_failing_command_shows_its_exit_code_tries_and_stderr(make_cluster: Any, tmp_path: Path) -> None:
    c = make_cluster(1)
    c.wait_leader()
    code = "import sys; print('checked 100'); print('disk on fire', file=sys.stderr); sys.exit(3)"
    bundle = one_command_bundle(tmp_path / "fails", ["python3", "-c", code], max_attempts=2, retry_backoff_ms=10)
    r = mn("run", str(bundle), "--wait", "--json", api=c.nodes[0].api, cookie=c.cookie)
    assert r.returncode != 0 and json.loads(r.stdout)["status"] == "failed", (r.stdout, r.stderr)
    jid = json.loads(r.stdout)["job_id"]
    r = mn("agents", jid, "--status", "failed", "--json", api=c.nodes[0].api)
    (work,) = json.loads(r.stdout)
    assert work["agent"] == "work" and work["exit_code"] == 3 and work["attempt"] == 1 and work["error"], work
    r = mn("logs", jid, "work", api=c.nodes[0].api)
    assert r.returncode == 0, r.stderr
    head = next(ln for ln in r.stdout.splitlines() if ln.startswith("== work attempt 1"))
    assert "exit 3" in head and "2 tries" in head, r.stdout
    assert "--- stderr (tail) ---" in r.stdout and "disk on fire" in r.stdout and "checked 100" in r.stdout


def test_result_printer_shows_any_result() -> None:
    assert json.loads(format_result({"words": 12, "top": [["the", 4]]})) == {"words": 12, "top": [["the", 4]]}
    big = {"items": list(range(5000)), "text": "x" * 10_000, "nested": {"a": {"b": {"c": 1}}}}
    out = format_result(big)
    assert len(out.splitlines()) <= 41 and "4997 ... " not in out
    assert "... 4994 more ..." in out and "(10000 chars)" in out and "4999" in out


def test_new_commands_complete(tmp_path: Path) -> None:
    from tests.test_cli_surface import _bash_complete

    script = mn("completion", "bash").stdout
    assert set(_bash_complete(script, ["mn", "va"])) == {"validate"}
    assert {"run", "agents", "logs"} <= set(_bash_complete(script, ["mn", ""]))
    (tmp_path / "bundle_a").mkdir()
    (tmp_path / "bundle_file").write_text("")
    assert _bash_complete(script, ["mn", "run", "bund"], tmp_path) == ["bundle_a"]  # folders only
    assert _bash_complete(script, ["mn", "validate", "bund"], tmp_path) == ["bundle_a"]
    assert {"--wait", "--timeout", "--json"} <= set(_bash_complete(script, ["mn", "run", "--"]))
    assert {"--follow", "--attempt"} <= set(_bash_complete(script, ["mn", "logs", "--"]))
    assert _bash_complete(script, ["mn", "agents", "--status", "fa"]) == ["failed"]
    zsh = mn("completion", "zsh").stdout
    assert "'1:dir:_files -/'" in zsh


# prints a line on each stream, waits (60 s at most) for the file argv[1], prints another line, exits 0
WAITER = ("import os, sys, time\n"
          "print('waiting for go', flush=True)\n"
          "print('err before go', file=sys.stderr, flush=True)\n"
          "deadline = time.monotonic() + 60\n"
          "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
          "    time.sleep(0.05)\n"
          "print('got go' if os.path.exists(sys.argv[1]) else 'no go', flush=True)\n")


def test_logs_follow_streams_a_running_command_then_prints_its_outcome(make_cluster: Any, tmp_path: Path) -> None:
    c = make_cluster(1)
    c.wait_leader()
    go = tmp_path / "go"
    bundle = one_command_bundle(tmp_path / "waits", ["python3", "-c", WAITER, str(go)])
    r = mn("run", str(bundle), "--json", api=c.nodes[0].api, cookie=c.cookie)
    assert r.returncode == 0, r.stderr
    jid = json.loads(r.stdout)["job_id"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")}
    follower = subprocess.Popen([sys.executable, "-m", "mn_node.cli", "--api", c.nodes[0].api, "logs", jid,
                                 "work", "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    out_lines: list[str] = []
    err_lines: list[str] = []
    readers = [threading.Thread(target=lambda f=f, dst=dst: dst.extend(iter(f.readline, "")), daemon=True)
               for f, dst in ((follower.stdout, out_lines), (follower.stderr, err_lines))]
    for t in readers:
        t.start()
    try:
        # the running attempt's header and its live output on both streams, while it waits
        wait_until(lambda: "waiting for go\n" in out_lines and "err before go\n" in err_lines, 30,
                   "the running command's live output")
        assert any(ln.startswith(f"== attempt 1 running on {c.nodes[0].name}") for ln in out_lines), out_lines
        assert follower.poll() is None and not any("exit" in ln for ln in out_lines), out_lines
        go.write_text("")
        follower.wait(30)
        for t in readers:
            t.join(5)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    out, err = "".join(out_lines), "".join(err_lines)
    assert follower.returncode == 0, err
    # the rest of its output once, then its outcome; nothing printed twice
    assert out.count("waiting for go") == 1 and out.count("got go") == 1 and err.count("err before go") == 1, out
    outcome = next(ln for ln in out_lines if ln.startswith("== work attempt 1 on"))
    assert "exit 0" in outcome and out.index("got go") < out.index(outcome), out
    assert "(tail)" not in out, out  # streamed live: the record's tails are not printed again
    row = next(a for a in json.loads(mn("agents", jid, "--json", api=c.nodes[0].api).stdout) if a["agent"] == "work")
    assert row["status"] == "completed" and row["exit_code"] == 0 and row["type"] == "executor", row
    assert row["duration_ms"] > 0


def test_agents_of_a_big_job_come_in_pages(make_cluster: Any) -> None:
    c = make_cluster(1)
    c.wait_leader()
    r = mn("run", str(WORDCOUNT), "--wait", "--json", api=c.nodes[0].api, cookie=c.cookie)
    assert r.returncode == 0, r.stderr
    jid = json.loads(r.stdout)["job_id"]
    real = {a["agent"] for a in json.loads(mn("agents", jid, "--json", api=c.nodes[0].api).stdout)}
    assert len(real) == 6, real  # the job ran: its own agents are there, all completed
    n = 20_000  # synthetic agents added to the ended job (nothing coordinates it any more)
    rc = rclient(c)
    pipe = rc.pipeline(transaction=False)
    for i in range(0, n, 1000):
        pipe.hset(f"{c.namespace}:job:{jid}:agents", mapping={
            f"w{k:06d}": json.dumps({"status": "completed" if k % 7 else "failed", "attempt": 1, "node": "mn1@x"})
            for k in range(i, i + 1000)})
    pipe.execute()
    status, page = c.get_status(1, f"/api/v1/jobs/{jid}/agents?limit=300")
    assert status == 200 and page["cursor"] != "0" and 0 < len(page["agents"]) <= 600, len(page["agents"])
    r = mn("agents", jid, "--page-size", "1000", "--json", api=c.nodes[0].api)
    assert r.returncode == 0, r.stderr
    names = [a["agent"] for a in json.loads(r.stdout)]
    assert len(names) == n + len(real) and set(names) == real | {f"w{k:06d}" for k in range(n)}
    failed = len(range(0, n, 7))
    r = mn("agents", jid, "--status", "failed", api=c.nodes[0].api)
    assert f"{failed} agents: {failed} failed" in r.stdout
    counts = c.get(1, f"/api/v1/jobs/{jid}")["agents"]
    assert counts == {"completed": n - failed + len(real), "failed": failed}
