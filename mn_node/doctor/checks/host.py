"""9. systemd unit state, 10. mDNS visibility."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
from typing import Any

from mn_node.doctor.context import Context
from mn_node.doctor.model import Kind, Result, fail, ok, warn
from mn_node.doctor.probes import in_thread
from mn_node.doctor.registry import check

UNIT = "mirror-neuron.service"
SERVICE_TYPE = "_mirror-neuron._tcp.local."


async def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return int(proc.returncode or 0), out.decode(errors="replace")


def _last_error(journal: str) -> str:
    lines = [ln.strip() for ln in journal.splitlines() if ln.strip()]
    for ln in reversed(lines):
        low = ln.lower()
        if any(w in low for w in ("error", "fix:", "failed", "refus", "in use", "exited")):
            return ln[:300]
    return lines[-1][:300] if lines else ""


@check("systemd", 90, "systemd: unit active, last failure reason from the journal, READY sent")
async def systemd(ctx: Context) -> Result:
    name = "systemd"
    if shutil.which("systemctl") is None or not _under_systemd():
        return ok(name, "not under systemd (no systemd running on this box): nothing to check")
    try:
        _rc, out = await _run(["systemctl", "show", UNIT, "--no-pager", "-p",
                               "LoadState,ActiveState,SubState,Result,MainPID,ExecMainStatus,NRestarts,Type,"
                               "StatusText,UnitFileState"], ctx.stage * 2)
    except (OSError, TimeoutError) as e:
        return warn(name, f"systemctl did not answer ({e or 'timed out'})", "systemctl status mirror-neuron")
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    if props.get("LoadState") in ("not-found", "", None):
        return ok(name, f"no {UNIT} installed: this node is not under systemd")
    active, sub, result = props.get("ActiveState", "?"), props.get("SubState", "?"), props.get("Result", "?")
    pid, restarts = props.get("MainPID", "0"), props.get("NRestarts", "0")
    status = props.get("StatusText", "")
    if active == "active":
        ready = "READY sent" if props.get("Type") == "notify" else f"Type={props.get('Type')} (no READY)"
        detail = f"{UNIT} active ({sub}), main pid {pid}, {ready}, {restarts} restart(s)"
        if status:
            detail += f"; status: {status}"
        if int(restarts or 0) > 0:
            return warn(name, detail, f"journalctl -u {UNIT} -n 100 (why it restarted)")
        return ok(name, detail)
    try:
        _rc, journal = await _run(["journalctl", "-u", UNIT, "-n", "30", "-o", "cat", "--no-pager"], ctx.stage * 2)
    except (OSError, TimeoutError):
        journal = ""
    why = _last_error(journal)
    code = props.get("ExecMainStatus", "?")
    if active == "activating":
        return fail(name, f"{UNIT} is starting but has not sent READY yet ({sub}): it waits for its ports or Redis"
                    + (f"; last log: {why}" if why else ""), f"journalctl -u {UNIT} -n 50; mn doctor --check redis",
                    Kind.TIMEOUT)
    hint = {"78": " (EX_CONFIG: bad configuration, not restarted)", "69": " (EX_UNAVAILABLE: a port or the node "
            "name is in use, see ports/node-name)"}.get(code, "")
    detail = f"{UNIT} is {active} ({sub}, result {result}, exit status {code}{hint})"
    if why:
        detail += f"; last log: {why}"
    fix = f"fix what the log says, then systemctl restart {UNIT}; full log: journalctl -u {UNIT} -n 100"
    if active == "inactive" and result == "success":
        return warn(name, detail, f"systemctl enable --now {UNIT}")
    return fail(name, detail, fix, Kind.CONFIG if code == "78" else Kind.UNAVAILABLE)


@check("mdns", 100, "mDNS: peers announced on the local link, other clusters seen", timeout=4.0)
async def mdns(ctx: Context) -> Result:
    name = "mdns"
    cfg = ctx.cfg
    if cfg is None:
        return warn(name, "not checked: needs a valid local config (see config)", "fix the config check first")
    if "mdns" not in cfg.discovery:
        return ok(name, f"mDNS discovery is off (MIRROR_NEURON_DISCOVERY={','.join(sorted(cfg.discovery)) or 'none'})"
                        "; peers come from the static list")
    try:
        from zeroconf import IPVersion, ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf
    except ImportError:
        return warn(name, "python-zeroconf is not installed", "pip install zeroconf")
    host = cfg.bind_host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = ipaddress.ip_address(await in_thread(_gethost, host))
    interfaces: Any = "all" if ip.is_unspecified else [str(ip)]
    try:
        azc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V6Only if ip.version == 6 else
                            IPVersion.V4Only)
    except OSError as e:
        return warn(name, f"cannot open mDNS on {ip}: {e}", "check multicast on that interface (ip link show) or "
                    "set MIRROR_NEURON_DISCOVERY=static")
    found: set[str] = set()

    def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            found.add(name)

    browse_s = min(1.5, ctx.stage * 1.5)
    ours: dict[str, str] = {}
    others: dict[str, str] = {}
    try:
        browser = AsyncServiceBrowser(azc.zeroconf, [SERVICE_TYPE], handlers=[on_change])
        await asyncio.sleep(browse_s)  # browsing *is* waiting for announcements
        await browser.async_cancel()

        async def resolve(svc: str) -> None:
            info = AsyncServiceInfo(SERVICE_TYPE, svc)
            if not await info.async_request(azc.zeroconf, int(ctx.stage * 1000)):
                return
            props = {(k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else v)
                     for k, v in (info.properties or {}).items()}
            node, cluster = str(props.get("node") or svc), str(props.get("cluster") or "?")
            (ours if cluster == cfg.cookie_hash else others)[node] = cluster

        await asyncio.gather(*(resolve(s) for s in found))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(azc.async_close(), 1.0)
    ours.pop(cfg.name, None)
    listed = {n.name for n in cfg.nodes}
    clash = sorted(n for n in others if n in listed)
    detail = (f"browsed {browse_s:.1f}s on {ip}: {len(ours)} peer(s) of this cluster announced"
              + (f" ({', '.join(sorted(ours))})" if ours else "")
              + (f"; {len(set(others.values()))} other cluster(s) seen ({', '.join(sorted(others))})"
                 if others else ""))
    if clash:
        return fail(name, detail + f"; {', '.join(clash)} from this node's list announce(s) another cluster id: "
                    "a cookie mismatch", "set the same MIRROR_NEURON_COOKIE on every node, then restart the odd one")
    missing = sorted(listed - set(ours) - {cfg.name})
    if missing and not ours:
        return warn(name, detail + "; none of the listed peers is announced (multicast blocked, or they run "
                    "with MIRROR_NEURON_DISCOVERY=static)", "allow UDP 5353 multicast between the boxes, or rely on "
                    "the static list (MIRROR_NEURON_DISCOVERY=static)")
    return ok(name, detail)


def _under_systemd() -> bool:
    """systemd's own test (sd_booted): PID 1 is systemd when /run/systemd/system exists."""
    return os.path.isdir("/run/systemd/system")


def _gethost(host: str) -> str:
    import socket

    return socket.gethostbyname(host)
