"""mn validate / run / agents / logs and the routes behind them, against real nodes and Redis.

Which job engine runs a bundle job is not this file's business: these tests check what the
operator surfaces send, store, refuse and print.
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
from tests.jobs._jobs import rclient, submit, wait_done
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
    r = mn("agents", job["job_id"], api=api)  # the job has not started: no agent states yet
    assert r.returncode == 0 and "no agent has a state yet" in r.stdout, (r.stdout, r.stderr)
    # a bad bundle: every problem, nothing uploaded
    r = mn("run", str(bad_bundle(tmp_path / "local")), api=api, cookie=c.cookie)
    assert r.returncode == 65 and r.stderr.count("problem: ") >= 2, r.stderr
    assert len([k for k in rclient(c).keys(f"{c.namespace}:bundle:*") if not k.endswith(":jobs")]) == 1
    # the second run finds the bundle stored: the node answers, the job is new
    r2 = mn("run", str(WORDCOUNT), "--json", api=c.nodes[1].api, cookie=c.cookie)
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["job_id"] != job["job_id"]
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


def test_agents_pages_and_logs_read_attempt_records(make_cluster: Any) -> None:
    c = make_cluster(2)
    c.wait_leader()
    job = submit(c, {"workers": 5, "start": 1000003})
    done = wait_done(c, job["job_id"])
    assert done["status"] == "completed"
    jid = job["job_id"]
    r = mn("agents", jid, api=c.nodes[1].api)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["AGENT", "TYPE", "STATUS", "ATTEMPT", "NODE", "EXIT", "DURATION"]
    assert "8 agents: 8 completed" in r.stdout
    assert any(ln.split()[:3] == ["prime_worker_0001", "executor", "completed"] for ln in lines), r.stdout
    # paged: every agent exactly once, whatever the page size
    r = mn("agents", jid, "--page-size", "2", "--json", api=c.nodes[0].api)
    rows = json.loads(r.stdout)
    assert sorted(a["agent"] for a in rows) == sorted(set(a["agent"] for a in rows)) and len(rows) == 8
    assert all(a["exit_code"] is None for a in rows)  # an entry-point task has none: printed "-"
    # attempt records as the engine writes them
    rc = rclient(c)
    rec = {"agent": "prime_worker_0002", "attempt": 1, "node": c.nodes[0].name, "exit_code": 3,
           "duration_ms": 41, "stdout_tail": "checked 100\n", "stderr_tail": "starting\ndisk on fire\n",
           "started_ms": 1, "finished_ms": 42, "error": "exit code 3"}
    rc.hset(f"{c.namespace}:job:{jid}:attempts", mapping={
        "prime_worker_0002:1": json.dumps(rec),
        "prime_worker_0002:2": json.dumps({**rec, "attempt": 2, "exit_code": 0, "stderr_tail": "",
                                           "error": None}),
        "prime_worker_0003:1": json.dumps({"exit_code": 0}),  # a sparse record: '-' for the rest
    })
    r = mn("logs", jid, "prime_worker_0002", api=c.nodes[1].api)
    assert r.returncode == 0, r.stderr
    assert "attempt 1" in r.stdout and "exit 3" in r.stdout and "disk on fire" in r.stdout
    assert "attempt 2" in r.stdout and "exit 0" in r.stdout
    r = mn("logs", jid, "prime_worker_0002", "--attempt", "2", "--json", api=c.nodes[1].api)
    recs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [x["attempt"] for x in recs] == [2]
    r = mn("logs", jid, api=c.nodes[0].api)
    assert r.returncode == 0, r.stderr
    assert "prime_worker_0003 attempt 1 on -: exit 0, -" in r.stdout, r.stdout
    assert r.stdout.count("== prime_worker_0002") == 2
    r = mn("logs", jid, "nope", api=c.nodes[0].api)
    assert r.returncode == 69 and "no agent 'nope'" in r.stderr
    r = mn("logs", jid, "--attempt", "1", api=c.nodes[0].api)
    assert r.returncode == 64
    status, body = c.get_status(1, f"/api/v1/jobs/{jid}/agents?limit=0")
    assert status == 400 and "limit" in body["error"]


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


def test_logs_follow_waits_for_a_running_attempt_and_prints_its_outcome(make_cluster: Any) -> None:
    c = make_cluster(1)
    c.wait_leader()
    r = mn("run", str(WORDCOUNT), "--json", api=c.nodes[0].api, cookie=c.cookie)
    assert r.returncode == 0, r.stderr
    jid = json.loads(r.stdout)["job_id"]
    rc = rclient(c)
    agents_key, attempts_key = f"{c.namespace}:job:{jid}:agents", f"{c.namespace}:job:{jid}:attempts"
    rc.hset(agents_key, "count_harbor", json.dumps({"status": "dispatched", "attempt": 1, "node": c.nodes[0].name}))
    status, body = c.get_status(1, f"/api/v1/jobs/{jid}/logs?agent=count_harbor")
    assert status == 200 and body["running"]["attempt"] == 1 and body["attempts"] == [], body
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")}
    follower = subprocess.Popen([sys.executable, "-m", "mn_node.cli", "--api", c.nodes[0].api, "logs", jid,
                                 "count_harbor", "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(follower.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        # it shows the running attempt and keeps following while it runs
        wait_until(lambda: any("running on" in ln for ln in lines), 15, "the running attempt's header")
        assert follower.poll() is None
        rc.hset(attempts_key, "count_harbor:1", json.dumps({
            "agent": "count_harbor", "attempt": 1, "node": c.nodes[0].name, "exit_code": 0, "duration_ms": 25,
            "stdout_tail": '{"words": 42}\n', "stderr_tail": ""}))
        rc.hset(agents_key, "count_harbor", json.dumps({"status": "completed", "attempt": 1,
                                                         "node": c.nodes[0].name, "exit_code": 0}))
        follower.wait(20)
        reader.join(5)
        err = follower.stderr.read()
        out = "".join(lines)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, err
    assert "== attempt 1 running on" in out and "count_harbor attempt 1" in out and "exit 0" in out, out
    assert '{"words": 42}' in out  # nothing was streamed live (no live output here): the tail is printed
    row = next(a for a in json.loads(mn("agents", jid, "--json", api=c.nodes[0].api).stdout)
               if a["agent"] == "count_harbor")
    assert row["exit_code"] == 0 and row["duration_ms"] == 25 and row["type"] == "executor"


def test_agents_of_a_big_job_come_in_pages(make_cluster: Any) -> None:
    c = make_cluster(1)
    c.wait_leader()
    r = mn("run", str(WORDCOUNT), "--json", api=c.nodes[0].api, cookie=c.cookie)
    jid = json.loads(r.stdout)["job_id"]
    n = 20_000
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
    assert len(names) == n and len(set(names)) == n
    r = mn("agents", jid, "--status", "failed", api=c.nodes[0].api)
    assert f"{len(range(0, n, 7))} agents: {len(range(0, n, 7))} failed" in r.stdout
    counts = c.get(1, f"/api/v1/jobs/{jid}")["agents"]
    assert counts == {"completed": n - len(range(0, n, 7)), "failed": len(range(0, n, 7))}
