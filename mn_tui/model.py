"""Plain data the panes render. Parsed from the node's JSON, or built by hand for snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _int(v: Any, default: int = 0) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Member:
    name: str
    address: str
    status: str  # up | down | gone (seen earlier in this session, no longer reported)
    incarnation: str = ""
    since: float = 0.0  # status since (epoch seconds)
    last_seen: float = 0.0
    rtt_ms: float | None = None
    reason: str = ""
    is_self: bool = False
    registered: bool = False
    version: str = ""
    capacity: int = 0
    loadavg1: float | None = None
    links: int | None = None
    pid: int = 0
    started_ms: int = 0
    # node facts from the registration's load (None / "" when the node does not report them)
    cpus: int | None = None
    mem_total: int | None = None
    mem_available: int | None = None
    slots_used: int | None = None
    slots_free: int | None = None
    drain: str = ""  # "" | draining | drained
    commands: str = ""  # on | off

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> Member:
        load = d.get("load") if isinstance(d.get("load"), dict) else {}
        assert isinstance(load, dict)
        links = load.get("links")
        return cls(
            name=str(d.get("name", "?")),
            address=str(d.get("address", "")),
            status=str(d.get("status", "?")),
            incarnation=str(d.get("incarnation") or ""),
            since=_float(d.get("since")) or 0.0,
            last_seen=_float(d.get("last_seen")) or 0.0,
            rtt_ms=_float(d.get("rtt_ms")),
            reason=str(d.get("reason") or ""),
            is_self=bool(d.get("is_self")),
            registered=bool(d.get("registered")),
            version=str(d.get("version") or ""),
            capacity=_int(d.get("capacity")),
            loadavg1=_float(load.get("loadavg1")),
            links=None if links is None else _int(links),
            pid=_int(d.get("pid")),
            started_ms=_int(d.get("started_ms")),
            **_facts(d, load),
        )

    @property
    def short(self) -> str:
        return self.name.split("@", 1)[0]


def _facts(d: dict[str, Any], load: dict[str, Any]) -> dict[str, Any]:
    def opt(key: str) -> int | None:
        return None if load.get(key) is None else _int(load.get(key))

    return {"cpus": opt("cpus"), "mem_total": opt("mem_total"), "mem_available": opt("mem_available"),
            "slots_used": opt("slots_used"), "slots_free": opt("slots_free"), "drain": str(d.get("drain") or ""),
            "commands": str(d.get("commands") or load.get("commands") or "")}


@dataclass(frozen=True)
class Health:
    status: str
    node: str
    incarnation: str
    version: str
    redis: str
    leader: bool
    reasons: tuple[str, ...] = ()

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> Health:
        reasons = d.get("reasons") or []
        return cls(
            status=str(d.get("status", "?")),
            node=str(d.get("node", "")),
            incarnation=str(d.get("incarnation", "")),
            version=str(d.get("version", "")),
            redis=str(d.get("redis", "?")),
            leader=bool(d.get("leader")),
            reasons=tuple(str(r) for r in reasons) if isinstance(reasons, list) else (str(reasons),),
        )


@dataclass(frozen=True)
class Leader:
    node: str | None
    epoch: int | None
    ttl_ms: int | None
    incarnation: str = ""
    is_self: bool = False
    reason: str = ""

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> Leader:
        return cls(
            node=d.get("node") or None,
            epoch=None if d.get("epoch") is None else _int(d.get("epoch")),
            ttl_ms=None if d.get("ttl_ms") is None else _int(d.get("ttl_ms")),
            incarnation=str(d.get("incarnation") or ""),
            is_self=bool(d.get("self")),
            reason=str(d.get("reason") or ""),
        )


@dataclass(frozen=True)
class Event:
    id: str
    ts_ms: int
    type: str
    node: str
    epoch: int | None
    data: dict[str, Any] = field(default_factory=dict)
    lease: str = ""

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> Event:
        data = d.get("data")
        return cls(
            id=str(d.get("id", "")),
            ts_ms=_int(d.get("ts_ms")),
            type=str(d.get("type", "")),
            node=str(d.get("node") or ""),
            epoch=None if d.get("epoch") is None else _int(d.get("epoch")),
            data=data if isinstance(data, dict) else {"value": data},
            lease=str(d.get("lease") or ""),
        )

    def summary(self) -> str:
        """The event's data as short ``k=v`` text."""
        return " ".join(f"{k}={v}" for k, v in self.data.items() if v not in ("", None))


@dataclass(frozen=True)
class LeaderChange:
    ts_ms: int
    kind: str  # elected | released
    node: str
    epoch: int | None
    reason: str


@dataclass
class ClusterState:
    """One poll of the node: health, members, leader, recent cluster events."""

    fetched_at: float
    api: str
    health: Health | None = None
    members: list[Member] = field(default_factory=list)
    leader: Leader | None = None
    events: list[Event] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # endpoint -> why it failed


@dataclass(frozen=True)
class Job:
    job_id: str
    graph_id: str
    job_name: str
    status: str
    owner: str
    epoch: int | None
    updated_ms: int
    done: int
    total: int
    nodes: dict[str, int]
    result: Any = None
    error: str = ""

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> Job:
        prog = d.get("progress") if isinstance(d.get("progress"), dict) else {}
        assert isinstance(prog, dict)
        nodes = d.get("nodes") if isinstance(d.get("nodes"), dict) else {}
        assert isinstance(nodes, dict)
        return cls(
            job_id=str(d.get("job_id", "?")),
            graph_id=str(d.get("graph_id") or ""),
            job_name=str(d.get("job_name") or ""),
            status=str(d.get("status", "?")),
            owner=str(d.get("owner") or ""),
            epoch=None if d.get("epoch") in (None, "") else _int(d.get("epoch")),
            updated_ms=_int(d.get("updated_ms")),
            done=_int(prog.get("done")),
            total=_int(prog.get("total")),
            nodes={str(k): _int(v) for k, v in nodes.items()},
            result=d.get("result"),
            error=str(d.get("error") or ""),
        )


@dataclass
class JobsState:
    fetched_at: float
    available: bool  # False: this node has no jobs API (404)
    jobs: list[Job] = field(default_factory=list)
    error: str = ""


@dataclass(frozen=True)
class AgentRow:
    """One agent of a job (``/api/v1/jobs/<id>/agents``); None where the node reports nothing."""

    agent: str
    type: str
    status: str
    attempt: int
    node: str
    exit_code: int | None = None
    duration_ms: int | None = None
    error: str = ""

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> AgentRow:
        code = d.get("exit_code")
        dur = d.get("duration_ms")
        return cls(agent=str(d.get("agent", "?")), type=str(d.get("type") or "-"), status=str(d.get("status") or "?"),
                   attempt=_int(d.get("attempt")), node=str(d.get("node") or ""),
                   exit_code=code if isinstance(code, int) else None,
                   duration_ms=int(dur) if isinstance(dur, (int, float)) else None, error=str(d.get("error") or ""))

    @property
    def failing(self) -> bool:
        return self.status == "failed" or (self.exit_code is not None and self.exit_code != 0)


@dataclass(frozen=True)
class FailingAgent:
    """The last lines of a failing agent's stderr (its latest finished attempt)."""

    agent: str
    attempt: int
    exit_code: int | None
    lines: tuple[str, ...]


@dataclass
class AgentsPage:
    """One page of a job's agents; ``cursor`` "0" = the last page."""

    rows: list[AgentRow]
    cursor: str = "0"
    total: int = 0
    failing: FailingAgent | None = None
    error: str = ""


@dataclass
class JobDetail:
    fetched_at: float
    job: Job | None
    events: list[Event] = field(default_factory=list)
    error: str = ""
    agents: AgentsPage | None = None  # None: the node has no agents API (nothing is shown)


@dataclass(frozen=True)
class LocalProc:
    pid: int
    ppid: int
    status: str
    started: float  # epoch seconds
    command: str
    node_name: str
    verdict: str
    stale: bool  # a problem worth acting on (kill candidate)


@dataclass(frozen=True)
class PortCheck:
    address: str  # host:port
    role: str  # e.g. "API of mn1@…" or "dist of mn1@…"
    pid: int | None
    command: str
    verdict: str  # ok | conflict | stale | free | unknown
    detail: str

    @property
    def conflict(self) -> bool:
        return self.verdict in ("conflict", "stale", "unknown")


@dataclass
class BoxState:
    fetched_at: float
    processes: list[LocalProc] = field(default_factory=list)
    ports: list[PortCheck] = field(default_factory=list)
    note: str = ""  # e.g. "registrations unknown (API unreachable): verdicts unverified"
    error: str = ""


@dataclass(frozen=True)
class DoctorCheck:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> DoctorCheck:
        return cls(str(d.get("name", "?")), str(d.get("status", "?")), str(d.get("detail") or ""),
                   str(d.get("fix") or ""))


@dataclass
class DoctorReport:
    fetched_at: float
    available: bool
    checks: list[DoctorCheck] = field(default_factory=list)
    error: str = ""
    exit_code: int | None = None
