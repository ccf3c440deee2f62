#!/usr/bin/env python3
"""PID 1 of a fresh box, before systemd: build a private root, then exec systemd in it.

Run by :mod:`tests.cluster.boxes` as ``_boxinit.py N BOXDIR NAME`` inside new pid, mount, uts,
ipc and cgroup namespaces (already joined to the box's network namespace). Standalone on
purpose: it imports nothing from the project, because it runs before any of it is usable.

Safety (TESTING.md traps): the root is an overlay whose lower layer is the host ``/`` and
whose upper layer is a tmpfs, so nothing the box's systemd does (tmpfiles cleaning ``/tmp``,
the journal, ``/etc`` edits, apt) reaches the host. ``/run``, ``/tmp``, ``/var/tmp`` and
``/dev`` are fresh tmpfs mounts on top of that. Config arrives in ``BOXDIR/box.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


def mount(fstype: str, src: str, target: Path | str, opts: str = "") -> None:
    args = ["mount", "-t", fstype]
    if opts:
        args += ["-o", opts]
    sh(*args, src, str(target))


def bind(src: str | Path, target: Path, ro: bool = False) -> None:
    sh("mount", "--bind", str(src), str(target))
    if ro:
        sh("mount", "-o", "remount,bind,ro", str(target))


def ismount(p: str) -> bool:
    return os.path.ismount(p)


def main() -> None:
    boxdir, name = Path(sys.argv[2]), sys.argv[3]
    conf = json.loads((boxdir / "box.json").read_text())
    root = boxdir / "root"
    upper = boxdir / "rw"
    sh("mount", "--make-rprivate", "/")

    # root: overlay(lower = host /, upper = tmpfs)
    root.mkdir(parents=True, exist_ok=True)
    upper.mkdir(parents=True, exist_ok=True)
    mount("tmpfs", f"{name}-rw", upper, f"mode=755,size={conf['upper_size']}")
    (upper / "upper").mkdir()
    (upper / "work").mkdir()
    mount("overlay", f"{name}-root", root,
          f"lowerdir=/,upperdir={upper}/upper,workdir={upper}/work")

    # /proc, with /proc/sys read-only except this netns's /proc/sys/net
    mount("proc", "proc", root / "proc", "nosuid,nodev,noexec")
    bind(root / "proc/sys", root / "proc/sys")
    bind(root / "proc/sys/net", root / "proc/sys/net")
    sh("mount", "-o", "remount,bind,ro", str(root / "proc/sys"))
    if (root / "proc/sysrq-trigger").exists():
        bind(root / "proc/sysrq-trigger", root / "proc/sysrq-trigger", ro=True)

    # /sys: fresh, read-only (shows only this netns's interfaces); cgroups from our namespace
    mount("sysfs", "sysfs", root / "sys", "ro,nosuid,nodev,noexec")
    cg = root / "sys/fs/cgroup"
    mount("tmpfs", "cgroup-root", cg, "mode=755,nosuid,nodev,noexec")
    for entry in sorted(os.listdir("/sys/fs/cgroup")):
        host = Path("/sys/fs/cgroup") / entry
        if host.is_symlink():
            os.symlink(os.readlink(host), cg / entry)
            continue
        if not ismount(str(host)):
            continue
        (cg / entry).mkdir()
        if entry == "unified":
            mount("cgroup2", "cgroup2", cg / entry, "nosuid,nodev,noexec")
        elif entry == "systemd":
            mount("cgroup", "cgroup", cg / entry, "nosuid,nodev,noexec,none,name=systemd")
        else:
            mount("cgroup", "cgroup", cg / entry, f"nosuid,nodev,noexec,{entry}")
    sh("mount", "-o", "remount,ro", str(cg))

    # /dev: a handful of character devices, no block devices, no kmsg, no ttys for gettys
    dev = root / "dev"
    mount("tmpfs", f"{name}-dev", dev, "mode=755,nosuid,size=1m")
    for d in ("null", "zero", "full", "random", "urandom", "tty"):
        (dev / d).touch()
        bind(f"/dev/{d}", dev / d)
    console = boxdir / "console.log"
    console.write_bytes(b"")
    (dev / "console").touch()
    bind(console, dev / "console")
    for d in ("pts", "shm", "mqueue"):
        (dev / d).mkdir()
    mount("devpts", "devpts", dev / "pts", "newinstance,ptmxmode=0666,mode=620,gid=5")
    os.symlink("pts/ptmx", dev / "ptmx")
    mount("tmpfs", "shm", dev / "shm", "mode=1777,nosuid,nodev")
    mount("mqueue", "mqueue", dev / "mqueue")
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, dev / link)

    # private /run, /tmp, /var/tmp on top of the overlay (belt and braces)
    mount("tmpfs", f"{name}-run", root / "run", "mode=755,nosuid,nodev,size=256m")
    mount("tmpfs", f"{name}-tmp", root / "tmp", "mode=1777,nosuid,nodev,size=1g")
    mount("tmpfs", f"{name}-vartmp", root / "var/tmp", "mode=1777,nosuid,nodev,size=1g")
    # a fresh machine's /root and /usr/local: the host's (pyenv in .bashrc, pip-installed
    # console scripts such as an editable `mn`) would shadow what the roles install
    mount("tmpfs", f"{name}-home", root / "root", "mode=700,nosuid,nodev,size=64m")
    mount("tmpfs", f"{name}-local", root / "usr/local", "mode=755,nosuid,nodev,size=64m")
    for d in ("bin", "etc", "games", "include", "lib", "man", "sbin", "share", "src"):
        (root / "usr/local" / d).mkdir()
    for dot in (".bashrc", ".profile"):
        src = root / "etc/skel" / dot
        if src.is_file():
            (root / "root" / dot).write_bytes(src.read_bytes())
    (root / "run/systemd").mkdir()
    (root / "run/systemd/container").write_text("mnbox\n")

    # identity: every write below lands in the tmpfs upper layer
    hostname = conf["hostname"]
    sh("hostname", hostname)
    (root / "etc/hostname").write_text(hostname + "\n")
    (root / "etc/machine-id").write_text(os.urandom(16).hex() + "\n")
    hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    hosts += [f"{addr} {host}" for host, addr in conf["hosts"].items()]
    (root / "etc/hosts").write_text("\n".join(hosts) + "\n")
    (root / "etc/resolv.conf").write_text("")
    units = root / "etc/systemd/system"
    for unit in conf["mask"]:
        p = units / unit
        if p.is_symlink() or p.exists():
            p.unlink()
        os.symlink("/dev/null", p)
    if conf.get("ssh_pubkey"):
        ssh = root / "root/.ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(ssh, 0o700)
        keys = ssh / "authorized_keys"
        keys.write_text(conf["ssh_pubkey"])
        os.chmod(keys, 0o600)

    # switch root and boot
    os.chdir(root)
    (root / ".boxinit-oldroot").mkdir()
    sh("pivot_root", ".", ".boxinit-oldroot")
    os.chdir("/")
    sh("umount", "-l", "/.boxinit-oldroot")
    os.rmdir("/.boxinit-oldroot")
    env = {"container": "mnbox", "TERM": "linux", "PATH": PATH}
    os.execve("/lib/systemd/systemd",
              ["/lib/systemd/systemd", "--system", "--unit=multi-user.target",
               "--log-target=console", "--show-status=yes"], env)


if __name__ == "__main__":
    main()
