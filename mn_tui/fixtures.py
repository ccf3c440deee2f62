"""A fixed data set and a provider that serves it: stable screens for snapshot tests and docs.

Times are relative to :data:`NOW` and shown in UTC (``time.gmtime``), so a snapshot renders
the same on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from mn_tui.model import (
    AgentRow,
    AgentsPage,
    BoxState,
    ClusterState,
    DoctorCheck,
    DoctorReport,
    Event,
    FailingAgent,
    Health,
    Job,
    JobDetail,
    JobsState,
    Leader,
    LocalProc,
    Member,
    PortCheck,
)

NOW = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
API = "http://10.0.0.11:4000"


def fixed_clock() -> float:
    return NOW


def _ms(sec_ago: float) -> int:
    return int((NOW - sec_ago) * 1000)


def members() -> list[Member]:
    def m(i: int, status: str, rtt: float | None, **kw: object) -> Member:
        base = Member(name=f"mn{i}@10.0.0.1{i}", address=f"10.0.0.1{i}", status=status,
                      incarnation=f"6b08ed92a4a8b9f{i}", since=NOW - 3600, last_seen=NOW - 0.4,
                      rtt_ms=rtt, registered=True, version="0.1.0", capacity=4, loadavg1=0.42 * i,
                      links=3, pid=4100 + i, started_ms=_ms(86400 + 600 * i), cpus=4, mem_total=8 * 2**30,
                      mem_available=(5 - i) * 2**30, slots_used=i % 3, slots_free=4 - i % 3, commands="on")
        return replace(base, **kw)  # type: ignore[arg-type]

    return [
        m(1, "up", None, is_self=True, last_seen=NOW, rtt_ms=0.0),
        m(2, "up", 0.31),
        m(3, "down", None, since=NOW - 42, last_seen=NOW - 43.5, reason="closed by peer", links=None,
          loadavg1=None, cpus=None, mem_total=None, slots_used=None, slots_free=None, commands=""),
        m(4, "up", 0.27, version="0.1.1", drain="draining", commands="off"),
    ]


def events() -> list[Event]:
    def ev(sec_ago: float, typ: str, node: str, epoch: int | None = None, **data: object) -> Event:
        ts = _ms(sec_ago)
        return Event(f"{ts}-0", ts, typ, node, epoch, dict(data),
                     "cluster:leader" if typ.startswith("leader_") else "")

    return [
        ev(7200, "node_up", "mn1@10.0.0.11", incarnation="6b08ed92a4a8b9f1"),
        ev(7199, "leader_elected", "mn1@10.0.0.11", 1),
        ev(5400, "leader_released", "mn1@10.0.0.11", 1, reason="shutdown"),
        ev(5399.9, "leader_elected", "mn2@10.0.0.12", 2),
        ev(600, "node_down", "mn2@10.0.0.12", 2, reason="keepalive timeout", observed_by="mn3@10.0.0.13"),
        ev(597.5, "leader_elected", "mn3@10.0.0.13", 3),
        ev(45, "leader_elected", "mn4@10.0.0.14", 4),
        ev(42, "node_down", "mn3@10.0.0.13", 4, reason="closed by peer", observed_by="mn4@10.0.0.14"),
    ]


def cluster() -> ClusterState:
    return ClusterState(
        fetched_at=NOW, api=API,
        health=Health("ok", "mn1@10.0.0.11", "6b08ed92a4a8b9f1", "0.1.0", "ok", False, ()),
        members=members(),
        leader=Leader("mn4@10.0.0.14", 4, 2140, "6b08ed92a4a8b9f4", False),
        events=events(),
    )


def jobs() -> list[Job]:
    return [
        Job("job-7f3a", "prime_sweep_scale", "prime_sweep_scale x60", "running", "mn4@10.0.0.14", 9,
            _ms(0.5), 41, 63, {"mn1@10.0.0.11": 4, "mn2@10.0.0.12": 4, "mn4@10.0.0.14": 3}),
        Job("job-7f39", "prime_sweep_scale", "prime_sweep_scale x4", "completed", "mn2@10.0.0.12", 7,
            _ms(880), 7, 7, {}, {"primes": 32}),
        Job("job-7f31", "prime_sweep_scale", "prime_sweep_scale x8", "failed", "mn3@10.0.0.13", 5,
            _ms(3990), 5, 11, {}, None, "prime_worker_0004: exceeded 3 attempts"),
        Job("job-7f30", "prime_sweep_scale", "prime_sweep_scale x2", "pending", "", None,
            _ms(2), 0, 5, {}),
    ]


def job_events(job_id: str) -> list[Event]:
    base: list[tuple[str, str, int | None, dict[str, object]]] = [
        ("job_submitted", "mn1@10.0.0.11", None, {"by": "mn1@10.0.0.11"}),
        ("coordinator_started", "mn3@10.0.0.13", 8, {}),
        ("agent_dispatched", "mn3@10.0.0.13", 8, {"agent": "prime_worker_0001", "to": "mn2@10.0.0.12"}),
        ("agent_completed", "mn2@10.0.0.12", 8, {"agent": "prime_worker_0001", "primes": 7}),
        ("coordinator_lost", "mn4@10.0.0.14", 9, {"previous": "mn3@10.0.0.13"}),
        ("coordinator_started", "mn4@10.0.0.14", 9, {"resumed": 40, "replayed": 2}),
        ("agent_dispatched", "mn4@10.0.0.14", 9, {"agent": "prime_worker_0042", "to": "mn1@10.0.0.11",
                                                  "attempt": 2}),
    ]
    out = []
    for i, (typ, node, epoch, data) in enumerate(base):
        ts = _ms(30 - 4 * i)
        out.append(Event(f"{ts}-0", ts, typ, node, epoch, data))
    return out


def agent_pages() -> dict[str, dict[str, AgentsPage]]:
    """Two pages of the agents of the failed job job-7f31 (keyed by job id, then cursor); one
    worker failed with exit 3 and its stderr tail is shown."""
    def a(agent: str, typ: str, status: str, attempt: int, node: str, code: int | None = None,
          ms: int | None = None) -> AgentRow:
        return AgentRow(agent, typ, status, attempt, f"{node}@10.0.0.1{node[-1]}" if node else "", code, ms)

    first = [
        a("dispatcher", "router", "completed", 1, "mn3"),
        a("prime_worker_0001", "executor", "completed", 1, "mn1", 0, 312),
        a("prime_worker_0002", "executor", "completed", 1, "mn2", 0, 298),
        a("prime_worker_0003", "executor", "completed", 2, "mn4", 0, 12_480),
        a("prime_worker_0004", "executor", "failed", 3, "mn2", 3, 41),
        a("prime_worker_0005", "executor", "dispatched", 1, "mn4"),
    ]
    second = [
        a("prime_worker_0006", "executor", "pending", 0, ""),
        a("prime_worker_0007", "executor", "pending", 0, ""),
        a("prime_worker_0008", "executor", "pending", 0, ""),
        a("collector", "aggregator", "pending", 0, ""),
        a("summarizer", "executor", "pending", 0, ""),
    ]
    failing = FailingAgent("prime_worker_0004", 3, 3, (
        "starting chunk 1000303..1000402",
        "Traceback (most recent call last):",
        '  File "scripts/check_prime_range.py", line 41, in <module>',
        "    out.write(json.dumps(result))",
        "OSError: [Errno 28] No space left on device",
    ))
    return {"job-7f31": {"0": AgentsPage(first, "17", 11, failing), "17": AgentsPage(second, "0", 11)}}


def box() -> BoxState:
    return BoxState(
        NOW,
        processes=[
            LocalProc(4101, 1, "sleeping", NOW - 86400 - 600, "/usr/bin/python3 /usr/local/bin/mn-node",
                      "mn1@10.0.0.11", "live: mn1@10.0.0.11", False),
            LocalProc(3877, 1, "sleeping", NOW - 172800, "/usr/bin/python3 /usr/local/bin/mn-node",
                      "mn1@10.0.0.11", "stale: old incarnation of mn1 (registered pid is 4101)", True),
            LocalProc(3990, 3877, "zombie", NOW - 90000, "[mn-node] <defunct>", "",
                      "zombie: parent pid 3877 (mn-node) has not reaped it", True),
        ],
        ports=[
            PortCheck("10.0.0.11:4000", "API (mn1)", 4101, "/usr/bin/python3 /usr/local/bin/mn-node", "ok",
                      "held by mn1 itself"),
            PortCheck("10.0.0.11:4370", "dist of mn1", 5120, "python3 -m http.server 4370", "conflict",
                      "held by foreign process pid 5120: python3 -m http.server 4370"),
        ],
    )


def doctor() -> DoctorReport:
    return DoctorReport(NOW, True, [
        DoctorCheck("config", "ok", "MIRROR_NEURON_* parsed; 4 nodes listed", ""),
        DoctorCheck("redis", "ok", "redis://10.0.0.5:6379/0 answers in 0.3 ms; AOF on; noeviction", ""),
        DoctorCheck("cookie", "warn", "cookie is 16 bytes (32+ recommended)",
                    "head -c 32 /dev/urandom | base64 > /etc/mirror-neuron/cookie; then roll it out"),
        DoctorCheck("dist_port", "fail", "10.0.0.11:4370 in use by pid 5120 (python3 -m http.server 4370)",
                    "kill 5120, or set MIRROR_NEURON_DIST_PORT to a free port on every box"),
        DoctorCheck("peers", "ok", "mn2, mn4 reachable and authenticated; mn3 down", ""),
    ], "", 1)


@dataclass
class StaticProvider:
    """Serves fixed data. Every call returns the same thing: the screen never changes."""

    api: str = API
    readonly_reason: str = ""
    cluster_state: ClusterState = field(default_factory=cluster)
    jobs_state: JobsState = field(default_factory=lambda: JobsState(NOW, True, jobs()))
    box_state: BoxState = field(default_factory=box)
    doctor_report: DoctorReport = field(default_factory=doctor)
    # job id -> cursor -> page; empty: the node has no agents API (the job view shows events only)
    agent_pages: dict[str, dict[str, AgentsPage]] = field(default_factory=dict)
    killed: list[tuple[int, int]] = field(default_factory=list)

    async def cluster(self) -> ClusterState:
        return self.cluster_state

    async def jobs(self) -> JobsState:
        return self.jobs_state

    async def job(self, job_id: str, cursor: str = "0") -> JobDetail:
        job = next((j for j in self.jobs_state.jobs if j.job_id == job_id), None)
        return JobDetail(NOW, job, job_events(job_id), agents=self.agent_pages.get(job_id, {}).get(cursor))

    async def box(self, cluster: ClusterState | None) -> BoxState:
        return self.box_state

    async def doctor(self) -> DoctorReport:
        return self.doctor_report

    async def kill(self, pid: int, sig: int) -> str:
        self.killed.append((pid, sig))
        return f"(fixture) would send signal {sig} to pid {pid}"

    async def close(self) -> None:
        return None
