"""The command runner on real processes: contract, bad paths, failures, retries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mn_node.runners.base import Runner, output_payload
from mn_node.runners.command import CommandRunner
from tests.runners.support import files_outside, make_bundle, request


@pytest.fixture
def runner(tmp_path: Path) -> CommandRunner:
    r = CommandRunner(tmp_path / "scratch", state_dir=tmp_path / "state", kill_grace_s=0.5,
                      daemon_env={"PATH": os.environ["PATH"], "HTTP_PROXY": "http://proxy:3128",
                                  "MIRROR_NEURON_COOKIE": "s3cret", "SECRET_OF_DAEMON": "x"})
    return r


async def test_is_a_runner(runner: CommandRunner) -> None:
    assert isinstance(runner, Runner)


async def test_contract_files_env_substitution_and_uploads(runner: CommandRunner, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", {"tool/scripts/show.py": (
        "import json, os, sys\n"
        "env = {k: v for k, v in os.environ.items()}\n"
        "print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': env,\n"
        "  'input': json.load(open(os.environ['MIRROR_NEURON_INPUT_FILE'])),\n"
        "  'context': json.load(open(os.environ['MIRROR_NEURON_CONTEXT_FILE'])),\n"
        "  'message': json.load(open(os.environ['MIRROR_NEURON_MESSAGE_FILE'])),\n"
        "  'body': open(os.environ['MIRROR_NEURON_BODY_FILE']).read()}))\n")})
    config = {"upload_path": "tool", "upload_as": "tool", "workdir": "/sandbox/job/tool",
              "command": ["python3", "scripts/show.py", "{input_file}", "{workdir}", "{job_id}", "{agent_id}"],
              "environment": {"GREETING": "hi"}, "pass_env": ["HTTP_PROXY", "NOT_SET_ANYWHERE"]}
    res = await runner.run(request(config, bundle=bundle, body={"x": [1, 2]}, job="j-1", agent="w_1"))
    assert res.ok, res.reason
    out = json.loads(res.sandbox["stdout"])
    base = Path(out["env"]["MIRROR_NEURON_WORKDIR"]).parent
    assert out["cwd"] == str(base / "tool") == out["argv"][1]
    assert out["argv"][0] == str(base / "mirror_neuron_input.json")
    assert out["argv"][2:] == ["j-1", "w_1"]
    assert out["input"] == {"x": [1, 2]} and json.loads(out["body"]) == {"x": [1, 2]}
    assert out["message"]["body"] == {"x": [1, 2]} and out["message"]["to"] == "w_1"
    assert out["context"]["job_id"] == "j-1" and out["context"]["agent_id"] == "w_1"
    env = out["env"]
    assert env["MIRROR_NEURON_JOB_ID"] == "j-1" and env["MIRROR_NEURON_AGENT_ID"] == "w_1"
    assert env["GREETING"] == "hi" and env["HTTP_PROXY"] == "http://proxy:3128"
    assert "MIRROR_NEURON_COOKIE" not in env and "SECRET_OF_DAEMON" not in env and "NOT_SET_ANYWHERE" not in env
    assert base.parent.parent.parent == tmp_path / "scratch"
    assert res.sandbox["exit_code"] == 0 and res.sandbox["attempts"] == 1 and res.sandbox["runner"] == "host_local"
    assert (base / "mirror_neuron_stdout.txt").read_text() == res.sandbox["stdout"]
    assert output_payload("w_1", res, {"x": 1})["sandbox"] is res.sandbox


async def test_string_command_runs_in_a_shell(runner: CommandRunner) -> None:
    res = await runner.run(request({"command": "echo one; echo two >&2; exit 0"}))
    assert res.ok and res.sandbox["stdout"] == "one\n" and res.sandbox["stderr"] == "two\n"


async def test_list_command_is_not_a_shell(runner: CommandRunner) -> None:
    res = await runner.run(request({"command": ["echo", "$HOME; rm -rf /"]}))
    assert res.ok and res.sandbox["stdout"] == "$HOME; rm -rf /\n"


async def test_structured_stdout_is_parsed(runner: CommandRunner) -> None:
    doc = {"complete_job": {"prime_count": 3}, "emit_messages": [{"type": "t", "body": {"a": 1}}],
           "events": [{"type": "e", "payload": {}}], "next_state": {"k": 1}}
    res = await runner.run(request({"command": ["echo", json.dumps(doc)]}))
    assert res.ok and res.structured is not None
    assert res.structured.complete_job == {"prime_count": 3}
    assert res.structured.emit_messages[0].message_type == "t" and res.structured.next_state == {"k": 1}


async def test_exit_3_fails_with_code_and_stderr_tail_after_retries(runner: CommandRunner) -> None:
    config = {"command": "echo starting >&2; echo 'disk on fire' >&2; exit 3", "max_attempts": 3,
              "retry_backoff_ms": 10}
    res = await runner.run(request(config, agent="w7"))
    assert not res.ok and res.exit_code == 3
    assert len(res.attempts) == 3 and res.sandbox["attempts"] == 3
    assert "\n" not in res.reason
    assert "agent w7" in res.reason and "exit code 3" in res.reason and "disk on fire" in res.reason
    dirs = {a.scratch_dir for a in res.attempts}
    assert len(dirs) == 3  # a fresh scratch directory per try


async def test_retry_succeeds_on_a_later_try(runner: CommandRunner, tmp_path: Path) -> None:
    marker = tmp_path / "tried"
    cmd = f"if [ -e {marker} ]; then echo ok; else touch {marker}; exit 1; fi"
    res = await runner.run(request({"command": cmd, "max_attempts": 2, "retry_backoff_ms": 1}))
    assert res.ok and res.sandbox["attempts"] == 2 and res.sandbox["stdout"] == "ok\n"


async def test_command_not_found_is_one_clear_line_and_not_retried(runner: CommandRunner) -> None:
    res = await runner.run(request({"command": ["no-such-program-xyz", "a"], "max_attempts": 3}))
    assert not res.ok and len(res.attempts) == 1
    assert "cannot start 'no-such-program-xyz'" in res.reason and "\n" not in res.reason


async def test_traversal_in_upload_path_fails_and_writes_nothing_outside(runner: CommandRunner,
                                                                          tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", {"ok/x.txt": "x"})
    before = files_outside(tmp_path, tmp_path / "scratch")
    for config in ({"upload_path": "../../etc", "command": ["true"]},
                   {"upload_paths": [{"source": "ok", "target": "../../../escaped"}], "command": ["true"]},
                   {"upload_path": "/etc", "command": ["true"]}):
        res = await runner.run(request(config, bundle=bundle))
        assert not res.ok and "\n" not in res.reason and len(res.attempts) == 1, res.reason
        assert "leads out" in res.reason or "absolute" in res.reason
    assert files_outside(tmp_path, tmp_path / "scratch") == before


async def test_symlink_out_of_the_bundle_is_refused(runner: CommandRunner, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy")
    bundle = make_bundle(tmp_path / "b", {"tool/run.sh": "true"})
    (bundle / "payloads" / "tool" / "leak").symlink_to(secret)
    (bundle / "payloads" / "direct").symlink_to(tmp_path)
    for src in ("tool", "direct"):
        res = await runner.run(request({"upload_path": src, "command": ["true"]}, bundle=bundle))
        assert not res.ok and "symlink" in res.reason, res.reason
    copies = [p for p in (tmp_path / "scratch").rglob("*") if p.is_file() and p.read_bytes() == b"do not copy"]
    assert copies == []


async def test_absolute_workdir_outside_the_sandbox_root_is_refused(runner: CommandRunner, tmp_path: Path) -> None:
    for workdir in ("/etc", "/sandbox/jobx", "/sandbox/job/../../tmp"):
        res = await runner.run(request({"workdir": workdir, "command": ["touch", "made-here"]}))
        assert not res.ok and "workdir" in res.reason and "\n" not in res.reason, res.reason
    assert not Path("/etc/made-here").exists()
    assert files_outside(tmp_path, tmp_path / "scratch") <= {"state"}


async def test_pass_env_never_passes_the_cookie(runner: CommandRunner) -> None:
    res = await runner.run(request({"command": ["env"], "pass_env": ["MIRROR_NEURON_COOKIE"]}))
    assert not res.ok and "MIRROR_NEURON_COOKIE" in res.reason and "s3cret" not in res.sandbox["stdout"]


async def test_startup_delay_only_on_the_first_dispatch(tmp_path: Path) -> None:
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)

    r = CommandRunner(tmp_path / "s", sleep=fake_sleep)
    await r.run(request({"command": ["true"], "startup_delay_ms": 250}))
    await r.run(request({"command": ["true"], "startup_delay_ms": 250}, attempt=2))
    await r.run(request({"command": ["false"], "max_attempts": 3, "retry_backoff_ms": 100}, attempt=2))
    assert slept == [0.25, 0.1, 0.2]
