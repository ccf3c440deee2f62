"""The reaper: one small process per node that kills the command groups a dead daemon left.

``PR_SET_PDEATHSIG`` kills only a command's direct child when the daemon dies; what that child
forked would live on. So the command runner starts this watchdog once
(:class:`Watchdog`), holding the write end of a pipe to its stdin. When the daemon ends, by
any means including SIGKILL, the kernel closes the pipe; the watchdog sees end-of-file and
kills every group still recorded in the state directory (:func:`reap_recorded`), then exits.
A daemon that starts again also calls :func:`reap_recorded` itself, for the case where the
watchdog was killed too (e.g. the whole machine's processes were).

Run as ``python3 -m mn_node.runners.reaper STATE_DIR``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import IO

from mn_node.runners.process import reap_recorded


class Watchdog:
    """The reaper process tied to this daemon by a pipe."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._pipe: IO[bytes] | None = None

    def start(self) -> None:
        if self._proc is not None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "mn_node.runners.reaper", str(self.state_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        self._pipe = self._proc.stdin

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def close(self, timeout: float = 5.0) -> None:
        """End the watchdog (it reaps whatever is still recorded first)."""
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.close()
            self._pipe = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python3 -m mn_node.runners.reaper STATE_DIR", file=sys.stderr)
        return 64
    state_dir = Path(args[0])
    while os.read(0, 4096):  # until the daemon's end of the pipe closes
        pass
    reap_recorded(state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
