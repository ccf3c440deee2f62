"""Debian "boxes" on this machine: network namespace + private root + PID-1 systemd each.

A *fleet* is everything one test run creates, all named with one prefix (``MN_BOXES_PREFIX``,
default ``mnbx``; tests pick a random one):

* ``<prefix>-hub``: a namespace holding the bridge ``br0`` (no address);
* ``<prefix>-ctl``: the controller namespace, ``<subnet>.2``: Ansible, Molecule and test
  drivers run there (``ctl`` / :meth:`Fleet.ctl_argv`);
* ``<prefix>-bN``: box N's network namespace, address ``<subnet>.(10+N)`` on ``eth0``; the
  hub side of its cable is ``<prefix>vN`` (so ``cut``/``heal`` = that link down/up).

Each box boots the host's ``/lib/systemd/systemd`` as PID 1 of new pid/mount/uts/ipc/cgroup
namespaces, over an overlay of the host ``/`` with a tmpfs upper layer and private ``/run``,
``/tmp``, ``/var/tmp``, ``/dev`` (see ``_boxinit.py``): the box can install, write ``/etc`` and
clean ``/tmp`` without touching the host. Fixed MACs per box (stale ARP otherwise), a
``224.0.0.0/4`` route (mDNS), ``nsenter`` rather than ``ip netns exec`` (which hides cgroups).

State lives in ``$XDG_STATE_HOME/mirror-neuron-boxes/<prefix>/`` (never under ``/tmp``).
This is a fence against accidents, not a security boundary.

CLI (``python -m tests.cluster.boxes``; every command honours ``--prefix``)::

    start COUNT            boot boxes 1..COUNT (net-up first)     boot N      boot box N only
    stop N | stop-all      power off (SIGKILL fallback) and remove; stop-all also removes the net
                           (``stop-all --power-cut``: SIGKILL every box's PID 1, no poweroff)
    exec N CMD...          run CMD inside box N                    ctl CMD...  run CMD in <prefix>-ctl
    cut N | heal N         pull / re-plug box N's cable            crash N     kill -9 box N's PID 1
    status | inventory | net-up | net-down
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BOXINIT = HERE / "_boxinit.py"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Host units a box must not run: they touch host state, want the internet, or are slow.
# redis-server is masked like on the host (policy-rc.d world): the redis role must unmask it.
DEFAULT_MASK = (
    "postgresql.service", "postgresql@.service", "redis-server.service", "redis.service",
    "cron.service", "anacron.service", "anacron.timer", "systemd-timesyncd.service",
    "e2scrub_reap.service", "e2scrub_all.timer", "fstrim.timer", "apt-daily.timer",
    "apt-daily-upgrade.timer", "man-db.timer", "dpkg-db-backup.timer", "logrotate.timer",
    "systemd-pstore.service", "getty@tty1.service", "console-getty.service",
    "networking.service", "ssh.socket", "docker.service", "docker.socket",
    "containerd.service", "podman.service", "podman.socket", "podman-auto-update.timer",
    "podman-auto-update.service", "podman-restart.service", "apparmor.service",
    "systemd-networkd-wait-online.service", "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount", "sys-kernel-config.mount", "dev-hugepages.mount",
    "sys-fs-fuse-connections.mount",
)


class BoxError(RuntimeError):
    pass


def run(argv: Sequence[str], check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, text=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


def _deadline_poll(fn, timeout: float, what: str, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll ``fn`` until truthy (the harness cannot import tests.support when run as a script
    from Molecule, so it carries its own copy of the wait-with-deadline rule)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # the condition may raise while the box settles
            last = e
        if time.monotonic() >= deadline:
            raise BoxError(f"timed out after {timeout:g}s waiting for {what}; last seen {last!r}")
        time.sleep(interval)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _state_root() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "mirror-neuron-boxes"


@dataclass
class Fleet:
    prefix: str = field(default_factory=lambda: os.environ.get("MN_BOXES_PREFIX", "mnbx"))
    subnet: str = field(default_factory=lambda: os.environ.get("MN_BOXES_SUBNET", "10.77.0"))
    ssh_pubkey: str | None = None
    mask: tuple[str, ...] = DEFAULT_MASK
    max_boxes: int = 9
    upper_size: str = "2g"
    _children: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not (2 <= len(self.prefix) <= 8) or not self.prefix.isalnum():
            raise BoxError(f"prefix {self.prefix!r}: use 2-8 letters/digits (interface names are short)")
        self.dir = _state_root() / self.prefix

    # ---- names -----------------------------------------------------------------------
    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    @property
    def ctl(self) -> str:
        return f"{self.prefix}-ctl"

    @property
    def ctl_address(self) -> str:
        return f"{self.subnet}.2"

    def netns(self, n: int) -> str:
        return f"{self.prefix}-b{n}"

    def address(self, n: int) -> str:
        return f"{self.subnet}.{10 + n}"

    def hostname(self, n: int) -> str:
        return f"box-{n}"

    def boxdir(self, n: int) -> Path:
        return self.dir / str(n)

    def _mac(self, n: int) -> str:
        # fixed per box number: a re-created box keeps its MAC, peers' ARP caches stay valid
        return f"02:4d:4e:00:00:{n:02x}"

    # ---- network ----------------------------------------------------------------------
    def _netns_exists(self, name: str) -> bool:
        return Path("/run/netns", name).exists()

    def net_up(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self._netns_exists(self.hub):
            run(["ip", "netns", "add", self.hub])
            run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
            run(["ip", "-n", self.hub, "link", "set", "lo", "up"])
            run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        if not self._netns_exists(self.ctl):
            run(["ip", "netns", "add", self.ctl])
            run(["ip", "-n", self.hub, "link", "add", f"{self.prefix}vc", "type", "veth",
                 "peer", "name", "eth0", "netns", self.ctl, "address", "02:4d:4e:00:00:fe"])
            run(["ip", "-n", self.hub, "link", "set", f"{self.prefix}vc", "master", "br0", "up"])
            run(["ip", "-n", self.ctl, "link", "set", "lo", "up"])
            run(["ip", "-n", self.ctl, "addr", "add", f"{self.ctl_address}/24", "dev", "eth0"])
            run(["ip", "-n", self.ctl, "link", "set", "eth0", "up"])

    def net_down(self) -> None:
        for ns in (self.ctl, self.hub):
            if self._netns_exists(ns):
                run(["ip", "netns", "del", ns], check=False)

    def ctl_argv(self, argv: Sequence[str]) -> list[str]:
        """Run ``argv`` on the host but in the controller's network namespace."""
        return ["nsenter", f"--net=/run/netns/{self.ctl}", "--", *argv]

    # ---- cgroups ----------------------------------------------------------------------
    @staticmethod
    def _my_cgroups() -> list[Path]:
        """This process's cgroup directory in every mounted hierarchy."""
        own: dict[str, str] = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hid, ctrls, path = line.split(":", 2)
            if hid == "0":
                own["unified"] = path
            for c in ctrls.split(","):
                if c:
                    own[c.removeprefix("name=")] = path
        out = []
        for h in sorted(Path("/sys/fs/cgroup").iterdir()):
            if h.is_symlink() or not os.path.ismount(h):
                continue
            path = own.get(h.name)
            if path is None and "," in h.name:
                path = own.get(h.name.split(",")[0])
            if path is None and h == Path("/sys/fs/cgroup") and "unified" in own:
                path = own["unified"]
            if path is not None:
                out.append(h / path.lstrip("/"))
        if not out and os.path.ismount("/sys/fs/cgroup"):  # pure cgroup v2
            out.append(Path("/sys/fs/cgroup") / own.get("unified", "/").lstrip("/"))
        return out

    def _make_cgroups(self, n: int) -> list[Path]:
        made = []
        for parent in self._my_cgroups():
            c = parent / f"{self.prefix}-b{n}"
            c.mkdir(exist_ok=True)
            if (c / "cpuset.cpus").exists() and not (c / "cpuset.cpus").read_text().strip():
                (c / "cpuset.cpus").write_text((parent / "cpuset.cpus").read_text())
                (c / "cpuset.mems").write_text((parent / "cpuset.mems").read_text())
            made.append(c)
        return made

    @staticmethod
    def _remove_cgroup(c: Path) -> None:
        if not c.is_dir():
            return
        for sub in sorted((p for p in c.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            c.rmdir()

    # ---- boxes ------------------------------------------------------------------------
    def _launcher_pid(self, n: int) -> int | None:
        try:
            pid = int((self.boxdir(n) / "launcher.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def pid1(self, n: int) -> int | None:
        """Host PID of box N's systemd (PID 1 inside the box), or None."""
        up = self._launcher_pid(n)
        if up is None:
            return None
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{up}/task").iterdir():
                kids = (task / "children").read_text().split()
                if kids:
                    return int(kids[0])
        return None

    def running(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.dir.iterdir()
                      if p.name.isdigit() and self._launcher_pid(int(p.name)) is not None)

    def box_argv(self, n: int, argv: Sequence[str]) -> list[str]:
        pid = self.pid1(n)
        if pid is None:
            raise BoxError(f"box {n} ({self.prefix}) is not running")
        return ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-C", "--",
                "env", "-i", "TERM=dumb", "HOME=/root", f"PATH={PATH}", "LANG=C.UTF-8", *argv]

    def exec(self, n: int, argv: Sequence[str], check: bool = False,
             timeout: float | None = 60) -> subprocess.CompletedProcess[str]:
        return run(self.box_argv(n, argv), check=check, timeout=timeout)

    def sh(self, n: int, script: str, check: bool = False,
           timeout: float | None = 60) -> subprocess.CompletedProcess[str]:
        return self.exec(n, ["sh", "-c", script], check=check, timeout=timeout)

    def hosts(self) -> dict[str, str]:
        return {self.hostname(i): self.address(i) for i in range(1, self.max_boxes + 1)}

    def boot(self, n: int, timeout: float = 60) -> float:
        """Boot box N and wait until systemd says running (or degraded). Returns seconds."""
        if not 1 <= n <= self.max_boxes:
            raise BoxError(f"box number {n}: use 1-{self.max_boxes}")
        if self.pid1(n) is not None:
            return 0.0
        t0 = time.monotonic()
        self.net_up()
        b = self.boxdir(n)
        b.mkdir(parents=True, exist_ok=True)
        ns, veth = self.netns(n), f"{self.prefix}v{n}"
        if self._netns_exists(ns):
            run(["ip", "netns", "del", ns], check=False)
        run(["ip", "-n", self.hub, "link", "del", veth], check=False)
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", self.hub, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
             "netns", ns, "address", self._mac(n)])
        run(["ip", "-n", self.hub, "link", "set", veth, "master", "br0", "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", ns, "addr", "add", f"{self.address(n)}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])
        conf = {"hostname": self.hostname(n), "hosts": self.hosts(), "mask": list(self.mask),
                "ssh_pubkey": Path(self.ssh_pubkey).read_text() if self.ssh_pubkey else "",
                "upper_size": self.upper_size}
        (b / "box.json").write_text(json.dumps(conf))
        cgroups = self._make_cgroups(n)
        (b / "cgroups").write_text("\n".join(map(str, cgroups)) + "\n")

        def enter_cgroups() -> None:  # runs in the child before exec
            for c in cgroups:
                with open(c / "cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))

        argv = ["nsenter", f"--net=/run/netns/{ns}", "--",
                "unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--cgroup",
                "--propagation", "private", "--",
                sys.executable, "-I", str(BOXINIT), str(n), str(b), f"{self.prefix}b{n}"]
        with open(b / "launch.log", "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=enter_cgroups)
        self._children[n] = proc
        (b / "launcher.pid").write_text(str(proc.pid))

        def booted() -> str | None:
            if proc.poll() is not None:
                raise BoxError(f"box {n} died while booting (exit {proc.returncode}): "
                               + (b / "launch.log").read_text()[-2000:]
                               + self._console_tail(n))
            if self.pid1(n) is None:
                return None
            st = self.exec(n, ["systemctl", "is-system-running"], timeout=10).stdout.strip()
            return st if st in ("running", "degraded") else None

        try:
            _deadline_poll(booted, timeout, f"box {n} to boot")
        except BoxError as e:
            raise BoxError(f"{e}\nconsole:{self._console_tail(n)}") from None
        return time.monotonic() - t0

    def _console_tail(self, n: int, lines: int = 20) -> str:
        try:
            return "\n" + "\n".join((self.boxdir(n) / "console.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, count: int, timeout: float = 60) -> dict[int, float]:
        return {n: self.boot(n, timeout) for n in range(1, count + 1)}

    def cut(self, n: int) -> None:
        run(["ip", "-n", self.hub, "link", "set", f"{self.prefix}v{n}", "down"])

    def heal(self, n: int) -> None:
        run(["ip", "-n", self.hub, "link", "set", f"{self.prefix}v{n}", "up"])

    def crash(self, n: int) -> None:
        """Power cut: SIGKILL the box's PID 1 (the kernel then kills everything in the box)."""
        pid = self.pid1(n)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        up = self._launcher_pid(n)
        if up is not None and not self._wait_gone(n, up, 10):
            with contextlib.suppress(ProcessLookupError):
                os.kill(up, signal.SIGKILL)  # the launcher this fleet started (half-booted box)
            self._wait_gone(n, up, 5)
        self._teardown(n)

    def _wait_gone(self, n: int, pid: int, timeout: float) -> bool:
        proc = self._children.get(n)

        def gone() -> bool:
            if proc is not None:
                return proc.poll() is not None
            return not _alive(pid)

        try:
            _deadline_poll(gone, timeout, f"box {n} launcher {pid} to exit")
            return True
        except BoxError:
            return False

    def stop(self, n: int, timeout: float = 30) -> float:
        t0 = time.monotonic()
        up = self._launcher_pid(n)
        if up is not None:
            pid = self.pid1(n)
            if pid is not None:
                r = self.exec(n, ["systemctl", "poweroff", "--no-block"], timeout=10)
                if r.returncode != 0:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGRTMIN + 4)  # systemd: poweroff
            if not self._wait_gone(n, up, timeout):
                pid = self.pid1(n)
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                if not self._wait_gone(n, up, 5):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(up, signal.SIGKILL)
                    self._wait_gone(n, up, 5)
        self._teardown(n)
        return time.monotonic() - t0

    def _teardown(self, n: int) -> None:
        run(["ip", "-n", self.hub, "link", "del", f"{self.prefix}v{n}"], check=False)
        if self._netns_exists(self.netns(n)):
            run(["ip", "netns", "del", self.netns(n)], check=False)
        b = self.boxdir(n)
        with contextlib.suppress(FileNotFoundError):
            for line in (b / "cgroups").read_text().split():
                self._remove_cgroup(Path(line))
        for f in ("launcher.pid", "cgroups"):
            with contextlib.suppress(FileNotFoundError):
                (b / f).unlink()
        self._children.pop(n, None)

    def stop_all(self, power_cut: bool = False) -> None:
        """Stop every box of this prefix (running or half-made), then remove the network.
        ``power_cut``: SIGKILL each box's PID 1 instead of a clean poweroff (tests' teardown:
        a box keeps nothing, and a poweroff under load took ~15 s per box)."""
        if self.dir.is_dir():
            for p in sorted(self.dir.iterdir()):
                if p.name.isdigit() and ((p / "launcher.pid").exists() or (p / "cgroups").exists()):
                    if power_cut:
                        self.crash(int(p.name))
                    else:
                        self.stop(int(p.name))
        for ns in Path("/run/netns").glob(f"{self.prefix}-b*") if Path("/run/netns").is_dir() else ():
            run(["ip", "netns", "del", ns.name], check=False)
        self.net_down()
        self._forget()

    def _forget(self) -> None:
        """Remove the fleet's state dir. ``root``/``rw`` were mount points only inside the boxes'
        mount namespaces: here they are empty, and rmdir (never rmtree) proves it."""
        if not self.dir.is_dir():
            return
        for b in self.dir.iterdir():
            if b.is_dir() and b.name.isdigit():
                for f in b.iterdir():
                    if f.is_dir() and not f.is_symlink():
                        with contextlib.suppress(OSError):
                            f.rmdir()
                    else:
                        f.unlink()
                with contextlib.suppress(OSError):
                    b.rmdir()
            elif b.is_file():
                b.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()

    def inventory(self, group: str = "mirror_neuron", user: str = "root") -> str:
        lines = [f"[{group}]"]
        lines += [f"{self.hostname(n)} ansible_host={self.address(n)} ansible_user={user}" for n in self.running()]
        return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.cluster.boxes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefix", default=os.environ.get("MN_BOXES_PREFIX", "mnbx"))
    p.add_argument("--ssh-pubkey", default=os.environ.get("MN_BOXES_SSH_PUBKEY"))
    p.add_argument("cmd")
    p.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    fleet = Fleet(prefix=a.prefix, ssh_pubkey=a.ssh_pubkey)
    cmd, args = a.cmd, a.args
    try:
        if cmd == "start":
            for n, secs in fleet.start(int(args[0])).items():
                print(f"box {n}: {fleet.address(n)} pid {fleet.pid1(n)} booted in {secs:.2f}s")
        elif cmd == "boot":
            for n in map(int, args):
                secs = fleet.boot(n)
                print(f"box {n}: {fleet.address(n)} pid {fleet.pid1(n)} booted in {secs:.2f}s")
        elif cmd == "stop":
            for n in map(int, args):
                print(f"box {n}: stopped in {fleet.stop(n):.2f}s")
        elif cmd == "stop-all":
            fleet.stop_all(power_cut="--power-cut" in args)
        elif cmd == "exec":
            return subprocess.call(fleet.box_argv(int(args[0]), args[1:]))
        elif cmd == "ctl":
            return subprocess.call(fleet.ctl_argv(args))
        elif cmd in ("cut", "heal", "crash"):
            for n in map(int, args):
                getattr(fleet, cmd)(n)
        elif cmd == "net-up":
            fleet.net_up()
        elif cmd == "net-down":
            fleet.net_down()
        elif cmd == "status":
            for n in fleet.running():
                st = fleet.exec(n, ["systemctl", "is-system-running"]).stdout.strip()
                print(f"box {n}: {fleet.address(n)} pid {fleet.pid1(n)} {st}")
        elif cmd == "inventory":
            sys.stdout.write(fleet.inventory(*(args[:1] or ["mirror_neuron"])))
        else:
            p.error(f"unknown command {cmd!r}")
    except (BoxError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or ""
        print(f"boxes: {e} {shlex.quote(detail.strip()) if detail else ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
