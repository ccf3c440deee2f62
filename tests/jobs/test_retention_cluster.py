"""Retention through the daemons and the mn CLI: with MIRROR_NEURON_JOB_RETENTION=1s no key of a
finished job is left (scanned), ``mn jobs prune`` and ``mn pause``/``mn resume`` exit codes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.jobs._jobs import rclient, submit, wait_done
from tests.jobs.test_jobs_api_cli import mn
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

SMALL = {"workers": 4, "start": 1000003}


def _keys_of(c: Any, job_id: str) -> list[str]:
    return sorted(rclient(c).scan_iter(match=f"{c.namespace}:*{job_id}*", count=1000))


def test_no_key_of_a_job_is_left_after_the_retention(make_cluster: Any) -> None:
    c = make_cluster(2, extra_env={"MIRROR_NEURON_JOB_RETENTION": "1s"})
    c.wait_leader()
    ids = [submit(c, SMALL)["job_id"] for _ in range(3)]
    for jid in ids:
        assert wait_done(c, jid)["status"] == "completed"
    seen: dict[str, list[str]] = {}

    def all_gone() -> bool:
        for jid in ids:
            seen[jid] = _keys_of(c, jid)
        return not any(seen.values())

    try:
        wait_until(all_gone, 15, "every key of the finished jobs to expire")
    except AssertionError as e:
        raise AssertionError(f"{e}; keys left: {seen}") from None
    r = mn(c, "jobs", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stdout + r.stderr
    assert not rclient(c).zrange(f"{c.namespace}:jobs", 0, -1)  # the listing dropped the expired ids


def test_prune_pause_and_resume_from_the_cli(make_cluster: Any) -> None:
    c = make_cluster(1)
    c.wait_leader()
    done = submit(c, SMALL)["job_id"]
    assert wait_done(c, done)["status"] == "completed"
    r = mn(c, "pause", done)
    assert r.returncode != 0 and "completed" in r.stderr, r.stderr
    r = mn(c, "jobs", "prune", "--status", "failed", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["pruned"] == 0, r.stdout + r.stderr
    r = mn(c, "jobs", "prune", "--older-than", "7d")
    assert r.returncode == 0 and "deleted 0 job(s)" in r.stdout, r.stdout + r.stderr
    r = mn(c, "jobs", "prune", "--dry-run")
    assert r.returncode == 0 and done in r.stdout and "would delete 1" in r.stdout, r.stdout
    assert _keys_of(c, done)
    r = mn(c, "jobs", "prune", "--json")
    assert json.loads(r.stdout)["jobs"][0]["job_id"] == done
    assert _keys_of(c, done) == []
    r = mn(c, "jobs", "prune", "--older-than", "soon")
    assert r.returncode == 64 and "--older-than: 'soon' is not a positive duration" in r.stderr, r.stderr
    code, body = c.post_status(1, "/api/v1/jobs/prune", {"status": "running"})
    assert code == 400 and "terminal" in body["error"], body
