"""Where the app's data comes from. The live provider talks to a node; tests and screenshots
can feed a fixed one (:mod:`mn_tui.fixtures`) so the screen is byte-for-byte stable."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Protocol
from urllib.parse import quote, urlsplit

import psutil

from mn_tui.client import ApiClient, ApiError, HttpError
from mn_tui.doctor import run_doctor
from mn_tui.localbox import DEFAULT_DIST_PORT, scan_box
from mn_tui.model import (
    AgentRow,
    AgentsPage,
    BoxState,
    ClusterState,
    DoctorReport,
    Event,
    FailingAgent,
    Health,
    Job,
    JobDetail,
    JobsState,
    Leader,
    Member,
)

AGENTS_PAGE = 20  # agents asked per page in the job view
STDERR_LINES = 6  # last lines shown of a failing agent's stderr


class NodeUnreachable(ApiError):
    """Nothing the node serves could be read this round."""


class Provider(Protocol):
    api: str
    readonly_reason: str  # non-empty: kill is impossible whatever --readonly says

    async def cluster(self) -> ClusterState: ...
    async def jobs(self) -> JobsState: ...
    async def job(self, job_id: str, cursor: str = "0") -> JobDetail: ...
    async def box(self, cluster: ClusterState | None) -> BoxState: ...
    async def doctor(self) -> DoctorReport: ...
    async def kill(self, pid: int, sig: int) -> str: ...
    async def close(self) -> None: ...


class LiveProvider:
    def __init__(self, api: str, timeout: float = 3.0, dist_port: int = DEFAULT_DIST_PORT,
                 events: int = 300) -> None:
        self.api = api.rstrip("/")
        self.client = ApiClient(self.api, timeout)
        self.dist_port = dist_port
        self.events_count = events
        self.readonly_reason = ""
        parts = urlsplit(self.api)
        self.api_host = parts.hostname or "127.0.0.1"
        self.api_port = parts.port or 4000

    async def cluster(self) -> ClusterState:
        res = await asyncio.gather(
            self.client.get("/api/v1/health", ok=(200, 503)),
            self.client.get("/api/v1/nodes"),
            self.client.get("/api/v1/leader"),
            self.client.get(f"/api/v1/events?count={self.events_count}"),
            return_exceptions=True,
        )
        for r in res:  # anything but an API error is a bug: let it surface
            if isinstance(r, BaseException) and not isinstance(r, ApiError):
                raise r
        errs = [r for r in res if isinstance(r, ApiError)]
        if len(errs) == len(res) and not any(isinstance(e, HttpError) for e in errs):
            raise NodeUnreachable(str(errs[0]))
        health, nodes, leader, events = res
        st = ClusterState(time.time(), self.api)
        names = ("health", "nodes", "leader", "events")
        for name, r in zip(names, res, strict=True):
            if isinstance(r, ApiError):
                st.errors[name] = str(r)
        if isinstance(health, dict):
            st.health = Health.from_api(health)
        if isinstance(nodes, dict):
            st.members = [Member.from_api(n) for n in nodes.get("nodes", []) if isinstance(n, dict)]
        if isinstance(leader, dict):
            st.leader = Leader.from_api(leader)
        if isinstance(events, dict):
            st.events = [Event.from_api(e) for e in events.get("events", []) if isinstance(e, dict)]
        return st

    async def jobs(self) -> JobsState:
        try:
            body = await self.client.get("/api/v1/jobs?limit=200")
        except HttpError as e:
            if e.status in (404, 405):
                return JobsState(time.time(), False, [], "jobs API not available on this node")
            raise
        rows = body.get("jobs", []) if isinstance(body, dict) else []
        return JobsState(time.time(), True, [Job.from_api(j) for j in rows if isinstance(j, dict)])

    async def job(self, job_id: str, cursor: str = "0") -> JobDetail:
        jid = quote(job_id, safe="")
        res = await asyncio.gather(self.client.get(f"/api/v1/jobs/{jid}"),
                                   self.client.get(f"/api/v1/jobs/{jid}/events"),
                                   self.agents(jid, cursor), return_exceptions=True)
        for r in res:
            if isinstance(r, BaseException) and not isinstance(r, ApiError):
                raise r
        body, evs, agents = res
        if isinstance(body, BaseException):
            raise body
        if not isinstance(body, dict):
            raise ApiError(f"job {job_id}: unexpected answer {str(body)[:80]}")
        events = []
        if isinstance(evs, dict):
            events = [Event.from_api(e) for e in evs.get("events", []) if isinstance(e, dict)]
        err = str(evs) if isinstance(evs, ApiError) else ""
        page = agents if isinstance(agents, AgentsPage) or agents is None else AgentsPage([], error=str(agents))
        return JobDetail(time.time(), Job.from_api(body), events, err, page)

    async def agents(self, jid: str, cursor: str) -> AgentsPage | None:
        """One page of the job's agents and the stderr tail of the first failing one; None
        from a node without the agents API."""
        try:
            body = await self.client.get(f"/api/v1/jobs/{jid}/agents?cursor={quote(cursor)}&limit={AGENTS_PAGE}")
        except HttpError as e:
            if e.status in (404, 405) and not (isinstance(e.body, dict) and "no job" in str(e.body.get("error"))):
                return None
            raise
        raw = body.get("agents", []) if isinstance(body, dict) else []
        rows = sorted((AgentRow.from_api(a) for a in raw if isinstance(a, dict)), key=lambda a: a.agent)
        page = AgentsPage(rows, str(body.get("cursor", "0")), int(body.get("total") or 0))
        bad = next((a for a in rows if a.failing), None)
        if bad is not None:
            try:
                page.failing = await self.failing(jid, bad)
            except ApiError as e:
                page.error = f"stderr of {bad.agent}: {e}"
        return page

    async def failing(self, jid: str, agent: AgentRow) -> FailingAgent:
        body = await self.client.get(f"/api/v1/jobs/{jid}/logs?agent={quote(agent.agent, safe='')}")
        attempts = [a for a in (body.get("attempts") or []) if isinstance(a, dict)] if isinstance(body, dict) else []
        last = attempts[-1] if attempts else {}
        lines = str(last.get("stderr") or "").rstrip("\n").splitlines()[-STDERR_LINES:]
        code = last.get("exit_code", agent.exit_code)
        attempt = last.get("attempt", agent.attempt)
        return FailingAgent(agent.agent, attempt if isinstance(attempt, int) else agent.attempt,
                            code if isinstance(code, int) else None, tuple(lines))

    async def box(self, cluster: ClusterState | None) -> BoxState:
        members = None if cluster is None or "nodes" in cluster.errors else cluster.members
        api_node = cluster.health.node if cluster is not None and cluster.health else None
        return await asyncio.to_thread(scan_box, members, self.api_host, self.api_port, api_node,
                                       self.dist_port)

    async def doctor(self) -> DoctorReport:
        return await run_doctor(self.api)

    async def kill(self, pid: int, sig: int) -> str:
        return await asyncio.to_thread(kill_and_wait, pid, sig)

    async def close(self) -> None:
        await self.client.close()


def kill_and_wait(pid: int, sig: int, wait: float = 3.0) -> str:
    """Signal ``pid`` and report what happened, in one line."""
    name = signal.Signals(sig).name
    try:
        p = psutil.Process(pid)
        os.kill(pid, sig)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return f"pid {pid} is already gone"
    except PermissionError:
        return f"not allowed to signal pid {pid} (run mn-tui as its owner or root)"
    try:
        p.wait(wait)
    except psutil.TimeoutExpired:
        return f"sent {name} to pid {pid}; still running after {wait:g}s (try SIGKILL)"
    except psutil.NoSuchProcess:
        pass
    return f"sent {name} to pid {pid}; it exited"
