"""The command-line surface: help on every option, argv routing to the doctor, usage errors,
shell completion. No cluster: these run the real ``mn`` in a subprocess or walk its parsers."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mn_node import cli, daemon, demo
from mn_node.doctor import cli as doctor_cli
from mn_node.jobs.cli import _JOB_ID
from mn_node.jobs.state import new_job_id
from mn_tui import app as tui_app
from tests.support.redis import free_port

EX_USAGE = 64


def mn(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_NEURON_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "mn_node.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in a._choices_actions}
            for name, sub in a.choices.items():
                yield f"{path} {name}", argparse.Action([name], name, help=helps.get(name))
                yield from _walk(sub, f"{path} {name}")
        else:
            yield path, a


PARSERS = {
    "mn": cli.build_parser,
    "mn doctor": doctor_cli.build_parser,
    "mn-node": daemon.build_parser,
    "mn-demo": demo.build_parser,
    "mn-tui": tui_app.build_parser,
}


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_every_option_and_subcommand_has_help(prog: str) -> None:
    missing = [f"{where}: {'/'.join(a.option_strings) or a.dest}"
               for where, a in _walk(PARSERS[prog](), prog) if not (a.help and a.help.strip())]
    assert not missing, "options without help text:\n" + "\n".join(missing)


def test_mn_help_lists_environment_and_exit_codes() -> None:
    p = mn("--help")
    assert p.returncode == 0, p.stderr
    for text in ("MIRROR_NEURON_API_URL", "MIRROR_NEURON_API_TOKEN", "MIRROR_NEURON_COOKIE", "exit status",
                 "64  usage", "69", "78", "completion"):
        assert text in p.stdout, (text, p.stdout)


def test_job_ids_the_cli_accepts_include_every_generated_one() -> None:
    assert _JOB_ID.match(new_job_id("prime_sweep_scale"))


# ---- routing to the doctor -------------------------------------------------------------------


def test_mn_job_doctor_is_a_usage_error_not_the_doctor() -> None:
    p = mn("job", "doctor")
    assert p.returncode == EX_USAGE, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "'doctor' is a command, not a job id" in lines[0] and "fix:" in lines[0], lines[0]
    assert p.stdout == ""  # the doctor printed nothing


@pytest.mark.parametrize("argv", [["events", "doctor"], ["cancel", "doctor"], ["submit", "doctor", "--bogus"]])
def test_doctor_as_an_argument_of_other_commands_never_runs_the_doctor(argv: list[str]) -> None:
    p = mn(*argv)
    assert p.returncode == EX_USAGE, (argv, p.returncode, p.stdout, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1 and "fix:" in p.stderr
    assert "checks" not in p.stdout


def test_mn_doctor_runs_the_doctor() -> None:
    p = mn("doctor", "--list-checks")
    assert p.returncode == 0, p.stderr
    assert "config-agreement" in p.stdout and "split-brain" in p.stdout


def test_mn_api_x_doctor_runs_the_doctor_against_x() -> None:
    api = f"http://127.0.0.1:{free_port()}"
    p = mn("--api", api, "doctor", "--check", "local-node", "--json")
    doc = json.loads(p.stdout)
    [check] = doc["checks"]
    assert check["name"] == "local-node" and api in check["detail"], check


def test_mn_json_doctor_runs_the_doctor_with_json_output() -> None:
    api = f"http://127.0.0.1:{free_port()}"
    p = mn("--json", f"--api={api}", "--timeout", "3", "doctor", "--check", "local-node")
    doc = json.loads(p.stdout)  # --json before the command reached the doctor
    assert [c["name"] for c in doc["checks"]] == ["local-node"] and doc["timeout_s"] == 3.0, doc


def test_doctor_usage_errors_are_the_doctors() -> None:
    p = mn("doctor", "--check", "nope")
    assert p.returncode == EX_USAGE and "unknown check 'nope'" in p.stderr and "fix:" in p.stderr


def test_usage_errors_are_one_line_with_a_fix() -> None:
    for argv in (["nodes", "--bogus"], ["jobs", "--status", "weird"], ["--api", "ftp://x", "nodes"], ["completion"]):
        p = mn(*argv)
        assert p.returncode == EX_USAGE, (argv, p.returncode, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "fix:" in lines[0], (argv, lines)


def test_json_before_or_after_the_command() -> None:
    api = f"http://127.0.0.1:{free_port()}"
    for argv in (["--json", "--api", api, "nodes"], ["--api", api, "nodes", "--json"]):
        p = mn(*argv)
        assert p.returncode == 69 and "no mirror-neuron node answers" in p.stderr, (argv, p.stderr)


# ---- shell completion ------------------------------------------------------------------------


def _bash_complete(script: str, words: list[str], cwd: Path | None = None) -> list[str]:
    """Run the generated completion function the way bash does for ``words`` (last = current)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    prog = f"{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _mn; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", prog], capture_output=True, text=True, timeout=30,
                       cwd=cwd)
    assert p.returncode == 0, p.stderr
    return [w for w in p.stdout.splitlines() if w]


@pytest.fixture(scope="module")
def bash_script() -> str:
    p = mn("completion", "bash")
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_bash_completion_script_is_valid_bash(bash_script: str) -> None:
    p = subprocess.run(["bash", "-n"], input=bash_script, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr


def test_bash_completes_subcommands_options_and_values(bash_script: str) -> None:
    assert _bash_complete(bash_script, ["mn", "no"]) == ["nodes"]
    assert set(_bash_complete(bash_script, ["mn", "jo"])) == {"jobs", "job"}
    assert "doctor" in _bash_complete(bash_script, ["mn", ""])
    assert _bash_complete(bash_script, ["mn", "--api", "http://x:4000", "le"]) == ["leader"]
    assert "--json" in _bash_complete(bash_script, ["mn", "nodes", "--"])
    assert "--list-checks" in _bash_complete(bash_script, ["mn", "doctor", "--li"])  # the doctor's own options
    assert _bash_complete(bash_script, ["mn", "jobs", "--status", "ru"]) == ["running"]
    assert set(_bash_complete(bash_script, ["mn", "completion", ""])) == {"bash", "zsh"}


def test_bash_completes_files_for_file_options(bash_script: str, tmp_path: Path) -> None:
    (tmp_path / "manifest.yaml").write_text("{}")
    assert _bash_complete(bash_script, ["mn", "submit", "-f", "mani"], tmp_path) == ["manifest.yaml"]
    assert _bash_complete(bash_script, ["mn", "--env-file", "mani"], tmp_path) == ["manifest.yaml"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (apt-get install zsh)")
def test_zsh_completion_script_is_valid_zsh() -> None:
    p = mn("completion", "zsh")
    assert p.returncode == 0 and p.stdout.startswith("#compdef mn"), p.stderr
    for name in ("nodes", "leader", "doctor", "submit", "--list-checks", "--status"):
        assert name in p.stdout
    z = subprocess.run(["zsh", "-n"], input=p.stdout, capture_output=True, text=True, timeout=30)
    assert z.returncode == 0, z.stderr
    # loads under compinit and registers itself for mn
    prog = f"autoload -Uz compinit && compinit -u -D\n{p.stdout}\nprint -r -- ${{_comps[mn]}}"
    z = subprocess.run(["zsh", "-f", "-c", prog], capture_output=True, text=True, timeout=30)
    assert z.returncode == 0 and z.stdout.strip() == "_mn", (z.stdout, z.stderr)
