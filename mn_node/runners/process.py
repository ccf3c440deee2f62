"""Owned processes: each command runs as its own process group, tied to the daemon's life.

* **Own group.** The child starts a new session (``start_new_session``), so its process group
  id is its pid and everything it forks stays in that group (unless it calls ``setsid``
  itself: that escapes, and only a cgroup could hold it; documented, not handled).
* **Dies with the daemon.** ``PR_SET_PDEATHSIG`` = SIGKILL is set on the command's process
  (by util-linux ``setpriv --pdeathsig KILL``, which then execs the command in the same process;
  without ``setpriv``, by a ``preexec_fn`` calling ``prctl`` through ctypes, which is slower), so
  the kernel kills the *direct* child when the daemon dies, even by SIGKILL. PDEATHSIG covers
  only that child (and fires when the spawning *thread* exits: spawn from the event loop's
  thread). Grandchildren are covered two ways: on timeout, cancel and after a normal exit the
  whole group is killed (``killpg``); and every group is recorded in a state directory
  (:class:`GroupRegistry`) whose leftovers the reaper watchdog (:mod:`mn_node.runners.reaper`)
  kills when the daemon dies, and :func:`reap_recorded` when the daemon starts again.
* **Ending.** SIGTERM to the group, then SIGKILL after ``kill_grace_s``.
* **Bounded output.** stdout and stderr are read in chunks and written to files capped at
  ``OutputCaps.file_bytes`` (past it, reading goes on and the bytes are dropped, so the child
  never blocks on a full pipe); only ``OutputCaps.keep_bytes`` of each stream (its head and its
  tail) stays in memory for the result. Memory per run is therefore O(keep_bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

log = logging.getLogger("mn_node.runners.process")

MiB = 1024 * 1024
DEFAULT_FILE_BYTES = 64 * MiB
DEFAULT_KEEP_BYTES = 1 * MiB
DEFAULT_KILL_GRACE_S = 2.0
CHUNK = 64 * 1024
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class OutputCaps:
    """``file_bytes``: most bytes of one stream written to its file; ``keep_bytes``: most
    bytes of one stream kept in memory and returned in the result (head + tail)."""

    file_bytes: int = DEFAULT_FILE_BYTES
    keep_bytes: int = DEFAULT_KEEP_BYTES


@dataclass(frozen=True)
class Captured:
    text: str
    total_bytes: int
    truncated: bool  # the returned text is not the whole stream
    file_truncated: bool  # the file stopped at the cap


@dataclass(frozen=True)
class ProcessOutcome:
    exit_code: int | None  # None when it never started; -N when killed by signal N
    stdout: Captured
    stderr: Captured
    duration_s: float
    timed_out: bool = False
    cancelled: bool = False
    pid: int | None = None


class CappedSink:
    """A stream's bytes: to a file up to a cap, head and tail kept in memory."""

    def __init__(self, path: Path, caps: OutputCaps) -> None:
        self.path = path
        self.caps = caps
        self.total = 0
        self.written = 0
        # unbuffered: each chunk read from the pipe is in the file at once (exec.logs follows it)
        self._file: IO[bytes] | None = open(path, "wb", buffering=0)
        half = max(caps.keep_bytes // 2, 1)
        self._head_cap = half
        self._tail_cap = max(caps.keep_bytes - half, 1)
        self._head = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_len = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self._file is not None and self.written < self.caps.file_bytes:
            part = chunk[: self.caps.file_bytes - self.written]
            self._file.write(part)
            self.written += len(part)
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self._tail.append(chunk)
            self._tail_len += len(chunk)
            while self._tail and self._tail_len - len(self._tail[0]) >= self._tail_cap:
                self._tail_len -= len(self._tail.popleft())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def captured(self) -> Captured:
        tail = b"".join(self._tail)
        if self.total <= self.caps.keep_bytes or len(self._head) + len(tail) == self.total:
            data = bytes(self._head) + tail
            truncated = False
        else:
            tail = tail[-self._tail_cap:]
            dropped = self.total - len(self._head) - len(tail)
            data = bytes(self._head) + f"\n[... {dropped} bytes not kept ...]\n".encode() + tail
            truncated = True
        return Captured(data.decode("utf-8", "replace"), self.total, truncated,
                        self.total > self.caps.file_bytes)


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the reaper watchdog still covers daemon death
        return None


# resolved once in the daemon: the child between fork and exec must not dlopen (a lock another
# thread held at fork time would never be released there)
_PRCTL = _load_prctl()


def _pdeathsig(parent: int) -> None:
    """preexec_fn (runs in the child before exec): die by SIGKILL when the daemon dies."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the daemon died before prctl took effect
        os._exit(137)


@functools.cache
def setpriv() -> str | None:
    """util-linux ``setpriv`` when it supports ``--pdeathsig`` (2.33+), else None."""
    found = shutil.which("setpriv")
    if found is None:
        return None
    try:
        ok = subprocess.run([found, "--pdeathsig", "KILL", "--", "true"], capture_output=True,
                            timeout=10, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return found if ok else None


def _resolve(program: str, spec: Spawn) -> str:
    """Where ``program`` is, as exec would find it; raises FileNotFoundError like exec would."""
    if "/" in program:
        path = str(spec.cwd / program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    else:
        found = shutil.which(program, path=spec.env.get("PATH", os.defpath))
        if found is not None:
            return found
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def _owned_argv(spec: Spawn) -> tuple[list[str], Callable[[], None] | None]:
    """How to start the command with PDEATHSIG: through ``setpriv --pdeathsig KILL`` (the fast
    path: it lets Python spawn with vfork), else a ``preexec_fn`` calling prctl (forces a full
    fork and runs Python in the child: about 20 ms a command on a busy daemon)."""
    wrapper = setpriv()
    if wrapper is not None:
        return [wrapper, "--pdeathsig", "KILL", "--", _resolve(spec.argv[0], spec), *spec.argv[1:]], None
    parent = os.getpid()

    def preexec() -> None:
        _pdeathsig(parent)

    return list(spec.argv), preexec


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("not allowed to signal process group %d", pgid)
        return False
    return True


async def kill_group(pgid: int, grace_s: float) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after ``grace_s``."""
    if not signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and group_alive(pgid):
        await asyncio.sleep(0.02)
    signal_group(pgid, signal.SIGKILL)


class GroupRegistry:
    """Process groups started by this daemon, one file each in ``state_dir``, so a restarted
    daemon can kill what a crashed one left (:func:`reap_recorded`)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def record(self, pgid: int, label: str) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            started = psutil.Process(pgid).create_time()
        except psutil.Error:
            started = time.time()
        tmp = self.state_dir / f".{pgid}.tmp"
        tmp.write_text(json.dumps({"pgid": pgid, "started": started, "uid": os.getuid(), "label": label}))
        os.replace(tmp, self.state_dir / f"{pgid}.json")

    def forget(self, pgid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / f"{pgid}.json").unlink()


def _groups(uid: int) -> dict[int, list[psutil.Process]]:
    """Live processes of ``uid`` by process group (one pass over the process table)."""
    groups: dict[int, list[psutil.Process]] = {}
    for proc in psutil.process_iter(["pid", "create_time", "uids"]):
        try:
            if proc.info["uids"].real == uid:
                groups.setdefault(os.getpgid(proc.pid), []).append(proc)
        except (ProcessLookupError, psutil.Error, AttributeError):
            continue
    return groups


def reap_recorded(state_dir: Path) -> int:
    """Kill the groups a previous daemon recorded and did not forget; returns how many groups
    still had processes. Only processes of the recorded user born after the recorded leader
    are touched, so a recycled group id of someone else is left alone. Call once at start-up,
    before any command runs (the reaper watchdog calls it when the daemon dies)."""
    if not state_dir.is_dir():
        return 0
    groups = _groups(os.getuid())
    reaped = 0
    for entry in sorted(state_dir.glob("*.json")):
        try:
            rec = json.loads(entry.read_text())
            pgid, started, uid = int(rec["pgid"]), float(rec["started"]), int(rec["uid"])
        except (OSError, ValueError, KeyError, TypeError):
            entry.unlink(missing_ok=True)
            continue
        members = [p for p in groups.get(pgid, []) if uid == os.getuid() and p.info["create_time"] + 1.0 >= started]
        if members:
            reaped += 1
            log.warning("killing %d leftover process(es) of group %d (%s) from a previous run",
                        len(members), pgid, rec.get("label", "?"))
            for proc in members:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        entry.unlink(missing_ok=True)
    return reaped


async def _pump(stream: asyncio.StreamReader | None, sink: CappedSink) -> None:
    if stream is None:
        return
    while True:
        chunk = await stream.read(CHUNK)
        if not chunk:
            return
        sink.feed(chunk)


@dataclass(frozen=True)
class Spawn:
    """How to start one owned process."""

    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str]
    stdout_file: Path
    stderr_file: Path
    timeout_s: float
    caps: OutputCaps = OutputCaps()
    kill_grace_s: float = DEFAULT_KILL_GRACE_S
    label: str = ""


async def run_owned(spec: Spawn, cancel: asyncio.Event | None = None,
                    registry: GroupRegistry | None = None) -> ProcessOutcome:
    """Run ``spec.argv`` to its end, its timeout, or ``cancel``; the group is gone on return.

    Raises ``OSError`` when the program cannot be started (not found, not executable).
    If the awaiting task is cancelled, the group is killed before the cancellation propagates.
    """
    out = CappedSink(spec.stdout_file, spec.caps)
    err = CappedSink(spec.stderr_file, spec.caps)
    t0 = time.monotonic()
    try:
        argv, preexec = _owned_argv(spec)
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=str(spec.cwd), env=dict(spec.env), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, preexec_fn=preexec)
    except BaseException:
        out.close()
        err.close()
        raise
    pgid = proc.pid
    pumps = [asyncio.ensure_future(_pump(proc.stdout, out)), asyncio.ensure_future(_pump(proc.stderr, err))]
    timed_out = cancelled = False
    try:
        if registry is not None:
            registry.record(pgid, spec.label)
        timed_out, cancelled = await _wait(proc, spec.timeout_s, cancel)
        if timed_out or cancelled:
            await kill_group(pgid, spec.kill_grace_s)
        signal_group(pgid, signal.SIGKILL)  # leftovers of a normal exit (`cmd &`) never outlive it
        code = await proc.wait()
        await asyncio.wait(pumps, timeout=spec.kill_grace_s + 1.0)
    finally:
        for pump in pumps:
            pump.cancel()
        if proc.returncode is None or group_alive(pgid):
            signal_group(pgid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        out.close()
        err.close()
        if registry is not None:
            registry.forget(pgid)
    return ProcessOutcome(code, out.captured(), err.captured(), time.monotonic() - t0,
                          timed_out, cancelled, pgid)


async def _wait(proc: asyncio.subprocess.Process, timeout_s: float,
                cancel: asyncio.Event | None) -> tuple[bool, bool]:
    """Wait for the process, its timeout or the cancel event: (timed_out, cancelled)."""
    waiter = asyncio.ensure_future(proc.wait())
    watchers: set[asyncio.Future[Any]] = {waiter}
    canceller = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
    if canceller is not None:
        watchers.add(canceller)
    try:
        done, _ = await asyncio.wait(watchers, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in watchers:
            if not w.done():
                w.cancel()
    if waiter in done:
        return False, False
    if canceller is not None and canceller in done:
        return False, True
    return True, False
