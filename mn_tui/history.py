"""Leader changes, with a reason each, derived from the cluster events stream."""

from __future__ import annotations

from mn_tui.model import Event, LeaderChange

LEADER_LEASE = "cluster:leader"


def _is_leader_event(ev: Event) -> bool:
    return ev.type in ("leader_elected", "leader_released") and ev.lease in ("", LEADER_LEASE)


def leader_history(events: list[Event]) -> list[LeaderChange]:
    """Leader changes, oldest first. ``events`` are oldest first, as the API returns them.

    The reason of an election comes from what happened to the previous holder in between: it
    released the lease (graceful stop: immediate handover), it was reported down (its lease ran
    out), or nothing was recorded (it stopped renewing: paused, lost Redis, or was SIGKILLed
    with no leader left to notice).
    """
    out: list[LeaderChange] = []
    holder: str | None = None
    held_since = 0
    released: Event | None = None
    downs: dict[str, Event] = {}
    for ev in events:
        if ev.type in ("node_down", "node_left"):
            downs[ev.node] = ev
            continue
        if not _is_leader_event(ev):
            continue
        if ev.type == "leader_released":
            why = str(ev.data.get("reason") or "released")
            out.append(LeaderChange(ev.ts_ms, "released", ev.node, ev.epoch,
                                    f"released by holder ({why}); successor can take over at once"))
            released = ev
            continue
        # leader_elected
        if holder is None:
            reason = "first election in the event window"
        elif released is not None and released.node == holder:
            gap = (ev.ts_ms - released.ts_ms) / 1000
            reason = f"handover after {holder.split('@')[0]} released the lease ({gap:.2f}s)"
        elif holder in downs and downs[holder].ts_ms >= held_since:
            d = downs[holder]
            what = "left" if d.type == "node_left" else "went down"
            why = str(d.data.get("reason") or "")
            gap = (ev.ts_ms - d.ts_ms) / 1000
            reason = (f"{holder.split('@')[0]} {what}" + (f" ({why})" if why else "")
                      + f"; lease expired, taken {gap:.1f}s later")
        elif holder == ev.node:
            reason = "re-elected: its own lease had lapsed (missed renewals)"
        else:
            reason = f"lease of {holder.split('@')[0]} expired (not renewed: killed, paused or lost Redis)"
        out.append(LeaderChange(ev.ts_ms, "elected", ev.node, ev.epoch, reason))
        holder = ev.node
        held_since = ev.ts_ms
        released = None
        downs.clear()
    return out
