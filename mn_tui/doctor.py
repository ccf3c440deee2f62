"""Run ``mn doctor --json`` (E's checks) as a subprocess and parse its report."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
import time

from mn_tui.model import DoctorCheck, DoctorReport


def doctor_installed() -> bool:
    try:
        return importlib.util.find_spec("mn_node.doctor") is not None
    except (ImportError, ValueError):
        return False


def parse_report(stdout: bytes, stderr: bytes, code: int | None, now: float) -> DoctorReport:
    try:
        data = json.loads(stdout)
        checks = [DoctorCheck.from_api(c) for c in data["checks"]]
    except (ValueError, KeyError, TypeError):
        tail = (stderr or stdout).decode(errors="replace").strip().splitlines()[-3:]
        return DoctorReport(now, True, [], f"mn doctor gave no JSON report (exit {code}): {' / '.join(tail)}",
                            code)
    return DoctorReport(now, True, checks, "", code)


async def run_doctor(api: str, timeout: float = 60.0) -> DoctorReport:
    """Non-zero exit is normal (a failed check); only a missing or unparseable report is an error."""
    if not doctor_installed():
        return DoctorReport(time.time(), False, [],
                            "mn doctor is not installed on this box (no mn_node.doctor module)")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mn_node.cli", "doctor", "--json", "--api", api,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return DoctorReport(time.time(), True, [], f"mn doctor did not finish within {timeout:g}s")
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return parse_report(out, err, proc.returncode, time.time())
