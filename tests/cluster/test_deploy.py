"""site.yml on three fresh namespace boxes, end to end (issue D's "must show").

Runs in file order on one fleet: deploy -> idempotent re-run -> leader handover on stop ->
bad variable caught in preflight -> bad env file fails once, no restart loop -> rolling
restart under a running prime_sweep_scale job that still ends with the exact count.
Needs root, ansible-core, openssh-server, redis-server (see tests/cluster/run-molecule.sh).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.boxes import Fleet
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.boxes]

ROOT = Path(__file__).resolve().parents[2]
NODES = 3
TIMINGS: dict[str, float] = {}

if os.geteuid() != 0 or not shutil.which("ansible-playbook") or not Path("/usr/sbin/sshd").exists():
    pytest.skip("needs root, ansible-playbook and openssh-server", allow_module_level=True)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    r = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", "playbooks/wheelhouse.yml",
                        "-e", f"mirror_neuron_wheelhouse={out}"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    keydir = tmp_path_factory.mktemp("ssh")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keydir / "id")], check=True)
    f = Fleet(prefix="mnt" + secrets.token_hex(2), ssh_pubkey=str(keydir / "id.pub"))
    f.key = keydir / "id"  # type: ignore[attr-defined]
    try:
        f.net_up()
        f.start(NODES)
        yield f
    finally:
        f.stop_all()
        left = [ns for ns in os.listdir("/run/netns") if ns.startswith(f.prefix + "-")] \
            if os.path.isdir("/run/netns") else []
        assert not left, f"namespaces left behind: {left}"


@pytest.fixture(scope="module")
def inventory(fleet: Fleet, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    boxes = [f"box-{n} ansible_host={fleet.address(n)}" for n in range(1, NODES + 1)]
    text = "\n".join([
        "[redis]", boxes[0], "", "[mirror_neuron]", *boxes, "", "[all:vars]",
        "ansible_user=root", "ansible_become=false",
        f"ansible_ssh_private_key_file={fleet.key}",  # type: ignore[attr-defined]
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
        "redis_requirepass=test-redis-password-" + secrets.token_hex(8),
        "redis_apt_update_cache=false", "mirror_neuron_apt_update_cache=false",
        f"mirror_neuron_wheelhouse={wheelhouse}", "",
    ])
    path = tmp_path_factory.mktemp("inv") / "inventory"
    path.write_text(text)
    for n in range(1, NODES + 1):
        wait_until(lambda n=n: fleet.sh(n, "ss -Hltn 'sport = :22' | grep -q .").returncode == 0,
                   30, f"sshd on box {n}")
    return path


def play(fleet: Fleet, inventory: Path, *extra: str,
         timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], float]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_HOST_KEY_CHECKING="False",
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    t0 = time.monotonic()
    r = subprocess.run(fleet.ctl_argv(["ansible-playbook", "-i", str(inventory), "site.yml", *extra]),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - t0


def recap(out: str) -> dict[str, dict[str, int]]:
    rows = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", out, re.M):
        rows[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return rows


def mn_json(fleet: Fleet, n: int, *args: str) -> object:
    r = fleet.exec(n, ["mn", *args, "--json"], timeout=30)
    if r.returncode != 0:
        raise AssertionError(f"box {n}: mn {' '.join(args)} exit {r.returncode}: {r.stdout} {r.stderr}")
    return json.loads(r.stdout)


def unit(fleet: Fleet, n: int) -> dict[str, str]:
    out = fleet.exec(n, ["systemctl", "show", "mirror-neuron", "-p", "ActiveState", "-p", "SubState",
                         "-p", "NRestarts", "-p", "Result", "-p", "ExecMainStatus",
                         "-p", "ExecMainStartTimestampMonotonic", "-p", "ActiveEnterTimestamp",
                         "-p", "ExecMainStartTimestamp"]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def all_up(fleet: Fleet) -> bool:
    for n in range(1, NODES + 1):
        nodes = mn_json(fleet, n, "nodes")
        assert isinstance(nodes, list)
        if sum(x["status"] == "up" for x in nodes) != NODES:
            return False
    return True


def leader(fleet: Fleet, n: int) -> str | None:
    got = mn_json(fleet, n, "leader") if fleet.exec(n, ["mn", "leader", "--json"]).returncode == 0 else {}
    return got.get("node") if isinstance(got, dict) else None


def test_site_deploys_a_cluster(fleet: Fleet, inventory: Path) -> None:
    r, secs = play(fleet, inventory)
    TIMINGS["first run"] = secs
    assert r.returncode == 0, r.stdout[-6000:]
    wait_until(lambda: all_up(fleet), 30, "every box to list 3 nodes up")
    leaders = {leader(fleet, n) for n in range(1, NODES + 1)}
    assert len(leaders) == 1 and None not in leaders, leaders
    print(f"site.yml first run {secs:.1f}s")


def test_second_run_changes_nothing(fleet: Fleet, inventory: Path) -> None:
    r, secs = play(fleet, inventory)
    TIMINGS["second run"] = secs
    assert r.returncode == 0, r.stdout[-6000:]
    rows = recap(r.stdout)
    assert set(rows) == {f"box-{n}" for n in range(1, NODES + 1)}, rows
    assert all(v["changed"] == 0 for v in rows.values()), rows
    print(f"site.yml second run {secs:.1f}s, recap {rows}")


def test_stopping_the_leader_hands_over_at_once(fleet: Fleet) -> None:
    old = leader(fleet, 1)
    assert old
    box = next(n for n in range(1, NODES + 1) if fleet.address(n) in old)
    other = next(n for n in range(1, NODES + 1) if n != box)
    t0 = time.monotonic()
    fleet.exec(box, ["systemctl", "stop", "mirror-neuron"], check=True)
    stopped = time.monotonic()
    new = wait_until(lambda: (lambda x: x if x and x != old else None)(leader(fleet, other)),
                     5, f"a leader other than {old}", interval=0.02)
    handover = time.monotonic() - stopped
    print(f"leader {old} stopped in {stopped - t0:.2f}s; {new} leads {handover * 1000:.0f} ms later")
    assert handover < 1.0, f"handover took {handover:.2f}s"
    fleet.exec(box, ["systemctl", "start", "mirror-neuron"], check=True)
    wait_until(lambda: all_up(fleet), 30, "the stopped node to rejoin")


def test_bad_variable_fails_in_preflight(fleet: Fleet, inventory: Path) -> None:
    r, _ = play(fleet, inventory, "-e", "mirror_neuron_dist_port=99999")
    assert r.returncode != 0
    assert "mirror_neuron_dist_port=99999" in r.stdout and "fix:" in r.stdout, r.stdout[-4000:]
    assert "TASK [mirror_neuron : Assert the ports are valid and distinct]" in r.stdout
    assert all(v["changed"] == 0 for v in recap(r.stdout).values())


def test_bad_env_file_fails_once_without_restart_loop(fleet: Fleet, inventory: Path) -> None:
    n = NODES
    fleet.sh(n, "echo MIRROR_NEURON_DIST_PORT=notaport >> /etc/mirror-neuron/mirror-neuron.env", check=True)
    fleet.exec(n, ["systemctl", "restart", "mirror-neuron"])  # fails: that is the point
    st = wait_until(lambda: (lambda u: u if u.get("ActiveState") == "failed" else None)(unit(fleet, n)),
                    20, "the unit to fail")
    assert st["ExecMainStatus"] == "78" and st["NRestarts"] == "0", st
    # no restart loop: it must stay failed for several RestartSec periods
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        u = unit(fleet, n)
        assert u["ActiveState"] == "failed" and u["NRestarts"] == "0", u
        time.sleep(0.5)
    log = fleet.exec(n, ["journalctl", "-u", "mirror-neuron", "--no-pager", "-o", "cat", "-n", "30"]).stdout
    lines = [ln for ln in log.splitlines() if "notaport" in ln]
    assert len(lines) == 1 and "MIRROR_NEURON_DIST_PORT" in lines[0] and "fix:" in lines[0], log
    print(f"journal: {lines[0]}")
    # the playbook repairs it: the env file is rewritten and the failed unit started again
    r, _ = play(fleet, inventory)
    assert r.returncode == 0, r.stdout[-6000:]
    wait_until(lambda: all_up(fleet), 30, "the repaired node to rejoin")


def reference_prime_count(lo: int, hi: int) -> int:
    """Independent of the daemon: a plain sieve of Eratosthenes."""
    sieve = bytearray([1]) * hi
    sieve[0:2] = b"\x00\x00"
    for p in range(2, int(hi ** 0.5) + 1):
        if sieve[p]:
            sieve[p * p::p] = bytes(len(range(p * p, hi, p)))
    return sum(sieve[lo:hi])


def test_rolling_restart_while_a_job_runs(fleet: Fleet, inventory: Path) -> None:
    workers, start, chunk = 40, 1_000_003, 500_000
    expected = reference_prime_count(start, start + workers * chunk)
    # root's `mn` finds the cookie through MIRROR_NEURON_COOKIE_FILE in the env file (bearer token)
    sub = fleet.exec(1, ["mn", "submit", "prime_sweep_scale", "--workers", str(workers), "--start", str(start),
                         "--chunk-size", str(chunk), "--json"], timeout=30)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    job_id = json.loads(sub.stdout)["job_id"]
    before = {n: unit(fleet, n) for n in range(1, NODES + 1)}
    r, secs = play(fleet, inventory, "-e", "mirror_neuron_log_level=DEBUG")
    assert r.returncode == 0, r.stdout[-6000:]
    after = {n: unit(fleet, n) for n in range(1, NODES + 1)}
    for n in range(1, NODES + 1):
        assert after[n]["ExecMainStartTimestampMonotonic"] != before[n]["ExecMainStartTimestampMonotonic"], n
    # one at a time: box k+1 was started only after box k was active again (READY)
    starts = [int(after[n]["ExecMainStartTimestampMonotonic"]) for n in range(1, NODES + 1)]
    assert starts == sorted(starts), starts
    status = fleet.exec(1, ["mn", "job", job_id, "--no-follow", "--json"], timeout=30)
    print(f"rolling restart {secs:.1f}s; job right after: {status.stdout[:300]}")

    def finished() -> dict[str, object] | None:
        out = fleet.exec(1, ["mn", "job", job_id, "--no-follow", "--json"], timeout=30)
        data = json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else {}
        return data if data.get("status") in ("completed", "failed", "cancelled") else None

    job = wait_until(finished, 300, f"job {job_id} to end", interval=1)
    assert job["status"] == "completed", job
    result = job.get("result") or {}
    assert isinstance(result, dict) and result.get("prime_count") == expected, (result, expected)
    print(f"job {job_id} completed with prime_count {expected} across the rolling restart; timings {TIMINGS}")
