"""One event per line on stderr (journald keeps them); never the cookie.

Under journald (stderr is the stream named by ``JOURNAL_STREAM``, ``<device>:<inode>``) each
line starts with its syslog priority, ``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>``
debug, so ``journalctl -p warning`` filters, and carries no timestamp (the journal adds one).
``MIRROR_NEURON_LOG_FORMAT=json`` writes one JSON object per line instead (``ts``, ``level``,
``logger``, ``node``, ``msg``, and ``exc`` for an exception), for log shippers; it keeps the
priority prefix under journald. :func:`set_level` changes the level live (reload).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (a level between two takes the more severe)."""
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when ``fd`` is the journal stream systemd connected (``JOURNAL_STREAM`` is its
    ``<device>:<inode>``; a child that inherited the variable but not the stream gets False)."""
    raw = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = raw.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _message(record: logging.LogRecord) -> str:
    return record.getMessage().replace("\n", " | ")


def _exception(record: logging.LogRecord) -> str:
    if not record.exc_info:
        return ""
    etype, evalue = record.exc_info[0], record.exc_info[1]
    return f"{etype.__name__ if etype else 'error'}: {evalue}"


class _LineFormatter(logging.Formatter):
    def __init__(self, node: str, *, stamps: bool, priority: bool, json_lines: bool) -> None:
        super().__init__()
        self._node = node
        self._stamps = stamps
        self._priority = priority
        self._json = json_lines

    def format(self, record: logging.LogRecord) -> str:
        line = self._json_line(record) if self._json else self._text_line(record)
        if self._priority:
            line = f"<{syslog_priority(record.levelno)}>{line}"
        return line

    def _text_line(self, record: logging.LogRecord) -> str:
        msg = _message(record)
        if record.exc_info and record.levelno >= logging.ERROR:
            msg += f" ({_exception(record)})"
        layer = record.name.removeprefix("mn_node.")
        head = f"{record.levelname:<7} {self._node} {layer}: "
        if self._stamps:
            head = _stamp(record) + " " + head
        return head + msg

    def _json_line(self, record: logging.LogRecord) -> str:
        obj = {"ts": _stamp(record), "level": record.levelname, "logger": record.name, "node": self._node,
               "msg": _message(record)}
        if record.exc_info:
            obj["exc"] = _exception(record)
        return json.dumps(obj, ensure_ascii=False)


def _stamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class _MalformedHttpFilter(logging.Filter):
    """aiohttp logs a request its parser refuses (garbage from the network, answered 400) as
    an ERROR with a traceback; that is the client's fault, not the node's: one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "malformed HTTP request refused (400): %s"
            record.args = (str(exc.message).splitlines()[0] if exc.message else type(exc).__name__,)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def setup_logging(node: str, level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger: text or JSON lines on stderr; under journald with the
    priority prefix and without timestamps (text)."""
    journal = stderr_is_journal()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter(node, stamps=not journal, priority=journal, json_lines=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("zeroconf", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedHttpFilter) for f in server.filters):
        server.addFilter(_MalformedHttpFilter())


def set_level(level: str) -> None:
    """Change the root logger's level while running (MIRROR_NEURON_LOG_LEVEL on reload)."""
    logging.getLogger().setLevel(level)


def current_level() -> str:
    """The root logger's level name now (a reload may have changed it)."""
    return logging.getLevelName(logging.getLogger().level)
