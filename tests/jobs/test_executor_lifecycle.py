"""A node's executor pool never outlives it, even when it is SIGKILLed."""

from __future__ import annotations

import psutil
import pytest

from tests.jobs._jobs import submit, wait_done
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


def test_pool_workers_die_with_a_sigkilled_daemon(make_cluster):
    c = make_cluster(1, extra_env={"MIRROR_NEURON_EXECUTOR_CAPACITY": "2"})
    c.wait_leader()
    assert wait_done(c, submit(c, {"workers": 4})["job_id"])["status"] == "completed"
    daemon = psutil.Process(c.nodes[0].pid)
    children = wait_until(lambda: [p for p in daemon.children(recursive=True)
                                   if "multiprocessing" in " ".join(p.cmdline())], 10, "pool workers")
    c.kill9(1)

    def all_gone() -> bool:
        return not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    wait_until(all_gone, 10, f"pool processes {[p.pid for p in children]} to exit after the daemon's SIGKILL")
