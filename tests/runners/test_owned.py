"""Processes are owned: timeout, cancel, daemon death and huge output, checked on the process table."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from mn_node.runners.command import CommandRunner
from mn_node.runners.process import MiB
from tests.runners.support import describe, group_members, request
from tests.support.wait import async_wait_until, wait_until

FAMILY = "echo $$ > {pgid_file}; sleep 100 & sleep 100; wait"


def pgid_of(path: Path) -> int:
    text = wait_until(lambda: path.exists() and path.read_text().strip(), 10, f"{path} written")
    return int(text)


def assert_group_gone(pgid: int, within: float = 2.0) -> None:
    seen: list[psutil.Process] = []

    def gone() -> bool:
        seen[:] = group_members(pgid)
        return not seen

    try:
        wait_until(gone, within, f"process group {pgid} gone")
    except AssertionError as e:
        raise AssertionError(f"{e}; still alive: {describe(seen)}") from None


async def family_started(pgid_file: Path) -> int:
    text = await async_wait_until(_read(pgid_file), 10, f"{pgid_file} written")
    pgid = int(text)
    await async_wait_until(_count(pgid), 10, "the shell and both sleeps running")
    return pgid


def _read(path: Path):  # type: ignore[no-untyped-def]
    async def f() -> str:
        return path.read_text().strip() if path.exists() else ""
    return f


def _count(pgid: int):  # type: ignore[no-untyped-def]
    async def f() -> bool:
        return len(group_members(pgid)) >= 3
    return f


async def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    runner = CommandRunner(tmp_path / "s", kill_grace_s=0.5)
    pgid_file = tmp_path / "pgid"
    t0 = time.monotonic()
    task = asyncio.ensure_future(runner.run(request({"command": FAMILY.format(pgid_file=pgid_file),
                                                     "timeout_seconds": 1.5})))
    pgid = await family_started(pgid_file)
    res = await task
    assert not res.ok and "timed out after 1.5s" in res.reason and res.sandbox["timed_out"]
    assert time.monotonic() - t0 < 10
    assert_group_gone(pgid)


async def test_cancel_kills_the_group_of_every_run_of_the_job(tmp_path: Path) -> None:
    runner = CommandRunner(tmp_path / "s", kill_grace_s=0.5)
    tasks, pgids = [], []
    for i in range(4):
        f = tmp_path / f"pgid{i}"
        tasks.append(asyncio.ensure_future(runner.run(request({"command": FAMILY.format(pgid_file=f)},
                                                              agent=f"w{i}"))))
        pgids.append(f)
    groups = [await family_started(f) for f in pgids]
    other = asyncio.ensure_future(runner.run(request({"command": "sleep 0.3; echo fine"}, job="other")))
    assert await runner.cancel("job1") == 4
    results = await asyncio.gather(*tasks)
    assert all(r.cancelled and not r.ok for r in results)
    for g in groups:
        assert_group_gone(g)
    assert (await other).ok


async def test_cancelling_the_awaiting_task_kills_the_group(tmp_path: Path) -> None:
    runner = CommandRunner(tmp_path / "s", kill_grace_s=0.5)
    f = tmp_path / "pgid"
    task = asyncio.ensure_future(runner.run(request({"command": FAMILY.format(pgid_file=f)})))
    pgid = await family_started(f)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_group_gone(pgid)


async def test_background_leftovers_of_a_normal_exit_are_killed(tmp_path: Path) -> None:
    runner = CommandRunner(tmp_path / "s")
    f = tmp_path / "pgid"
    res = await runner.run(request({"command": f"echo $$ > {f}; sleep 100 > /dev/null 2>&1 & echo done"}))
    assert res.ok and res.sandbox["stdout"] == "done\n"
    assert_group_gone(int(f.read_text()))


async def test_200_mb_of_output_is_capped_and_memory_stays_bounded(tmp_path: Path) -> None:
    runner = CommandRunner(tmp_path / "s")  # the documented defaults: 64 MiB files, 1 MiB kept
    me = psutil.Process()
    base = me.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        res = await runner.run(request({"command": "head -c 200000000 /dev/zero | tr '\\0' x; echo err >&2"}))
    finally:
        stop.set()
        sampler.join()
    assert res.ok, res.reason
    assert res.sandbox["stdout_bytes"] == 200_000_000 and res.sandbox["stdout_truncated"]
    assert len(res.sandbox["stdout"]) < 1 * MiB + 100
    assert "bytes not kept" in res.sandbox["stdout"]
    out_file = res.attempts[0].stdout_file
    assert out_file is not None and out_file.stat().st_size == 64 * MiB
    growth = (peak[0] - base) / MiB
    assert growth < 50, f"RSS grew {growth:.1f} MiB"


DRIVER = """
import asyncio, sys
from pathlib import Path
from mn_node.runners.command import CommandRunner
from mn_node.runners.base import RunRequest, envelope

async def main():
    tmp = Path(sys.argv[1])
    runner = CommandRunner(tmp / "scratch", state_dir=tmp / "state")
    runner.start()
    print("watchdog", runner.watchdog.pid, flush=True)
    cmd = "echo $$ > " + str(tmp / "pgid") + "; sleep 100 & sleep 100; wait"
    await runner.run(RunRequest("j", "a", {"command": cmd}, envelope("j", "a", "t", {})))

asyncio.run(main())
"""


def test_daemon_sigkill_takes_the_group_with_it(tmp_path: Path) -> None:
    """The runner's process is SIGKILLed: PDEATHSIG ends the shell, the reaper watchdog the
    background sleep (a grandchild PDEATHSIG does not cover)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    daemon = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout is not None
        watchdog_pid = int(daemon.stdout.readline().split()[1])
        pgid = pgid_of(tmp_path / "pgid")
        wait_until(lambda: len(group_members(pgid)) >= 3, 10, "the shell and both sleeps running")
        assert (tmp_path / "state" / f"{pgid}.json").exists()
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(5)
        assert_group_gone(pgid)
        wait_until(lambda: not psutil.pid_exists(watchdog_pid) or
                   psutil.Process(watchdog_pid).status() == psutil.STATUS_ZOMBIE, 5, "the watchdog exited")
        assert not (tmp_path / "state" / f"{pgid}.json").exists()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if daemon.stdout is not None:
            daemon.stdout.close()


DIRECT = """
import asyncio, sys
from pathlib import Path
import mn_node.runners.process as process
from mn_node.runners.command import CommandRunner
from mn_node.runners.base import RunRequest, envelope

if sys.argv[2] == "preexec":
    process.setpriv = lambda: None  # take the prctl-in-preexec_fn path
tmp = Path(sys.argv[1])
cmd = "echo $$ > " + str(tmp / "pgid") + "; exec sleep 100"
runner = CommandRunner(tmp / "scratch")  # no state_dir: no watchdog, PDEATHSIG alone
asyncio.run(runner.run(RunRequest("j", "a", {"command": cmd}, envelope("j", "a", "t", {}))))
"""


@pytest.mark.parametrize("path", ["setpriv", "preexec"])
def test_pdeathsig_alone_kills_the_direct_child(tmp_path: Path, path: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    daemon = subprocess.Popen([sys.executable, "-c", DIRECT, str(tmp_path), path], env=env)
    try:
        pgid = pgid_of(tmp_path / "pgid")
        wait_until(lambda: any("sleep" in " ".join(p.cmdline()) for p in group_members(pgid)), 10,
                   "the command exec'd into sleep")
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(5)
        assert_group_gone(pgid)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def test_a_restarted_daemon_kills_groups_a_previous_one_recorded(tmp_path: Path) -> None:
    from mn_node.runners.process import GroupRegistry

    left = subprocess.Popen(["sh", "-c", "sleep 100 & sleep 100"], start_new_session=True)
    try:
        registry = GroupRegistry(tmp_path / "state")
        registry.record(left.pid, "job/agent")
        wait_until(lambda: len(group_members(left.pid)) >= 3, 10, "the leftover group running")
        (tmp_path / "state" / "999999.json").write_text('{"pgid": 999999, "started": 0, "uid": 0}')
        (tmp_path / "state" / "junk.json").write_text("not json")
        runner = CommandRunner(tmp_path / "scratch", state_dir=tmp_path / "state")
        try:
            assert runner.start() == 1
            assert_group_gone(left.pid)
            assert list((tmp_path / "state").glob("*.json")) == []
        finally:
            runner.close()
    finally:
        if left.poll() is None:
            os.killpg(left.pid, signal.SIGKILL)
        left.wait()
