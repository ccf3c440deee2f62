"""Log lines (issue I item 5): under journald each line carries its syslog priority, so
`journalctl -p warning` filters; MIRROR_NEURON_LOG_FORMAT=json for log shippers; never the
cookie. The daemon tests run a real mn-node with stderr redirected to a file."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

from mn_node.logs import _LineFormatter, stderr_is_journal, syslog_priority
from tests.support.cluster import Cluster, NodeProc
from tests.support.wait import wait_until

WEAK_COOKIE = "short-test-cookie"  # under 32 bytes: a warning at every start


def _record(level: int, msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc else None
    return logging.LogRecord("mn_node.leader", level, __file__, 1, msg, None, exc_info)


def test_priorities_follow_syslog() -> None:
    assert [syslog_priority(lv) for lv in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO,
                                           logging.DEBUG, 5)] == [2, 3, 4, 6, 7, 7]


def test_journal_stream_must_match_the_stderr_file(tmp_path: Path) -> None:
    f = tmp_path / "err"
    with open(f, "w") as fh:
        st = os.fstat(fh.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fh.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, fh.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"}, fh.fileno())
        assert not stderr_is_journal({}, fh.fileno())


def test_json_lines_parse_and_carry_the_exception() -> None:
    fmt = _LineFormatter("mn1@h", stamps=True, priority=False, json_lines=True)
    line = fmt.format(_record(logging.ERROR, "lost it\nsecond line", ValueError("bad")))
    obj = json.loads(line)
    assert obj["level"] == "ERROR" and obj["logger"] == "mn_node.leader" and obj["node"] == "mn1@h"
    assert obj["msg"] == "lost it | second line" and obj["exc"] == "ValueError: bad"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", obj["ts"])
    journal = _LineFormatter("mn1@h", stamps=False, priority=True, json_lines=True)
    out = journal.format(_record(logging.WARNING, "w"))
    assert out.startswith("<4>{") and json.loads(out[3:])["msg"] == "w"


def _start_with_stderr_file(c: Cluster, journal: bool, **env: str) -> NodeProc:
    node = c.nodes[0]
    node.log.touch()
    if journal:
        st = node.log.stat()
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    node = c.start(1, MIRROR_NEURON_COOKIE=WEAK_COOKIE, **env)
    wait_until(lambda: " up as " in node.log_text(), 20, f"{node.name} to log that it is up")
    return node


def _lines(node: NodeProc) -> list[str]:
    return [ln for ln in node.log_text().splitlines() if ln.strip()]


@pytest.mark.slow
def test_daemon_under_journald_prefixes_priorities(make_cluster: Any) -> None:
    c: Cluster = make_cluster(1, start=False)
    node = _start_with_stderr_file(c, journal=True)
    lines = _lines(node)
    assert lines and all(re.match(r"^<[3467]>", ln) for ln in lines), lines
    warn = [ln for ln in lines if "under 32" in ln]
    up = [ln for ln in lines if " up as " in ln]
    assert warn and warn[0].startswith("<4>WARNING") and up and up[0].startswith("<6>INFO"), lines
    assert not re.search(r"\d{4}-\d\d-\d\dT", up[0])  # the journal stamps lines itself
    assert WEAK_COOKIE not in node.log_text()


@pytest.mark.slow
def test_daemon_without_journal_has_no_prefix_and_json_parses(make_cluster: Any) -> None:
    c: Cluster = make_cluster(1, start=False)
    node = _start_with_stderr_file(c, journal=False, MIRROR_NEURON_LOG_FORMAT="json",
                                   JOURNAL_STREAM="1:2")  # inherited, but not our stderr
    lines = _lines(node)
    objs = [json.loads(ln) for ln in lines]
    assert all(set(o) >= {"ts", "level", "logger", "node", "msg"} for o in objs), objs
    assert {"WARNING", "INFO"} <= {o["level"] for o in objs}
    assert all(o["node"] == node.name for o in objs)
    assert WEAK_COOKIE not in node.log_text()
